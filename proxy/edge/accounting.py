"""Per-request accounting: what happened to one chat request, written to metrics and the access log once.

The handler fills an :class:`Outcome` as the request goes, from the values the layers below return (the
routing ``Decision``, the upstream's ``Attempts``); :class:`Accounting` turns it into counters, histograms, the
cost and savings estimate, one JSON access-log line and one decision record (:func:`decision_record`), all at
the end. Which tier and model served are decided in one place (:attr:`Outcome.served_tier`,
:attr:`Outcome.served_model`), so the response, headers, metrics, cost, the log and the record cannot disagree.
It lives in the edge because it reads what every layer below returned; none of them imports it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy import metrics
from proxy.routing.decider import Decision, Target
from proxy.routing.render import cuts_log_value
from proxy.settings import Settings
from proxy.state.records import DecisionRecord, RecordStore, prompt_hash
from proxy.upstream.calls import Attempts
from proxy.upstream.pricing import Price, prices_of
from router.policy import Tier

if TYPE_CHECKING:
    from proxy.routing.budget import BudgetRoute, Budgets, BudgetStatus

access_log = logging.getLogger("route_llm.access")


@dataclass
class Outcome:
    """Everything recorded about one chat request, written to metrics and the access log once, at the end."""

    request_id: str
    requested: str = "unknown"
    target: Target | None = None
    decision: Decision | None = None
    attempts: Attempts | None = None
    status: str = "error"
    http_status: int = 500
    upstream_seconds: float | None = None
    first_token_seconds: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    prompt: str | None = None
    dropped: list[str] = field(default_factory=list)  # parameters the endpoint accepts but has no use for
    error_reason: str = ""  # the failed request's error code (ProxyError.code, or its type), for the record
    text: str = ""  # what the router judged (the last user turn; "" when the body never parsed)
    owner: str = ""  # the proxy key's owner hash ("" without keys)
    router_version: str = ""
    records: RecordStore | None = None  # where the decision record goes (None: feedback is off)
    key: str | None = None  # the proxy key's configured name (None without keys); never the key itself
    budgets: Budgets | None = None  # where the request's cost is charged (None without keys)
    budget: BudgetStatus | None = None  # the key's budget as routing saw it (None: the key has none)
    budget_route: BudgetRoute | None = None  # what the budget did to the routing
    models: tuple[str, ...] = ()  # the configured model names, by tier index (what served_model names)

    @property
    def reached_model(self) -> bool:
        """Whether a model was asked (it answered or failed): a request refused before that (bad body, unknown
        model, no key) costs nothing upstream, and its prompt must not cost storage either."""
        a = self.attempts
        return a is not None and (a.served_tier is not None or bool(a.errors))

    @property
    def served_tier(self) -> Tier | None:
        """The tier that answered (after any fallback), else the one routed to, else None (no decision)."""
        if self.attempts is not None and self.attempts.served_tier is not None:
            return self.attempts.served_tier
        return self.decision.tier if self.decision is not None else None

    @property
    def served_model(self) -> str | None:
        """The configured name of :attr:`served_tier`'s model: what the response's ``model``, the
        ``x-route-llm-model`` header, the metrics and the record all report."""
        tier = self.served_tier
        return self.models[tier.index] if tier is not None else None


class Accounting:
    """Metrics, cost and the access log for finished requests; one per app, shared by the endpoints."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prices: tuple[Price, ...] = prices_of(settings.models.entries)

    def cost(self, tier: Tier, prompt_tokens: int, completion_tokens: int) -> tuple[float, float]:
        """The request's estimated cost on ``tier`` and what it saved against the most expensive tier for these
        very tokens (the dearest by price, which a list given cheapest first puts last, but prices decide)."""
        cost = self.prices[tier.index].cost(prompt_tokens, completion_tokens)
        dearest = max(p.cost(prompt_tokens, completion_tokens) for p in self.prices)
        return cost, max(0.0, dearest - cost)

    def record(self, o: Outcome, *, endpoint: str, dropped: list[str]) -> None:
        d, a = o.decision, o.attempts
        tier = o.served_tier
        model = o.served_model or "none"
        metrics.REQUESTS.labels(o.requested, model, tier.name if tier else "none", o.status).inc()
        if d is not None and d.score is not None:
            metrics.ROUTER_SCORE.observe(d.score)
            metrics.ROUTER_SECONDS.observe(d.seconds)
        if d is not None and d.failed:
            metrics.ROUTER_FAILURES.inc()
        if a is not None:
            for tried, reason in a.errors:
                metrics.UPSTREAM_ERRORS.labels(self.settings.models.model(tried).name, reason).inc()
            if a.fallback and a.served_tier:
                metrics.FALLBACKS.labels(a.requested_tier.name, a.served_tier.name).inc()
        cost: float | None = None
        if tier is not None and o.upstream_seconds is not None:
            metrics.UPSTREAM_SECONDS.labels(model).observe(o.upstream_seconds)
            if o.first_token_seconds is not None:
                metrics.UPSTREAM_TTFT.labels(model).observe(o.first_token_seconds)
            metrics.TOKENS.labels(model, "in").inc(o.prompt_tokens)
            metrics.TOKENS.labels(model, "out").inc(o.completion_tokens)
            cost, saved = self.cost(tier, o.prompt_tokens, o.completion_tokens)
            metrics.COST.labels(model).inc(cost)
            metrics.SAVINGS.inc(saved)
            if o.budgets is not None:  # the same price as the cost metric, charged to the key's budget
                o.budgets.charge(o.key, cost)
        line: dict[str, Any] = {
            "request_id": o.request_id, "requested_model": o.requested, "routed_model": model,
            "tier": tier.name if tier else None,
            "score": None if d is None or d.score is None else round(d.score, 4),
            "threshold": None if d is None or d.cuts is None else cuts_log_value(d.cuts),
            "router_ms": None if d is None else round(d.seconds * 1000, 2),
            "upstream_ms": None if o.upstream_seconds is None else round(o.upstream_seconds * 1000, 1),
            "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
            "status": o.status, "http_status": o.http_status,
            "retries": a.retries if a else 0, "fallback": bool(a and a.fallback),
            "total_ms": round((time.perf_counter() - o.started) * 1000, 1),
        }
        if d is not None and d.turn_score is not None and d.turn_score != d.score:
            line["turn_score"] = round(d.turn_score, 4)
        line["endpoint"] = endpoint
        if o.key is not None:
            line["key"] = o.key
        if o.budget_route is not None and (o.budget_route.steer > 0 or o.budget_route.cheapest):
            line["budget_steer"] = round(o.budget_route.steer, 4)
        if dropped:
            line["dropped_params"] = dropped
        if o.prompt is not None:
            line["prompt"] = o.prompt
        access_log.info(json.dumps(line))
        if o.records is not None:  # every request the handler saw, so any x-request-id can be rated
            o.records.add(decision_record(o, store_prompts=self.settings.feedback.store_prompts, cost=cost))


def decision_record(o: Outcome, *, store_prompts: bool, cost: float | None = None) -> DecisionRecord:
    """The record of a finished chat request, built once from its outcome: the tier and model that answered
    (empty: no tier was chosen); the routing fields stay empty unless the request was routed. The prompt itself
    (``store_prompts``) is kept only for a request that reached a model: one refused before that can still be
    rated by its id, but a client must not fill the store with large prompts that never cost an upstream call."""
    d, tier = o.decision, o.served_tier
    routed = d is not None and o.target is not None and o.target.routed
    return DecisionRecord(owner=o.owner, request_id=o.request_id, created_at=time.time(),
                          alias=o.requested if routed else "", score=d.score if routed and d else None,
                          threshold=d.threshold if routed and d else None, tier=tier.name if tier else "",
                          model=o.served_model or "", fallback=d is not None and tier is not None and tier != d.tier,
                          router_error=routed and d is not None and d.failed,
                          router_version=o.router_version if routed else "",
                          prompt=o.text if store_prompts and o.reached_model else None, prompt_hash=prompt_hash(o.text),
                          routed=routed, status=o.status, http_status=o.http_status, prompt_tokens=o.prompt_tokens,
                          completion_tokens=o.completion_tokens, cost_usd=cost,
                          error_reason="" if o.status == "ok" else o.error_reason or o.status)
