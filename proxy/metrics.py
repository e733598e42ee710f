"""Prometheus metrics, declared once.

The one place with module-level objects: constructing a metric registers it, and a second registration of
the same name raises, so they cannot live in ``create_app``. Label values come from closed sets only
(configured model names, tiers, statuses, error reasons) — never prompt text, user ids or keys.

With ``route-llm serve --workers N`` the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh private
directory before any worker imports this module; ``/metrics`` then aggregates every worker's files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter("route_llm_requests_total", "Chat completion requests by outcome",
                   ["requested_model", "routed_model", "tier", "status"])
REJECTED = Counter("route_llm_rejected_total", "Requests refused before routing: bad key, key over its "
                   "requests-per-minute limit, no slot free, body too large or too slow", ["reason"])
ROUTER_SCORE = Histogram("route_llm_router_score", "Classifier score p(strong model needed)",
                         buckets=[round(0.1 * i, 1) for i in range(1, 11)])
ROUTER_SECONDS = Histogram("route_llm_router_decision_seconds", "Time to a routing decision",
                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
ROUTER_FAILURES = Counter("route_llm_router_failures_total", "Classifier failures routed to the fail-open tier")
UPSTREAM_TTFT = Histogram("route_llm_upstream_first_token_seconds", "Time to the first streamed chunk",
                          ["routed_model"], buckets=_LATENCY)
UPSTREAM_SECONDS = Histogram("route_llm_upstream_seconds", "Upstream time until the whole answer",
                             ["routed_model"], buckets=_LATENCY)
TOKENS = Counter("route_llm_tokens_total", "Tokens by direction", ["routed_model", "direction"])
COST = Counter("route_llm_cost_usd_total", "Estimated upstream cost in USD", ["routed_model"])
SAVINGS = Counter("route_llm_savings_usd_total",
                  "Estimated USD saved against sending the same tokens to the most expensive tier")
UPSTREAM_ERRORS = Counter("route_llm_upstream_errors_total", "Failed upstream attempts by reason",
                          ["routed_model", "reason"])
FALLBACKS = Counter("route_llm_fallbacks_total", "Requests served by another tier after failures",
                    ["from_tier", "to_tier"])
IN_FLIGHT = Gauge("route_llm_requests_in_flight", "Requests being handled", multiprocess_mode="livesum")
INFO = Gauge("route_llm_info", "Build and router model information (value is always 1)",
             ["version", "router_model", "threshold_default", "strong_share_default"],
             multiprocess_mode="max")
TIER_INFO = Gauge("route_llm_tier_info", "The configured tiers (value is always 1): position, cheapest first, and "
                  "model", ["tier", "index", "routed_model"], multiprocess_mode="max")
DOC_UPLOADS = Counter("route_llm_documents_uploaded_total", "Documents stored through /v1/files")
DOC_PAGES = Counter("route_llm_document_pages_extracted_total", "PDF pages whose text was extracted")
DOC_FAILURES = Counter("route_llm_document_failures_total", "PDF extraction failures by reason", ["reason"])
DOC_SECONDS = Histogram("route_llm_document_extraction_seconds", "PDF text extraction time",
                        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
FEEDBACK = Counter("route_llm_feedback_total", "Ratings received through POST /v1/feedback, by the tier that "
                   "answered the rated request", ["tier", "rating"])
RECORD_ERRORS = Counter("route_llm_decision_record_errors_total", "Decision records or ratings that could not be "
                        "stored (the request itself went through)", ["reason"])
RELOADS = Counter("route_llm_reloads_total", "Hot reloads of the router model and routing config", ["result"])
ROUTER_INFO = Gauge("route_llm_router_info", "The router model version serving (value 1; 0 once replaced)",
                    ["version"], multiprocess_mode="livemax")
LIMIT_STORE_ERRORS = Counter("route_llm_rate_limit_store_errors_total", "Requests whose requests-per-minute count "
                             "could not reach Redis: let through (server.redis_failure: open, counted by this "
                             "process alone) or refused with a 503 (closed)", ["outcome"])
BUDGET_SPENT = Gauge("route_llm_budget_spent_usd", "USD a proxy key (by its configured name) has spent in its "
                     "budget's current period; keys without a budget: this UTC day", ["key"],
                     multiprocess_mode="mostrecent")
BUDGET_LIMIT = Gauge("route_llm_budget_limit_usd", "A proxy key's budget in USD per period (keys with a budget)",
                     ["key"], multiprocess_mode="mostrecent")
BUDGET_ERRORS = Counter("route_llm_budget_store_errors_total", "Charges that could not be written to the spend "
                        "store (the requests themselves were answered)")
BREAKER_STATE = Gauge("route_llm_breaker_state", "Each tier's circuit breaker: 0 closed, 1 open (the tier is skipped), "
                      "2 half-open (one trial request let through)", ["tier"], multiprocess_mode="mostrecent")
BREAKER_TRANSITIONS = Counter("route_llm_breaker_transitions_total", "Circuit breaker state changes by tier and the "
                              "state entered", ["tier", "to"])
RATINGS = ("good", "bad")
RECORD_ERROR_REASONS = ("full", "unavailable", "queue_full", "error")
RELOAD_RESULTS = ("ok", "unchanged", "failed")
# Every reason upstream/calls._classify gives a failed attempt, and the edge's broken stream.
UPSTREAM_ERROR_REASONS = ("rate_limited", "timeout", "connection", "unavailable", "server_error", "bad_response",
                          "bad_request", "context_window", "auth", "model_not_served", "stream_broken", "error")


def precreate_feedback(tier_names: list[str]) -> None:
    """The learning loop's label sets at zero (ratings per configured tier, record errors, reload results)."""
    for tier in tier_names:
        for rating in RATINGS:
            FEEDBACK.labels(tier, rating)
    for reason in RECORD_ERROR_REASONS:
        RECORD_ERRORS.labels(reason)
    for result in RELOAD_RESULTS:
        RELOADS.labels(result)


def precreate(requested: list[str], tiers: list[tuple[str, str]]) -> None:
    """Create the expected label sets at zero so rates and ratios exist before the first request.

    ``tiers`` is the configured list, cheapest first, as ``(tier name, model name)`` pairs.
    """
    for reason in ("unauthorized", "rate_limited", "overloaded", "too_large", "body_timeout", "headers_too_large",
                   "too_many_values"):
        REJECTED.labels(reason)
    for outcome in ("allowed", "refused"):
        LIMIT_STORE_ERRORS.labels(outcome)
    for req in requested:
        for tier, model in tiers:
            for status in ("ok", "upstream_error"):
                REQUESTS.labels(req, model, tier, status)
    for index, (tier, model) in enumerate(tiers):
        TIER_INFO.labels(tier, str(index), model).set(1)
        for other, _ in tiers:
            if other != tier:
                FALLBACKS.labels(tier, other)
    for _, model in tiers:
        for reason in UPSTREAM_ERROR_REASONS:  # the dashboard's errors panel shows 0, not "No data"
            UPSTREAM_ERRORS.labels(model, reason)
        UPSTREAM_SECONDS.labels(model)
        UPSTREAM_TTFT.labels(model)
        COST.labels(model)
        for direction in ("in", "out"):
            TOKENS.labels(model, direction)


def exposition() -> bytes:
    """The text format; a fresh multiprocess registry per scrape when workers share a directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def forget_dead_workers(directory: str | None = None) -> None:
    """Drop the live-gauge files of worker processes that no longer exist.

    uvicorn restarts a worker that dies, but a dead worker's ``livesum`` file keeps counting its last
    in-flight value until someone calls ``mark_process_dead``; each worker does it for the dead at start-up.
    """
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        match = re.search(r"_(\d+)\.db$", path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, owned by someone else
            pass
