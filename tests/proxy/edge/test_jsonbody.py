"""Deeply nested JSON and lone surrogates are refused up front, the same way streaming or not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from proxy.edge.jsonbody import ValueCount, check_json, too_deep, too_many_values
from proxy.errors import BadRequest
from tests.conftest import RunningProxy
from tests.standin import StandInServer

MSG = [{"role": "user", "content": "hi"}]


def _nested(depth: int) -> dict[str, Any]:
    """A JSON schema whose objects nest ``depth`` levels below the top."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _upstream_errors() -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "route_llm_upstream_errors"
               for s in m.samples if s.name.endswith("_total"))


def _client_errors() -> float:
    """Refused while parsing, so the requested model is not known yet (label ``unknown``)."""
    return sum(s.value for m in REGISTRY.collect() if m.name == "route_llm_requests" for s in m.samples
               if s.name.endswith("_total") and s.labels["status"] == "client_error")


def _post(proxy: RunningProxy, body: dict[str, Any]) -> Any:
    with proxy.http() as http:  # json.dumps keeps "\\ud800" escaped, as a client sends it
        return http.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("where", ["tools", "response_format"])
def test_deep_schema_is_a_400_before_any_upstream_call(proxy: RunningProxy, standin: StandInServer, where: str,
                                                       stream: bool) -> None:
    deep = _nested(300)
    body: dict[str, Any] = {"model": "auto", "messages": MSG, "stream": stream}
    if where == "tools":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    else:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "s", "schema": deep}}
    errors, client = _upstream_errors(), _client_errors()
    r = _post(proxy, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "nesting_too_deep" and "64 levels" in error["message"]
    prefix = "tools[0].function.parameters" if where == "tools" else "response_format.json_schema.schema"
    assert error["param"].startswith(prefix)
    assert standin.state.requests == [] and "x-route-llm-fallback" not in r.headers
    assert _upstream_errors() == errors and _client_errors() == client + 1


def test_depth_limit_is_exact_and_configurable(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"limit_json_depth": 12})
    # Top object (1) > tools list (2) > tool (3) > function (4) > parameters (5) > 7 more levels = 12.
    ok = {"model": "gemini-1.5-flash", "messages": MSG,
          "tools": [{"type": "function", "function": {"name": "f", "parameters": _nested(3)}}]}
    assert _post(proxy, ok).status_code == 200
    too_deep = {**ok, "tools": [{"type": "function", "function": {"name": "f", "parameters": _nested(4)}}]}
    r = _post(proxy, too_deep)
    assert r.status_code == 400 and "12 levels" in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "half a pair: \ud800"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfffx"}]}]},
     "messages[0].content[0].text"),
    ({"messages": MSG, "user": "u\ud800"}, "user"),
    ({"messages": MSG, "metadata": {"\ud800": "v"}}, "metadata.\ud800"),
])
def test_lone_surrogate_is_the_same_400_streaming_or_not_and_no_upstream_error(
        proxy: RunningProxy, standin: StandInServer, body: dict[str, Any], param: str, stream: bool) -> None:
    errors, client = _upstream_errors(), _client_errors()
    r = _post(proxy, {"model": "gemini-1.5-pro", "stream": stream, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_unicode" and error["type"] == "invalid_request_error"
    assert error["param"] == param.encode("utf-8", "backslashreplace").decode()
    assert standin.state.requests == []
    assert _upstream_errors() == errors and _client_errors() == client + 1


def test_big_bodies_are_checked_too(proxy: RunningProxy, standin: StandInServer) -> None:
    padding = "x" * 400_000  # over the size parsed in a thread
    body = {"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": padding + "\ud800"}]}
    r = _post(proxy, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_unicode"
    body = {"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": padding}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": _nested(100)}}]}
    assert _post(proxy, body).json()["error"]["code"] == "nesting_too_deep"


def test_check_is_iterative_so_extreme_depth_cannot_overflow_it() -> None:
    value: Any = []
    for _ in range(100_000):  # far past Python's recursion limit
        value = [value]
    with pytest.raises(BadRequest) as info:
        check_json(value, limit_depth=64)
    assert info.value.code == "nesting_too_deep"
    check_json(value, limit_depth=None)  # unlimited: walks all of it without a RecursionError


def test_a_body_nested_past_the_json_decoders_own_limit_is_too_deep_not_unparseable(
        proxy: RunningProxy, standin: StandInServer) -> None:
    raw = '{"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + \
        '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
    r = proxy.http().post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "nesting_too_deep", r.text
    assert standin.state.requests == []
    assert proxy.client().models.list().data  # and the server serves on


_json_values = st.recursive(
    st.none() | st.integers() | st.text(st.sampled_from('ab{}[]"\\:,')),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(st.sampled_from('k{["\\'), max_size=3),
                                                                inner, max_size=3),
    max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=_json_values, limit=st.integers(1, 8), indent=st.sampled_from([None, 1]))
def test_the_raw_byte_depth_check_agrees_with_the_walk(value: Any, limit: int, indent: int | None) -> None:
    raw = json.dumps(value, indent=indent).encode()  # strings full of brackets, quotes and backslashes
    walked = False
    if isinstance(value, (dict, list)):
        try:
            check_json(value, limit_depth=limit)
        except BadRequest:
            walked = True
    assert too_deep(raw, limit) == walked


@settings(max_examples=300, deadline=None)
@given(value=_json_values, cuts=st.lists(st.integers(0, 400), max_size=6), indent=st.sampled_from([None, 1]))
def test_values_counted_as_they_arrive_agree_with_the_whole_body_count(value: Any, cuts: list[int],
                                                                        indent: int | None) -> None:
    # The guard counts a body chunk by chunk as it arrives; wherever the chunks are cut (inside a string, between
    # a backslash and what it escapes, between two backslashes), the count is the one of the whole body.
    raw = json.dumps(value, indent=indent).encode()
    whole = ValueCount()
    whole.add(raw)
    pieces = ValueCount()
    start = 0
    for cut in sorted(cuts):
        pieces.add(raw[start:cut])
        start = max(start, cut)
    pieces.add(raw[start:])
    assert pieces.count == whole.count
    for limit in range(whole.count - 1, whole.count + 2):
        assert too_many_values(raw, limit) == (whole.count > limit)


def test_the_value_count_skips_strings_and_escaped_quotes() -> None:
    counter = ValueCount()
    # cut between the two backslashes of an escaped backslash, and between a backslash and the quote it escapes
    for chunk in [b'{"a": "x, [y]\\', b'\\", "b": "q\\', b'", {z}", "c": [1, 2]}']:
        counter.add(chunk)
    assert counter.count == 5  # outside the strings: {  ,  ,  [  ,
