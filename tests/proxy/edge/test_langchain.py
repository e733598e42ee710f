"""LangChain's ``ChatOpenAI`` against route-llm: invoke, stream, bind_tools and with_structured_output, over a
real socket, through LiteLLM, to the Gemini stand-in (which answers a JSON-schema request with JSON that
fits the schema)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from tests.conftest import RunningProxy
from tests.standin import StandInServer, free_port

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
    assert call["name"] == "get_weather" and call["args"] == {"city": f"answer from {FLASH}"}
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


# --- against `route-llm serve --demo`: the built-in stand-in answers in the shape the request's schemas ask for


class Address(BaseModel):
    city: str
    postcode: str


class Person(BaseModel):
    name: str
    age: int
    role: Literal["admin", "user"]
    addresses: list[Address]
    nickname: str | None = None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``route-llm serve --demo`` as a user starts it (a process, the bundled config, no Gemini key); its base URL."""
    from tests.helpers import ROUTE_LLM
    from tests.helpers import wait_ready as _wait_ready

    tmp = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GEMINI_API_KEY", "GEMINI_API_BASE", "ROUTE_LLM_CONFIG", "PROMETHEUS_MULTIPROC_DIR")}
    port, log = free_port(), tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ROUTE_LLM), "serve", "--demo", "--port", str(port)], cwd=tmp, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def demo_model(base_url: str) -> Any:
    return langchain_openai.ChatOpenAI(base_url=base_url, api_key="unused", max_retries=0, model=FLASH, timeout=60)


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_every_structured_output_method_passes_against_the_demo(demo: str, method: str) -> None:
    prompt = "Describe a user of the system."
    if method == "json_mode":  # JSON mode carries no schema: LangChain leaves it to the prompt, as here
        prompt += " Answer with JSON valid under this schema: " + json.dumps(Person.model_json_schema())
    result = demo_model(demo).with_structured_output(Person, method=method).invoke(prompt)
    assert isinstance(result, Person)
    assert result.role == "admin" and result.addresses and result.addresses[0].city.startswith("answer from")


def test_bind_tools_under_auto_calls_the_tool_the_prompt_names(demo: str) -> None:
    def lookup_order(order_id: int, include_items: bool) -> str:
        """Look an order up."""
        return "shipped"

    def cancel_order(order_id: int, reason: Literal["late", "damaged"]) -> str:
        """Cancel an order."""
        return "cancelled"

    model = demo_model(demo).bind_tools([lookup_order, cancel_order])  # tool_choice: auto
    [call] = model.invoke("Please run cancel_order for order 7, it came damaged").tool_calls
    assert call["name"] == "cancel_order" and call["args"] == {"order_id": 1, "reason": "late"}
    assert model.invoke("Where is my order?").tool_calls == []  # no tool named: a text answer
