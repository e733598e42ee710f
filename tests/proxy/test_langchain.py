"""LangChain's ``ChatOpenAI`` against route-llm: invoke, stream, bind_tools and with_structured_output, over a
real socket, through LiteLLM, to the Gemini stand-in (which answers a JSON-schema request with JSON that
fits the schema)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from tests.conftest import RunningProxy
from tests.standin import StandInServer

langchain_openai = pytest.importorskip("langchain_openai", reason="pip install -e '.[dev]' installs langchain-openai")

FLASH = "gemini-1.5-flash"


def chat_model(proxy: RunningProxy, **kw: Any) -> Any:
    return langchain_openai.ChatOpenAI(base_url=proxy.base_url + "/v1", api_key="unused", max_retries=0, **kw)


def test_invoke_is_routed(proxy: RunningProxy, standin: StandInServer) -> None:
    message = chat_model(proxy, model="auto-cheap").invoke("What is the capital of France?")
    assert message.content.startswith(f"answer from {FLASH}")
    assert message.response_metadata["model_name"] == FLASH
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    assert standin.state.models_called() == [FLASH]


def test_stream_yields_the_answer_in_chunks(proxy: RunningProxy, standin: StandInServer) -> None:
    chunks = list(chat_model(proxy, model=FLASH).stream("Tell me something."))
    text = "".join(str(c.content) for c in chunks)
    assert text.startswith(f"answer from {FLASH}") and sum(1 for c in chunks if c.content) == 3
    assert len({c.id for c in chunks}) == 1  # one completion id across the stream


def test_bind_tools_returns_a_tool_call(proxy: RunningProxy, standin: StandInServer) -> None:
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"sunny in {city}"

    model = chat_model(proxy, model=FLASH).bind_tools([get_weather], tool_choice="get_weather")
    message = model.invoke("What is the weather in Paris?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    declared = standin.state.requests[-1].body["tools"][0]["function_declarations"][0]
    assert declared["name"] == "get_weather"


class Capital(BaseModel):
    country: str
    capital: str
    population_millions: float


def test_with_structured_output_parses_the_json_answer(proxy: RunningProxy, standin: StandInServer) -> None:
    structured = chat_model(proxy, model=FLASH).with_structured_output(Capital)
    result = structured.invoke("What is the capital of France?")
    assert isinstance(result, Capital)
    assert result.capital.startswith(f"answer from {FLASH}") and result.population_millions == 1.5
    config = standin.state.requests[-1].body["generationConfig"]
    assert config["response_mime_type"] == "application/json"
