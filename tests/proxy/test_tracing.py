"""OpenTelemetry traces: spans of a real request, sent over OTLP/HTTP to a receiver this test runs.

The receiver is a plain HTTP server on loopback that decodes each ``POST /v1/traces`` body with
opentelemetry-proto's ``ExportTraceServiceRequest``, as a collector would; the proxy's exporter is the real one,
configured only by the standard environment variables.
"""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from proxy import tracing
from proxy.settings import settings_from_dict
from router import Router
from tests.conftest import ROOT, ClientThread, RunningProxy, base_config, start_proxy, stop_proxy, wait_until
from tests.proxy.pdfs import pdf_with_pages
from tests.standin import Fault, StandInServer, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class Received:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    status: int
    attributes: dict[str, Any]
    service: str
    pid: int


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every span it is sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                outer.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, request: ExportTraceServiceRequest) -> None:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    with self.lock:
                        self.spans.append(Received(
                            s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                            s.status.code, {a.key: _value(a.value) for a in s.attributes},
                            str(resource.get("service.name")), int(resource.get("process.pid") or 0)))

    def request_spans(self, request_id: str) -> list[Received]:
        """Every span of the trace whose SERVER span carries ``request_id`` (empty until that span arrived)."""
        with self.lock:
            server = [s for s in self.spans if s.attributes.get("route_llm.request_id") == request_id]
            return [s for s in self.spans if server and s.trace_id == server[0].trace_id]


@pytest.fixture(scope="module")
def traced(router: Router, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningProxy, Receiver]]:
    """A proxy whose environment names the receiver as its OTLP endpoint (read when the app starts)."""
    receiver = Receiver()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds between exports
        env.delenv("OTEL_SERVICE_NAME", raising=False)
        env.delenv("OTEL_SDK_DISABLED", raising=False)
        running = start_proxy(settings_from_dict(base_config(tmp_path_factory.mktemp("traced"))), router)
    yield running, receiver
    stop_proxy(running)
    receiver.server.shutdown()


def _one(spans: list[Received], name: str) -> Received:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_a_routed_request_with_a_fallback_arrives_as_one_trace_under_the_clients_span(
        traced: tuple[RunningProxy, Receiver], standin: StandInServer) -> None:
    proxy, receiver = traced
    standin.state.faults.extend([Fault("status", status=500, model="gemini-1.5-pro")] * 2)
    pdf = "data:application/pdf;base64," + base64.b64encode(pdf_with_pages(["The tide tables for May."])).decode()
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="router-bert-0.0",  # every request to the strong tier, whatever the document head says
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "When is high tide on the third?"},
            {"type": "file", "file": {"filename": "tides.pdf", "file_data": pdf}}]}],
        extra_headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
    assert raw.headers["x-route-llm-fallback"] == "strong->weak"
    rid = raw.headers["x-request-id"]
    wait_until(lambda: any(s.name == "route_llm.record" for s in receiver.request_spans(rid)),
               "the request's spans at the receiver", timeout=30)
    spans = receiver.request_spans(rid)

    server = _one(spans, "POST /v1/chat/completions")
    assert (server.trace_id, server.parent_id) == (TRACE_ID, CLIENT_SPAN)
    assert server.kind == PbSpan.SPAN_KIND_SERVER and server.service == "route-llm"
    a = server.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "router-bert"  # the bounded label, as in the metrics
    assert a["gen_ai.response.model"] == "gemini-1.5-flash" and a["gen_ai.provider.name"] == "gcp.gemini"
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["http.response.status_code"] == 200 and a["route_llm.upstream.fallback"] is True

    children = {s.name for s in spans if s.parent_id == server.span_id}
    assert {"route_llm.read_body", "route_llm.documents", "route_llm.route", "route_llm.record"} <= children
    assert _one(spans, "route_llm.documents").attributes["route_llm.documents.count"] == 1
    route = _one(spans, "route_llm.route").attributes
    assert route["route_llm.router.tier"] == "strong" and route["route_llm.router.threshold"] == 0.0
    assert 0.0 <= route["route_llm.router.score"] <= 1.0 and route["route_llm.router.version"]

    attempts = sorted((s for s in spans if s.name.startswith("chat ")), key=lambda s: s.attributes[
        "route_llm.upstream.fallback"])
    assert all(s.parent_id == server.span_id and s.kind == PbSpan.SPAN_KIND_CLIENT for s in attempts)
    summary = [(s.attributes["gen_ai.request.model"], s.attributes["route_llm.upstream.retry"],
                s.attributes["route_llm.upstream.fallback"], s.attributes["route_llm.upstream.outcome"],
                s.attributes.get("http.response.status_code")) for s in attempts]
    assert sorted(summary) == [("gemini/gemini-1.5-flash", False, True, "ok", 200),
                               ("gemini/gemini-1.5-pro", False, False, "server_error", 500),
                               ("gemini/gemini-1.5-pro", True, False, "server_error", 500)]
    failed = [s for s in attempts if s.attributes["route_llm.upstream.outcome"] != "ok"]
    assert all(s.status == 2 and s.attributes["error.type"] == "server_error" for s in failed)  # STATUS_CODE_ERROR


def test_a_streamed_answer_is_one_span_that_ends_with_the_stream(traced: tuple[RunningProxy, Receiver],
                                                                  standin: StandInServer) -> None:
    proxy, receiver = traced
    stream = proxy.client().chat.completions.with_raw_response.create(
        model="auto-cheap", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    rid = stream.headers["x-request-id"]
    usage = [chunk.usage for chunk in stream.parse() if chunk.usage][-1]
    wait_until(lambda: any(s.name == "route_llm.record" for s in receiver.request_spans(rid)),
               "the streamed request's spans", timeout=30)
    server = _one(receiver.request_spans(rid), "POST /v1/chat/completions")
    assert server.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens > 0
    assert server.attributes["route_llm.status"] == "ok" and server.attributes["route_llm.tier"] == "weak"


BAD_TRACEPARENTS = [
    "garbage",
    f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # an all-zero trace id is invalid
    f"00-{TRACE_ID}-{'0' * 16}-01",  # so is an all-zero parent
    f"ff-{TRACE_ID}-{CLIENT_SPAN}-01",  # version ff is forbidden
    f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01",  # upper-case hex is not W3C's
    f"00-{TRACE_ID}-{CLIENT_SPAN}",
    f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra-" + "x" * 5000,
    "00-\u00e9\u00e9-\u00e9-01",
]


def test_a_malformed_traceparent_is_ignored_and_the_request_starts_its_own_trace(
        traced: tuple[RunningProxy, Receiver], standin: StandInServer, caplog: pytest.LogCaptureFixture) -> None:
    proxy, receiver = traced
    with proxy.http() as http:
        ids = []
        for bad in BAD_TRACEPARENTS:
            r = http.post("/v1/chat/completions", headers={"traceparent": bad.encode("utf-8")},
                          json={"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, (bad, r.text)
            ids.append(r.headers["x-request-id"])
    for rid, bad in zip(ids, BAD_TRACEPARENTS):
        wait_until(lambda: bool(receiver.request_spans(rid)), f"the trace of a request sent traceparent {bad[:40]}",
                   timeout=30)
        server = _one(receiver.request_spans(rid), "POST /v1/chat/completions")
        assert server.parent_id == "" and server.trace_id not in (TRACE_ID, "0" * 32), bad
    assert "traceparent" not in caplog.text  # nor a log line per request that a client could repeat


def test_probes_and_scrapes_are_not_traced(traced: tuple[RunningProxy, Receiver]) -> None:
    proxy, receiver = traced
    with proxy.http() as http:
        assert http.get("/health/ready").status_code == 200
        assert http.get("/metrics").status_code == 200
        r = http.get("/v1/models")
    assert r.status_code == 200
    wait_until(lambda: any(s.name == "GET /v1/models" for s in receiver.spans), "the models listing's span",
               timeout=30)
    assert not [s for s in receiver.spans if s.name.startswith(("GET /health", "GET /metrics"))]


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "false"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
])
def test_only_an_otlp_endpoint_turns_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_the_provider_name_follows_the_genai_conventions() -> None:
    assert tracing.provider_name("gemini/gemini-2.5-flash") == "gcp.gemini"
    assert tracing.provider_name("gpt-4o-mini") == "openai"
    assert tracing.provider_name("ollama/llama3") == "ollama"


def test_off_by_default_the_proxy_never_imports_opentelemetry(tmp_path: Path) -> None:
    """Without an endpoint the whole request path runs (in a fresh interpreter) with no OpenTelemetry module
    loaded: a span costs a context-variable read and nothing else."""
    script = (
        "import os, sys\n"
        "for n in list(os.environ):\n"
        "    n.startswith('OTEL_') and os.environ.pop(n)\n"
        "import tests.conftest as c\n"
        "from starlette.testclient import TestClient\n"
        "from proxy.app import create_app\n"
        "from proxy.settings import settings_from_dict\n"
        f"app = create_app(settings_from_dict(c.base_config(__import__('pathlib').Path({str(tmp_path)!r}))))\n"
        "with TestClient(app) as client:\n"
        "    r = client.post('/v1/chat/completions', json={'model': 'auto', 'messages': [{'role': 'user',"
        " 'content': 'hi'}]}, headers={'traceparent': '00-" + TRACE_ID + "-" + CLIENT_SPAN + "-01'})\n"
        "    assert r.status_code == 200, r.text\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
        "print('clean')\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-3000:]


def test_an_endpoint_without_the_extra_warns_and_serves_untraced(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setattr(tracing.importlib.util, "find_spec", lambda name: None)  # the extra not installed
    with caplog.at_level("WARNING", logger="route_llm"):
        assert tracing.Tracing.from_env() is None
    assert "pip install 'route-llm[otel]'" in caplog.text


def test_each_worker_process_exports_its_own_spans(tmp_path: Path, standin: StandInServer) -> None:
    """`serve --workers 2`: every worker sets its exporter up in its own lifespan, so both workers' requests arrive
    (told apart by the resource's process.pid), and the spans still queued at shutdown are sent."""
    import httpx
    import yaml

    receiver = Receiver()
    cfg = base_config(tmp_path, upstream={"warmup": False})
    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=standin.base_url, api_key="test-upstream-key")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_MULTIPROC_DIR"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50",
               OTEL_SERVICE_NAME="route-llm-workers", LITELLM_LOCAL_MODEL_COST_MAP="True")
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("route-llm")), "serve", "--config",
                                 str(tmp_path / "config.yaml"), "--port", str(port), "--workers", "2"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: log.read_text(errors="replace").count("route-llm worker loaded") == 2,
                   "both workers loaded", timeout=180, processes=[proc], log=log)

        def pids() -> set[int]:
            with receiver.lock:
                return {s.pid for s in receiver.spans if s.name == "POST /v1/chat/completions"}

        def send() -> None:
            for i in range(200):  # new connections, until both workers have answered some
                if len(pids()) >= 2:
                    return
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                    r = http.post("/v1/chat/completions", json={
                        "model": "auto", "messages": [{"role": "user", "content": f"question {i}"}]})
                    assert r.status_code == 200, r.text

        clients = [ClientThread(send) for _ in range(3)]
        for c in clients:
            c.start()
        wait_until(lambda: len(pids()) >= 2, "spans from both worker processes", timeout=120, clients=clients,
                   processes=[proc], log=log)
        assert {s.service for s in receiver.spans} == {"route-llm-workers"} and proc.pid not in pids()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        receiver.server.shutdown()
