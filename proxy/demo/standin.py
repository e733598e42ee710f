"""A Gemini-API-compatible stand-in for the upstream model service.

The upstream API is the one component that cannot run everywhere: tests, benchmarks and ``route-llm serve
--demo`` point LiteLLM's real Gemini provider at this server (``GEMINI_API_BASE`` or a model's
``api_base``). It speaks just enough of ``generativelanguage.googleapis.com`` for chat:
``POST /models/{model}:generateContent`` and ``POST /models/{model}:streamGenerateContent?alt=sse``, and
answers with a fixed, deterministic text (it is not a model), or with a tool call or JSON shaped by the
request's schemas (``proxy/demo/standin_reply.py``), so that clients validating structured output accept it. It
records every request so tests can assert what was forwarded, and it can be told to misbehave (status codes,
delays, dropped connections, a stream that breaks half-way) through ``POST /_control`` or, in-process, through
:class:`StandIn` directly. It lists the models it serves (``GET /v1beta/models``, paginated as Google does) and
answers a retired model's calls with Google's 404 ``NOT_FOUND`` (:attr:`StandIn.retired`), for ``route-llm check``.

It ships in the package, not only under tests/, so that a user without a Gemini key can see a whole
round trip: ``route-llm standin --port 8765`` (or ``python tests/standin.py``, as the scripts do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.demo.standin_reply import reply_parts


@dataclass
class Fault:
    """One injected misbehaviour, consumed by the next matching request.

    kind: "status" (answer ``status`` with a Google-style error body), "delay" (sleep ``seconds`` then
    answer normally), "reset" (close the connection without answering), "midstream" (streaming only:
    send one chunk, then break the connection), "body" (answer 200 with ``body`` as ``content_type``, as a
    gateway's error page or a cut connection gives: HTML, JSON cut short), "cut" (streaming only: one chunk,
    then half an event, then a clean end of the response, as a proxy in between that gives up does),
    "garbled" (streaming only: one chunk, then an event that is not JSON, then the rest of the stream), "long"
    (streaming only: ``events`` events of 10 kB, sent as fast as the reader takes them, as a long answer from an
    upstream faster than its reader is).
    """

    kind: str  # "status" | "delay" | "reset" | "midstream" | "slow_stream" (``seconds`` between chunks) | "body"
    #            | "cut" | "garbled" | "long"
    status: int = 503
    seconds: float = 0.0
    retry_after: float | None = None
    model: str | None = None  # None matches any model
    body: str = ""
    content_type: str = "text/html"
    events: int = 0  # "long": how many events the stream has


# A "midstream" fault breaks a stream after its first chunk; a plain request given one answers normally.
_MIXED_FAULTS = (Fault("status", status=503), Fault("status", status=500),
                 Fault("status", status=429, retry_after=0.05), Fault("reset"), Fault("midstream"),
                 Fault("delay", seconds=0.5))


# What the stand-in lists by default: the models the tests and the demo call, today's, and one that only embeds.
SERVED_MODELS = ("gemini-1.5-flash", "gemini-1.5-pro", "gemini-2.0-flash", "gemini-2.0-flash-lite", "gemini-2.5-flash",
                 "gemini-2.5-flash-lite", "gemini-2.5-pro", "gemini-2.5-pro-preview-06-05", "text-embedding-004")


@dataclass
class Recorded:
    model: str
    stream: bool
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def system_instruction(self) -> str | None:
        """The text of the request's system instruction (the REST API takes either spelling), or None."""
        instruction = self.body.get("systemInstruction", self.body.get("system_instruction"))
        if not isinstance(instruction, dict):
            return None
        return "".join(p.get("text", "") for p in instruction.get("parts", []) if isinstance(p, dict))


@dataclass
class StandIn:
    """State shared by the stand-in's handlers: the request log, queued faults and a random fault rate."""

    requests: list[Recorded] = field(default_factory=list)
    record: bool = True  # keep each request for inspection (tests); `serve --demo` keeps none
    faults: deque[Fault] = field(default_factory=deque)
    fault_rate: float = 0.0
    fault_status: int = 503
    fault_mix: bool = False  # random faults of every kind instead of ``fault_status`` only
    reply_words: int = 8
    streams_closed_early: int = 0  # streams whose reader went away before the last chunk
    long_streams_ended: int = 0  # "long" streams over, sent whole or left by their reader
    stream_chunks: int = 3
    served: list[str] = field(default_factory=lambda: list(SERVED_MODELS))  # listed by GET /v1beta/models
    retired: set[str] = field(default_factory=set)  # not listed, and their calls answer 404 NOT_FOUND
    limit_page: int = 3  # models per page of the list, so that every listing is paginated
    listings: list[str] = field(default_factory=list)  # the key each page of the model list was asked with
    _rng: random.Random = field(default_factory=lambda: random.Random(1234))

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()
        self.fault_rate = 0.0
        self.streams_closed_early = 0
        self.long_streams_ended = 0
        self.served = list(SERVED_MODELS)
        self.retired.clear()
        self.listings.clear()

    def models_called(self) -> list[str]:
        return [r.model for r in self.requests]

    def _take_fault(self, model: str) -> Fault | None:
        for fault in list(self.faults):
            if fault.model is None or fault.model == model:
                self.faults.remove(fault)
                return fault
        if self.fault_rate and self._rng.random() < self.fault_rate:
            if self.fault_mix:
                return self._rng.choice(_MIXED_FAULTS)
            return Fault("status", status=self.fault_status)
        return None


def _prompt_text(body: dict[str, Any]) -> str:
    texts: list[str] = []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            if "text" in part:
                texts.append(part["text"])
    return "\n".join(texts)


def _usage(body: dict[str, Any], reply: str) -> dict[str, int]:
    prompt_tokens = max(1, len(_prompt_text(body).split()))
    reply_tokens = max(1, len(reply.split()))
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": reply_tokens,
        "totalTokenCount": prompt_tokens + reply_tokens,
    }


def _google_error(status: int, retry_after: float | None) -> JSONResponse:
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
             503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
    body = {"error": {"code": status, "message": f"stand-in injected {status}", "status": names.get(status, "UNKNOWN")}}
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def _not_found(model: str) -> JSONResponse:
    """Google's answer for a model it does not serve (a retired one, or a typo), word for word."""
    message = (f"models/{model} is not found for API version v1beta, or is not supported for generateContent. "
               "Call ListModels to see the list of available models and their supported methods.")
    return JSONResponse({"error": {"code": 404, "message": message, "status": "NOT_FOUND"}}, status_code=404)


def _model_entry(name: str) -> dict[str, Any]:
    embeds = "embedding" in name
    methods = ["embedContent"] if embeds else ["generateContent", "countTokens", "createCachedContent"]
    return {"name": f"models/{name}", "version": "001", "displayName": name.replace("-", " ").title(),
            "inputTokenLimit": 1048576, "outputTokenLimit": 8192, "supportedGenerationMethods": methods}


class _Reset(Exception):
    """Raised inside a handler to drop the connection without a response."""


def build_app(state: StandIn) -> Starlette:
    async def generate(request: Request) -> Response:
        target = request.path_params["target"]
        model, _, action = target.partition(":")
        body = await request.json()
        stream = action == "streamGenerateContent"
        if state.record:
            state.requests.append(Recorded(model, stream, body, {k.lower(): v for k, v in request.headers.items()}))
        if model in state.retired:
            return _not_found(model)
        fault = state._take_fault(model)
        if fault is not None:
            if fault.kind == "status":
                return _google_error(fault.status, fault.retry_after)
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            if fault.kind == "reset":
                raise _Reset()
            if fault.kind == "body":
                return Response(fault.body, status_code=200, media_type=fault.content_type)
        parts = reply_parts(model, body, state.reply_words)
        reply_text = " ".join(p.get("text", "") for p in parts)
        usage = _usage(body, reply_text)
        if not stream:
            return JSONResponse({
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage,
                "modelVersion": model,
            })
        if fault is not None and fault.kind == "long":
            return StreamingResponse(_long_sse(state, model, fault.events, usage), media_type="text/event-stream")
        midstream = fault is not None and fault.kind == "midstream"
        pause = fault.seconds if fault is not None and fault.kind == "slow_stream" else 0.0
        damage = fault.kind if fault is not None and fault.kind in ("cut", "garbled") else None
        return StreamingResponse(_sse(state, model, parts, usage, midstream, pause, damage),
                                 media_type="text/event-stream")

    async def list_models(request: Request) -> Response:
        """``GET /v1beta/models?pageSize=N&pageToken=T``: ``{"models": [...], "nextPageToken": T}``, as Google pages
        it (the token is an offset here; Google's is opaque). The key is required, as Google requires it."""
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        state.listings.append(key or "")
        if not key:
            body = {"error": {"code": 403, "message": "Method doesn't allow unregistered callers (callers without "
                              "established identity). Please use API Key or other form of API consumer identity "
                              "to call this API.", "status": "PERMISSION_DENIED"}}
            return JSONResponse(body, status_code=403)
        names = [n for n in state.served if n not in state.retired]
        try:
            start = int(request.query_params.get("pageToken") or 0)
            size = min(int(request.query_params.get("pageSize") or 50), state.limit_page)
        except ValueError:
            return _google_error(400, None)
        page: dict[str, Any] = {"models": [_model_entry(n) for n in names[start:start + size]]}
        if start + size < len(names):
            page["nextPageToken"] = str(start + size)
        return JSONResponse(page)

    async def control(request: Request) -> Response:
        body = await request.json()
        if body.get("reset"):
            state.reset()
        if "fault_rate" in body:
            state.fault_rate = float(body["fault_rate"])
        if "fault_mix" in body:
            state.fault_mix = bool(body["fault_mix"])
        if "fault_status" in body:
            state.fault_status = int(body["fault_status"])
        for f in body.get("faults", []):
            state.faults.append(Fault(**f))
        if "retired" in body:
            state.retired = set(body["retired"])
        return JSONResponse({"requests": len(state.requests), "queued_faults": len(state.faults)})

    return Starlette(routes=[
        Route("/models/{target:path}", generate, methods=["POST"]),
        Route("/v1beta/models/{target:path}", generate, methods=["POST"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/v1beta/models", list_models, methods=["GET"]),
        Route("/_control", control, methods=["POST"]),
    ], exception_handlers={_Reset: _reset_handler})


async def _reset_handler(request: Request, exc: Exception) -> Response:
    """Drop the connection with no answer, as a crashed upstream does (the client sees a reset).

    An exception raised from here instead would become a complete 500 and a connection closed only after
    it: a client may have put the connection back in its pool by then, and whether its next request (a
    retry) meets the closed connection is a race. That made a test of retries pass or fail by timing.
    """
    request.scope["transport"].abort()
    return Response(status_code=500)  # written to an aborted transport: nothing is sent


class _Protocol(HttpToolsProtocol):
    """uvicorn's protocol with each request's transport in its scope, for the "reset" fault."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["transport"] = self.transport  # type: ignore[typeddict-unknown-key]


async def _sse(state: StandIn, model: str, parts: list[dict[str, Any]], usage: dict[str, int], midstream: bool,
               pause: float, damage: str | None = None) -> AsyncIterator[str]:
    if "functionCall" in parts[0]:
        pieces: list[list[dict[str, Any]]] = [parts]
    else:
        words = parts[0]["text"].split(" ")
        n = max(1, state.stream_chunks)
        size = max(1, -(-len(words) // n))
        pieces = [[{"text": " ".join(words[i:i + size]) + (" " if i + size < len(words) else "")}]
                  for i in range(0, len(words), size)]
    finished = False
    try:
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            chunk: dict[str, Any] = {"candidates": [{"content": {"role": "model", "parts": piece}, "index": 0}],
                                     "modelVersion": model}
            if last:
                chunk["candidates"][0]["finishReason"] = "STOP"
                chunk["usageMetadata"] = usage
            yield f"data: {json.dumps(chunk)}\r\n\r\n"
            if midstream and i == 0:
                await asyncio.sleep(0.01)
                raise ConnectionResetError("stand-in broke the stream")
            if damage == "cut" and i == 0:
                yield 'data: {"candidates": [{"content": {"role": "model", "parts": [{"te'
                finished = True
                return
            if damage == "garbled" and i == 0:
                yield "data: <html><body>502 Bad Gateway</body></html>\r\n\r\n"
            await asyncio.sleep(pause)
        finished = True
    finally:
        if not finished and not midstream:
            state.streams_closed_early += 1


async def _long_sse(state: StandIn, model: str, events: int, usage: dict[str, int]) -> AsyncIterator[str]:
    """``events`` events of 10 kB each, numbered (LiteLLM refuses a stream that repeats one chunk) and built from one
    text, so that the stand-in outruns any reader; the last one says STOP. A reader that leaves first is counted in
    ``streams_closed_early``."""
    text = "lorem ipsum " * 850

    def event(i: int, last: bool) -> str:
        chunk: dict[str, Any] = {"candidates": [{"content": {"role": "model", "parts": [{"text": f"{i} {text}"}]},
                                                 "index": 0}], "modelVersion": model}
        if last:
            chunk["candidates"][0]["finishReason"] = "STOP"
            chunk["usageMetadata"] = usage
        return f"data: {json.dumps(chunk)}\r\n\r\n"

    finished = False
    try:
        for i in range(events):
            yield event(i, i == events - 1)
            await asyncio.sleep(0)
        finished = True
    finally:
        if not finished:
            state.streams_closed_early += 1
        state.long_streams_ended += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StandInServer:
    """Runs the stand-in in a background thread of the current process (for tests)."""

    def __init__(self, port: int | None = None, *, record: bool = True) -> None:
        self.state = StandIn(record=record)
        self.port = port or free_port()
        config = uvicorn.Config(build_app(self.state), host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off", http=_Protocol)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandInServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-mix", action="store_true",
                        help="random faults of every kind (503, 500, 429, dropped connection, broken stream, delay)")
    args = parser.parse_args()
    serve(port=args.port, fault_rate=args.fault_rate, fault_mix=args.fault_mix)


def serve(*, host: str = "127.0.0.1", port: int = 8765, fault_rate: float = 0.0, fault_mix: bool = False) -> None:
    """Run the stand-in in the foreground (``route-llm standin``, ``python tests/standin.py``)."""
    state = StandIn(fault_rate=fault_rate, fault_mix=fault_mix)
    uvicorn.run(build_app(state), host=host, port=port, log_level="warning", lifespan="off", http=_Protocol)


if __name__ == "__main__":
    main()
