"""Property-based fuzzing of the inputs added for drop-in fidelity: Responses bodies, model ids and file-content
ids. Same property as ``test_fuzz``: with a healthy upstream, never a 5xx, every error in OpenAI's shape,
and the server keeps serving (the ``http`` fixture checks that afterwards)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.edge.responses import KNOWN
from tests.helpers import FUZZ, http, junk, model, number, text
from tests.helpers import fuzz_check as _check
from tests.helpers import fuzz_dumps as _dumps
from tests.helpers import post_json as _post_json

__all__ = ["http"]  # the fixture, imported for the tests below

part = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": st.one_of(text, junk)}),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["input_image", "input_file", "input_audio",
                                                              "refusal", "input_video"]), junk)},
                          optional={"image_url": junk, "file_id": st.one_of(text, junk), "file_data": junk,
                                    "filename": junk, "detail": junk, "input_audio": junk, "refusal": junk}),
    junk,
)
item = st.one_of(
    st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "assistant", "system", "developer"]), junk)},
                          optional={"type": st.just("message"),
                                    "content": st.one_of(text, st.lists(part, max_size=3), junk)}),
    st.fixed_dictionaries({"type": st.just("function_call")},
                          optional={"call_id": st.one_of(text, junk), "name": st.one_of(text, junk),
                                    "arguments": st.one_of(text, junk)}),
    st.fixed_dictionaries({"type": st.just("function_call_output")},
                          optional={"call_id": st.one_of(text, junk), "output": st.one_of(text, junk)}),
    junk,
)
tool = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search", "file_search"])},
                                       optional={"name": st.one_of(text, junk), "parameters": junk}), junk)
responses_body = st.one_of(
    st.fixed_dictionaries(
        {"model": model, "input": st.one_of(text, st.lists(item, min_size=1, max_size=4), junk)},
        optional={"stream": st.one_of(st.booleans(), junk), "instructions": st.one_of(text, junk),
                  "tools": st.one_of(st.lists(tool, max_size=2), junk),
                  "text": st.one_of(st.fixed_dictionaries({}, optional={"format": junk, "verbosity": junk}), junk),
                  **{k: st.one_of(junk, number) for k in ("max_output_tokens", "temperature", "tool_choice",
                                                          "reasoning", "truncation", "include", "metadata",
                                                          "previous_response_id", "background")}}),
    st.dictionaries(st.one_of(st.sampled_from(sorted(KNOWN)), text), junk, max_size=6),
    junk,
)


@FUZZ
@given(body=responses_body)
@example(body={"model": "auto", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": ""},
                                           {"type": "function_call_output", "call_id": "c", "output": "ok"}]})
@example(body={"model": "auto", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": 5}],
               "tool_choice": "required"})
@example(body={"model": "auto", "input": "hi", "stream": True, "text": {"format": {"type": "json_schema",
                                                                                  "name": "x", "schema": {}}}})
def test_responses_never_5xx_on_arbitrary_json(http: httpx.Client, body: Any) -> None:
    r = _post_json(http, "/v1/responses", _dumps(body))
    _check(r)
    if r.status_code == 200 and not body.get("stream"):
        assert r.json()["object"] == "response"


@FUZZ
@given(name=st.one_of(text, st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
@example(name="router-bert-1e999")
@example(name="auto/../../metrics")
def test_model_and_file_content_lookups_never_5xx_on_junk_ids(http: httpx.Client, name: str) -> None:
    quoted = quote(name.encode("utf-8", "surrogatepass"), safe="")
    r = http.get(f"/v1/models/{quoted}")
    _check(r)
    assert r.status_code in (200, 307, 404), r.text
    r = http.get(f"/v1/files/{quoted}/content")
    _check(r)
    assert r.status_code in (404,), r.text
