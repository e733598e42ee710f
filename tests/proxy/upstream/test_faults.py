"""Upstream faults: retries, fallback to the other tier, clean errors, streams that break."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningProxy
from tests.standin import Fault, StandInServer

MSG = [{"role": "user", "content": "hi"}]


def test_transient_503_is_retried_on_the_same_model(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("status", status=503, model="gemini-1.5-pro"))
    raw = proxy.client().chat.completions.with_raw_response.create(model="gemini-1.5-pro", messages=MSG)
    assert raw.parse().model == "gemini-1.5-pro"
    assert standin.state.models_called() == ["gemini-1.5-pro", "gemini-1.5-pro"]
    assert "x-route-llm-fallback" not in raw.headers


def test_persistent_failure_falls_back_to_the_other_tier(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.extend([Fault("status", status=500, model="gemini-1.5-pro")] * 2)
    raw = proxy.client().chat.completions.with_raw_response.create(model="auto-quality", messages=MSG)
    assert raw.parse().model == "gemini-1.5-flash"
    assert raw.headers["x-route-llm-fallback"] == "strong->weak"
    assert raw.headers["x-route-llm-tier"] == "weak"
    assert standin.state.models_called() == ["gemini-1.5-pro", "gemini-1.5-pro", "gemini-1.5-flash"]


def test_429_honours_retry_after_then_succeeds(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("status", status=429, retry_after=0.01, model="gemini-1.5-flash"))
    out = proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG)
    assert out.model == "gemini-1.5-flash"
    assert standin.state.models_called() == ["gemini-1.5-flash", "gemini-1.5-flash"]


def test_connection_reset_is_retried(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("reset", model="gemini-1.5-flash"))
    out = proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG)
    assert out.model == "gemini-1.5-flash"
    assert len(standin.state.requests) == 2


def test_the_standins_reset_drops_the_connection_without_an_answer(standin: StandInServer) -> None:
    # Not a 500 followed by a close: a client could pool that connection before the close arrived, and the
    # test above would then pass or fail by timing.
    standin.state.faults.append(Fault("reset"))
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        httpx.post(f"{standin.base_url}/v1beta/models/gemini-1.5-flash:generateContent",
                   json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=30)


def test_all_upstreams_down_returns_openai_error_quickly(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.fault_rate = 1.0
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="auto-quality", messages=MSG)
    assert err.value.status_code in (502, 503)
    body = err.value.response.json()["error"]
    assert body["type"] == "upstream_error"
    assert "gemini-1.5-flash" in body["message"] and "unavailable" in body["message"]
    assert len(standin.state.requests) == 4  # 2 attempts per tier, both tiers
    standin.state.fault_rate = 0.0
    assert proxy.client().chat.completions.create(model="auto-cheap", messages=MSG).choices[0].message.content


def test_upstream_timeout_returns_504(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(models={
        "weak": {"name": "gemini-1.5-flash", "model": "gemini/gemini-1.5-flash", "timeout": 0.3},
        "strong": {"name": "gemini-1.5-pro", "model": "gemini/gemini-1.5-pro", "timeout": 0.3}},
        upstream={"retries": 0, "fallback": "none", "timeout_total": 5})
    standin.state.faults.append(Fault("delay", seconds=2.0))
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG)
    assert err.value.status_code == 504
    assert err.value.response.json()["error"]["code"] == "timeout"


def test_fallback_none_reports_the_upstream_reason(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "fallback": "none"})
    standin.state.faults.append(Fault("status", status=503))
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="gemini-1.5-pro", messages=MSG)
    assert err.value.status_code == 503
    assert standin.state.models_called() == ["gemini-1.5-pro"]


def test_upstream_400_is_not_retried_and_is_a_client_error(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("status", status=400))
    with pytest.raises(openai.BadRequestError):
        proxy.client().chat.completions.create(model="gemini-1.5-pro", messages=MSG)
    assert len(standin.state.requests) == 1


# What a gateway in front of the upstream, or a connection cut mid-body, answers with a 200 status.
_UNREADABLE = [
    pytest.param("<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>", "text/html", id="html"),
    pytest.param('{"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel', "application/json",
                 id="truncated_json"),
]


@pytest.mark.parametrize(("body", "content_type"), _UNREADABLE)
def test_upstream_200_with_unreadable_body_is_a_retried_502_naming_a_bad_response(
        proxy: RunningProxy, standin: StandInServer, body: str, content_type: str) -> None:
    # Every tier answers so: each is tried twice (one retry), then the client is told the upstream failed.
    standin.state.faults.extend([Fault("body", body=body, content_type=content_type)] * 4)
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG)
    assert err.value.status_code == 502
    error = err.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("upstream_error", "bad_response")
    message = error["message"]
    assert "gemini-1.5-pro" in message and "not a valid response" in message
    for internal in ("127.0.0.1", "litellm", "Exception", "Error converting", "<html", "candidates"):
        assert internal not in message, message
    assert standin.state.models_called() == ["gemini-1.5-flash", "gemini-1.5-flash", "gemini-1.5-pro", "gemini-1.5-pro"]
    assert proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG).choices[0].message.content


@pytest.mark.parametrize(("body", "content_type"), _UNREADABLE)
def test_upstream_200_with_unreadable_body_falls_back_to_the_other_tier(
        proxy: RunningProxy, standin: StandInServer, body: str, content_type: str) -> None:
    standin.state.faults.extend([Fault("body", body=body, content_type=content_type, model="gemini-1.5-pro")] * 2)
    raw = proxy.client().chat.completions.with_raw_response.create(model="auto-quality", messages=MSG)
    assert raw.parse().model == "gemini-1.5-flash"
    assert raw.headers["x-route-llm-fallback"] == "strong->weak"
    assert raw.headers["x-route-llm-tier"] == "weak"
    assert standin.state.models_called() == ["gemini-1.5-pro", "gemini-1.5-pro", "gemini-1.5-flash"]


def test_upstream_422_it_sent_itself_stays_a_client_error(proxy: RunningProxy, standin: StandInServer) -> None:
    # LiteLLM's own "cannot read the answer" is a 422 too; one the upstream sent has an HTTP status behind it.
    standin.state.faults.append(Fault("status", status=422))
    with pytest.raises(openai.BadRequestError) as err:
        proxy.client().chat.completions.create(model="gemini-1.5-pro", messages=MSG)
    assert err.value.response.json()["error"]["code"] == "upstream_bad_request"
    assert len(standin.state.requests) == 1


@pytest.mark.parametrize(("body", "stream"), [
    *[(body, stream) for stream in (False, True) for body in [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"},
                                                   {"type": "image_url", "image_url": 5}]}]},
        {"messages": [{"role": "user", "content": [{"type": "refusal"}]}]},
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": 5}},
    ]],
])
def test_request_litellm_cannot_build_is_a_400_without_retry_fallback_or_traceback(
        proxy: RunningProxy, standin: StandInServer, body: dict[str, Any], stream: bool) -> None:
    # LiteLLM reports these as APIConnectionError; nothing reached the network, so it is the request that is wrong.
    raw = json.dumps({"model": "gemini-1.5-pro", "stream": stream, **body})
    with proxy.http() as http:
        r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_bad_request" and "Traceback" not in err["message"]
    assert "x-route-llm-fallback" not in r.headers
    assert standin.state.requests == []


def test_stream_failure_before_first_chunk_falls_back(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.extend([Fault("status", status=503, model="gemini-1.5-pro")] * 2)
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "auto-quality", "stream": True, "messages": MSG}) as r:
        assert r.status_code == 200
        assert r.headers["x-route-llm-fallback"] == "strong->weak"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["model"] == "gemini-1.5-flash"


def test_stream_broken_midway_ends_with_error_event_and_done(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("midstream"))
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "gemini-1.5-flash", "stream": True, "messages": MSG}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])
    assert error["error"]["code"] == "stream_broken"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_missing_upstream_key_gives_clear_error_but_routing_works(make_proxy: Any, standin: StandInServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    proxy = make_proxy()
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="auto", messages=MSG)
    assert err.value.status_code == 503
    assert "GEMINI_API_KEY" in err.value.response.json()["error"]["message"]
    assert proxy.http().post("/v1/route", json={"prompt": "hi"}).status_code == 200
    assert standin.state.requests == []


@pytest.mark.parametrize("damage", ["cut", "garbled"])
def test_a_cut_or_garbled_upstream_stream_ends_with_an_error_event_not_stop(proxy: RunningProxy,
                                                                           standin: StandInServer,
                                                                           damage: str) -> None:
    from prometheus_client import REGISTRY

    def broken() -> float:
        return REGISTRY.get_sample_value("route_llm_upstream_errors_total",
                                         {"routed_model": "gemini-1.5-flash", "reason": "stream_broken"}) or 0.0

    before = broken()
    standin.state.stream_chunks = 3
    standin.state.faults.append(Fault(damage))
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "gemini-1.5-flash", "stream": True, "messages": MSG}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[-1]["error"]["code"] == "stream_broken", events[-1]
    assert all(c.get("finish_reason") is None for e in events[:-1] for c in e.get("choices", [])), events
    assert broken() - before == 1
    # The same through the official SDK: the error event is raised, not a normal end.
    standin.state.faults.append(Fault(damage))
    with pytest.raises(openai.APIError):
        for _ in proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG, stream=True):
            pass
