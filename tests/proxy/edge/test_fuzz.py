"""Property-based fuzzing of every body a client controls, over a real socket.

The upstream stand-in is healthy throughout, so no answer may be a 5xx: whatever a client sends, the proxy
either serves it or says what is wrong in OpenAI's error shape, and keeps serving afterwards.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.edge.chat import PART_TYPES, PASSTHROUGH, ROLES
from tests.helpers import FUZZ, http, junk, model, number, text
from tests.helpers import fuzz_check as _check
from tests.helpers import fuzz_dumps as _dumps
from tests.helpers import post_json as _post_json

__all__ = ["http"]  # the fixture (tests/helpers.py), imported for the tests below

part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(text, junk)}),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(sorted(PART_TYPES)), junk)},
                          optional={"text": junk, "file": st.one_of(junk, st.fixed_dictionaries(
                              {}, optional={"file_id": st.one_of(text, junk), "file_data": st.one_of(text, junk),
                                            "filename": st.one_of(text, junk)})),
                                    "image_url": junk}),
    junk,
)
message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(sorted(ROLES)), junk)},
        optional={"content": st.one_of(text, st.lists(part, max_size=3), junk), "name": junk,
                  "tool_call_id": st.one_of(text, junk), "tool_calls": junk}),
    junk,
)
chat_body = st.one_of(
    st.fixed_dictionaries(
        {"model": model, "messages": st.one_of(st.lists(message, min_size=1, max_size=4), junk)},
        optional={"stream": st.one_of(st.booleans(), junk),
                  **{k: st.one_of(junk, number) for k in ("temperature", "top_p", "n", "max_tokens", "stop",
                                                          "seed", "logprobs", "tools", "tool_choice",
                                                          "response_format", "stream_options", "user")}}),
    st.dictionaries(st.one_of(st.sampled_from(sorted(PASSTHROUGH | {"model", "messages"})), text), junk,
                    max_size=6),
    junk,
)
# A valid request with some of the forwarded parameters fuzzed: these get past validation to LiteLLM.
VALID_MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
near_valid_body = st.builds(
    lambda m, stream, params: {"model": m, "messages": VALID_MESSAGES, "stream": stream, **params},
    st.sampled_from(["auto", "gemini-1.5-flash", "gemini-1.5-pro", "router-bert-0.3"]), st.booleans(),
    st.dictionaries(st.sampled_from(sorted(PASSTHROUGH)), st.one_of(junk, number, text), min_size=1, max_size=3),
)
route_body = st.one_of(
    st.fixed_dictionaries({}, optional={"model": model, "prompt": st.one_of(text, junk),
                                        "messages": st.one_of(st.lists(message, max_size=3), junk)}),
    junk,
)
# Bodies that are not JSON, or JSON that stresses the parser (depth, digit count, exotic number forms).
raw_body = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"[" * 5000, b'{"a":' * 2000, b"1" * 5000, b'{"model": 1' + b"0" * 5000 + b"}",
                     b"NaN", b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], '
                     b'"temperature": NaN}', b"\xef\xbb\xbf{}", b'"\\ud800"', b"{\"model\": \"\\ud800\"}"]),
    st.builds(lambda a, b: a + b, st.sampled_from([b"{", b"[", b'{"model":"auto","messages":']),
              st.binary(max_size=50)),
)


@FUZZ
@given(body=chat_body)
@example(body={"model": "auto", "messages": [{"role": ["user"], "content": "x"}]})
@example(body={"model": "auto", "messages": [{"role": "user", "content": [{"type": {"t": 1}}]}]})
@example(body={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "\ud800": 1})
@example(body={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**30})
@example(body={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": math.nan})
def test_chat_completions_never_5xx_on_arbitrary_json(http: httpx.Client, body: Any) -> None:
    _check(_post_json(http, "/v1/chat/completions", _dumps(body)))


@FUZZ
@given(body=near_valid_body)
@example(body={"model": "auto", "messages": VALID_MESSAGES, "stream": True, "logit_bias": {"x": "y"}})
@example(body={"model": "auto", "messages": VALID_MESSAGES, "stream": False, "max_tokens": 2**64})
def test_chat_completions_never_5xx_when_forwarded_params_are_fuzzed(http: httpx.Client, body: Any) -> None:
    r = _post_json(http, "/v1/chat/completions", _dumps(body))
    _check(r)
    if r.status_code == 200 and not body["stream"]:
        assert r.json()["choices"][0]["message"]["content"]


@FUZZ
@given(raw=raw_body)
def test_chat_completions_never_5xx_on_raw_bytes(http: httpx.Client, raw: bytes) -> None:
    _check(_post_json(http, "/v1/chat/completions", raw))
    _check(_post_json(http, "/v1/route", raw))


@FUZZ
@given(body=route_body)
@example(body={"model": "auto", "prompt": "\ud800"})
@example(body={"model": "auto", "messages": [{"role": {}, "content": "x"}]})
def test_route_never_5xx_on_arbitrary_json(http: httpx.Client, body: Any) -> None:
    r = _post_json(http, "/v1/route", _dumps(body))
    _check(r)
    if r.status_code == 200:  # no client text may break the classifier (and force the fail-open tier)
        assert r.json()["router_error"] is False, body


field_value = st.one_of(st.binary(max_size=200), st.just(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n<<>>\nendobj\n"),
                        text.map(lambda s: s.encode("utf-8", "surrogatepass")))
multipart_part = st.tuples(st.sampled_from(["file", "purpose", "other", "", "file\"; x=\"y", "\u00e9"]),
                           st.one_of(st.none(), text), field_value)


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    out = b""
    for name, filename, value in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode("utf-8", "surrogatepass")
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@FUZZ
@given(parts=st.lists(multipart_part, max_size=4), boundary=st.sampled_from(["b0undary", "x" * 70, "a b", ""]),
       truncate=st.one_of(st.none(), st.integers(min_value=0, max_value=400)),
       purpose=st.one_of(st.none(), st.sampled_from(["user_data", "assistants"]), text))
@example(parts=[("file", "a.pdf", b"not a pdf")], boundary="b0undary", truncate=None, purpose="user_data")
@example(parts=[("file", "\ud800.pdf", b"%PDF-1.4")], boundary="b0undary", truncate=None, purpose="user_data")
def test_files_upload_never_5xx_on_multipart_junk(http: httpx.Client, parts: list[tuple[str, str | None, bytes]],
                                                  boundary: str, truncate: int | None, purpose: str | None) -> None:
    if purpose is not None:
        parts = [*parts, ("purpose", None, purpose.encode("utf-8", "surrogatepass"))]
    raw = _multipart(parts, boundary)
    if truncate is not None:
        raw = raw[:truncate]
    r = http.post("/v1/files", content=raw, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    _check(r)


@FUZZ
@given(file_id=st.one_of(text, st.binary(max_size=40).map(lambda b: b.decode("latin-1"))), purpose=text)
@example(file_id="file-" + "9" * 5000, purpose="\ud800")
def test_files_lookup_never_5xx_on_junk_ids(http: httpx.Client, file_id: str, purpose: str) -> None:
    quoted = quote(file_id.encode("utf-8", "surrogatepass"), safe="")
    for method in ("GET", "DELETE"):
        r = http.request(method, f"/v1/files/{quoted}")
        _check(r)
        assert r.status_code in (307, 404), r.text  # 307: the empty id is /v1/files/ -> /v1/files
    _check(http.get("/v1/files", params={"purpose": purpose.encode("utf-8", "surrogatepass")}))
