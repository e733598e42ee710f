"""The Gemini stand-in's answers follow the request's schemas (proxy/demo/: standin.py, schema_instance.py),
through the proxy and LiteLLM with the official SDK: which tool is called under each ``tool_choice``, arguments
valid under the tool's schema, and JSON-mode answers valid under the response schema or the one in the prompt."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.conftest import RunningProxy
from tests.standin import StandInServer

FLASH = "gemini-1.5-flash"
ORDER = {"type": "object", "required": ["order_id", "lines"], "properties": {
    "order_id": {"type": "integer", "minimum": 1000},
    "priority": {"type": "string", "enum": ["low", "high"]},
    "lines": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["sku", "qty"], "properties": {
        "sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
              "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "place_order", "parameters": ORDER}}]


def ask(proxy: RunningProxy, text: str, **kw: Any) -> Any:
    return proxy.client().chat.completions.create(model=FLASH, messages=[{"role": "user", "content": text}], **kw)


@pytest.mark.parametrize(("text", "tool_choice", "called"), [
    ("Weather in Paris?", {"type": "function", "function": {"name": "place_order"}}, "place_order"),  # forced
    ("Please place_order two apples", "required", "place_order"),  # required: the one the prompt names
    ("Anything you like", "required", "get_weather"),  # required, none named: the first
    ("Use get_weather for Paris", "auto", "get_weather"),  # auto: named
    ("Weather in Paris?", "auto", None),  # auto, not named: text
    ("Use get_weather for Paris", "none", None),
])
def test_tool_choice_picks_the_tool(proxy: RunningProxy, standin: StandInServer, text: str, tool_choice: Any,
                                    called: str | None) -> None:
    message = ask(proxy, text, tools=TOOLS, tool_choice=tool_choice).choices[0].message
    if called is None:
        assert message.tool_calls is None and message.content.startswith(f"answer from {FLASH}")
        return
    [call] = message.tool_calls
    assert call.function.name == called
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == called)
    jsonschema.validate(json.loads(call.function.arguments), schema)


def test_streamed_tool_call_arguments_validate(proxy: RunningProxy, standin: StandInServer) -> None:
    stream = ask(proxy, "order please", tools=TOOLS, tool_choice="required", stream=True)
    calls = [c for chunk in stream if chunk.choices for c in chunk.choices[0].delta.tool_calls or []]
    arguments = "".join(c.function.arguments or "" for c in calls)
    assert calls[0].function.name == "get_weather" and json.loads(arguments) == {"city": f"answer from {FLASH}"}


def test_a_tool_result_turn_under_auto_gets_a_text_answer(proxy: RunningProxy, standin: StandInServer) -> None:
    messages = [{"role": "user", "content": "Use get_weather for Paris"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    answer = proxy.client().chat.completions.create(model=FLASH, messages=messages, tools=TOOLS)
    assert answer.choices[0].message.tool_calls is None  # an agent loop ends instead of calling again


def test_json_schema_answer_validates(proxy: RunningProxy, standin: StandInServer) -> None:
    answer = ask(proxy, "An order", response_format={"type": "json_schema",
                                                      "json_schema": {"name": "order", "schema": ORDER}})
    value = json.loads(answer.choices[0].message.content)
    jsonschema.validate(value, ORDER)
    assert value["order_id"] == 1000


@pytest.mark.parametrize(("system", "expected_keys"), [
    ("Reply in JSON matching: " + json.dumps(ORDER), {"order_id", "lines"}),  # a schema in the prompt shapes it
    ("Reply in JSON: {not a schema}", {"answer"}),  # none: still a JSON object
])
def test_json_object_answer_is_an_object(proxy: RunningProxy, standin: StandInServer, system: str,
                                         expected_keys: set[str]) -> None:
    answer = proxy.client().chat.completions.create(model=FLASH, response_format={"type": "json_object"}, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "An order"}])
    value = json.loads(answer.choices[0].message.content)
    assert isinstance(value, dict) and set(value) == expected_keys


@pytest.mark.parametrize("schema", [
    {"type": "object", "required": ["xs"], "properties": {"xs": {"type": "array", "minItems": 3, "maxItems": 1}}},
    {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 4}}},
    {"type": "object", "required": "n", "properties": {"n": {"type": "integer", "minItems": "many"}}},
])
def test_a_tool_schema_without_a_valid_value_still_gets_an_answer(proxy: RunningProxy, standin: StandInServer,
                                                                  schema: dict[str, Any]) -> None:
    """The stand-in never fails on a client's schema: it calls the tool with what it can give (here nothing)."""
    tools = [{"type": "function", "function": {"name": "odd", "parameters": schema}}]
    answer = ask(proxy, "go", tools=tools, tool_choice="required")
    [call] = answer.choices[0].message.tool_calls
    assert call.function.name == "odd" and isinstance(json.loads(call.function.arguments), dict)


def test_the_demo_stand_in_keeps_no_request_bodies(tmp_path: Any, monkeypatch: Any) -> None:
    import httpx

    from proxy.cli import start_demo_upstream
    from proxy.settings import settings_from_dict
    from tests.conftest import base_config

    monkeypatch.setenv("GEMINI_API_BASE", "unused")  # start_demo_upstream replaces both
    monkeypatch.setenv("GEMINI_API_KEY", "unused")
    demo = start_demo_upstream(settings_from_dict(base_config(tmp_path)))
    try:
        body = {"contents": [{"role": "user", "parts": [{"text": "x" * 500_000}]}]}
        for _ in range(5):
            r = httpx.post(f"{demo.base_url}/v1beta/models/gemini-1.5-flash:generateContent", json=body, timeout=30)
            assert r.status_code == 200 and r.json()["candidates"]
        assert demo.state.requests == []  # a demo is not a test: nothing is kept for inspection
    finally:
        demo.stop()
