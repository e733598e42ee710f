"""Every error a client can get says what it needs and nothing about the proxy's insides: no upstream host or
port, no Python reprs, no LiteLLM names or configuration hints, no tracebacks.

Each upstream fault the stand-in can play is sent, streamed and not, and an upstream that is not listening;
the edge's own refusals too. Every body (and every SSE error event) is scanned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningProxy, base_config
from tests.standin import Fault, StandInServer, free_port

MSG = [{"role": "user", "content": "hi"}]
FLASH = "gemini-1.5-flash"

#: What must never reach a client. Host:port pairs, loopback and private addresses; object reprs; LiteLLM's
#: names and hints; Python's exception names and tracebacks.
LEAKS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|localhost|:\d{2,5}\b|object at 0x|SSLContext|<[A-Za-z_.]+ |"
                   r"litellm|LiteLLM|drop_params|api_base|Traceback|Exception\b|Error\(|aiohttp|httpx|"
                   r"b'|b\"|Vertex|/site-packages/|\.py\b", re.IGNORECASE)

FAULTS = [Fault("status", status=s) for s in (400, 401, 403, 404, 429, 500, 503)] + [
    Fault("reset"), Fault("midstream"), Fault("cut"), Fault("garbled"),
    Fault("body", body="<html><body>502 Bad Gateway at 10.1.2.3:8443</body></html>"),
    Fault("body", body='{"candidates": [{"content": ', content_type="application/json")]


def _messages(body: str) -> list[str]:
    """Every error of a response body: a JSON error, or the error events of a stream."""
    found = []
    for text in [body, *(line[6:] for line in body.splitlines() if line.startswith("data: {"))]:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("error"), dict):
            found.append(json.dumps(value["error"]))
    return found


def _scan(http: Any, body: dict[str, Any]) -> list[str]:
    r = http.post("/v1/chat/completions", json=body)
    errors = _messages(r.text)
    assert r.status_code >= 400 or errors, (r.status_code, r.text[:300])
    return errors


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.status}-{f.content_type}")
def test_upstream_faults_leak_nothing(make_proxy: Any, standin: StandInServer, fault: Fault, stream: bool) -> None:
    proxy = make_proxy(upstream={"retries": 0, "fallback": "none"})
    standin.state.stream_chunks = 3
    standin.state.faults.extend([fault] * 3)
    body = {"model": FLASH, "messages": MSG, "stream": stream}
    with proxy.http() as http:
        errors = _scan(http, body) if fault.kind not in ("midstream", "cut", "garbled") or stream else None
    if errors is None:  # these faults break streams only; a plain request is answered
        return
    assert errors
    for error in errors:
        assert not LEAKS.search(error), error


@pytest.mark.parametrize("stream", [False, True])
def test_an_unreachable_upstream_leaks_nothing(make_proxy: Any, tmp_path: Path, stream: bool) -> None:
    models = base_config(tmp_path)["models"]
    for tier in models.values():
        tier["api_base"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proxy = make_proxy(models=models, upstream={"retries": 0})
    with proxy.http() as http:
        errors = _scan(http, {"model": FLASH, "messages": MSG, "stream": stream})
    assert errors
    for error in errors:
        assert not LEAKS.search(error), error


def test_edge_refusals_leak_nothing(proxy: RunningProxy) -> None:
    with proxy.http() as http:
        responses = [
            http.post("/v1/chat/completions", content=b"{not json"),
            http.post("/v1/chat/completions", json={"model": "nope", "messages": MSG}),
            http.post("/v1/chat/completions", json={"model": FLASH, "messages": "x"}),
            http.get("/v1/files/file-missing"),
            http.get("/v1/nowhere"),
            http.post("/v1/feedback", json={"request_id": "r", "rating": "meh"}),
        ]
    for r in responses:
        assert r.status_code >= 400
        for error in _messages(r.text):
            assert not LEAKS.search(error), error
