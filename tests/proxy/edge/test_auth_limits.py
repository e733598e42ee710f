"""Proxy keys, request-rate and in-flight limits."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.standin import Fault, StandInServer

MSG = [{"role": "user", "content": "hi"}]


def _rejected(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("route_llm_rejected_total", {"reason": reason}) or 0.0


def test_keys_required_on_every_v1_endpoint(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["sk-proxy-1", "sk-proxy-2"]})
    before = _rejected("unauthorized")
    http = proxy.http()
    for method, path in [("POST", "/v1/chat/completions"), ("POST", "/v1/route"), ("GET", "/v1/models"),
                         ("GET", "/v1/files"), ("POST", "/v1/files"), ("GET", "/v1/files/file-x"),
                         ("DELETE", "/v1/files/file-x")]:
        r = http.request(method, path, json={"model": "auto", "messages": MSG})
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["code"] == "invalid_api_key"
    wrong = http.get("/v1/models", headers={"authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and "Incorrect" in wrong.json()["error"]["message"]
    basic = http.get("/v1/models", headers={"authorization": "Basic c2stcHJveHktMQ=="})
    assert basic.status_code == 401
    assert standin.state.requests == []
    assert _rejected("unauthorized") - before == 9  # 7 endpoints without a key, a wrong key, a Basic header
    # Health and metrics stay open by default.
    assert http.get("/health/live").status_code == 200
    assert http.get("/metrics").status_code == 200


def test_valid_key_works_and_is_never_sent_upstream(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["sk-proxy-1", "sk-proxy-2"]})
    with pytest.raises(openai.AuthenticationError):
        proxy.client(api_key="sk-nope").chat.completions.create(model="auto-cheap", messages=MSG)
    for key in ("sk-proxy-1", "sk-proxy-2"):
        out = proxy.client(api_key=key).chat.completions.create(model="auto-cheap", messages=MSG)
        assert out.choices[0].message.content
    for req in standin.state.requests:
        assert "sk-proxy" not in str(req.headers) and "sk-proxy" not in str(req.body)
        assert req.headers["x-goog-api-key"] == "test-upstream-key"


def test_keys_from_environment(make_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTE_LLM_API_KEYS", "env-key-a,env-key-b")
    proxy = make_proxy()
    assert proxy.http().get("/v1/models").status_code == 401
    assert proxy.http().get("/v1/models", headers={"authorization": "Bearer env-key-b"}).status_code == 200


def test_closed_metrics_need_a_key(make_proxy: Any) -> None:
    proxy = make_proxy(server={"api_keys": ["k"], "open_metrics": False})
    assert proxy.http().get("/metrics").status_code == 401
    assert proxy.http().get("/metrics", headers={"authorization": "Bearer k"}).status_code == 200


def test_requests_per_minute_limit_returns_429_with_retry_after(make_proxy: Any) -> None:
    proxy = make_proxy(server={"api_keys": ["k1", "k2"], "limit_requests_per_minute": 2})
    http = proxy.http()
    before = _rejected("rate_limited")
    for _ in range(2):
        assert http.get("/v1/models", headers={"authorization": "Bearer k1"}).status_code == 200
    r = http.get("/v1/models", headers={"authorization": "Bearer k1"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert _rejected("rate_limited") - before == 1
    # Another key has its own budget.
    assert http.get("/v1/models", headers={"authorization": "Bearer k2"}).status_code == 200


def test_in_flight_limit_answers_503_at_once(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"limit_in_flight": 2})
    before = _rejected("overloaded")
    standin.state.faults.extend([Fault("delay", seconds=1.0), Fault("delay", seconds=1.0)])

    async def go() -> list[Any]:
        client = proxy.async_client()
        slow = [asyncio.create_task(client.chat.completions.create(model="gemini-1.5-flash", messages=MSG))
                for _ in range(2)]
        await asyncio.sleep(0.4)
        try:
            await client.chat.completions.create(model="gemini-1.5-flash", messages=MSG)
            third: Any = None
        except openai.APIStatusError as exc:
            third = exc
        done = await asyncio.gather(*slow)
        await client.close()
        return [third, *done]

    third, *done = asyncio.run(go())
    assert third is not None and third.status_code == 503
    assert third.response.headers["retry-after"] == "1"
    assert _rejected("overloaded") - before == 1
    assert all(d.choices[0].message.content for d in done)
