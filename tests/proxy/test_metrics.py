"""Prometheus metrics and the JSON access log, checked after known sequences of requests.

Metrics are process-global (every proxy in this test process shares the default registry), so each test
takes a snapshot before its requests and asserts on the differences.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, RunningProxy
from tests.standin import Fault, StandInServer

EASY = "What is the capital of France?"
HARD = ("Prove that for every prime p > 3, p^2 - 1 is divisible by 24, then generalise the argument to "
        "p^4 - 1 and explain which step of the proof fails for p = 3.")
FLASH, PRO = "gemini-1.5-flash", "gemini-1.5-pro"
MSG = [{"role": "user", "content": "hi"}]
# USD per token, as base_config sets them: gemini-1.5-* are not in LiteLLM's price map.
PRICE = {FLASH: (0.075e-6, 0.30e-6), PRO: (1.25e-6, 5.0e-6)}

Key = tuple[str, tuple[tuple[str, str], ...]]


def snapshot() -> dict[Key, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in REGISTRY.collect() if family.name.startswith("route_llm_")
            for s in family.samples}


class Delta:
    """``delta(name, **labels)``: how much a sample moved since the snapshot taken at construction."""

    def __init__(self) -> None:
        self.before = snapshot()

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return (REGISTRY.get_sample_value(name, labels) or 0.0) - self.before.get(key, 0.0)


@dataclass
class Served:
    """What the client saw for one request: enough to predict every metric it should move."""

    requested: str
    model: str
    tier: str
    score: float | None
    prompt_tokens: int
    completion_tokens: int
    stream: bool = False


def chat(proxy: RunningProxy, model: str, prompt: str, requested: str | None = None) -> Served:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}])
    out = raw.parse()
    score = raw.headers["x-route-llm-score"]
    return Served(requested or model, out.model, raw.headers["x-route-llm-tier"],
                  None if score == "none" else float(score), out.usage.prompt_tokens, out.usage.completion_tokens)


def stream(proxy: RunningProxy, model: str, prompt: str) -> Served:
    with proxy.client().chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True,
            stream_options={"include_usage": True}) as raw:
        tier = raw.headers["x-route-llm-tier"]
        chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert usage is not None
    return Served(model, chunks[0].model, tier, None, usage.prompt_tokens, usage.completion_tokens, stream=True)


def scrape(proxy: RunningProxy) -> str:
    r = proxy.http().get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def wait_idle(proxy: RunningProxy) -> str:
    """The in-flight gauge drops after the last byte has gone out, a moment after the client has it."""
    deadline = time.monotonic() + 5
    while True:
        text = scrape(proxy)
        value = next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "route_llm_requests_in_flight")
        if value == 0 or time.monotonic() > deadline:
            assert value == 0
            return text


def test_known_sequence_moves_every_request_metric(proxy: RunningProxy, standin: StandInServer) -> None:
    d = Delta()
    served = [
        chat(proxy, "router-bert-1", EASY, requested="router-bert"),  # routed: score observed
        chat(proxy, "auto", HARD),  # routed
        chat(proxy, FLASH, EASY),  # pinned: no score
        stream(proxy, PRO, HARD),  # pinned, streamed: time to first token observed
    ]
    assert [s.model for s in served[2:]] == [FLASH, PRO]

    for s in {(s.requested, s.model, s.tier) for s in served}:
        expected = sum(1 for x in served if (x.requested, x.model, x.tier) == s)
        assert d("route_llm_requests_total", requested_model=s[0], routed_model=s[1], tier=s[2],
                 status="ok") == expected
    scored = [s.score for s in served if s.score is not None]
    assert len(scored) == 2
    assert d("route_llm_router_score_count") == 2
    assert d("route_llm_router_score_sum") == pytest.approx(sum(scored), abs=1e-3)
    assert d("route_llm_router_decision_seconds_count") == 2
    assert d("route_llm_router_decision_seconds_sum") > 0

    savings = 0.0
    for model in (FLASH, PRO):
        mine = [s for s in served if s.model == model]
        assert d("route_llm_upstream_seconds_count", routed_model=model) == len(mine)
        assert d("route_llm_upstream_first_token_seconds_count", routed_model=model) == sum(s.stream for s in mine)
        tokens_in, tokens_out = sum(s.prompt_tokens for s in mine), sum(s.completion_tokens for s in mine)
        assert tokens_in > 0 and tokens_out > 0
        assert d("route_llm_tokens_total", routed_model=model, direction="in") == tokens_in
        assert d("route_llm_tokens_total", routed_model=model, direction="out") == tokens_out
        cost = tokens_in * PRICE[model][0] + tokens_out * PRICE[model][1]
        assert d("route_llm_cost_usd_total", routed_model=model) == pytest.approx(cost, rel=1e-9)
        savings += tokens_in * PRICE[PRO][0] + tokens_out * PRICE[PRO][1] - cost
    assert savings > 0  # at least one request went to the cheap model
    assert d("route_llm_savings_usd_total") == pytest.approx(savings, rel=1e-9)
    assert d("route_llm_upstream_errors_total", routed_model=PRO, reason="unavailable") == 0
    wait_idle(proxy)


def test_faults_count_errors_by_model_and_reason_and_fallbacks(proxy: RunningProxy, standin: StandInServer) -> None:
    d = Delta()
    standin.state.faults.append(Fault("status", status=503, model=PRO))  # retried on the same model
    assert chat(proxy, PRO, "hi").model == PRO
    standin.state.faults.extend([Fault("status", status=503, model=PRO)] * 2)  # both attempts: fall back
    fallback = chat(proxy, PRO, "hi")
    assert (fallback.model, fallback.tier) == (FLASH, "weak")
    standin.state.faults.extend([Fault("status", status=503, model=PRO)] * 2)  # and then the fallback fails too
    standin.state.faults.extend([Fault("status", status=500, model=FLASH)] * 2)
    with pytest.raises(openai.APIStatusError):
        proxy.client().chat.completions.create(model=PRO, messages=MSG)

    assert d("route_llm_upstream_errors_total", routed_model=PRO, reason="unavailable") == 5
    # The fallback tier's failures are charged to the model that failed, not the one first asked.
    assert d("route_llm_upstream_errors_total", routed_model=FLASH, reason="server_error") == 2
    assert d("route_llm_fallbacks_total", from_tier="strong", to_tier="weak") == 1
    assert d("route_llm_fallbacks_total", from_tier="weak", to_tier="strong") == 0
    assert d("route_llm_requests_total", requested_model=PRO, routed_model=PRO, tier="strong", status="ok") == 1
    assert d("route_llm_requests_total", requested_model=PRO, routed_model=FLASH, tier="weak", status="ok") == 1
    assert d("route_llm_requests_total", requested_model=PRO, routed_model=PRO, tier="strong",
             status="upstream_error") == 1
    assert d("route_llm_tokens_total", routed_model=FLASH, direction="in") == fallback.prompt_tokens
    wait_idle(proxy)


def test_stream_broken_midway_counts_an_error_for_the_serving_model(proxy: RunningProxy,
                                                                   standin: StandInServer) -> None:
    d = Delta()
    standin.state.faults.append(Fault("midstream", model=FLASH))
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": FLASH, "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert d("route_llm_upstream_errors_total", routed_model=FLASH, reason="stream_broken") == 1
    assert d("route_llm_requests_total", requested_model=FLASH, routed_model=FLASH, tier="weak",
             status="upstream_error") == 1
    assert d("route_llm_upstream_first_token_seconds_count", routed_model=FLASH) == 1


def test_client_errors_are_counted_with_bounded_labels(proxy: RunningProxy) -> None:
    d = Delta()
    http = proxy.http()
    assert http.post("/v1/chat/completions", json={"model": "no-such-model-xyz", "messages": MSG}).status_code == 404
    assert http.post("/v1/chat/completions", json={"model": "auto", "messages": "nope"}).status_code == 400
    assert d("route_llm_requests_total", requested_model="invalid", routed_model="none", tier="none",
             status="client_error") == 1
    assert d("route_llm_requests_total", requested_model="auto", routed_model="none", tier="none",
             status="client_error") == 1


def test_exposition_parses_and_has_every_family_with_its_type(proxy: RunningProxy, router: Any) -> None:
    families = {f.name: f for f in text_string_to_metric_families(scrape(proxy))}
    expected = {
        "route_llm_requests": "counter", "route_llm_router_score": "histogram",
        "route_llm_router_decision_seconds": "histogram", "route_llm_router_failures": "counter",
        "route_llm_upstream_first_token_seconds": "histogram", "route_llm_upstream_seconds": "histogram",
        "route_llm_tokens": "counter", "route_llm_cost_usd": "counter", "route_llm_savings_usd": "counter",
        "route_llm_upstream_errors": "counter", "route_llm_fallbacks": "counter",
        "route_llm_requests_in_flight": "gauge", "route_llm_info": "gauge",
    }
    assert {name: families[name].type for name in expected} == expected
    buckets = [s.labels["le"] for s in families["route_llm_router_score"].samples if s.name.endswith("_bucket")]
    assert buckets == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0", "+Inf"]
    # The label sets dashboards divide by exist before the first request.
    weak_ok = {"requested_model": "auto", "routed_model": FLASH, "tier": "weak", "status": "ok"}
    assert any(s.labels == weak_ok for s in families["route_llm_requests"].samples)
    info = [s.labels for s in families["route_llm_info"].samples if s.value == 1]
    assert {"version": "0.1.0", "router_model": router.version, "threshold_default": "0.5000",
            "strong_share_default": "none"} in info  # base_config fixes the threshold: no share target


def test_upstream_errors_have_a_zero_series_per_model_and_reason_from_the_start(proxy: RunningProxy) -> None:
    """Every (model, reason) exists before any failure, so the dashboard's errors panel shows 0, not "No data"."""
    from proxy.metrics import UPSTREAM_ERROR_REASONS

    families = {f.name: f for f in text_string_to_metric_families(scrape(proxy))}
    series = {(s.labels["routed_model"], s.labels["reason"]) for s in families["route_llm_upstream_errors"].samples
              if s.name.endswith("_total")}
    assert {(m, r) for m in (FLASH, PRO) for r in UPSTREAM_ERROR_REASONS} <= series


def test_every_reason_an_attempt_can_fail_with_is_precreated() -> None:
    """The closed set in proxy/metrics.py covers what upstream/calls._classify and the edge's broken stream give."""
    from proxy.metrics import UPSTREAM_ERROR_REASONS

    root = Path(__file__).resolve().parents[2] / "proxy"
    given = set(re.findall(r'_Failure\("(\w+)"', (root / "upstream" / "calls.py").read_text()))
    given |= set(re.findall(r'reason="(\w+)"', (root / "edge" / "routes.py").read_text()))
    assert given and given <= set(UPSTREAM_ERROR_REASONS)


def test_info_gauge_reports_the_strong_share_target(make_proxy: Any, router: Any) -> None:
    make_proxy(router={"threshold": None, "strong_share": 0.25})
    labels = {s.labels["strong_share_default"] for f in REGISTRY.collect() if f.name == "route_llm_info"
              for s in f.samples if s.labels["router_model"] == router.version and s.value == 1}
    assert "0.25" in labels


def test_no_label_carries_prompt_text_or_keys(make_proxy: Any, standin: StandInServer) -> None:
    marker = "zq-marker-7f3a91"
    key = "sk-proxy-secret-5521"
    proxy = make_proxy(server={"api_keys": [key]})
    good = proxy.client(api_key=key)
    good.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"{marker} question"}],
                                 extra_headers={"x-request-id": marker})
    with pytest.raises(openai.AuthenticationError):
        proxy.client(api_key=marker).chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model=marker, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model=f"router-bert-{marker}", messages=[{"role": "user", "content": "x"}])
    text = wait_idle(proxy)
    assert marker not in text and key not in text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert not any(marker in v or key in v for v in s.labels.values()), s


def test_access_log_has_one_json_line_per_request_without_prompt(proxy: RunningProxy, standin: StandInServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    client = proxy.client()
    with caplog.at_level(logging.INFO, logger="route_llm.access"):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": HARD}],
                                       extra_headers={"x-request-id": "req-log-1"})
        with client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": EASY}], stream=True,
                                            extra_headers={"x-request-id": "req-log-2"}) as s:
            list(s)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}],
                                           extra_headers={"x-request-id": "req-log-3"})
    records = [r for r in caplog.records if r.name == "route_llm.access"]
    lines = {line["request_id"]: line for line in (json.loads(r.getMessage()) for r in records)}
    assert len(records) == 3 and set(lines) == {"req-log-1", "req-log-2", "req-log-3"}
    routed, streamed, failed = lines["req-log-1"], lines["req-log-2"], lines["req-log-3"]
    assert routed["requested_model"] == "auto" and routed["tier"] in ("weak", "strong")
    assert routed["routed_model"] == {"weak": FLASH, "strong": PRO}[routed["tier"]]
    assert 0 <= routed["score"] <= 1 and routed["router_ms"] >= 0 and routed["upstream_ms"] > 0
    assert routed["prompt_tokens"] > 0 and routed["completion_tokens"] > 0
    assert routed["status"] == "ok" and routed["http_status"] == 200
    assert streamed["routed_model"] == FLASH and streamed["score"] is None and streamed["status"] == "ok"
    assert streamed["upstream_ms"] > 0
    assert failed["status"] == "client_error" and failed["http_status"] == 404 and failed["tier"] is None
    for line in lines.values():
        assert "prompt" not in line
    assert "capital of France" not in caplog.text and "prime" not in caplog.text


def test_access_log_includes_prompt_only_when_enabled(make_proxy: Any, standin: StandInServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    proxy = make_proxy(server={"log_prompts": True})
    with caplog.at_level(logging.INFO, logger="route_llm.access"):
        proxy.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": EASY}])
    [record] = [r for r in caplog.records if r.name == "route_llm.access"]
    assert json.loads(record.getMessage())["prompt"] == EASY


def test_dashboard_is_valid_json_and_queries_only_declared_metrics(proxy: RunningProxy) -> None:
    dashboard = json.loads(Path(ROOT, "deploy/grafana/route-llm.json").read_text(encoding="utf-8"))
    declared = {f.name for f in REGISTRY.collect() if f.name.startswith("route_llm_")}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(total|bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"route_llm_\w+", e)}
    assert used and used <= declared
    assert {"route_llm_requests", "route_llm_router_score", "route_llm_router_decision_seconds",
            "route_llm_upstream_seconds", "route_llm_upstream_first_token_seconds", "route_llm_cost_usd",
            "route_llm_savings_usd", "route_llm_upstream_errors", "route_llm_fallbacks",
            "route_llm_requests_in_flight"} <= used
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "strong_share_target"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")
