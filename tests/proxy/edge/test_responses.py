"""POST /v1/responses end to end: the official SDK's ``responses.create`` and ``responses.stream`` -> route-llm
on a real socket -> LiteLLM -> the Gemini stand-in."""

from __future__ import annotations

import json
import logging
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY

from tests.conftest import RunningProxy
from tests.proxy.pdfs import pdf_with_pages
from tests.standin import Fault, StandInServer

EASY = "What is the capital of France?"
FLASH, PRO = "gemini-1.5-flash", "gemini-1.5-pro"
WEATHER = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def requests_total(**labels: str) -> float:
    return REGISTRY.get_sample_value("route_llm_requests_total", labels) or 0.0


def test_create_with_string_input_is_routed_and_answers_as_a_response(proxy: RunningProxy,
                                                                      standin: StandInServer) -> None:
    raw = proxy.client().responses.with_raw_response.create(model="auto-cheap", input=EASY,
                                                            instructions="Answer in one word.")
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.model == FLASH
    assert response.output_text.startswith(f"answer from {FLASH}")
    assert response.instructions == "Answer in one word."
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert raw.headers["x-route-llm-tier"] == "weak" and raw.headers["x-route-llm-model"] == FLASH
    assert raw.headers["x-route-llm-threshold"] == "0.9900" and 0 <= float(raw.headers["x-route-llm-score"]) < 1
    sent = standin.state.requests[-1]
    assert sent.system_instruction == "Answer in one word."
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": EASY}]}]


def test_routing_uses_the_last_user_message_like_chat(proxy: RunningProxy, standin: StandInServer) -> None:
    client = proxy.client()
    conversation = [{"role": "user", "content": "Prove Fermat's little theorem rigorously."},
                    {"role": "assistant", "content": [{"type": "output_text", "text": "Here it is..."}]},
                    {"role": "user", "content": [{"type": "input_text", "text": EASY}]}]
    as_response = client.responses.with_raw_response.create(model="auto", input=conversation)  # type: ignore[arg-type]
    as_chat = client.chat.completions.with_raw_response.create(model="auto", messages=[
        {"role": "user", "content": "Prove Fermat's little theorem rigorously."},
        {"role": "assistant", "content": "Here it is..."}, {"role": "user", "content": EASY}])
    assert as_response.headers["x-route-llm-score"] == as_chat.headers["x-route-llm-score"]
    assert as_response.headers["x-route-llm-model"] == as_chat.headers["x-route-llm-model"]
    contents = standin.state.requests[0].body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]


def test_stream_sends_responses_events_and_the_sdk_assembles_them(proxy: RunningProxy,
                                                                  standin: StandInServer) -> None:
    with proxy.client().responses.stream(model=FLASH, input=EASY, instructions="Be brief.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 3  # the stand-in streams three chunks
    assert final.output_text == "".join(deltas) and final.output_text.startswith(f"answer from {FLASH}")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    assert final.usage is not None and final.usage.output_tokens > 0
    assert standin.state.requests[-1].stream and standin.state.requests[-1].system_instruction == "Be brief."


def test_stream_has_the_routing_headers(proxy: RunningProxy, standin: StandInServer) -> None:
    with proxy.client().responses.with_streaming_response.create(model="auto-quality", input=EASY,
                                                                 stream=True) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["x-route-llm-tier"] == "strong" and raw.headers["x-route-llm-model"] == PRO
        body = raw.read().decode()
    assert "event: response.completed" in body and "[DONE]" not in body


def test_function_tools_round_trip(proxy: RunningProxy, standin: StandInServer) -> None:
    client = proxy.client()
    first = client.responses.create(model=FLASH, input="Weather in Paris?", tools=WEATHER,  # type: ignore[arg-type]
                                    tool_choice={"type": "function", "name": "get_weather"})
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": f"answer from {FLASH}"} and call.call_id
    declared = standin.state.requests[-1].body["tools"][0]["function_declarations"][0]
    assert declared["name"] == "get_weather"
    follow_up = [{"role": "user", "content": "Weather in Paris?"},
                 {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                 {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}]
    answer = client.responses.create(model=FLASH, input=follow_up, tools=WEATHER)  # type: ignore[arg-type]
    assert answer.output_text.startswith("answer from")
    parts = [p for c in standin.state.requests[-1].body["contents"] for p in c["parts"]]
    assert any("functionCall" in p or "function_call" in p for p in parts)
    assert any("18 C and sunny" in json.dumps(p) for p in parts if "functionResponse" in p or "function_response" in p)


def test_streamed_function_call_is_assembled(proxy: RunningProxy, standin: StandInServer) -> None:
    with proxy.client().responses.stream(model=FLASH, input="Weather in Paris?", tools=WEATHER,  # type: ignore[arg-type]
                                         tool_choice="required") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": f"answer from {FLASH}"}


def test_json_schema_text_format_reaches_gemini(proxy: RunningProxy, standin: StandInServer) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    proxy.client().responses.create(model=FLASH, input=EASY, text={"format": {
        "type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
    config = standin.state.requests[-1].body["generationConfig"]
    assert config["response_mime_type"] == "application/json"
    assert "capital" in json.dumps(config.get("response_json_schema") or config.get("response_schema"))


def test_input_file_by_id_sends_the_document_text(proxy: RunningProxy, standin: StandInServer) -> None:
    client = proxy.client()
    f = client.files.create(file=("report.pdf", pdf_with_pages(["Zephyrine Widgets Ltd."]), "application/pdf"),
                            purpose="user_data")
    raw = client.responses.with_raw_response.create(model=FLASH, input=[{"role": "user", "content": [
        {"type": "input_file", "file_id": f.id}, {"type": "input_text", "text": "What is the company's name?"}]}])
    assert raw.headers["x-route-llm-documents"] == "full"
    assert "Zephyrine Widgets" in json.dumps(standin.state.requests[-1].body["contents"])


def test_unused_parameters_are_named_in_the_dropped_header(proxy: RunningProxy, standin: StandInServer) -> None:
    raw = proxy.client().responses.with_raw_response.create(
        model=FLASH, input=EASY, truncation="auto", include=["message.output_text.logprobs"], store=True,
        reasoning={"effort": "low"}, max_output_tokens=40, prompt_cache_key="k")
    assert raw.headers["x-route-llm-dropped-params"] == "include,prompt_cache_key,reasoning,store,truncation"
    assert standin.state.requests[-1].body["generationConfig"] == {"max_output_tokens": 40}
    assert raw.parse().store is False  # nothing is stored, whatever was asked


def test_every_request_key_of_the_installed_sdk_is_known() -> None:
    from openai.types.responses.response_create_params import ResponseCreateParamsBase

    from proxy.edge.responses import KNOWN

    assert set(ResponseCreateParamsBase.__annotations__) - KNOWN == set()


@pytest.mark.parametrize("key, value", [("previous_response_id", "resp_123"), ("conversation", "conv_1"),
                                        ("prompt", {"id": "pmpt_1"}), ("background", True)])
def test_stateful_features_are_a_clear_400(proxy: RunningProxy, key: str, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        proxy.client().responses.create(model="auto", input=EASY, **{key: value})
    assert err.value.body["param"] == key  # type: ignore[index]
    assert "input" in err.value.body["message"] or key in err.value.body["message"]  # type: ignore[index]


@pytest.mark.parametrize("body, param", [
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": ["hi"]}, "input[0]"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "http://x"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
    ({"input": "hi", "instructions": ["x"]}, "instructions"),
    ({"input": "hi", "tools": [{"type": "file_search"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": "x"}]}, "tools[0].parameters"),
    ({"input": "hi", "tool_choice": "always"}, "tool_choice"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format"),
    ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"input": "hi", "text": {"verbosity": "loud"}}, "text"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "reasoning": "high"}, "reasoning"),
    ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning"),
    ({"input": "hi", "truncation": "sometimes"}, "truncation"),
    ({"input": "hi", "include": "all"}, "include"),
    ({"input": "hi", "temperature": 9}, "temperature"),
    ({"input": "hi", "stream": "yes"}, "stream"),
    ({"input": "hi", "frobnicate": 1}, "frobnicate"),
    ({"input": "hi", "model": "gpt-4"}, "model"),
    ({"input": "hi", "model": None}, "model"),
])
def test_bad_values_are_openai_400s_naming_the_field(proxy: RunningProxy, body: dict[str, Any], param: str) -> None:
    r = proxy.http().post("/v1/responses", json={"model": "auto", **body})
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert proxy.client().responses.create(model=FLASH, input="still serving?").status == "completed"


def test_not_a_json_object_is_a_400(proxy: RunningProxy) -> None:
    for raw in (b"[1, 2]", b"{", b""):
        r = proxy.http().post("/v1/responses", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_upstream_failure_is_an_openai_error_without_internals(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "fallback": "none"})
    standin.state.faults.append(Fault("status", status=503))
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().responses.create(model=FLASH, input=EASY)
    assert err.value.status_code == 503
    message = err.value.body["message"]  # type: ignore[index]
    assert "stand-in injected 503" in message and "litellm" not in message and "Exception" not in message


def test_midstream_failure_ends_with_error_and_response_failed(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("midstream"))
    with proxy.client().responses.create(model=FLASH, input=EASY, stream=True) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message.startswith(f"upstream {FLASH} failed mid-stream")
    assert "litellm" not in failed.error.message and "Exception" not in failed.error.message


def test_counted_in_metrics_and_access_log_like_chat(proxy: RunningProxy, standin: StandInServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    labels = {"requested_model": FLASH, "routed_model": FLASH, "tier": "weak", "status": "ok"}
    before = requests_total(**labels)
    with caplog.at_level(logging.INFO, logger="route_llm.access"):
        proxy.client().responses.create(model=FLASH, input=EASY, extra_headers={"x-request-id": "resp-log-1"})
        with proxy.client().responses.stream(model=FLASH, input=EASY,
                                             extra_headers={"x-request-id": "resp-log-2"}) as stream:
            list(stream)
    assert requests_total(**labels) - before == 2
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "route_llm.access"]
    mine = {line["request_id"]: line for line in lines if line["request_id"].startswith("resp-log")}
    assert {line["endpoint"] for line in mine.values()} == {"responses"}
    assert all(line["completion_tokens"] > 0 and line["status"] == "ok" for line in mine.values())
