"""How a routing decision is shown: one view for ``POST /v1/route``, ``route-llm route``, the x-route-llm-*
headers and the access log, so that "threshold" and "score" mean and read the same everywhere.

:func:`decision_view` is the decision as JSON values; the other functions format those values for a header
(strings) or a log line, and never look at the decision again.
"""

from __future__ import annotations

from typing import Any

from proxy.routing.decider import Decision
from router.policy import Tier


def decision_view(d: Decision, *, tier: Tier | None = None, model: str) -> dict[str, Any]:
    """The decision's fields as JSON values. ``tier`` is the tier that served when it differs from the one routed
    to (a fallback), ``model`` the configured name of its model. ``threshold`` is the one cut of a two-tier
    decision (the value the two-tier form always reported), ``thresholds`` every cut; both None when no cut
    applied (a pinned model)."""
    served = d.tier if tier is None else tier
    return {"tier": served.name, "tier_index": served.index, "model": model, "score": d.score,
            "turn_score": d.turn_score, "threshold": d.threshold,
            "thresholds": None if d.cuts is None else list(d.cuts), "router_error": d.failed}


def cuts_header(cuts: tuple[float, ...] | list[float]) -> str:
    """The cut points as a header value or log label: comma-separated, four decimals (one value with two tiers)."""
    return ",".join(f"{c:.4f}" for c in cuts)


def cuts_log_value(cuts: tuple[float, ...]) -> float | list[float]:
    """A two-tier decision logs its threshold as a number, as it always did; more tiers log the list of cuts."""
    return round(cuts[0], 4) if len(cuts) == 1 else [round(c, 4) for c in cuts]


def decision_headers(d: Decision, *, tier: Tier, model: str) -> dict[str, str]:
    """The x-route-llm-* headers of an answer routed by ``d`` and served by ``tier``'s ``model``."""
    view = decision_view(d, tier=tier, model=model)
    h = {"x-route-llm-tier": view["tier"], "x-route-llm-tier-index": str(view["tier_index"]),
         "x-route-llm-model": view["model"],
         "x-route-llm-score": "none" if view["score"] is None else f"{view['score']:.4f}",
         "x-route-llm-threshold": "none" if view["thresholds"] is None else cuts_header(view["thresholds"])}
    if d.tier != tier:
        h["x-route-llm-fallback"] = f"{d.tier.name}->{tier.name}"
    if view["router_error"]:
        h["x-route-llm-router-error"] = "1"
    return h
