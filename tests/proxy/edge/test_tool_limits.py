"""Tools and schemas are bounded at the edge, and what LiteLLM builds from them is built off the event loop.

A chat with tens of thousands of tools, or one schema of many megabytes, used to freeze every other request
while LiteLLM translated it on the event loop, again on every retry.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import openai
import pytest

from proxy.upstream import lean
from tests.conftest import RunningProxy
from tests.helpers import read_raw_response
from tests.standin import StandInServer

MSG = [{"role": "user", "content": "hi"}]


def _tool(i: int, padding: int = 0) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": f"tool_{i}", "description": "does a thing",
        "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "p" * padding}}}}}


def test_more_tools_than_the_limit_is_a_400_naming_it(proxy: RunningProxy) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG,
                                               tools=[_tool(i) for i in range(513)])  # type: ignore[misc]
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "too_many_tools" and error["param"] == "tools"
    assert "513 tools" in error["message"] and "512" in error["message"]


@pytest.mark.parametrize("where", ["tools", "response_format"])
def test_schemas_over_the_byte_limit_are_a_413_naming_it(proxy: RunningProxy, where: str) -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 1000}
                                            for i in range(1100)}}
    extra: dict[str, Any] = ({"tools": [{"type": "function", "function": {"name": "f", "parameters": big}}]}
                             if where == "tools" else
                             {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": big}}})
    http = proxy.http()
    r = http.post("/v1/chat/completions", json={"model": "gemini-1.5-flash", "messages": MSG, **extra})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "schema_too_large" and error["param"] == where
    assert "1000000 bytes" in error["message"]
    # The server keeps serving.
    assert http.post("/v1/route", json={"prompt": "hello"}).status_code == 200


def test_the_responses_api_has_the_same_tool_limit(proxy: RunningProxy) -> None:
    tools = [{"type": "function", "name": f"t{i}", "parameters": {"type": "object", "properties": {}}}
             for i in range(600)]
    r = proxy.http().post("/v1/responses", json={"model": "gemini-1.5-flash", "input": "hi", "tools": tools})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_tools"


@pytest.mark.parametrize("big", ["tools", "text"])
def test_an_agent_sized_tool_list_is_served_and_built_off_the_event_loop(
        proxy: RunningProxy, standin: StandInServer, monkeypatch: pytest.MonkeyPatch, big: str) -> None:
    # About what a coding agent sends: 60 tools, 600 kB of schemas in all.
    built_on: list[str] = []
    real = lean.python_completion

    def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            built_on.append("event loop")
        except RuntimeError:
            built_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(lean, "python_completion", recording)
    if big == "text":  # a long conversation, no tools: 3 turns of 300 kB
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} " + "x" * 300_000} for i in range(3)]
        proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=turns)  # type: ignore[arg-type]
        assert built_on and "event loop" not in built_on
        return
    out = proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG,
                                                 tools=[_tool(i, 10_000) for i in range(60)])  # type: ignore[misc]
    assert out.choices[0].message is not None
    assert built_on and "event loop" not in built_on
    tools = standin.state.requests[-1].body["tools"][0]
    assert len(tools.get("functionDeclarations", tools.get("function_declarations", []))) == 60


@pytest.mark.parametrize("key,value", [("limit_tools", 0), ("limit_schema_bytes", 0), ("limit_tools", "many")])
def test_tool_limits_are_validated(tmp_path: Any, key: str, value: Any) -> None:
    from proxy.settings import ConfigError, settings_from_dict
    from tests.conftest import base_config

    with pytest.raises(ConfigError, match=f"server.{key}"):
        settings_from_dict(base_config(tmp_path, server={key: value}))


def test_a_body_of_too_many_json_values_is_refused_before_it_is_parsed(proxy: RunningProxy) -> None:
    # 150,000 tiny properties: cheap to send, a quarter of a second of GIL to parse into objects.
    schema = '{"type": "object", "properties": {' + ", ".join(f'"p{i}": {{}}' for i in range(150_000)) + "}}"
    body = ('{"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}], '
            '"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": ' + schema + "}}}")
    http = proxy.http()
    r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "too_many_values" and "100000" in error["message"]
    # Brackets and commas inside strings are text, not values: a long code listing is fine.
    code = "function f(a, b) { return [a, b, {c: 1}]; }\n" * 20_000
    r = http.post("/v1/route", json={"prompt": code})
    assert r.status_code == 200, r.text[:300]
    quoted = 'she said "a, b, c, d"\n' * 40_000  # escaped quotes inside the string, commas between them
    r = http.post("/v1/route", json={"prompt": quoted})
    assert r.status_code == 200, r.text[:300]


def test_a_body_of_too_many_values_is_refused_while_it_arrives_not_once_read_whole(proxy: RunningProxy) -> None:
    # The head announces 8 MB; only its first 0.4 MB (150,000 values) is sent and the socket stays open. The 413
    # must come from a count of what has arrived: reading 8 MB (or, here, waiting for it) first held the memory
    # of every such body at once, and counting them whole held the GIL.
    prefix = (b'{"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}], "tools": ['
              + b",".join([b"{}"] * 150_000))
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 8000000\r\n\r\n" + prefix)
        status, headers, body = read_raw_response(sock, timeout=8)
    assert status == 413, (status, body[:300])
    error = json.loads(body)["error"]
    assert error["code"] == "too_many_values" and "100000" in error["message"]
    assert headers.get("connection") == "close"
    # Inside strings they are text, and a body under the limit arrives whole and is served.
    with proxy.http() as http:
        r = http.post("/v1/route", json={"prompt": "{}, [], " * 60_000})
        assert r.status_code == 200, r.text[:300]


def test_builds_with_tools_run_one_at_a_time_and_read_the_schema_fields_once(
        proxy: RunningProxy, standin: StandInServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # A build holds the GIL for its whole length: four at once ran no faster than one after another, and gave the
    # event loop four threads to wait behind for the GIL instead of one. And LiteLLM re-read its Gemini Schema's
    # type hints for every tool schema, more than half of a build's time.
    import sys
    import typing

    running, most, hint_reads = [0], [0], [0]
    lock = threading.Lock()
    real = lean.python_completion

    def counting(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is typing.get_type_hints.__code__:
            hint_reads[0] += 1

    def recording(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            threading.Event().wait(0.05)  # a build that takes a while, without holding the GIL
            sys.setprofile(counting)
            try:
                return real(*args, **kwargs)
            finally:
                sys.setprofile(None)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(lean, "python_completion", recording)
    tools = [_tool(i, 100) for i in range(40)]
    tools[0]["function"]["parameters"]["additionalProperties"] = False  # not a field of Gemini's Schema

    async def four() -> list[Any]:
        client = proxy.async_client()
        return await asyncio.gather(*(client.chat.completions.create(model="gemini-1.5-flash", messages=MSG,
                                                                     tools=tools) for _ in range(4)))

    answers = asyncio.run(four())
    assert all(a.choices[0].message is not None for a in answers)
    assert most[0] == 1
    assert hint_reads[0] == 0  # 40 tools × 4 builds read them 160 times
    declarations = standin.state.requests[-1].body["tools"][0]
    first = declarations.get("functionDeclarations", declarations.get("function_declarations"))[0]
    assert first["parameters"]["properties"]["path"]["description"] == "p" * 100
    assert "additionalProperties" not in first["parameters"]
