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
            assert await upstream.complete(strong, MSG, {}, Attempts(strong)) == "answer"

    asyncio.run(calls())
    assert seen == [5, 5, 5]


def test_configured_prices_are_registered_with_litellm(tmp_path: Path) -> None:
    # LiteLLM prices every response; for a model missing from its price map the search costs ~2 ms per call.
    Upstream(settings_from_dict(base_config(tmp_path)))
    entry = litellm.model_cost["gemini/gemini-1.5-pro"]
    assert entry["input_cost_per_token"] == pytest.approx(1.25e-6)
    assert entry["output_cost_per_token"] == pytest.approx(5.0e-6)
    assert entry["litellm_provider"] == "gemini"
