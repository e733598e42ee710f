"""The Anthropic Messages endpoints: POST /v1/messages (the chat path through ChatHandler's hooks),
POST /v1/messages/count_tokens, and the edge that makes every answer under /v1/messages Anthropic's.

:class:`AnthropicEdge` is the outermost middleware, for paths under ``/v1/messages`` only. On the way in it
reads ``x-api-key`` (Anthropic's auth header) as the bearer token the guard checks, so both spellings map to
the same proxy keys. On the way out it re-renders errors: every refusal in the proxy (the guard's auth, limits,
body size and deadlines, the handler's typed errors, unknown paths and methods, the 500 of a bug) is a
``ProxyError`` rendered once in OpenAI's shape, and this is the one place that turns it into Anthropic's
``{"type": "error", "error": {"type", "message"}}`` with the same status. So no renderer below learns a second
dialect, and no error path under /v1/messages can be missed. Successful answers pass through untouched.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.edge.chat import ChatRequest
from proxy.edge.messages import ANTHROPIC_NAME, MessagesRequest, client_paths, parse_messages_request
from proxy.edge.messages_reply import MessagesStream, error_body, from_openai_error, render_message
from proxy.edge.routes import ChatHandler, StreamFormat, read_json
from proxy.errors import ProxyError
from proxy.services import services
from proxy.upstream.tokens import count_input_tokens

PREFIX = "/v1/messages"


# The document paths of the request being handled: set by ``parse``, read when an error leaves ``chat``. A context
# variable, because ChatHandler.chat keeps the parsed request to itself and one handler serves many requests.
_DOCUMENT_PATHS: ContextVar[dict[str, str]] = ContextVar("document_paths", default={})


class MessagesHandler(ChatHandler):
    endpoint = "messages"

    def parse(self, body: Any) -> ChatRequest:
        req = parse_messages_request(body, limit_messages=self.settings.server.limit_messages,
                                     limit_content_chars=self.settings.server.limit_content_chars)
        _DOCUMENT_PATHS.set(req.document_paths)
        return req

    async def chat(self, request: Request) -> Response:
        try:
            return await super().chat(request)
        except ProxyError as exc:  # a documents error names the chat position; say the client's
            client_paths(exc, _DOCUMENT_PATHS.get())
            raise

    def render(self, chat: ChatRequest, completion: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(chat, MessagesRequest)
        return render_message(chat, completion)

    def stream_format(self, chat: ChatRequest, model_name: str) -> StreamFormat:
        assert isinstance(chat, MessagesRequest)
        return MessagesStream(chat, model_name)

    def param_name(self, name: str) -> str:
        return ANTHROPIC_NAME.get(name, name)

    async def count_tokens(self, request: Request) -> Response:
        """POST /v1/messages/count_tokens: routed like a message (the model name, then the router on the user
        turns), then counted offline by LiteLLM's tokenizer for the chosen tier's model. Attached PDFs are
        counted as the page text the documents path would send."""
        state = services(request)
        settings = state.settings  # the live settings (a reload may have changed the tiers)
        body = await read_json(request, settings.server.limit_body_bytes)
        chat = parse_messages_request(body, limit_messages=settings.server.limit_messages,
                                      limit_content_chars=settings.server.limit_content_chars, counting=True)
        target = state.decider.resolve(chat.model)
        messages = chat.messages
        if chat.files:
            try:
                messages, _ = await state.documents.expand(chat, owner=request.state.owner,
                                                           party=request.state.party)
            except ProxyError as exc:
                client_paths(exc, chat.document_paths)
                raise
        decision = await state.decider.decide(target, state.decider.texts(chat.messages), document=bool(chat.files),
                                              party=request.state.party)
        model = settings.models.model(decision.tier)
        count = await run_in_threadpool(count_input_tokens, model.model, messages, chat.params.get("tools"))
        return JSONResponse({"input_tokens": count}, headers={"x-route-llm-tier": decision.tier.name,
                                                             "x-route-llm-model": model.name})


class AnthropicEdge:
    """x-api-key in, Anthropic's error shape out, for ``/v1/messages`` paths (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        scope["headers"] = _bearer_from_api_key(scope.get("headers", []))
        held: Message | None = None  # an error's start, held until its body is rewritten
        chunks: list[bytes] = []
        started = False

        async def rewrite(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, held = held, None
                await _send_error(send, start, b"".join(chunks))
                return
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            # A bug below: Starlette's outermost handler would answer in OpenAI's shape; answer here first, then
            # re-raise so that it is still logged (the outer handler sees the response started and sends nothing).
            if not started:
                await JSONResponse(error_body(500, "internal error in route-llm; see the server log"),
                                   status_code=500)(scope, receive, send)
            raise


def _bearer_from_api_key(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``x-api-key: K`` as ``authorization: Bearer K`` when no authorization header is sent (Claude Code sends
    one or the other: ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN)."""
    names = {name for name, _ in headers}
    if b"authorization" in names or b"x-api-key" not in names:
        return headers
    key = next(value for name, value in headers if name == b"x-api-key")
    return [*headers, (b"authorization", b"Bearer " + key)]


async def _send_error(send: Send, start: Message, body: bytes) -> None:
    status = start["status"]
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    out = json.dumps(from_openai_error(status, parsed)).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k not in (b"content-length", b"content-type")]
    headers += [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": out, "more_body": False})
