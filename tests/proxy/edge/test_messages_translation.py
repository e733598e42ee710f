"""The Anthropic translation as pure functions (``proxy.edge.messages``, ``proxy.edge.messages_reply``): the
block mappings the end-to-end tests cannot reach through the stand-in (URL images, which LiteLLM would fetch),
every stop reason, the stream's block bookkeeping, and any JSON body ending in a typed error, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.edge.messages import KNOWN, parse_messages_request
from proxy.edge.messages_reply import MessagesStream, error_type, from_openai_error, render_message, usage
from proxy.errors import ProxyError, UpstreamError


def parse(**body: Any) -> Any:
    base = {"model": "auto", "max_tokens": 16}
    return parse_messages_request({**base, **body}, limit_messages=None, limit_content_chars=None)


def test_blocks_map_to_chat_parts_and_tool_results_come_first() -> None:
    chat = parse(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"},
             "title": "notes"},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "c1"}]}},
            {"type": "document", "source": {"type": "file", "file_id": "file-abc"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Calling."},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "text", "text": "after"},
                                     {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "boom"}]}]}])
    system, user, assistant, tool, last = chat.messages
    assert system == {"role": "system", "content": "A\nB"}
    assert user["content"] == [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                               {"type": "text", "text": "notes\n\nplain notes"}, {"type": "text", "text": "c1"},
                               {"type": "file", "file": {"file_id": "file-abc"}}]
    assert assistant == {"role": "assistant", "content": "Calling.", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert last == {"role": "user", "content": [{"type": "text", "text": "after"}]}
    assert [f.file_id for f in chat.files] == ["file-abc"]


def test_tools_tool_choice_and_output_format() -> None:
    chat = parse(messages=[{"role": "user", "content": "hi"}],
                 tools=[{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
                 tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
                 output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}, "effort": "low"})
    assert chat.params["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat.params["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat.params["parallel_tool_calls"] is False
    assert chat.params["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert chat.dropped == ["output_config.effort"]


def test_count_tokens_body_needs_no_max_tokens_but_refuses_answer_settings() -> None:
    counted = parse_messages_request({"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                                     limit_messages=None, limit_content_chars=None, counting=True)
    assert "max_tokens" not in counted.params
    with pytest.raises(ProxyError, match="^max_tokens: Extra inputs"):
        parse_messages_request({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
                               limit_messages=None, limit_content_chars=None, counting=True)


def test_limits_of_the_chat_path_apply() -> None:
    with pytest.raises(ProxyError) as err:
        parse_messages_request({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 50}]},
                               limit_messages=None, limit_content_chars=10)
    assert err.value.status_code == 413


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("tool_calls", "tool_use"), ("content_filter", "refusal"),
                                              (None, "end_turn")])
def test_render_maps_finish_reasons_and_usage(finish: str | None, stop: str) -> None:
    req = parse(messages=[{"role": "user", "content": "hi"}])
    message = render_message(req, {"model": "m", "choices": [{"finish_reason": finish, "message": {
        "content": "t", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "not json"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}})
    assert message["stop_reason"] == stop and message["id"] == req.message_id
    assert message["content"] == [{"type": "text", "text": "t"}, {"type": "tool_use", "id": "c", "name": "f",
                                                                   "input": {}}]
    assert message["usage"] == {"input_tokens": 6, "output_tokens": 3, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 4}
    assert usage(None)["input_tokens"] == 0


def events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            kind, data = frame.split("\n")
            parsed = json.loads(data.removeprefix("data: "))
            assert kind == f"event: {parsed['type']}"
            out.append(parsed)
    return out


def test_stream_opens_one_block_at_a_time_text_then_tool_calls() -> None:
    fmt = MessagesStream(parse(messages=[{"role": "user", "content": "hi"}]), "m")
    raw = fmt.start()
    raw += fmt.chunk({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    raw += fmt.chunk({"choices": [{"index": 0, "delta": {"content": "b"}}]})
    raw += fmt.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c0", "function": {"name": "f", "arguments": '{"x"'}}]}}]})
    raw += fmt.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}}]})
    raw += fmt.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "c1", "function": {"name": "g", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]})
    raw += fmt.chunk({"choices": [{"index": 1, "delta": {"content": "ignored: a second choice"}}]})
    raw += fmt.chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
    got = events(raw + fmt.end())
    assert [(e["type"], e.get("index")) for e in got] == [
        ("message_start", None), ("ping", None), ("content_block_start", 0), ("content_block_delta", 0),
        ("content_block_delta", 0), ("content_block_stop", 0), ("content_block_start", 1),
        ("content_block_delta", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2), ("message_delta", None),
        ("message_stop", None)]
    assert "".join(e["delta"]["partial_json"] for e in got if e.get("index") == 1 and "delta" in e) == '{"x": 1}'
    assert got[6]["content_block"] == {"type": "tool_use", "id": "c0", "name": "f", "input": {}}
    assert got[-2]["delta"]["stop_reason"] == "tool_use" and got[-2]["usage"]["output_tokens"] == 2


def test_stream_error_is_the_last_event() -> None:
    fmt = MessagesStream(parse(messages=[{"role": "user", "content": "hi"}]), "m")
    fmt.chunk({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    got = events(fmt.error(UpstreamError("upstream m failed mid-stream", reason="stream_broken")) + fmt.end())
    assert got == [{"type": "error", "error": {"type": "api_error", "message": "upstream m failed mid-stream"}}]


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (403, "permission_error"), (404, "not_found_error"),
                                              (413, "request_too_large"), (422, "invalid_request_error"),
                                              (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
                                              (503, "overloaded_error"), (504, "timeout_error"),
                                              (507, "api_error")])
def test_error_types_by_status(status: int, kind: str) -> None:
    assert error_type(status) == kind
    assert from_openai_error(status, {"error": {"message": "m"}})["error"]["type"] == kind
    assert from_openai_error(status, "not json")["error"]["message"] == f"error {status}"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
BLOCK = st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "document", "tool_use", "tool_result",
                                                        "thinking", "x"])},
                              optional={"text": JSON, "source": JSON, "id": JSON, "name": JSON, "input": JSON,
                                        "tool_use_id": JSON, "content": JSON, "is_error": JSON})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                 "content": st.one_of(st.text(max_size=8), st.lists(BLOCK, max_size=3), JSON)})


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"model": st.sampled_from(["auto", 3])}, optional={
    "max_tokens": JSON, "messages": st.lists(MESSAGE, max_size=3) | JSON, "system": JSON, "tools": JSON,
    "tool_choice": JSON, "stop_sequences": JSON, "temperature": JSON, "stream": JSON, "thinking": JSON,
    "output_config": JSON}))
def test_any_body_is_a_chat_request_or_a_typed_400(body: dict[str, Any]) -> None:
    try:
        parse_messages_request(body, limit_messages=None, limit_content_chars=None)
    except ProxyError as exc:  # a 400 whose message starts with the field's path
        assert exc.status_code == 400 and exc.message.split(":")[0].split(".")[0] in KNOWN, exc.message
