"""Every input a client controls, with bad values: a clear OpenAI-style 4xx, and the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningProxy
from tests.standin import StandInServer

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({"model": "auto"}, "messages", "messages"),
    ({"model": "auto", "messages": []}, "messages", "non-empty"),
    ({"model": "auto", "messages": "hello"}, "messages", "list"),
    ({"model": "auto", "messages": ["hello"]}, "messages[0]", "object"),
    ({"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "wizard"),
    ({"model": "auto", "messages": [{"content": "x"}]}, "messages[0].role", "None"),
    ({"model": "auto", "messages": [{"role": "user"}]}, "messages[0].content", "required"),
    ({"model": "auto", "messages": [{"role": "user", "content": 42}]}, "messages[0].content", "string"),
    ({"model": "auto", "messages": [{"role": "user", "content": []}]}, "messages[0].content", "empty"),
    ({"model": "auto", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0]", "type"),
    ({"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text", "string"),
    ({"model": "auto", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "tool"),
    ({"model": "auto", "messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
     "messages[0].content[0].file", "file_id"),
    ({"messages": OK_MESSAGES}, "model", "model"),
    ({"model": "auto", "messages": OK_MESSAGES, "temperature": "hot"}, "temperature", "number"),
    ({"model": "auto", "messages": OK_MESSAGES, "temperature": 3}, "temperature", "between"),
    ({"model": "auto", "messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens", "integer"),
    ({"model": "auto", "messages": OK_MESSAGES, "max_tokens": 1.5}, "max_tokens", "integer"),
    ({"model": "auto", "messages": OK_MESSAGES, "n": True}, "n", "integer"),
    ({"model": "auto", "messages": OK_MESSAGES, "stop": [1, 2]}, "stop", "string"),
    ({"model": "auto", "messages": OK_MESSAGES, "stream": "yes"}, "stream", "stream"),
    ({"model": "auto", "messages": OK_MESSAGES, "stream_options": {"include_usage": True}}, "stream_options",
     "stream"),
    ({"model": "auto", "messages": OK_MESSAGES, "tools": [{"type": "function"}]}, "tools", "function"),
    ({"model": "auto", "messages": OK_MESSAGES, "tool_choice": "sometimes"}, "tool_choice", "auto"),
    ({"model": "auto", "messages": OK_MESSAGES, "response_format": {"type": "yaml"}}, "response_format", "json"),
    ({"model": "auto", "messages": OK_MESSAGES, "frobnicate": 1}, "frobnicate", "Unrecognized"),
])
def test_invalid_chat_body_returns_400_naming_the_field(proxy: RunningProxy, standin: StandInServer,
                                                        body: dict[str, Any], param: str, needle: str) -> None:
    err = _error(proxy.http().post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert needle in err["message"]
    assert standin.state.requests == []


@pytest.mark.parametrize("raw", [b"{not json", b"", b"   ", b"\xff\xfe", b"[1, 2]", b"null", b'"text"'])
def test_malformed_json_returns_400(proxy: RunningProxy, raw: bytes) -> None:
    r = proxy.http().post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    err = _error(r, 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("model", ["gpt-4", "", "router-bert-", "router-bert-abc", "router-bert-1.5",
                                   "router-bert-nan", "router-bert--0.1", 5, None])
def test_unknown_model_returns_404_listing_valid_names(proxy: RunningProxy, model: Any) -> None:
    r = proxy.http().post("/v1/chat/completions", json={"model": model, "messages": OK_MESSAGES})
    err = _error(r, 404)
    assert err["code"] == "model_not_found"
    assert "auto" in err["message"] or "router-bert" in err["message"]


def test_sdk_raises_its_own_exception_types(proxy: RunningProxy) -> None:
    client = proxy.client()
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-4o", messages=OK_MESSAGES)  # type: ignore[arg-type]
    assert "gpt-4o" in str(nf.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])


def test_body_over_limit_returns_413_without_reading_it(make_proxy: Any) -> None:
    proxy = make_proxy(server={"limit_body_bytes": 1000})
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]}
    err = _error(proxy.http().post("/v1/chat/completions", json=big), 413)
    assert "1000" in err["message"]

    def chunks() -> Any:  # no content-length: the limit applies while reading
        for _ in range(10):
            yield b"x" * 500

    r = proxy.http().post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413)
    ok = proxy.client().chat.completions.create(model="auto-cheap", messages=OK_MESSAGES)
    assert ok.choices[0].message.content


def test_too_many_messages_and_too_much_text_return_413(make_proxy: Any) -> None:
    proxy = make_proxy(server={"limit_messages": 3, "limit_content_chars": 100})
    http = proxy.http()
    many = [{"role": "user", "content": "hi"}] * 4
    assert "at most 3" in _error(http.post("/v1/chat/completions", json={"model": "auto", "messages": many}),
                                 413)["message"]
    long = [{"role": "user", "content": "y" * 101}]
    assert "100" in _error(http.post("/v1/chat/completions", json={"model": "auto", "messages": long}),
                           413)["message"]


def test_route_endpoint_rejects_bad_bodies(proxy: RunningProxy) -> None:
    http = proxy.http()
    assert _error(http.post("/v1/route", json={"model": "auto"}), 400)["param"] == "prompt"
    assert _error(http.post("/v1/route", json={"model": "auto", "prompt": 7}), 400)["param"] == "prompt"
    assert _error(http.post("/v1/route", json=[1]), 400)
    assert _error(http.post("/v1/route", json={"model": "nope", "prompt": "x"}), 404)["code"] == "model_not_found"
    assert _error(http.post("/v1/route", json={"messages": []}), 400)["param"] == "messages"


def test_unknown_path_and_method_use_openai_error_shape(proxy: RunningProxy) -> None:
    http = proxy.http()
    missing = _error(http.get("/v1/nothing-here"), 404)
    assert missing["message"].startswith("route-llm does not serve GET /v1/nothing-here: unknown path.")
    assert "/v1/chat/completions" in missing["message"] and missing["code"] == "not_found"
    wrong = _error(http.get("/v1/chat/completions"), 405)
    assert wrong["message"] == "route-llm does not serve GET /v1/chat/completions: method not allowed here " \
                               "(allowed: POST)." and wrong["code"] == "method_not_allowed"


def test_embeddings_through_the_sdk_is_a_clear_404(proxy: RunningProxy) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        proxy.client().embeddings.create(model="text-embedding-3-small", input="hello")
    assert caught.value.status_code == 404
    assert "does not serve POST /v1/embeddings: unknown path" in caught.value.message


@pytest.mark.parametrize("path", ["/", "/v1", "/v2/chat/completions", "/v1/audio/speech", "/v1/chat/completions/x",
                                  "/%00", "/v1/" + "x" * 5000, "/v1/\u00e9t\u00e9"])
def test_any_unknown_path_is_404_in_openai_shape_with_the_path_bounded(proxy: RunningProxy, path: str) -> None:
    err = _error(proxy.http().post(path, json={}), 404)
    assert err["type"] == "invalid_request_error" and "unknown path" in err["message"]
    assert len(err["message"]) < 1000  # the path is echoed clipped


def test_server_keeps_serving_after_bad_requests(proxy: RunningProxy, standin: StandInServer) -> None:
    http = proxy.http()
    for raw in (b"{", b"[]", b'{"model": 1}', b"\x00" * 10):
        http.post("/v1/chat/completions", content=raw)
    assert proxy.client().chat.completions.create(model="auto-cheap", messages=OK_MESSAGES).model == "gemini-1.5-flash"


@pytest.mark.parametrize("sent", ["x" * 129, "has space", "semi;colon", "quote\"d", ""])
def test_unusable_request_id_is_replaced_not_echoed(proxy: RunningProxy, sent: str) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="auto-cheap", messages=OK_MESSAGES, extra_headers={"x-request-id": sent})
    assert raw.headers["x-request-id"].startswith("req-") and raw.headers["x-request-id"] != sent
    kept = proxy.client().chat.completions.with_raw_response.create(
        model="auto-cheap", messages=OK_MESSAGES, extra_headers={"x-request-id": "trace-42.a:b_c"})
    assert kept.headers["x-request-id"] == "trace-42.a:b_c"
