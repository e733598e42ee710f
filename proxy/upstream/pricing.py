"""Model prices: what the proxy tells LiteLLM about each configured model, and what it charges a request.

One module for both, so the cost metrics and LiteLLM's own pricing read the same numbers: the config's
``*_cost_per_million`` first, LiteLLM's price map where it knows the model, else nothing (cost 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import litellm

from proxy.settings import ModelSettings


@dataclass(frozen=True)
class Price:
    """USD per token, in and out."""

    per_input_token: float
    per_output_token: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.per_input_token + completion_tokens * self.per_output_token


def price_of(m: ModelSettings) -> Price:
    """The model's price: config first, LiteLLM's price map where it knows the model, else 0."""
    known = litellm.model_cost.get(m.model) or litellm.model_cost.get(m.model.split("/", 1)[-1]) or {}
    p_in = m.input_cost_per_million / 1e6 if m.input_cost_per_million is not None else \
        float(known.get("input_cost_per_token") or 0.0)
    p_out = m.output_cost_per_million / 1e6 if m.output_cost_per_million is not None else \
        float(known.get("output_cost_per_token") or 0.0)
    return Price(p_in, p_out)


def prices_of(models: Sequence[ModelSettings]) -> tuple[Price, ...]:
    return tuple(price_of(m) for m in models)


_GEMINI_API_PROVIDERS = ("gemini", "vertex_ai", "vertex_ai_beta")


def register_model(m: ModelSettings) -> None:
    """Give LiteLLM the configured prices for ``m``, and what it must know about a model missing from its map.

    LiteLLM prices every response before returning it; for a model missing from its price map
    (gemini-1.5-* among them) that search walks its fallback tables several times per call, about 2 ms
    of CPU per request here. With the model registered, the lookup is a dictionary hit.

    For such a model LiteLLM also assumes no system-message and no response-schema support: it folds
    system messages into the first user turn and drops a ``json_schema`` response format's schema. Every
    model of the Gemini API takes a ``systemInstruction`` and a response schema, so that is said here.
    """
    prices = {"input_cost_per_token": None if m.input_cost_per_million is None else m.input_cost_per_million / 1e6,
              "output_cost_per_token": None if m.output_cost_per_million is None else m.output_cost_per_million / 1e6}
    entry: dict[str, Any] = {k: v for k, v in prices.items() if v is not None}
    provider = m.model.split("/", 1)[0] if "/" in m.model else ""
    if provider in _GEMINI_API_PROVIDERS:
        known = litellm.model_cost.get(m.model) or {}
        entry.update({k: True for k in ("supports_system_messages", "supports_response_schema") if not known.get(k)})
    if not entry:
        return
    entry["mode"] = "chat"
    if m.model not in litellm.model_cost:  # we don't price cached tokens either; saying so silences a warning
        entry.update(cache_read_input_token_cost=0.0, cache_creation_input_token_cost=0.0)
    if "/" in m.model:
        entry["litellm_provider"] = m.model.split("/", 1)[0]
    litellm.register_model({m.model: entry})
