"""HTTP handlers: chat completions (routed), the dry-run decision, models, health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from proxy import __version__, metrics, tracing
from proxy.edge import shape
from proxy.edge.accounting import Accounting, Outcome
from proxy.edge.chat import parse_chat_request
from proxy.edge.guard import Life
from proxy.edge.jsonbody import parse_json
from proxy.errors import (
    BadRequest,
    BudgetExceeded,
    Overloaded,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    UpstreamError,
)
from proxy.edge.schema_limits import check_schemas
from proxy.request import ChatRequest
from proxy.routing.budget import BudgetRoute, apply_budget, budget_headers
from proxy.routing.decider import Decision, Target
from proxy.routing.render import decision_headers, decision_view
from proxy.services import Services, services
from proxy.settings import Settings
from proxy.upstream.calls import GENERIC, Attempts, StreamCut, client_message
from router.policy import Tier

log = logging.getLogger("route_llm")


async def read_json(request: Request, limit: int | None) -> Any:
    """Read the body up to ``limit`` bytes, parse and check it (``proxy.edge.jsonbody``); refuse bigger bodies
    without reading them all."""
    declared = request.headers.get("content-length")
    if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds this proxy's limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if limit is not None and size > limit:
            raise PayloadTooLarge(f"request body exceeds this proxy's limit of {limit} bytes")
        chunks.append(chunk)
    settings = services(request).settings
    counted = getattr(request.state, "values_counted", False)  # the guard counted them as the body arrived
    return await parse_json(b"".join(chunks), limit_depth=settings.server.limit_json_depth,
                            limit_values=None if counted else settings.server.limit_json_values)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(sent: str | None) -> str:
    """The client's x-request-id when it is a plain token (it is echoed and logged), else a new one."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return f"req-{uuid.uuid4().hex[:16]}"


#: A stream lets the event loop's other tasks run after passing on this many bytes (see ``ChatHandler._sse``).
TURN_BYTES = 8 * 1024


class StreamFormat:
    """How a stream of (OpenAI-shaped) chat chunks goes out on the wire: as chat-completion chunks here, as
    Responses events in ``proxy.edge.responses``. Each method returns the bytes to send (possibly none)."""

    def start(self) -> bytes:
        return b""

    def chunk(self, data: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def error(self, err: ProxyError) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        raise NotImplementedError

    async def complete(self) -> None:
        """Called once the upstream's stream has ended and before ``end`` is sent (never for a stream the client
        cut): the Responses API stores the response here, so that it is durable before the client hears it is
        complete. A ProxyError raised here ends the stream with the format's error instead."""


class ChatStream(StreamFormat):
    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def chunk(self, data: dict[str, Any]) -> bytes:
        if data.get("usage") and not self.include_usage:
            if not data.get("choices"):
                return b""  # the usage-only chunk the client did not ask for
            del data["usage"]
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    def error(self, err: ProxyError) -> bytes:
        return b"data: " + json.dumps(err.body()).encode() + b"\n\n"

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"


class ChatHandler:
    """POST /v1/chat/completions; the Responses API (``proxy.edge.responses``) reuses it through the three hooks
    ``parse``, ``render`` and ``stream_format``, so both endpoints route, retry, count and log alike."""

    endpoint = "chat.completions"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accounting = Accounting(settings)
        self.models = tuple(m.name for m in settings.models.entries)  # by tier index (models are restart-only)

    # --- the endpoint's dialect -------------------------------------------------------------------------
    def parse(self, body: Any) -> ChatRequest:
        return parse_chat_request(body, limit_messages=self.settings.server.limit_messages,
                                  limit_content_chars=self.settings.server.limit_content_chars)

    def render(self, chat: ChatRequest, completion: dict[str, Any]) -> dict[str, Any]:
        return completion

    def stream_format(self, chat: ChatRequest, model_name: str) -> StreamFormat:
        return ChatStream(chat.include_usage)

    def param_name(self, name: str) -> str:
        """How the endpoint's clients spell a chat parameter (for the dropped-parameters header)."""
        return name

    async def load(self, request: Request, body: Any, request_id: str) -> ChatRequest:
        """``parse``, for endpoints whose requests need reading state first (a stored Responses chain)."""
        return self.parse(body)

    async def keep(self, request: Request, chat: ChatRequest, answer: dict[str, Any]) -> None:
        """Called with the rendered answer before it is sent (the Responses API stores it here)."""

    # --- helpers ----------------------------------------------------------------------------------------
    def _headers(self, o: Outcome) -> dict[str, str]:
        h = {"x-request-id": o.request_id, **budget_headers(o.budget, o.budget_route)}
        d, tier = o.decision, o.served_tier
        if d is None or tier is None:
            return h
        h.update(decision_headers(d, tier=tier, model=o.served_model or ""))
        if o.attempts is not None and o.attempts.breaker_open:  # served (or refused) around open breakers
            h["x-route-llm-breaker"] = ",".join(f"open:{t.name}" for t in o.attempts.breaker_open)
        if dropped := self._dropped(o):
            h["x-route-llm-dropped-params"] = ",".join(dropped)
        return h

    def _dropped(self, o: Outcome) -> list[str]:
        """Parameters accepted but not sent: by the endpoint's translation, or for the serving model."""
        by_model = o.attempts.dropped if o.attempts is not None else []
        return sorted({*o.dropped, *(self.param_name(name) for name in by_model)})

    def record(self, o: Outcome) -> None:
        with tracing.span("route_llm.record"):
            self.accounting.record(o, endpoint=self.endpoint, dropped=self._dropped(o))
        tracing.outcome(o, self.settings.models.model(o.served_tier) if o.served_tier is not None else None)

    @staticmethod
    def _status_of(exc: ProxyError) -> str:
        if isinstance(exc, BudgetExceeded):
            return "budget_exceeded"
        if isinstance(exc, RateLimited):
            return "rate_limited"
        if isinstance(exc, UpstreamError) or exc.status_code in (502, 503, 504):
            return "upstream_error"
        return "client_error" if exc.status_code < 500 else "error"

    # --- endpoints --------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        state = services(request)
        o = Outcome(request_id=request_id(request.headers.get("x-request-id")), owner=request.state.owner,
                    records=state.records, router_version=state.router_version, models=self.models,
                    key=getattr(request.state, "key_name", None), budgets=state.budgets)
        streaming = False  # a stream records its outcome when it ends, not here
        body: Any = None
        try:
            body = await read_json(request, self.settings.server.limit_body_bytes)
            chat = await self.load(request, body, o.request_id)
            await check_schemas(chat.params, limit_tools=self.settings.server.limit_tools,
                                limit_bytes=self.settings.server.limit_schema_bytes)
            o.dropped = chat.dropped
            texts = state.decider.texts(chat.messages)
            o.text = texts[-1]
            o.target = target = state.decider.resolve(chat.model)
            o.requested = target.requested
            o.target = target = await self._budget(state, o, target)  # before any work a spent budget would waste
            messages = chat.messages
            extra_headers: dict[str, str] = {}
            if chat.files:
                with tracing.span("route_llm.documents", **{"route_llm.documents.count": len(chat.files)}):
                    messages, extra_headers = await state.documents.expand(chat, owner=request.state.owner,
                                                                           party=request.state.party)
            if self.settings.server.log_prompts:
                o.prompt = texts[-1]
            steer = o.budget_route.steer if o.budget_route is not None else 0.0
            with tracing.span("route_llm.route", **{"route_llm.requested_model": target.requested}) as traced:
                o.decision = decision = await state.decider.decide(target, texts, steer=steer,
                                                                      document=bool(chat.files),
                                                                      party=request.state.party)
                traced.routed(decision, state.router_version)
            o.attempts = attempts = Attempts(requested_tier=decision.tier)
            if chat.stream:
                response = await self._stream(state, request, chat, messages, o, extra_headers)
                streaming = True
                return response
            start = time.perf_counter()
            served = await state.upstream.complete(decision.tier, messages, chat.params, attempts)
            o.upstream_seconds = time.perf_counter() - start
            payload = shape.completion(served.answer.model_dump(exclude_none=False), served.model)
            usage = payload.get("usage") or {}
            o.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            o.completion_tokens = int(usage.get("completion_tokens") or 0)
            o.status, o.http_status = "ok", 200
            answer_body = self.render(chat, payload)
            await self.keep(request, chat, answer_body)
            return JSONResponse(answer_body, headers={**self._headers(o), **extra_headers})
        except ProxyError as exc:
            if o.target is None and isinstance(body, dict):
                o.requested = self._requested_label(state, body.get("model"))
            o.status, o.http_status = self._status_of(exc), exc.status_code
            o.error_reason = exc.code or exc.type
            exc.headers = {**self._headers(o), **exc.headers}
            raise
        finally:
            if not streaming:
                self.record(o)

    @staticmethod
    async def _budget(state: Services, o: Outcome, target: Target) -> Target:
        """The key's budget status and what it does to the target (steered, pinned to the cheapest tier), or
        BudgetExceeded; the target unchanged without budgets."""
        if state.budgets is None:
            return target
        o.budget = await state.budgets.status(o.key)
        o.budget_route = route = apply_budget(o.budget, target, state.settings.models.cheapest,
                                              state.settings.router.budget_steer.start)
        return route.target

    @staticmethod
    def _requested_label(state: Services, name: Any) -> str:
        """A bounded metrics label for what the client asked for, when the request failed before routing."""
        try:
            return str(state.decider.resolve(name).requested)
        except ProxyError:
            return "invalid"

    async def _stream(self, state: Services, request: Request, chat: ChatRequest, messages: list[dict[str, Any]],
                      o: Outcome, extra_headers: dict[str, str]) -> Response:
        assert o.decision is not None and o.attempts is not None
        start = time.perf_counter()
        # Usage is always asked of the upstream, so token and cost metrics count streams too; the usage
        # chunk is passed on only to clients that asked for it (stream_options.include_usage).
        params = {**chat.params, "stream_options": {**(chat.params.get("stream_options") or {}),
                                                    "include_usage": True}}
        served = await state.upstream.stream(o.decision.tier, messages, params, o.attempts)
        assert served.rest is not None
        o.first_token_seconds = time.perf_counter() - start
        o.status, o.http_status = "ok", 200
        headers = {**self._headers(o), **extra_headers}
        sse = self._sse(served.answer, served.rest, served.model, o, start, self.stream_format(chat, served.model),
                        request.state.life)
        return StreamingResponse(sse, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})

    async def _sse(self, first: Any, iterator: AsyncIterator[Any], model_name: str, o: Outcome,
                   start: float, fmt: StreamFormat, life: Life) -> AsyncIterator[bytes]:
        ids = shape.ChunkIds()

        def event(chunk: Any) -> bytes:
            data = ids.apply(shape.completion(chunk.model_dump(exclude_none=True), model_name))
            usage = data.get("usage")
            if usage:
                o.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                o.completion_tokens = int(usage.get("completion_tokens") or 0)
            return fmt.chunk(data)

        try:
            if head := fmt.start():
                yield head
            for chunk in ([first] if first is not None else []):
                if line := event(chunk):  # a format may have nothing to send for a chunk
                    yield line
            unpaused = 0  # bytes sent since this stream last let other tasks run
            async for chunk in iterator:
                if life.disconnected:
                    # The client went away, yet nothing else stops this loop when the upstream always has the next
                    # chunk ready: uvicorn drops what is sent to a gone client without an error, and the disconnect
                    # listener's cancellation (anyio) only reaches a task waiting on an unfinished future, which
                    # such a task never is. It then read the whole answer for nobody, parsing it on the event loop
                    # while LiteLLM kept every chunk (20 clients of 10 MB: seconds of freeze, +250 MB). Stop here;
                    # ``finally`` closes the upstream's stream.
                    o.status = "client_disconnected"
                    return
                if line := event(chunk):
                    yield line
                    unpaused += len(line)
                    if unpaused >= TURN_BYTES:
                        # Neither an upstream chunk that has already arrived nor a send the client's socket takes
                        # makes this task wait, so without a pause it would pass on a fast upstream's answer in one
                        # go while every other request waits (20 such streams held the loop for seconds).
                        unpaused = 0
                        await asyncio.sleep(0)
        except Exception as exc:  # after the first byte the status is sent: report in-band, then end
            o.status, o.error_reason = "upstream_error", "stream_broken"
            log.warning("stream from %s broke after the first chunk: %s", model_name, exc)
            what = str(exc) if isinstance(exc, StreamCut) else client_message(exc, 300,
                                                                              generic=GENERIC["stream_broken"])
            err = UpstreamError(f"upstream {model_name} failed mid-stream: {what}", reason="stream_broken")
            yield fmt.error(err)
            if o.attempts is not None:
                o.attempts.errors.append((o.attempts.served_tier or o.attempts.requested_tier, "stream_broken"))
        except (asyncio.CancelledError, GeneratorExit):
            # Stopped from outside: the client went away, or the server's shutdown deadline passed. Either way
            # the answer was not delivered. At shutdown the guard ends the stream with what is left here: an
            # error event and the format's end ([DONE]), as for an upstream failure.
            o.status = "client_disconnected" if life.disconnected else "shutdown"
            if not life.disconnected:
                life.ending = fmt.error(Overloaded("the proxy is shutting down and ended this stream early; retry",
                                                   code="shutting_down")) + fmt.end()
            raise
        finally:
            # Also reached when the client goes away (the generator is closed): closing the upstream
            # stream cancels the model call instead of letting it run to the end unread.
            await iterator.aclose()  # type: ignore[attr-defined]
            o.upstream_seconds = time.perf_counter() - start
            self.record(o)
        try:
            await fmt.complete()
        except ProxyError as exc:
            yield fmt.error(exc)
        yield fmt.end()


async def route_only(request: Request) -> Response:
    """POST /v1/route: the decision the proxy would take, with no upstream call."""
    state = services(request)
    settings = state.settings
    body = await read_json(request, settings.server.limit_body_bytes)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model", next(iter(settings.aliases)))
    decider = state.decider
    target = decider.resolve(model)
    document = body.get("document", False)
    if not isinstance(document, bool):
        raise BadRequest("`document` must be true or false: whether the question is asked about an attached "
                         "document (the chat path knows it from the message's file parts)", param="document")
    if "messages" in body:
        chat = parse_chat_request({"model": model, "messages": body["messages"]},
                                  limit_messages=settings.server.limit_messages,
                                  limit_content_chars=settings.server.limit_content_chars)
        texts = decider.texts(chat.messages)
        document = document or bool(chat.files)
    elif isinstance(body.get("prompt"), str):
        texts = [body["prompt"]]
    else:
        raise BadRequest("send `prompt` (a string) or `messages` (a chat conversation)", param="prompt")
    status = await state.budgets.status(getattr(request.state, "key_name", None)) if state.budgets else None
    try:
        route: BudgetRoute | None = apply_budget(status, target, settings.models.cheapest,
                                                 settings.router.budget_steer.start)
    except BudgetExceeded:
        route = None  # a dry run shows the refusal instead of raising it
    d: Decision = await decider.decide(route.target if route else target, texts, steer=route.steer if route else 0,
                                       document=document, party=request.state.party)
    budget = None
    if status is not None:
        action = ("refuse" if route is None else "cheapest" if route.cheapest else
                  "steer" if route.steer > 0 else "none")
        budget = {**status.body(), "steer": route.steer if route else None, "action": action}
    return JSONResponse({"object": "route.decision", "requested_model": model,
                         **decision_view(d, model=settings.models.model(d.tier).name),
                         "router_model": state.router.version, "budget": budget})


def _model_object(settings: Settings, name: str, tier: Tier | None, created: int) -> dict[str, Any]:
    owner = "route-llm" if tier is None else settings.models.model(tier).model.split("/", 1)[0]
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


async def list_models(request: Request) -> Response:
    settings = services(request).settings
    created = int(services(request).started_at)
    data = [_model_object(settings, name, None, created) for name in settings.aliases]
    models = settings.models
    data += [_model_object(settings, m.name, t, created) for m, t in zip(models.entries, models.tiers)]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    """GET /v1/models/{id}: any name a request may send, ``router-bert-<threshold>`` included (those are
    not listed, there being one per threshold); an unknown name is OpenAI's 404 ``model_not_found``."""
    name: str = request.path_params["model_id"]
    state = services(request)
    target: Target = state.decider.resolve(name)
    return JSONResponse(_model_object(state.settings, name, target.tier, int(state.started_at)))


async def health_live(request: Request) -> Response:
    """Alive, and which release: the version is the package's (``proxy.__version__``)."""
    return JSONResponse({"status": "ok", "version": __version__})


async def health_ready(request: Request) -> Response:
    state = services(request)
    if state.ready.is_set():
        return JSONResponse({"status": "ready", "router_model": state.router.version})
    return JSONResponse({"status": "starting"}, status_code=503)


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
