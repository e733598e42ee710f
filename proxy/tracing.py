"""OpenTelemetry traces of the requests the proxy serves: off unless asked for, and then one module's concern.

Tracing is an optional extra (``pip install 'route-llm[otel]'``) and is turned on the way every OpenTelemetry
SDK is: by an OTLP endpoint in the environment (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keeps it
off. The other standard variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_PROPAGATORS``) are read by the SDK itself.

When it is off nothing of OpenTelemetry is imported and the request path pays one context-variable read per
span it would have opened: :func:`span` and :func:`attempt` hand back :data:`NO_SPAN`, whose methods do nothing.
When it is on, :class:`TracingMiddleware` (outermost) opens the request's SERVER span, continuing the client's
W3C ``traceparent`` when it sends a valid one, and makes this app's tracer the current one for the request; the
layers below open child spans through :func:`span` without knowing whether anything records them.

The provider is this app's own, not OpenTelemetry's global one: it is made in the lifespan, so each worker
process (uvicorn starts them as separate processes) has its own exporter thread, and several apps in one process
(the tests) do not share one. Attribute names follow the GenAI semantic conventions (``gen_ai.*``) where they
have a name for the fact, and ``route_llm.*`` otherwise.
"""

from __future__ import annotations

import contextvars
import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


log = logging.getLogger("route_llm")

# This module sits under every layer that calls it (edge, upstream), so it reads the decision, a model's settings
# and the outcome by their attributes (typed Any below) instead of importing their types from those layers.

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "route-llm"
#: Probes and scrapes arrive every few seconds and say nothing about a request's time: not traced.
UNTRACED_PREFIXES = ("/health/", "/metrics")

#: LiteLLM's provider prefix → the GenAI conventions' well-known ``gen_ai.provider.name`` (others pass as they are).
PROVIDERS = {"gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "openai": "openai", "anthropic": "anthropic",
             "azure": "azure.ai.openai", "bedrock": "aws.bedrock", "mistral": "mistral_ai", "groq": "groq",
             "deepseek": "deepseek", "xai": "x_ai", "cohere": "cohere"}


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint set, and the SDK not switched off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def provider_name(litellm_model: str) -> str:
    """``gen_ai.provider.name`` of a LiteLLM model string (``gemini/gemini-2.5-flash`` → ``gcp.gemini``)."""
    prefix = litellm_model.split("/", 1)[0] if "/" in litellm_model else "openai"
    return PROVIDERS.get(prefix, prefix)


# --- what the request path holds -------------------------------------------------------------------------
class NoSpan:
    """The span the request path gets while tracing is off: a context manager and recorder that does nothing."""

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __bool__(self) -> bool:
        return False

    def set(self, key: str, value: Any) -> None:
        return None

    def routed(self, decision: Any, version: str) -> None:
        return None

    def end(self, outcome: str, status: int | None = None) -> None:
        return None


NO_SPAN = NoSpan()


class Span(NoSpan):
    """One recording span: a child of the current span, current itself inside ``with`` (so spans opened in
    the block nest under it); :meth:`end` closes one opened without ``with`` (an upstream attempt)."""

    def __init__(self, tracer: Any, name: str, attributes: dict[str, Any], kind: str) -> None:
        from opentelemetry import trace

        self._span = tracer.start_span(name, kind=getattr(trace.SpanKind, kind.upper()), attributes=attributes)
        self._current: Any = None

    def __enter__(self) -> Span:
        from opentelemetry import trace

        self._current = trace.use_span(self._span, end_on_exit=True, record_exception=True,
                                       set_status_on_exception=True)
        self._current.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._current.__exit__(*exc)

    def __bool__(self) -> bool:
        return True

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def routed(self, decision: Any, version: str) -> None:
        """The routing decision: score, tier, cut points and which router made it."""
        d = decision
        self.set("route_llm.router.tier", d.tier.name)
        self.set("route_llm.router.tier_index", d.tier.index)
        self.set("route_llm.router.score", d.score)
        self.set("route_llm.router.turn_score", d.turn_score)
        self.set("route_llm.router.threshold", d.threshold)
        if d.cuts is not None:
            self.set("route_llm.router.cuts", list(d.cuts))
        self.set("route_llm.router.version", version or None)
        self.set("route_llm.router.error", d.failed)

    def end(self, outcome: str, status: int | None = None) -> None:
        """Close an attempt's span with its outcome: ``ok``, or the failure's reason (a closed set) and status."""
        from opentelemetry.trace import Status, StatusCode

        self.set("route_llm.upstream.outcome", outcome)
        if isinstance(status, int):  # a LiteLLM error's status_code is not always one
            self.set("http.response.status_code", status)
        if outcome != "ok":
            self.set("error.type", outcome)
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        self._span.end()


_TRACER: contextvars.ContextVar[Any] = contextvars.ContextVar("route_llm_tracer", default=None)
_REQUEST: contextvars.ContextVar[Any] = contextvars.ContextVar("route_llm_request_span", default=None)


def span(name: str, **attributes: Any) -> NoSpan:
    """A child span of the current one, for a ``with`` block (:data:`NO_SPAN` when this request is not traced)."""
    tracer = _TRACER.get()
    if tracer is None:
        return NO_SPAN
    return Span(tracer, name, attributes, "internal")


def attempt(model: Any, tier: str, *, number: int, fallback: bool) -> NoSpan:
    """An upstream call's CLIENT span, opened now and closed by ``.end(outcome, status)``."""
    tracer = _TRACER.get()
    if tracer is None:
        return NO_SPAN
    return Span(tracer, f"chat {model.model}", {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": model.model,
        "gen_ai.provider.name": provider_name(model.model), "gen_ai.system": provider_name(model.model),
        "route_llm.tier": tier, "route_llm.model": model.name, "route_llm.upstream.attempt": number,
        "route_llm.upstream.retry": number > 0, "route_llm.upstream.fallback": fallback,
    }, "client")


def outcome(o: Any, model: Any) -> None:
    """Put what the request came to on its SERVER span: GenAI's names for model and tokens, ours for the rest."""
    request = _REQUEST.get()
    if request is None:
        return
    values: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": o.requested, "route_llm.request_id": o.request_id,
        "route_llm.status": o.status,
        "gen_ai.usage.input_tokens": o.prompt_tokens, "gen_ai.usage.output_tokens": o.completion_tokens,
    }
    tier = o.served_tier
    if model is not None and tier is not None:
        provider = provider_name(model.model)
        values.update({"gen_ai.response.model": model.name, "gen_ai.provider.name": provider,
                       "gen_ai.system": provider, "route_llm.tier": tier.name})
    if o.attempts is not None:
        values.update({"route_llm.upstream.retries": o.attempts.retries,
                       "route_llm.upstream.fallback": o.attempts.fallback})
    request.set_attributes(values)


# --- the app's side --------------------------------------------------------------------------------------
class Tracing:
    """This app's tracer provider and exporter: made by :meth:`start` in the lifespan, flushed by :meth:`stop`."""

    def __init__(self) -> None:
        self.provider: Any = None
        self.tracer: Any = None

    @classmethod
    def from_env(cls) -> Tracing | None:
        """A Tracing to start when the environment asks for traces and the extra is installed; else None."""
        if not wanted():
            return None
        if importlib.util.find_spec("opentelemetry.sdk") is None or importlib.util.find_spec(
                "opentelemetry.exporter.otlp.proto.http") is None:
            log.warning("an OTLP endpoint is set but tracing is off: the OpenTelemetry SDK is not installed "
                        "(pip install 'route-llm[otel]')")
            return None
        return cls()

    def start(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from proxy import __version__

        # process.pid: which worker of a `serve --workers N` server a span came from.
        resource = Resource.create({"service.version": __version__, "process.pid": os.getpid()})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        self.provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_BSP_*, OTEL_EXPORTER_*
        self.tracer = self.provider.get_tracer("route_llm", __version__)
        log.info("tracing on: spans go to %s", next(os.environ[n] for n in ENDPOINT_VARIABLES if os.environ.get(n)))

    def stop(self) -> None:
        """Send what is still queued and stop the exporter (at shutdown; bounded by the SDK's export timeout)."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = self.tracer = None


class TracingMiddleware:
    """Outermost: one SERVER span per HTTP request (probes and scrapes aside), parented by the client's
    ``traceparent`` when it is valid. A malformed one is dropped by the propagator, and the request starts a trace
    of its own: a client's tracing header never costs it its answer."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = self.tracing.tracer
        path: str = scope.get("path", "")
        if scope["type"] != "http" or tracer is None or path.startswith(UNTRACED_PREFIXES):
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate, trace
        from opentelemetry.trace import Status, StatusCode

        # Over W3C's 512 bytes the propagator would log a warning per request: a client could fill the log.
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if len(v) <= 512}
        parent = propagate.extract(carrier)
        method: str = scope.get("method", "")
        with tracer.start_as_current_span(f"{method} {path}", context=parent, kind=trace.SpanKind.SERVER,
                                          attributes={"http.request.method": method, "url.path": path}) as server:
            tracer_token, request_token = _TRACER.set(tracer), _REQUEST.set(server)

            async def send_noting_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    server.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        server.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                _TRACER.reset(tracer_token)
                _REQUEST.reset(request_token)
