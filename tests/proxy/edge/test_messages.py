"""POST /v1/messages end to end: the official ``anthropic`` SDK (and raw HTTP, as Claude Code sends it) ->
route-llm on a real socket -> LiteLLM -> the Gemini stand-in."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from typing import Any

import anthropic
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.conftest import LOOPBACK_TLS, ROOT, RunningProxy
from tests.proxy.pdfs import pdf_with_pages
from tests.helpers import FUZZ, junk, text
from tests.helpers import fuzz_dumps as _dumps
from tests.standin import Fault, StandInServer

EASY = "What is the capital of France?"
FLASH, PRO = "gemini-1.5-flash", "gemini-1.5-pro"
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
CLAUDE_CODE_HEADERS = {"anthropic-version": "2023-06-01",
                       "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-"
                                         "streaming-2025-05-14", "user-agent": "claude-cli/2.1.0 (external, cli)",
                       "x-app": "cli"}


def client(proxy: RunningProxy, api_key: str = "unused", **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.base_url, api_key=api_key, max_retries=0, timeout=30.0,
                               http_client=anthropic.DefaultHttpxClient(verify=LOOPBACK_TLS), **kw)


def requests_total(**labels: str) -> float:
    return REGISTRY.get_sample_value("route_llm_requests_total", labels) or 0.0


# --- the SDK: create, stream, tools, system ----------------------------------------------------------------

def test_create_is_routed_and_answers_as_an_anthropic_message(proxy: RunningProxy, standin: StandInServer) -> None:
    raw = client(proxy).messages.with_raw_response.create(
        model="auto-cheap", max_tokens=64, system="Answer in one word.",
        messages=[{"role": "user", "content": EASY}])
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == FLASH and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert len(message.content) == 1 and message.content[0].type == "text"
    assert message.content[0].text.startswith(f"answer from {FLASH}")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-route-llm-tier"] == "weak" and raw.headers["x-route-llm-model"] == FLASH
    assert raw.headers["x-route-llm-threshold"] == "0.9900" and 0 <= float(raw.headers["x-route-llm-score"]) < 1
    sent = standin.state.requests[-1]
    assert sent.system_instruction == "Answer in one word."
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": EASY}]}]
    assert sent.body["generationConfig"]["max_output_tokens"] == 64


@pytest.mark.parametrize(("model", "served"), [("auto-quality", PRO), ("router-bert-0.99", FLASH), (PRO, PRO)])
def test_model_may_be_an_alias_a_threshold_or_a_configured_model(proxy: RunningProxy, standin: StandInServer,
                                                             model: str, served: str) -> None:
    message = client(proxy).messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": EASY}])
    assert message.model == served and standin.state.models_called() == [served]


def test_routing_reads_the_last_user_turn_like_chat(proxy: RunningProxy, standin: StandInServer) -> None:
    hard = "Prove Fermat's little theorem rigorously."
    as_message = client(proxy).messages.with_raw_response.create(model="auto", max_tokens=32, messages=[
        {"role": "user", "content": [{"type": "text", "text": hard}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Here it is..."}]},
        {"role": "user", "content": EASY}])
    as_chat = proxy.client().chat.completions.with_raw_response.create(model="auto", messages=[
        {"role": "user", "content": hard}, {"role": "assistant", "content": "Here it is..."},
        {"role": "user", "content": EASY}])
    assert as_message.headers["x-route-llm-score"] == as_chat.headers["x-route-llm-score"]
    assert [c["role"] for c in standin.state.requests[0].body["contents"]] == ["user", "model", "user"]


def test_system_as_text_blocks_with_cache_control(proxy: RunningProxy, standin: StandInServer) -> None:
    client(proxy).messages.create(model=FLASH, max_tokens=16, messages=[{"role": "user", "content": EASY}], system=[
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}])
    assert standin.state.requests[-1].system_instruction == "You are terse.\nAnswer in French."


def test_stream_helper_gives_text_and_the_final_message(proxy: RunningProxy, standin: StandInServer) -> None:
    with client(proxy).messages.stream(model=FLASH, max_tokens=64, system="Be brief.",
                                       messages=[{"role": "user", "content": EASY}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 3  # the stand-in streams three chunks
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.content[0].text.startswith(f"answer from {FLASH}")
    assert final.stop_reason == "end_turn" and final.model == FLASH
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    assert standin.state.requests[-1].stream and standin.state.requests[-1].system_instruction == "Be brief."


def test_stream_sends_anthropics_event_sequence_and_routing_headers(proxy: RunningProxy,
                                                                    standin: StandInServer) -> None:
    with proxy.http() as http, http.stream("POST", "/v1/messages", headers=CLAUDE_CODE_HEADERS, json={
            "model": "auto-cheap", "max_tokens": 32, "stream": True,
            "messages": [{"role": "user", "content": EASY}]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-route-llm-tier"] == "weak"
        lines = [line for line in r.iter_lines() if line]
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert events == [d["type"] for d in data]
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    assert events[3:-3] == ["content_block_delta"] * 3
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[-2]["usage"]["output_tokens"] > 0


def test_tools_round_trip_tool_use_then_tool_result(proxy: RunningProxy, standin: StandInServer) -> None:
    sdk = client(proxy)
    ask = {"role": "user", "content": "Use get_weather for Paris."}
    first = sdk.messages.create(model=FLASH, max_tokens=64, tools=[WEATHER], messages=[ask],  # type: ignore[list-item]
                                tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    sent = standin.state.requests[-1].body
    assert sent["tools"][0]["function_declarations"][0]["name"] == "get_weather"
    assert sent["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"
    second = sdk.messages.create(model=FLASH, max_tokens=64, tools=[WEATHER], messages=[  # type: ignore[list-item]
        ask, {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"},
                                     {"type": "text", "text": "Thanks."}]}])
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    contents = standin.state.requests[-1].body["contents"]
    response = next(p.get("function_response", p.get("functionResponse")) for c in contents for p in c["parts"]
                    if "function_response" in p or "functionResponse" in p)
    assert response["name"] == "get_weather" and "18 C, sunny" in json.dumps(response)
    assert contents[-1]["parts"][-1] == {"text": "Thanks."}


def test_streamed_tool_use_is_assembled_by_the_sdk(proxy: RunningProxy, standin: StandInServer) -> None:
    with client(proxy).messages.stream(model=FLASH, max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                       tool_choice={"type": "tool", "name": "get_weather"},
                                       messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in events
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and "city" in call.input  # type: ignore[operator]


def test_tool_choice_none_and_auto_reach_gemini(proxy: RunningProxy, standin: StandInServer) -> None:
    sdk = client(proxy)
    for choice, mode in (({"type": "none"}, "NONE"), ({"type": "auto"}, "AUTO")):
        sdk.messages.create(model=FLASH, max_tokens=16, tools=[WEATHER], tool_choice=choice,  # type: ignore[arg-type,list-item]
                            messages=[{"role": "user", "content": EASY}])
        assert standin.state.requests[-1].body["toolConfig"]["functionCallingConfig"]["mode"] == mode


def test_images_and_a_base64_pdf_reach_the_model(proxy: RunningProxy, standin: StandInServer) -> None:
    pdf = base64.b64encode(pdf_with_pages(["The secret word is pelican."])).decode()
    client(proxy).messages.create(model=FLASH, max_tokens=16, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
         "title": "notes.pdf", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "What is the secret word?"}]}])
    parts = standin.state.requests[-1].body["contents"][-1]["parts"]
    assert {"inline_data": {"data": PNG, "mime_type": "image/png"}} in parts
    assert parts[-1] == {"text": "What is the secret word?"}
    assert parts[0]["text"].startswith('<document name="notes.pdf"')  # the documents path read its pages
    assert "pelican" in json.dumps(parts)


def test_stop_sequences_temperature_and_top_p_are_forwarded(proxy: RunningProxy, standin: StandInServer) -> None:
    with proxy.http() as http:
        r = http.post("/v1/messages", json={"model": FLASH, "max_tokens": 20, "stop_sequences": ["END"],
                                            "temperature": 0.3, "top_p": 0.9, "top_k": 5,
                                            "messages": [{"role": "user", "content": EASY}]})
    assert r.status_code == 200, r.text
    config = standin.state.requests[-1].body["generationConfig"]
    assert config["stop_sequences"] == ["END"] and config["temperature"] == 0.3 and config["top_p"] == 0.9
    assert "top_k" in r.headers["x-route-llm-dropped-params"].split(",")


# --- Claude Code's headers and fields --------------------------------------------------------------------

def test_claude_codes_headers_and_ignored_fields_are_accepted(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["sk-proxy-1"]})
    body = {"model": "auto", "max_tokens": 128, "stream": False,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": EASY,
                                                       "cache_control": {"type": "ephemeral"}}]},
                         {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                                           {"type": "text", "text": "Paris."}]},
                         {"role": "user", "content": "And of Italy?"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024}, "metadata": {"user_id": "user_abc"},
            "service_tier": "auto", "cache_control": {"type": "ephemeral"}, "top_k": 10,
            "context_management": {"edits": []}}
    with proxy.http() as http:
        r = http.post("/v1/messages?beta=true", json=body, headers={**CLAUDE_CODE_HEADERS, "x-api-key": "sk-proxy-1"})
        assert r.status_code == 200, r.text
        assert r.json()["content"][0]["type"] == "text"
        dropped = set(r.headers["x-route-llm-dropped-params"].split(","))
        assert {"thinking", "metadata", "service_tier", "cache_control", "top_k"} <= dropped
        bearer = http.post("/v1/messages", json=body, headers={"authorization": "Bearer sk-proxy-1"})
        assert bearer.status_code == 200
    sent = standin.state.requests[-1]
    assert "sk-proxy-1" not in json.dumps(sent.headers) and sent.body["contents"][1]["parts"] == [{"text": "Paris."}]


# --- errors --------------------------------------------------------------------------------------------

def test_bad_key_is_an_authentication_error(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["sk-proxy-1"]})
    for key in ("wrong", "sk-proxy-2"):
        with pytest.raises(anthropic.AuthenticationError) as err:
            client(proxy, api_key=key).messages.create(model=FLASH, max_tokens=8,
                                                       messages=[{"role": "user", "content": EASY}])
        assert err.value.body["type"] == "error"  # type: ignore[index]
        assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with proxy.http() as http:  # no key at all, and count_tokens too
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            r = http.post(path, json={"model": FLASH, "messages": [{"role": "user", "content": EASY}]})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        both = http.post("/v1/messages", json={"model": FLASH, "max_tokens": 8, "messages": [
            {"role": "user", "content": EASY}]}, headers={"x-api-key": "sk-proxy-1", "authorization": "Bearer wrong"})
        assert both.status_code == 401  # Authorization, when sent, is the header checked
        assert "x-api-key" in r.json()["error"]["message"]
    assert client(proxy, api_key="sk-proxy-1").messages.create(
        model=FLASH, max_tokens=8, messages=[{"role": "user", "content": EASY}]).type == "message"
    assert standin.state.requests and all("sk-proxy-1" not in json.dumps(r.headers) for r in standin.state.requests)


BAD_BODIES = [
    ({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": FLASH, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": FLASH, "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": FLASH, "max_tokens": "8", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": FLASH, "max_tokens": 8}, "messages"),
    ({"model": FLASH, "max_tokens": 8, "messages": []}, "messages"),
    ({"model": FLASH, "max_tokens": 8, "messages": ["hi"]}, "messages.0"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "system", "content": "hi"}]}, "messages.0.role"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages.0.content.0.text"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages.0.content.0.type"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "AA"}}]}]},
     "messages.0.content.0.source.media_type"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "http://169.254.169.254/x.pdf"}}]}]},
     "messages.0.content.0.source.type"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "content": "x"}]}]}, "messages.0.content.0.tool_use_id"),
    ({"model": FLASH, "max_tokens": 8, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "f", "input": "[]"}]}]}, "messages.0.content.0.input"),
    ({"model": FLASH, "max_tokens": 8, "system": 3, "messages": [{"role": "user", "content": "hi"}]}, "system"),
    ({"model": FLASH, "max_tokens": 8, "temperature": 1.5, "messages": [{"role": "user", "content": "hi"}]},
     "temperature"),
    ({"model": FLASH, "max_tokens": 8, "top_p": "high", "messages": [{"role": "user", "content": "hi"}]}, "top_p"),
    ({"model": FLASH, "max_tokens": 8, "stop_sequences": "END", "messages": [{"role": "user", "content": "hi"}]},
     "stop_sequences"),
    ({"model": FLASH, "max_tokens": 8, "stop_sequences": list("abcde"),
      "messages": [{"role": "user", "content": "hi"}]}, "stop_sequences"),
    ({"model": FLASH, "max_tokens": 8, "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}, "stream"),
    ({"model": FLASH, "max_tokens": 8, "tools": [{"name": "f"}], "messages": [{"role": "user", "content": "hi"}]},
     "tools.0.input_schema"),
    ({"model": FLASH, "max_tokens": 8, "tools": [{"type": "web_search_20250305", "name": "web_search"}],
      "messages": [{"role": "user", "content": "hi"}]}, "tools.0.type"),
    ({"model": FLASH, "max_tokens": 8, "tool_choice": {"type": "required"},
      "messages": [{"role": "user", "content": "hi"}]}, "tool_choice"),
    ({"model": FLASH, "max_tokens": 8, "thinking": "on", "messages": [{"role": "user", "content": "hi"}]},
     "thinking"),
    ({"model": FLASH, "max_tokens": 8, "top_k": -1, "messages": [{"role": "user", "content": "hi"}]}, "top_k"),
    ({"model": FLASH, "max_tokens": 8, "output_config": {"format": {"type": "xml"}},
      "messages": [{"role": "user", "content": "hi"}]}, "output_config.format"),
    ({"model": FLASH, "max_tokens": 8, "frequency_penalty": 1, "messages": [{"role": "user", "content": "hi"}]},
     "frequency_penalty"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[f for _, f in BAD_BODIES])
def test_malformed_body_is_a_bad_request_error_naming_the_field(proxy: RunningProxy, standin: StandInServer,
                                                                body: dict[str, Any], field: str) -> None:
    with proxy.http() as http:
        r = http.post("/v1/messages", json=body, headers=CLAUDE_CODE_HEADERS)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(f"{field}:"), error
    assert standin.state.requests == []


def test_sdk_raises_bad_request_error_and_the_server_keeps_serving(proxy: RunningProxy,
                                                                   standin: StandInServer) -> None:
    sdk = client(proxy)
    with pytest.raises(anthropic.BadRequestError) as err:
        sdk.messages.create(model=FLASH, max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA"}}]}])
    assert "messages.0.content.0.source.media_type" in err.value.message
    for raw in (b"[1, 2]", b"{", b""):
        with proxy.http() as http:
            r = http.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert sdk.messages.create(model=FLASH, max_tokens=8, messages=[{"role": "user", "content": EASY}]).content



def test_document_errors_name_the_clients_block_not_the_translated_one(proxy: RunningProxy,
                                                                       standin: StandInServer) -> None:
    sdk = client(proxy)
    ask = {"role": "user", "content": "Hello."}
    reply = {"role": "assistant", "content": "Hi."}
    bad_pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "%%%"}}
    with pytest.raises(anthropic.BadRequestError) as err:
        sdk.messages.create(model=FLASH, max_tokens=8, system="Be brief.", messages=[  # type: ignore[list-item]
            ask, reply, {"role": "user", "content": [{"type": "text", "text": "Read:"}, bad_pdf]}])
    assert err.value.body["error"]["message"].startswith("messages.2.content.1.source.data: ")  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.count_tokens(model=FLASH, messages=[{"role": "user", "content": [  # type: ignore[list-item]
            {"type": "document", "source": {"type": "file", "file_id": "file-nope"}}]}])
    assert missing.value.body["error"]["message"].startswith("messages.0.content.0.source: ")  # type: ignore[index]
    assert standin.state.requests == []

def test_unknown_model_is_a_not_found_error(proxy: RunningProxy, standin: StandInServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client(proxy).messages.create(model="claude-unknown-9", max_tokens=8,
                                      messages=[{"role": "user", "content": EASY}])
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert "claude-unknown-9" in err.value.message and standin.state.requests == []


def test_unknown_path_and_method_under_messages_are_anthropic_errors(proxy: RunningProxy) -> None:
    with proxy.http() as http:
        missing = http.post("/v1/messages/batches", json={})
        wrong = http.get("/v1/messages")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert wrong.status_code == 405 and wrong.json()["type"] == "error"


def test_upstream_fault_is_the_sdks_status_error_without_internals(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "fallback": "none"})
    standin.state.faults.append(Fault("status", status=503))
    with pytest.raises(anthropic.ServiceUnavailableError) as err:
        client(proxy).messages.create(model=FLASH, max_tokens=8, messages=[{"role": "user", "content": EASY}])
    assert err.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    message = err.value.body["error"]["message"]  # type: ignore[index]
    assert "stand-in injected 503" in message and "litellm" not in message and "Exception" not in message
    standin.state.faults.append(Fault("status", status=500))
    with pytest.raises(anthropic.InternalServerError) as err5:
        client(proxy).messages.create(model=FLASH, max_tokens=8, messages=[{"role": "user", "content": EASY}])
    assert err5.value.status_code == 502 and err5.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    standin.state.faults.append(Fault("status", status=503))  # a stream that fails before its first byte
    with pytest.raises(anthropic.ServiceUnavailableError):
        with client(proxy).messages.stream(model=FLASH, max_tokens=8,
                                           messages=[{"role": "user", "content": EASY}]) as stream:
            list(stream)


def test_midstream_failure_is_an_anthropic_error_event(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("midstream"))
    with pytest.raises(anthropic.APIStatusError) as err:
        with client(proxy).messages.stream(model=FLASH, max_tokens=16,
                                           messages=[{"role": "user", "content": EASY}]) as stream:
            list(stream)
    body = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"  # type: ignore[index]
    assert body["error"]["message"].startswith(f"upstream {FLASH} failed mid-stream")  # type: ignore[index]


def test_limits_and_body_size_are_anthropic_errors(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"limit_body_bytes": 2000, "limit_requests_per_minute": 2})
    with proxy.http() as http:
        big = http.post("/v1/messages", json={"model": FLASH, "max_tokens": 8,
                                              "messages": [{"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413
        assert big.json() == {"type": "error", "error": {"type": "request_too_large",
                                                         "message": big.json()["error"]["message"]}}
        http.post("/v1/messages", json={"model": FLASH, "max_tokens": 8,
                                        "messages": [{"role": "user", "content": EASY}]})
        limited = http.post("/v1/messages", json={"model": FLASH, "max_tokens": 8,
                                                  "messages": [{"role": "user", "content": EASY}]})
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in limited.headers


# --- a stream cut by the client ---------------------------------------------------------------------------

def test_client_leaving_mid_stream_cancels_the_upstream_call(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.reply_words, standin.state.stream_chunks = 40, 20
    standin.state.faults.append(Fault("slow_stream", seconds=0.2))
    try:
        with client(proxy).messages.stream(model=FLASH, max_tokens=64,
                                           messages=[{"role": "user", "content": EASY}]) as stream:
            first = next(iter(stream.text_stream))
            assert first
        deadline = time.monotonic() + 5
        while standin.state.streams_closed_early == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert standin.state.streams_closed_early == 1
    finally:
        standin.state.reply_words, standin.state.stream_chunks = 8, 3


# --- count_tokens, accounting --------------------------------------------------------------------------

def test_count_tokens_counts_offline_for_the_routed_tier(proxy: RunningProxy, standin: StandInServer) -> None:
    sdk = client(proxy)
    short = sdk.messages.count_tokens(model="auto-cheap", messages=[{"role": "user", "content": EASY}])
    longer = sdk.messages.with_raw_response.count_tokens(
        model="auto-quality", system="You are a careful assistant.", tools=[WEATHER],  # type: ignore[list-item]
        messages=[{"role": "user", "content": EASY * 5}])
    assert 0 < short.input_tokens < longer.parse().input_tokens
    assert longer.headers["x-route-llm-tier"] == "strong" and longer.headers["x-route-llm-model"] == PRO
    pdf = base64.b64encode(pdf_with_pages(["A page about pelicans and their long beaks. " * 20])).decode()
    with_pdf = sdk.messages.count_tokens(model=FLASH, messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
        {"type": "text", "text": EASY}]}])
    # the page text is counted (about 220 tokens), not the base64 (about 1,000)
    assert short.input_tokens + 150 < with_pdf.input_tokens < short.input_tokens + 600
    assert standin.state.requests == []
    with pytest.raises(anthropic.BadRequestError) as err:
        sdk.messages.count_tokens(model=FLASH, messages=[])
    assert "messages" in err.value.message
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="claude-3-haiku", messages=[{"role": "user", "content": EASY}])


def test_counted_in_metrics_and_access_log_like_chat(proxy: RunningProxy, standin: StandInServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    labels = {"requested_model": FLASH, "routed_model": FLASH, "tier": "weak", "status": "ok"}
    before = requests_total(**labels)
    with caplog.at_level(logging.INFO, logger="route_llm.access"):
        client(proxy).messages.create(model=FLASH, max_tokens=8, messages=[{"role": "user", "content": EASY}],
                                      extra_headers={"x-request-id": "msg-log-1"})
        with client(proxy).messages.stream(model=FLASH, max_tokens=8, messages=[{"role": "user", "content": EASY}],
                                           extra_headers={"x-request-id": "msg-log-2"}) as stream:
            stream.get_final_message()
    assert requests_total(**labels) - before == 2
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "route_llm.access"]
    mine = {line["request_id"]: line for line in lines if line["request_id"].startswith("msg-log")}
    assert set(mine) == {"msg-log-1", "msg-log-2"} and {line["endpoint"] for line in mine.values()} == {"messages"}
    assert all(line["completion_tokens"] > 0 and line["status"] == "ok" for line in mine.values())



def test_a_message_is_recorded_and_can_be_rated_by_its_request_id(proxy: RunningProxy,
                                                                  standin: StandInServer) -> None:
    raw = client(proxy).messages.with_raw_response.create(model="auto", max_tokens=8,
                                                          messages=[{"role": "user", "content": EASY}])
    with proxy.http() as http:
        rated = http.post("/v1/feedback", json={"request_id": raw.headers["x-request-id"], "rating": "good"})
        unknown = http.post("/v1/feedback", json={"request_id": "req-never-sent", "rating": "good"})
    assert rated.status_code == 200, rated.text
    assert rated.json()["tier"] == raw.headers["x-route-llm-tier"] and unknown.status_code == 404

# --- the documentation's snippets ------------------------------------------------------------------------

DOC = ROOT / "docs" / "clients-anthropic.md"


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_the_docs_python_snippet_runs_against_the_proxy(make_proxy: Any, standin: StandInServer,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    proxy = make_proxy(server={"api_keys": ["sk-your-proxy-key"]})
    (snippet,) = fenced("python")
    assert "http://localhost:8000" in snippet
    exec(compile(snippet.replace("http://localhost:8000", proxy.base_url), str(DOC), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"(gemini-1\.5-\w+) end_turn answer from \1: ", out[0]), out
    assert out[1].startswith("answer from ") and int(out[2].removeprefix("input tokens: ")) > 0
    assert [r.stream for r in standin.state.requests] == [False, True]


def test_claude_codes_environment_from_the_docs_reaches_the_router(make_proxy: Any, standin: StandInServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK (as Claude Code) reads ANTHROPIC_BASE_URL and ANTHROPIC_AUTH_TOKEN itself; the models are names."""
    proxy = make_proxy(server={"api_keys": ["sk-your-proxy-key"]})
    (block,) = fenced("bash")
    exported = dict(re.findall(r"^export (\w+)=(\S+)", block, re.M))
    assert {"ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_MODEL"} <= set(exported)
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in exported.items():
        monkeypatch.setenv(name, value.replace("http://localhost:8000", proxy.base_url))
    sdk = anthropic.Anthropic(max_retries=0, timeout=30.0)
    for model in (exported["ANTHROPIC_MODEL"], exported["ANTHROPIC_DEFAULT_HAIKU_MODEL"]):
        raw = sdk.messages.with_raw_response.create(model=model, max_tokens=32, extra_headers=CLAUDE_CODE_HEADERS,
                                                    messages=[{"role": "user", "content": EASY}])
        assert raw.headers["x-route-llm-tier"] in ("weak", "strong") and raw.parse().content


# --- fuzzing over the socket ---------------------------------------------------------------------------

block = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}, optional={"cache_control": junk}),
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "document", "tool_use", "tool_result",
                                                    "thinking", "redacted_thinking", "search_result"])},
                          optional={"text": junk, "source": st.one_of(junk, st.fixed_dictionaries(
                              {"type": st.sampled_from(["base64", "url", "text", "content", "file"])},
                              optional={"media_type": st.one_of(text, st.sampled_from(["image/png",
                                                                                       "application/pdf"])),
                                        "data": st.one_of(text, junk), "url": text, "file_id": text})),
                                    "id": text, "name": text, "input": junk, "tool_use_id": text, "content": junk,
                                    "is_error": junk}),
    junk,
)
anthropic_message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "assistant"]), junk)},
                                          optional={"content": st.one_of(text, st.lists(block, max_size=3), junk)})
messages_body = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["auto", FLASH, "router-bert-0.5", "claude-x"]), junk),
     "messages": st.one_of(st.lists(anthropic_message, min_size=1, max_size=3), junk)},
    optional={"max_tokens": st.one_of(st.integers(1, 64), junk), "system": st.one_of(text, st.lists(block, max_size=2),
                                                                                      junk),
              "stream": st.one_of(st.booleans(), junk), "tools": junk, "tool_choice": junk,
              "stop_sequences": junk, "temperature": junk, "top_p": junk, "top_k": junk, "thinking": junk,
              "metadata": junk, "output_config": junk})


@FUZZ
@given(body=messages_body)
@example(body={"model": "auto", "max_tokens": 8, "messages": [{"role": "assistant", "content": []}]})
@example(body={"model": "auto", "max_tokens": 8, "messages": [{"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "never-called", "content": "x"}]}]})
def test_messages_never_5xx_and_always_answer_in_anthropics_shape(proxy: RunningProxy, standin: StandInServer,
                                                                  body: Any) -> None:
    with proxy.http() as http:
        r = http.post("/v1/messages", content=_dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}, error
        assert error["error"]["message"]
