"""Drop-in fidelity of chat completions, models and files: what an OpenAI client reaches for works as on OpenAI.

Real sockets, the official SDK, LiteLLM's Gemini provider and the stand-in; nothing in the proxy is mocked.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import RunningProxy
from tests.proxy.pdfs import pdf_with_pages
from tests.standin import Fault, StandInServer

HI = [{"role": "user", "content": "What is the capital of France?"}]
FLASH = "gemini-1.5-flash"

# Keys LiteLLM or Gemini add that OpenAI never sends; none may reach a client.
FOREIGN = ("vertex_ai", "provider_specific_fields", "thinking_blocks", "images", "cost", "text_tokens")


def _foreign_keys(obj: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if any(k.startswith(f) for f in FOREIGN):
                found.append(f"{path}.{k}")
            found += _foreign_keys(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _foreign_keys(v, f"{path}[{i}]")
    return found


# --- models and files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, owner", [("auto", "route-llm"), ("auto-cheap", "route-llm"),
                                         ("router-bert-0.42", "route-llm"), (FLASH, "gemini"),
                                         ("gemini-1.5-pro", "gemini")])
def test_models_retrieve_knows_every_name_a_request_may_send(proxy: RunningProxy, name: str, owner: str) -> None:
    model = proxy.client().models.retrieve(name)
    assert (model.id, model.object, model.owned_by) == (name, "model", owner)
    assert model.created > 0


@pytest.mark.parametrize("name", ["gpt-4", "router-bert-2", "router-bert-x", "auto/../auto", "%00"])
def test_models_retrieve_unknown_name_is_openai_404(proxy: RunningProxy, name: str) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        proxy.client().models.retrieve(name)
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert err.value.body["param"] == "model"  # type: ignore[index]
    assert proxy.client().models.retrieve("auto").id == "auto"  # still serving


def test_files_content_returns_the_uploaded_bytes(proxy: RunningProxy) -> None:
    client = proxy.client()
    data = pdf_with_pages(["Zephyrine Widgets Ltd."])
    f = client.files.create(file=("report.pdf", data, "application/pdf"), purpose="user_data")
    assert client.files.content(f.id).content == data
    client.files.delete(f.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.files.content(f.id)
    assert err.value.body["code"] == "file_not_found"  # type: ignore[index]


# --- parameters ----------------------------------------------------------------------------------------

def test_every_parameter_of_the_installed_sdk_is_accepted() -> None:
    """A newer openai SDK with a new chat parameter fails here first, not in a user's request."""
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase

    from proxy.edge.chat import KNOWN

    assert set(CompletionCreateParamsBase.__annotations__) - KNOWN == set()


# Parameters of the current SDK that Gemini (as LiteLLM maps it) does not take: accepted, dropped, named.
DROPPED_BY_GEMINI = {
    "verbosity": "low",
    "prompt_cache_key": "tenant-7",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "safety_identifier": "user-hash-1",
    "moderation": {"model": "omni-moderation-latest"},
    "store": True,
    "metadata": {"team": "a"},
    "user": "u-1",
    "logit_bias": {"50256": -100},
    "top_logprobs": 2,
    "prediction": {"type": "content", "content": "Paris"},
    "reasoning_effort": "low",
}


def test_sdk_parameters_gemini_cannot_honour_are_dropped_and_named(proxy: RunningProxy,
                                                                  standin: StandInServer) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model=FLASH, messages=HI, temperature=0.3, **DROPPED_BY_GEMINI)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content.startswith("answer from")
    assert raw.headers["x-route-llm-dropped-params"] == ",".join(sorted(DROPPED_BY_GEMINI))
    sent = standin.state.requests[-1].body
    assert sent["generationConfig"]["temperature"] == 0.3  # a supported one still goes through
    assert "cache" not in json.dumps(sent) and "tenant-7" not in json.dumps(sent)


def test_supported_parameters_are_forwarded_and_no_header_is_sent(proxy: RunningProxy,
                                                                 standin: StandInServer) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model=FLASH, messages=HI, max_completion_tokens=50, seed=3, stop=["zz"],
        web_search_options={"search_context_size": "low"})
    assert "x-route-llm-dropped-params" not in raw.headers
    sent = standin.state.requests[-1].body
    assert sent["generationConfig"] == {"max_output_tokens": 50, "seed": 3, "stop_sequences": ["zz"]}
    assert {"googleSearch": {}} in sent["tools"]


def test_legacy_function_call_is_mapped_to_tool_choice(proxy: RunningProxy, standin: StandInServer) -> None:
    functions = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    raw = proxy.client().chat.completions.with_raw_response.create(
        model=FLASH, messages=HI, functions=functions, function_call={"name": "get_weather"})  # type: ignore[arg-type]
    assert "x-route-llm-dropped-params" not in raw.headers
    sent = standin.state.requests[-1].body
    assert sent["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"


@pytest.mark.parametrize("key, value", [
    ("verbosity", "loud"), ("prompt_cache_key", 7), ("prompt_cache_retention", "1y"), ("safety_identifier", []),
    ("moderation", {"policy": {}}), ("prompt_cache_options", "on"), ("web_search_options", "yes"),
    ("reasoning_effort", "extreme"), ("service_tier", "gold"), ("store", "yes"), ("modalities", ["video"]),
    ("function_call", {"nom": "x"}), ("functions", [{"parameters": {}}]), ("audio", 1), ("prediction", "Paris"),
])
def test_ill_typed_new_parameter_is_a_400_naming_it(proxy: RunningProxy, key: str, value: Any) -> None:
    r = proxy.http().post("/v1/chat/completions", json={"model": "auto", "messages": HI, key: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == key and error["type"] == "invalid_request_error"
    assert key in error["message"]


# --- response shape ------------------------------------------------------------------------------------

def test_completion_carries_openai_fields_only(proxy: RunningProxy, standin: StandInServer) -> None:
    body = proxy.http().post("/v1/chat/completions", json={"model": FLASH, "messages": HI}).json()
    assert _foreign_keys(body) == []
    assert set(body) <= {"id", "object", "created", "model", "choices", "usage", "system_fingerprint",
                         "service_tier"}
    assert body["choices"][0]["message"]["content"].startswith("answer from")


def test_stream_keeps_one_id_and_openai_fields_only(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.stream_chunks = 5
    try:
        stream = proxy.client().chat.completions.create(model=FLASH, messages=HI, stream=True,
                                                        stream_options={"include_usage": True})
        chunks = [c.model_dump(exclude_unset=True) for c in stream]
    finally:
        standin.state.stream_chunks = 3
    assert len(chunks) >= 5
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert _foreign_keys(chunks) == []
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).startswith(
        "answer from")


TOOL = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_a_whole_tool_call_has_openai_fields_only_and_no_index(proxy: RunningProxy, standin: StandInServer) -> None:
    with proxy.http() as http:
        body = http.post("/v1/chat/completions", json={"model": FLASH, "messages": HI, "tools": TOOL,
                                                       "tool_choice": "required"}).json()
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert set(call) == {"id", "type", "function"} and set(call["function"]) == {"name", "arguments"}
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"


def test_a_streamed_tool_call_keeps_its_index(proxy: RunningProxy, standin: StandInServer) -> None:
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": FLASH, "messages": HI, "tools": TOOL, "tool_choice": "required", "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    calls = [c for e in events if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls") or []]
    assert calls and all(c["index"] == 0 for c in calls)  # which call each piece extends, as OpenAI streams it
    assert {k for c in calls for k in c} <= {"index", "id", "type", "function"}


# --- system messages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["system", "developer"])
def test_system_message_reaches_gemini_as_system_instruction(proxy: RunningProxy, standin: StandInServer,
                                                            role: str) -> None:
    proxy.client().chat.completions.create(model=FLASH, messages=[
        {"role": role, "content": "Answer like a pirate."}, *HI])  # type: ignore[list-item]
    sent = standin.state.requests[-1]
    assert sent.system_instruction == "Answer like a pirate."
    assert "pirate" not in json.dumps(sent.body["contents"])


# --- upstream errors -----------------------------------------------------------------------------------

INTERNALS = ("litellm", "Exception", "Traceback", "b'", "Vertex")


@pytest.mark.parametrize("status, sdk_error", [(400, openai.BadRequestError), (401, openai.APIStatusError),
                                               (404, openai.APIStatusError), (503, openai.APIStatusError)])
def test_upstream_error_message_has_no_litellm_internals(make_proxy: Any, standin: StandInServer, status: int,
                                                         sdk_error: type[Exception]) -> None:
    proxy = make_proxy(upstream={"retries": 0, "fallback": "none"})
    standin.state.faults.append(Fault("status", status=status))
    with pytest.raises(sdk_error) as err:
        proxy.client().chat.completions.create(model=FLASH, messages=HI)
    message = err.value.body["message"]  # type: ignore[attr-defined]
    assert f"stand-in injected {status}" in message
    assert not [word for word in INTERNALS if word in message], message


def test_midstream_error_event_has_no_litellm_internals(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("midstream"))
    r = proxy.http().post("/v1/chat/completions", json={"model": FLASH, "messages": HI, "stream": True})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    message = events[-1]["error"]["message"]
    assert message.startswith(f"upstream {FLASH} failed mid-stream")
    assert not [word for word in INTERNALS if word in message], message


def test_json_schema_response_format_reaches_gemini_as_a_schema(proxy: RunningProxy, standin: StandInServer) -> None:
    schema = {"type": "object", "properties": {"city_name": {"type": "string"}}, "required": ["city_name"]}
    proxy.client().chat.completions.create(model=FLASH, messages=HI, response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    config = standin.state.requests[-1].body["generationConfig"]
    assert config["response_mime_type"] == "application/json"
    assert "city_name" in json.dumps(config.get("response_json_schema") or config.get("response_schema"))
    assert "city_name" not in json.dumps(standin.state.requests[-1].body["contents"])  # not folded into the prompt
