"""The application factory.

``create_app(settings)`` builds the Starlette app; the heavy objects (ONNX session, tokenizer, LiteLLM
warm-up, file store) are created in the lifespan and handed to handlers as request state, so importing
this module does no work. ``app_from_env`` is the zero-argument factory uvicorn's multi-worker mode needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import __version__, metrics
from proxy.decider import Decider
from proxy.documents_service import DocumentService
from proxy.errors import (
    Overloaded,
    ProxyError,
    RateLimited,
    Unauthorized,
    error_response,
    handle_http_exception,
    handle_proxy_error,
    handle_unexpected,
)
from proxy.responses import ResponsesHandler
from proxy.routes import (
    ChatHandler,
    health_live,
    health_ready,
    list_models,
    metrics_endpoint,
    retrieve_model,
    route_only,
)
from proxy.settings import Settings, load_settings
from proxy.upstream import Upstream
from router import Router

log = logging.getLogger("route_llm")

CONFIG_ENV = "ROUTE_LLM_CONFIG"


def owner_of(key: str | None) -> str:
    """The id files are stored under: a hash of the proxy key (never the key itself), or "" without auth."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""


class GuardMiddleware:
    """Auth, request-rate and in-flight limits, before any handler reads the body.

    Pure ASGI (no BaseHTTPMiddleware) so streaming responses pass straight through and the in-flight
    count covers a stream until its last byte.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = [k.encode() for k in settings.all_api_keys()]
        self.limit_in_flight = settings.server.limit_in_flight
        self.rpm = settings.server.limit_requests_per_minute
        self.in_flight = 0
        self._recent: dict[str, deque[float]] = {}

    def _authenticate(self, scope: Scope) -> str | None:
        """Return the matching key, or raise. Every key is compared, in constant time."""
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise Unauthorized("You didn't provide an API key. Send `Authorization: Bearer <proxy key>`.")
        token = token.strip()
        match = None
        for key in self.keys:
            if hmac.compare_digest(key, token):
                match = key
        if match is None:
            raise Unauthorized("Incorrect API key provided for this proxy.")
        return match.decode()

    def _rate_limit(self, key: str) -> None:
        assert self.rpm is not None
        now = time.monotonic()
        window = self._recent.setdefault(key, deque())
        while window and now - window[0] > 60:
            window.popleft()
        if len(window) >= self.rpm:
            retry = max(1, int(60 - (now - window[0])) + 1)
            raise RateLimited(f"this key is limited to {self.rpm} requests per minute",
                              headers={"retry-after": str(retry)})
        window.append(now)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        guarded = path.startswith("/v1/") or (path == "/metrics" and not self.settings.server.open_metrics)
        try:
            key = self._authenticate(scope) if (guarded and self.keys) else None
            scope.setdefault("state", {})["owner"] = owner_of(key)
            if guarded and self.rpm is not None:
                self._rate_limit(key or "")
            if path.startswith("/v1/") and self.limit_in_flight is not None and self.in_flight >= self.limit_in_flight:
                raise Overloaded(f"the proxy is at its limit of {self.limit_in_flight} requests in flight; retry",
                                 headers={"retry-after": "1"})
        except ProxyError as exc:
            # Refused before any handler ran, so route_llm_requests_total never sees these.
            reason = {Unauthorized: "unauthorized", RateLimited: "rate_limited"}.get(type(exc), "overloaded")
            metrics.REJECTED.labels(reason).inc()
            await error_response(exc)(scope, receive, send)
            return
        if not path.startswith("/v1/"):  # health probes and scrapes: neither limited nor counted in flight
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        metrics.IN_FLIGHT.inc()
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs at the shutdown deadline (server.timeout_shutdown) and would
            # answer a bare text 500; a 503 in OpenAI's shape tells the client to retry elsewhere.
            if not started:
                await error_response(Overloaded("the proxy is shutting down; retry", code="shutting_down",
                                                headers={"retry-after": "1"}))(scope, receive, send)
            raise
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()


def create_app(settings: Settings, *, router: Router | None = None) -> Starlette:
    """Build the proxy. ``router`` may be passed in (tests share one); otherwise it is loaded at start-up."""
    chat = ChatHandler(settings)
    responses = ResponsesHandler(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        started = time.time()
        ready = asyncio.Event()
        model_dir = Path(settings.router.model_dir) if settings.router.model_dir else None
        the_router = router or Router.load(model_dir, threads=settings.router.threads)
        decider = Decider(settings, the_router)
        upstream = Upstream(settings)
        documents = DocumentService(settings)
        metrics.forget_dead_workers()
        metrics.precreate(list(settings.aliases), [settings.models.weak.name, settings.models.strong.name])
        # A fixed threshold wins over strong_share, which then is no target: say so rather than show a stale one.
        share = "none" if settings.router.threshold is not None else str(settings.router.strong_share)
        metrics.INFO.labels(__version__, the_router.version, f"{decider.default_threshold:.4f}", share).set(1)
        for tier in ("weak", "strong"):
            missing = upstream.missing_keys(tier)
            if missing:
                log.warning("no API key for the %s model (%s): set %s; routing and /v1/route still work, and "
                            "`route-llm serve --demo` answers from a built-in stand-in", tier,
                            settings.models.by_tier(tier).name, " or ".join(missing))
        await decider.score_many(["warm-up"])  # the first ONNX run allocates; pay it before ready
        if settings.upstream.warmup:
            await upstream.warm_up()
        ready.set()
        # Not "ready": uvicorn binds after the lifespan (one worker). `route-llm serve` says "ready" with the
        # URL once /health/ready answers on the socket (cli.announce_when_ready).
        log.info("route-llm worker loaded in %.2fs (router %s, default threshold %.4f)", time.time() - started,
                 the_router.version, decider.default_threshold)
        try:
            yield {"settings": settings, "router": the_router, "decider": decider, "upstream": upstream,
                   "documents": documents, "ready": ready, "started_at": started}
        finally:
            documents.close()

    routes = [
        Route("/v1/chat/completions", chat.chat, methods=["POST"]),
        Route("/v1/responses", responses.chat, methods=["POST"]),
        Route("/v1/route", route_only, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"]),
        *DocumentService.routes(),
        Route("/health/live", health_live, methods=["GET"]),
        Route("/health/ready", health_ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(GuardMiddleware, settings=settings)],
        exception_handlers={ProxyError: handle_proxy_error, HTTPException: handle_http_exception,
                            Exception: handle_unexpected},
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """Zero-argument factory for ``uvicorn --factory`` / multi-worker mode: config path from the env."""
    return create_app(load_settings(os.environ.get(CONFIG_ENV)))
