"""How the proxy drives LiteLLM: the settings that keep each call cheap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import litellm
import pytest

from proxy.settings import settings_from_dict
from proxy.upstream import lean
from proxy.upstream.calls import Attempts, Upstream
from tests.conftest import base_config
from tests.standin import StandInServer

MSG = [{"role": "user", "content": "hi"}]


def test_litellm_gets_the_models_fixed_timeout_so_its_http_client_is_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM caches one HTTP client per timeout value: a timeout that shrank with the overall deadline
    # (models.*.timeout >= upstream.timeout_total, as in the shipped config) opened a connection per call.
    cfg = base_config(tmp_path, upstream={"timeout_total": 5})
    upstream = Upstream(settings_from_dict(cfg))
    seen: list[Any] = []

    async def fake_acompletion(**kw: Any) -> str:
        seen.append(kw["timeout"])
        await asyncio.sleep(0.01)
        return "answer"

    monkeypatch.setattr(lean, "acompletion", fake_acompletion)  # the proxy's one entry into LiteLLM

    async def calls() -> None:
        for _ in range(3):
            strong = upstream.tiers[-1]
            assert (await upstream.complete(strong, MSG, {}, Attempts(strong))).answer == "answer"

    asyncio.run(calls())
    assert seen == [5, 5, 5]


def test_a_fallen_back_call_returns_the_tier_and_model_that_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The upstream says what it served as a value; the edge reads the model's name from it instead of deriving
    # it from the tier again (a second derivation is how headers and the body came to disagree).
    upstream = Upstream(settings_from_dict(base_config(tmp_path, upstream={"retries": 0})))
    weak, strong = upstream.tiers

    async def fake_acompletion(**kw: Any) -> str:
        if kw["model"] == "gemini/gemini-1.5-pro":
            raise litellm.ServiceUnavailableError("down", llm_provider="gemini", model=kw["model"])
        return "answer"

    monkeypatch.setattr(lean, "acompletion", fake_acompletion)
    journal = Attempts(strong)
    served = asyncio.run(upstream.complete(strong, MSG, {}, journal))
    assert (served.tier, served.model, served.answer) == (weak, "gemini-1.5-flash", "answer")
    assert served.attempts is journal and journal.fallback and journal.served_tier == weak
    assert journal.errors == [(strong, "unavailable")]


def test_configured_prices_are_registered_with_litellm(tmp_path: Path) -> None:
    # LiteLLM prices every response; for a model missing from its price map the search costs ~2 ms per call.
    Upstream(settings_from_dict(base_config(tmp_path)))
    entry = litellm.model_cost["gemini/gemini-1.5-pro"]
    assert entry["input_cost_per_token"] == pytest.approx(1.25e-6)
    assert entry["output_cost_per_token"] == pytest.approx(5.0e-6)
    assert entry["litellm_provider"] == "gemini"


def test_gemini_calls_skip_litellm_acompletion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               standin: StandInServer) -> None:
    # proxy/upstream/lean.py: a Gemini call builds its request with LiteLLM's completion() on the event loop, so it
    # pays neither acompletion's callback set-up and thread hop nor its pricing and success logging.
    def refuse(**kw: Any) -> Any:
        raise AssertionError("litellm.acompletion was called for a Gemini model")

    monkeypatch.setattr(litellm, "acompletion", refuse)
    upstream = Upstream(settings_from_dict(base_config(tmp_path)))
    weak = upstream.tiers[0]
    answer = asyncio.run(upstream.complete(weak, MSG, {}, Attempts(weak))).answer
    assert answer.choices[0].message.content
    assert standin.state.models_called() == ["gemini-1.5-flash"]


def test_other_providers_keep_litellm_acompletion(monkeypatch: pytest.MonkeyPatch) -> None:
    # Some providers do blocking work while LiteLLM builds their request; that must stay off the event loop.
    seen: list[str] = []

    async def fake_acompletion(**kw: Any) -> str:
        seen.append(kw["model"])
        return "answer"

    monkeypatch.setattr(litellm, "acompletion", fake_acompletion)
    assert asyncio.run(lean.acompletion(model="openai/gpt-4o-mini", messages=MSG)) == "answer"
    assert seen == ["openai/gpt-4o-mini"]


def test_a_request_litellm_cannot_build_raises_its_error_class_without_a_cause_cycle(standin: StandInServer) -> None:
    # LiteLLM hands back its own exception object from exception_type; chaining it to itself made the proxy's
    # walk along __cause__ (calls._built_nothing) loop forever.
    bad = {"type": "json_schema", "json_schema": 5}
    with pytest.raises(litellm.exceptions.APIConnectionError) as err:
        asyncio.run(lean.acompletion(model="gemini/gemini-1.5-flash", messages=MSG, response_format=bad))
    assert err.value.__cause__ is not err.value and err.value.__context__ is not err.value
    assert standin.state.requests == []


def test_a_gemini_call_never_loads_tiktoken_but_anything_that_counts_still_gets_it(standin: StandInServer) -> None:
    # LiteLLM passes its default encoding to every handler eagerly; Gemini reports usage itself, so loading the
    # encoding (~40 MB, 0.1-0.3 s) is deferred to the first real use (proxy/upstream/lean.py: defer_encoding).
    import litellm.main
    from litellm._lazy_imports import get_default_encoding

    assert lean.defer_encoding()
    deferred = litellm.main._encoding_cache
    assert isinstance(deferred, lean._DeferredEncoding)
    deferred.loaded = None  # as in a fresh worker, whatever ran before in this process

    async def both() -> tuple[Any, list[Any]]:
        answer = await lean.acompletion(model="gemini/gemini-1.5-flash", messages=MSG)
        stream = await lean.acompletion(model="gemini/gemini-1.5-flash", messages=MSG, stream=True,
                                        stream_options={"include_usage": True})
        return answer, [chunk async for chunk in stream]

    answer, chunks = asyncio.run(both())
    assert answer.usage.total_tokens > 0 and chunks[-1].usage.total_tokens > 0
    assert deferred.loaded is None, "a Gemini call loaded LiteLLM's tiktoken encoding"
    # Anything that does read the encoding gets the real one, loaded on the spot.
    assert deferred.encode("route me") == get_default_encoding().encode("route me")
    assert deferred.loaded is not None
    assert litellm.main._get_encoding() is deferred
