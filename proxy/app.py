"""The application factory.

``create_app(settings)`` builds the Starlette app; the heavy objects (ONNX session, tokenizer, LiteLLM
warm-up, file store) are created in the lifespan and handed to handlers as one typed ``Services`` value
(``proxy.services``), so importing
this module does no work. ``app_from_env`` is the zero-argument factory uvicorn's multi-worker mode needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import __version__, metrics, tracing
from proxy.documents.service import DocumentService
from proxy.edge import files as files_api
from proxy.edge import stored
from proxy.edge.admin import PinMiddleware, admin_reload
from proxy.edge.admin_spend import admin_spend, admin_spend_reset
from proxy.edge.feedback import post_feedback
from proxy.edge.guard import GuardMiddleware, InFlight
from proxy.edge.messages_http import AnthropicEdge, MessagesHandler
from proxy.edge.responses import ResponsesHandler
from proxy.edge.routes import (
    ChatHandler,
    health_live,
    health_ready,
    list_models,
    metrics_endpoint,
    retrieve_model,
    route_only,
)
from proxy.errors import (
    Overloaded,
    ProxyError,
    error_response,
    handle_http_exception,
    handle_proxy_error,
    handle_unexpected,
)
from proxy.routing.budget import make_budgets
from proxy.routing.decider import Decider, short_gil_switch
from proxy.routing.reload import Live, Reloader
from proxy.routing.render import cuts_header
from proxy.services import Services
from proxy.settings import Settings, load_settings
from proxy.state.database import Database, StorageUnavailable, open_databases
from proxy.state.files import FileStore
from proxy.state.records import RecordStore
from proxy.state.responses import ResponseStore, open_response_store
from proxy.state.spend import open_spend_store
from proxy.upstream.calls import Upstream
from proxy.upstream.pricing import prices_of
from router import Router

log = logging.getLogger("route_llm")

CONFIG_ENV = "ROUTE_LLM_CONFIG"


#: How long the lifespan's shutdown waits for cancelled requests to end (they only write a last event and a
#: record). Within cli.SHUTDOWN_SLACK, the time allowed after server.timeout_shutdown.
DRAIN_SECONDS = 2.0


def freeze_start_up_heap() -> None:
    """Put every object alive once start-up is done out of the cyclic garbage collector's sight.

    A served process holds some 400,000 tracked objects from start-up alone (LiteLLM's modules and model tables,
    ours, the tokenizer's vocabulary), and they live as long as the process. Every full collection walked them
    all: about 0.4 s with the GIL held, during which no request moved; under requests that make many objects
    (a body of hundreds of tool schemas, parsed and translated), full collections came every few seconds and were
    the slowest moments of every other key's requests. Frozen, they are skipped, and a full collection walks
    only what was made since. Garbage is collected first, so none of it is kept for good.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, *, router: Router | None = None, freeze_heap: bool = False) -> Starlette:
    """Build the proxy. ``router`` may be passed in (tests share one); otherwise it is loaded at start-up.
    ``freeze_heap``: freeze the start-up heap once ready (:func:`freeze_start_up_heap`): for a served process,
    not for a test that runs servers inside its own process."""
    chat = ChatHandler(settings)
    responses = ResponsesHandler(settings)
    messages = MessagesHandler(settings)
    traces = tracing.Tracing.from_env()  # None unless an OTLP endpoint is set (docs/observability.md)
    in_flight = InFlight()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        started = time.time()
        ready = asyncio.Event()
        if traces is not None:
            traces.start()  # here, in each worker process: its own exporter thread
        model_dir = Path(settings.router.model_dir) if settings.router.model_dir else None
        the_router = router or Router.load(model_dir, threads=settings.router.threads)
        decider = Decider(settings, the_router)
        upstream = Upstream(settings)
        # Before anything else that takes long: an unreachable Postgres or a schema from a newer version stops
        # the start here, with the reason, rather than failing requests later.
        databases = await asyncio.to_thread(open_databases, settings, records=settings.feedback.enabled)
        budgets = None
        if settings.named_keys():
            entries = settings.models.entries
            unpriced = [m.name for m, p in zip(entries, prices_of(entries))
                        if p.per_input_token + p.per_output_token <= 0]
            budgets = make_budgets(settings, await asyncio.to_thread(open_spend_store, settings, databases),
                                   unpriced=unpriced)
        files = FileStore(databases.files, blobs=Path(settings.storage_dir()) / "blobs"
                          if databases.files.kind == "sqlite" else None)
        documents = DocumentService(settings, files)
        stored_responses = _response_store(settings, databases.files)
        metrics.forget_dead_workers()
        metrics.precreate(list(settings.aliases),
                          [(t.name, m.name) for t, m in zip(settings.models.tiers, settings.models.entries)])
        metrics.precreate_feedback([t.name for t in settings.models.tiers])
        reloader = Reloader.start(settings, the_router, decider, _info_labels)
        f = settings.feedback
        records = RecordStore(databases.records, retention_days=f.retention_days, limit_records=f.limit_records,
                              limit_store_bytes=f.limit_store_bytes, problem=databases.problem) if f.enabled else None
        for tier in settings.models.tiers:
            missing = upstream.missing_keys(tier)
            if missing:
                log.warning("no API key for the %s tier (%s): set %s; routing and /v1/route still work, and "
                            "`route-llm serve --demo` answers from a built-in stand-in", tier.name,
                            settings.models.model(tier).name, " or ".join(missing))
        if budgets is not None:
            await budgets.snapshot()  # the spend metric starts from the store, not from zero
        await decider.score_many(["warm-up"])  # the first ONNX run allocates; pay it before ready
        if settings.upstream.warmup:
            await upstream.warm_up()
        if freeze_heap:
            freeze_start_up_heap()
        ready.set()
        # Not "ready": uvicorn binds after the lifespan (one worker). `route-llm serve` says "ready" with the
        # URL once /health/ready answers on the socket (cli.announce_when_ready).
        hup = reloader.install_signal_handler()
        log.info("route-llm worker loaded in %.2fs (router %s, version %s, %d tiers, default cuts %s)",
                 time.time() - started, the_router.version, reloader.current.version, len(settings.models.tiers),
                 cuts_header(decider.default_policy.cuts))
        # The router thread gets the GIL back sooner after each ONNX run while the loop is busy (decider.py).
        with short_gil_switch():
            try:
                # PinMiddleware replaces settings, router and decider with the reloader's current ones, per request.
                yield {"services": Services(settings=settings, router=the_router, decider=decider, upstream=upstream,
                                            documents=documents, ready=ready, started_at=started, records=records,
                                            reloader=reloader, router_version=reloader.current.version,
                                            budgets=budgets, responses=stored_responses)}
            finally:
                # Requests cancelled at the shutdown deadline still write their ending and their record.
                if not await in_flight.drained(DRAIN_SECONDS):
                    log.warning("shutdown: %d requests still running after %.0f s; closing the stores under them",
                                in_flight.count, DRAIN_SECONDS)
                if hup:
                    reloader.remove_signal_handler()
                documents.close()
                if records is not None:
                    records.close()
                if budgets is not None:
                    await asyncio.to_thread(budgets.close)  # queued charges are written before the pool closes
                if stored_responses is not None:
                    stored_responses.close()
                databases.close()
                if traces is not None:
                    traces.stop()

    routes = [
        Route("/v1/chat/completions", chat.chat, methods=["POST"]),
        Route("/v1/responses", responses.chat, methods=["POST"]),
        *stored.routes(),
        Route("/v1/messages", messages.chat, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
        Route("/v1/route", route_only, methods=["POST"]),
        Route("/v1/feedback", post_feedback, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"]),
        *files_api.routes(),
        Route("/health/live", health_live, methods=["GET"]),
        Route("/health/ready", health_ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
        Route("/admin/spend", admin_spend, methods=["GET"]),
        Route("/admin/spend/reset", admin_spend_reset, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        # Tracing outermost (the request span covers everything), then AnthropicEdge: it renders the guard's
        # refusals on /v1/messages in Anthropic's shape.
        middleware=[*([Middleware(tracing.TracingMiddleware, tracing=traces)] if traces is not None else []),
                    Middleware(AnthropicEdge), Middleware(PinMiddleware),
                    Middleware(GuardMiddleware, settings=settings, tracker=in_flight)],
        exception_handlers={ProxyError: handle_proxy_error, HTTPException: handle_http_exception,
                            StorageUnavailable: _storage_unavailable, Exception: handle_unexpected},
        lifespan=lifespan,
    )


def _response_store(settings: Settings, db: Database) -> ResponseStore | None:
    """Stored Responses, when ``responses.store`` (or, left unset, the presence of proxy keys) says so."""
    r = settings.responses
    if not r.enabled(bool(settings.all_api_keys())):
        return None
    return open_response_store(db, settings.storage_dir(), retention_days=r.retention_days,
                               limit_per_key=r.limit_per_key)


async def _storage_unavailable(request: Request, exc: Exception) -> Response:
    """The database went away mid-request (Postgres down, pool exhausted): a 503 to retry, not a 500."""
    log.warning("storage unavailable: %s", exc)
    return error_response(Overloaded("the proxy's file store is unavailable; retry", code="storage_unavailable",
                                     headers={"retry-after": "1"}))


def _info_labels(live: Live) -> tuple[str, ...]:
    """The route_llm_info labels of what serves (they follow a reload)."""
    return (__version__, live.router.version, cuts_header(live.decider.default_policy.cuts),
            _share_label(live.settings))


def _share_label(settings: Settings) -> str:
    """The info gauge's target: the most expensive tier's share, which the dashboard draws against the measured
    share of that tier; "none" when fixed thresholds apply (settings decided which, at load)."""
    shares = settings.router.shares
    return "none" if shares is None else str(shares[-1])


def app_from_env() -> Starlette:
    """Zero-argument factory for ``uvicorn --factory`` / multi-worker mode: config path from the env."""
    # The supervisor forwards SIGHUP (reload) to workers; until this worker's lifespan takes it over, ignore it
    # rather than die by its default action.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return create_app(load_settings(os.environ.get(CONFIG_ENV)), freeze_heap=True)
