"""The OpenAI Agents SDK (``openai-agents``) against route-llm: an agent with one function tool, its
``OpenAIResponsesModel`` on an ``AsyncOpenAI`` client pointed at the proxy, two turns chained by
``previous_response_id``, run plainly and streamed. Tracing is disabled, so the SDK sends nothing anywhere but
the proxy (which answers through LiteLLM from the Gemini stand-in)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.models.openai_responses import OpenAIResponsesModel

from proxy.settings import settings_from_dict
from router import Router
from tests.conftest import RunningProxy, base_config, start_proxy, stop_proxy
from tests.standin import StandInServer

FLASH = "gemini-1.5-flash"
KEY = "agent-key"

set_tracing_disabled(True)  # no trace export: the SDK would otherwise send traces (and a key) to OpenAI

looked_up: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    looked_up.append(city)
    return f"18 C and sunny in {city}"


@pytest.fixture(scope="module")
def proxy(router: Router, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    tmp: Path = tmp_path_factory.mktemp("agents")
    running = start_proxy(settings_from_dict(base_config(tmp, server={"api_keys": [KEY]})), router)
    yield running
    stop_proxy(running)


def _agent(proxy: RunningProxy) -> Agent[Any]:
    model = OpenAIResponsesModel(model=FLASH, openai_client=proxy.async_client(KEY))
    return Agent(name="weather", instructions="Use the tool when asked about weather.", tools=[get_weather],
                 model=model)


def _parts(standin: StandInServer, index: int) -> list[str]:
    """What the ``index``-th upstream request carried, one word per part: text, call or tool result."""
    out = []
    for content in standin.state.requests[index].body["contents"]:
        for part in content["parts"]:
            if "functionCall" in part or "function_call" in part:
                out.append("call")
            elif "functionResponse" in part or "function_response" in part:
                out.append("result")
            else:
                out.append(part.get("text", ""))
    return out


async def _run(agent: Agent[Any], text: str, previous: str | None, stream: bool) -> tuple[str, str | None]:
    if not stream:
        result = await Runner.run(agent, text, previous_response_id=previous)
        return str(result.final_output), result.last_response_id
    streamed = Runner.run_streamed(agent, text, previous_response_id=previous)
    kinds = {event.type async for event in streamed.stream_events()}
    assert "raw_response_event" in kinds
    return str(streamed.final_output), streamed.last_response_id


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
def test_agent_with_a_tool_chains_two_turns_by_previous_response_id(proxy: RunningProxy, standin: StandInServer,
                                                                    stream: bool) -> None:
    looked_up.clear()

    async def two_turns() -> tuple[tuple[str, str | None], tuple[str, str | None]]:
        agent = _agent(proxy)  # one client, used on one event loop
        first = await _run(agent, "Use get_weather for Paris, please.", None, stream)
        return first, await _run(agent, "Thanks. Anything else?", first[1], stream)

    (answer, first_id), (follow, second_id) = asyncio.run(two_turns())
    assert answer.startswith(f"answer from {FLASH}") and first_id is not None
    assert looked_up == [f"answer from {FLASH}"]  # the stand-in fills the tool's argument with its answer text
    assert _parts(standin, 1)[-2:] == ["call", "result"]
    assert follow.startswith(f"answer from {FLASH}") and second_id not in (None, first_id)
    assert len(standin.state.requests) == 3  # tool call, answer, second turn: each one model call
    assert _parts(standin, 2) == ["Use get_weather for Paris, please.", "call", "result", answer,
                                  "Thanks. Anything else?"]
    assert standin.state.requests[2].system_instruction == "Use the tool when asked about weather."
    stored = proxy.client(KEY).responses.retrieve(second_id)  # type: ignore[arg-type]
    assert stored.previous_response_id == first_id and stored.output_text == follow
    items = proxy.client(KEY).responses.input_items.list(second_id)  # type: ignore[arg-type]
    calls = [json.loads(i.arguments) for i in items if i.type == "function_call"]
    assert calls == [{"city": f"answer from {FLASH}"}]


def test_auto_previous_response_id_sends_the_tool_result_alone_and_the_proxy_adds_the_call(
        proxy: RunningProxy, standin: StandInServer) -> None:
    """With ``auto_previous_response_id`` the SDK chains inside one run too: after the model's tool call it sends
    only the tool's output, with the call's response as ``previous_response_id``; the stored call must be put
    back before it, or the model would get a tool result answering nothing."""
    looked_up.clear()

    async def run() -> Any:
        return await Runner.run(_agent(proxy), "Use get_weather for Oslo, please.", auto_previous_response_id=True)

    result = asyncio.run(run())
    assert str(result.final_output).startswith(f"answer from {FLASH}") and len(looked_up) == 1
    assert _parts(standin, 1) == ["Use get_weather for Oslo, please.", "call", "result"]
    last = proxy.client(KEY).responses.retrieve(result.last_response_id)
    assert last.previous_response_id is not None
    sent = [i.type for i in proxy.client(KEY).responses.input_items.list(last.id, order="asc")]
    assert sent == ["message", "function_call", "function_call_output"]
