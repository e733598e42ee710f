"""End to end: the official OpenAI SDK -> route-llm on a real socket -> LiteLLM -> the Gemini stand-in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy import __version__
from tests.conftest import RunningProxy
from tests.standin import StandInServer

EASY = "What is the capital of France?"
HARD = ("Prove that for every prime p > 3, p^2 - 1 is divisible by 24, then generalise the argument to "
        "characterise all integers n for which n^2 - 1 is divisible by 24, with a rigorous case analysis.")


def test_cheap_alias_sends_to_flash_and_reports_headers(proxy: RunningProxy, standin: StandInServer) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="auto-cheap", messages=[{"role": "user", "content": EASY}])
    completion = raw.parse()
    assert completion.model == "gemini-1.5-flash"
    assert completion.choices[0].message.content.startswith("answer from gemini-1.5-flash")
    assert standin.state.models_called() == ["gemini-1.5-flash"]
    assert raw.headers["x-route-llm-tier"] == "weak"
    assert raw.headers["x-route-llm-model"] == "gemini-1.5-flash"
    assert raw.headers["x-route-llm-threshold"] == "0.9900"
    score = float(raw.headers["x-route-llm-score"])
    assert 0.0 <= score < 0.99
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_quality_alias_sends_to_pro(proxy: RunningProxy, standin: StandInServer) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="auto-quality", messages=[{"role": "user", "content": HARD}])
    assert raw.parse().model == "gemini-1.5-pro"
    assert raw.headers["x-route-llm-tier"] == "strong"
    assert standin.state.models_called() == ["gemini-1.5-pro"]


def test_auto_routes_easy_to_flash_and_hard_to_pro(proxy: RunningProxy, standin: StandInServer) -> None:
    client = proxy.client()
    easy = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": EASY}])
    hard = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": HARD}])
    assert float(easy.headers["x-route-llm-score"]) < float(hard.headers["x-route-llm-score"])
    # Every decision follows the rule score >= threshold -> strong, and lands on that tier's model.
    for raw in (easy, hard):
        score, threshold = float(raw.headers["x-route-llm-score"]), float(raw.headers["x-route-llm-threshold"])
        expected = "gemini-1.5-pro" if score >= threshold else "gemini-1.5-flash"
        assert raw.parse().model == expected
    assert standin.state.models_called() == [easy.parse().model, hard.parse().model]


def test_routellm_threshold_form_uses_that_threshold(proxy: RunningProxy, standin: StandInServer) -> None:
    client = proxy.client()
    low = client.chat.completions.with_raw_response.create(
        model="router-bert-0.0", messages=[{"role": "user", "content": EASY}])
    high = client.chat.completions.with_raw_response.create(
        model="router-bert-1", messages=[{"role": "user", "content": EASY}])
    assert low.headers["x-route-llm-tier"] == "strong" and low.headers["x-route-llm-threshold"] == "0.0000"
    assert high.headers["x-route-llm-tier"] == "weak"
    assert standin.state.models_called() == ["gemini-1.5-pro", "gemini-1.5-flash"]


def test_concrete_model_name_bypasses_the_router(proxy: RunningProxy, standin: StandInServer) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gemini-1.5-pro", messages=[{"role": "user", "content": EASY}])
    assert raw.parse().model == "gemini-1.5-pro"
    assert raw.headers["x-route-llm-score"] == "none"
    assert raw.headers["x-route-llm-tier"] == "strong"


def test_router_reads_only_the_last_user_message(proxy: RunningProxy, standin: StandInServer) -> None:
    http = proxy.http()
    convo = [{"role": "user", "content": HARD}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": [{"type": "text", "text": EASY}]}]
    by_messages = http.post("/v1/route", json={"model": "auto", "messages": convo}).json()
    by_prompt = http.post("/v1/route", json={"model": "auto", "prompt": EASY}).json()
    assert by_messages["score"] == pytest.approx(by_prompt["score"], abs=1e-6)
    assert standin.state.requests == []  # the dry run never calls upstream


def test_parameters_system_messages_and_tools_are_forwarded(proxy: RunningProxy, standin: StandInServer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    completion = proxy.client().chat.completions.create(
        model="gemini-1.5-flash",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Weather in Paris?"}],
        temperature=0.3, max_tokens=55, stop=["END"], top_p=0.9, seed=7, tools=tools, tool_choice="required")
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "answer from gemini-1.5-flash"}  # valid under its schema
    body = standin.state.requests[0].body
    gen = body["generationConfig"]
    assert gen["temperature"] == 0.3 and gen["max_output_tokens"] == 55 and gen["stop_sequences"] == ["END"]
    assert gen["top_p"] == 0.9
    sent_text = json.dumps(body)
    assert "You are terse." in sent_text and "Weather in Paris?" in sent_text
    assert body["tools"][0]["function_declarations"][0]["name"] == "get_weather"
    assert standin.state.requests[0].headers["x-goog-api-key"] == "test-upstream-key"


def test_conversation_with_tool_results_is_accepted(proxy: RunningProxy, standin: StandInServer) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    completion = proxy.client().chat.completions.create(model="auto-cheap", messages=messages)
    assert completion.choices[0].message.content
    assert "21" in json.dumps(standin.state.requests[0].body)


def test_streaming_sends_chunks_and_usage(proxy: RunningProxy, standin: StandInServer) -> None:
    stream = proxy.client().chat.completions.create(
        model="auto-quality", messages=[{"role": "user", "content": HARD}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "answer from gemini-1.5-pro: w0 w1 w2 w3 w4 w5 w6 w7"
    assert all(c.model == "gemini-1.5-pro" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert standin.state.requests[0].stream


def test_streaming_raw_sse_ends_with_done_and_has_route_headers(proxy: RunningProxy, standin: StandInServer) -> None:
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "auto-cheap", "stream": True, "messages": [{"role": "user", "content": EASY}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-route-llm-tier"] == "weak"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][len("data: "):])
    assert first["object"] == "chat.completion.chunk"


def test_async_client_streaming_and_not(proxy: RunningProxy, standin: StandInServer) -> None:
    async def go() -> tuple[str, str]:
        client = proxy.async_client()
        plain = await client.chat.completions.create(model="auto-cheap", messages=[{"role": "user", "content": EASY}])
        stream = await client.chat.completions.create(model="auto-quality", stream=True,
                                                      messages=[{"role": "user", "content": HARD}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return plain.model, text

    model, text = asyncio.run(go())
    assert model == "gemini-1.5-flash"
    assert text.startswith("answer from gemini-1.5-pro")


def test_concurrent_requests_each_get_their_own_answer(proxy: RunningProxy, standin: StandInServer) -> None:
    async def go() -> list[str]:
        client = proxy.async_client()
        tasks = [client.chat.completions.create(model="gemini-1.5-flash" if i % 2 else "gemini-1.5-pro",
                                                messages=[{"role": "user", "content": f"question {i}"}])
                 for i in range(16)]
        results = await asyncio.gather(*tasks)
        await client.close()
        return [r.model for r in results]

    models = asyncio.run(go())
    assert models == ["gemini-1.5-flash" if i % 2 else "gemini-1.5-pro" for i in range(16)]


def test_models_lists_aliases_and_concrete_models(proxy: RunningProxy) -> None:
    ids = [m.id for m in proxy.client().models.list()]
    assert ids == ["auto", "auto-cheap", "auto-quality", "gemini-1.5-flash", "gemini-1.5-pro"]


def test_health_endpoints(proxy: RunningProxy) -> None:
    http = proxy.http()
    assert http.get("/health/live").json() == {"status": "ok", "version": __version__}
    ready = http.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_route_endpoint_reports_decision_without_upstream(proxy: RunningProxy, standin: StandInServer) -> None:
    d = proxy.http().post("/v1/route", json={"model": "router-bert-0.25", "prompt": HARD}).json()
    assert d["threshold"] == 0.25 and 0 <= d["score"] <= 1
    assert d["tier"] == ("strong" if d["score"] >= 0.25 else "weak")
    assert d["model"] == {"strong": "gemini-1.5-pro", "weak": "gemini-1.5-flash"}[d["tier"]]
    assert standin.state.requests == []


def test_client_disconnect_mid_stream_cancels_the_upstream_call(proxy: RunningProxy, standin: StandInServer) -> None:
    import time

    from tests.standin import Fault

    standin.state.reply_words = 40
    standin.state.stream_chunks = 20
    standin.state.faults.append(Fault("slow_stream", seconds=0.2))
    try:
        with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
                "model": "gemini-1.5-flash", "stream": True, "messages": [{"role": "user", "content": EASY}]}) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
        deadline = time.monotonic() + 5
        while standin.state.streams_closed_early == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert standin.state.streams_closed_early == 1
    finally:
        standin.state.reply_words, standin.state.stream_chunks = 8, 3


def test_stream_without_include_usage_has_no_usage_chunk_but_counts_tokens(proxy: RunningProxy,
                                                                           standin: StandInServer) -> None:
    from prometheus_client import REGISTRY

    def tokens_out() -> float:
        return REGISTRY.get_sample_value("route_llm_tokens_total",
                                         {"routed_model": "gemini-1.5-flash", "direction": "out"}) or 0.0

    before = tokens_out()
    chunks = list(proxy.client().chat.completions.create(
        model="gemini-1.5-flash", messages=[{"role": "user", "content": EASY}], stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert tokens_out() - before > 0


def test_shipped_operating_point_sends_simple_to_flash_and_hard_to_pro(make_proxy: Any,
                                                                       standin: StandInServer) -> None:
    """The default `auto` (strong_share 0.3 through the model's quantile table), as a new user gets it."""
    proxy = make_proxy(router={"threshold": None, "strong_share": 0.3})
    client = proxy.client()
    simple = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": EASY}])
    hard_prompt = ("Implement a lock-free concurrent hash map in C++ with resizing, and argue why every "
                   "operation is linearizable.")
    hard = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": hard_prompt}],
                                          stream=True)
    assert simple.model == "gemini-1.5-flash"
    assert {c.model for c in hard} == {"gemini-1.5-pro"}
    assert standin.state.models_called() == ["gemini-1.5-flash", "gemini-1.5-pro"]
