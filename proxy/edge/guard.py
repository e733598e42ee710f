"""The edge: auth, rate limits, body deadlines and fair slots, before any handler runs.

A request passes through two budgets. While its body is still arriving it holds an *arriving* slot
(``limit_bodies_arriving``, ``..._per_key``): such a request costs a socket and a buffer, no CPU, and a
client that opens hundreds of connections and sends a byte now and then must not be able to hold the
slots that requests being worked on need. The guard reads the whole body itself, under
``timeout_body``, and only then takes an *in-flight* slot (``limit_in_flight``, ``..._per_key``) and calls
the handler, which reads the body from the guard's buffer. Bodies larger than a megabyte are buffered in a
temporary file, not in memory. Both budgets are per key as well as global, so one key cannot take every
slot; without proxy keys the client address stands in for the key.

Pure ASGI (no BaseHTTPMiddleware) so streaming responses pass straight through and the in-flight count
covers a stream until its last byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import metrics, pools, tracing
from proxy.client_addr import client_address, parse_networks
from proxy.edge.jsonbody import ValueCount, too_many_values_error
from proxy.edge.limits import LimitStoreDown, make_limiter
from proxy.errors import (
    HeadersTooLarge,
    Overloaded,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    RequestTimeout,
    Unauthorized,
    error_response,
)
from proxy.settings import Settings

MEMORY_BODY_BYTES = 1 << 20  # beyond this a body waits on disk
CHUNK = 64 * 1024
UPLOAD_OVERHEAD = 64 * 1024  # multipart framing and the `purpose` field around an uploaded file
_BODYLESS = {"GET", "HEAD", "DELETE", "OPTIONS"}

log = logging.getLogger("route_llm")


def owner_of(key: str | None) -> str:
    """The id files are stored under: a hash of the proxy key (never the key itself), or "" without auth."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""


@dataclass
class Life:
    """What the guard learns about a request while it runs, read by handlers through ``request.state``."""

    disconnected: bool = False  # the client went away (an http.disconnect arrived)
    ending: bytes = b""  # what a stream cut at the shutdown deadline still sends: an error event and its end


class InFlight:
    """How many requests the guard has let in and not yet seen end; shared with the app's lifespan.

    At the shutdown deadline uvicorn cancels what still runs and goes straight on to the lifespan's shutdown,
    without waiting for the cancelled requests to end: closing the stores (and, under ``--workers N``, the
    process) under them lost their last words, the ``shutting_down`` event and the decision record. The
    lifespan waits here, briefly, until every request has ended, whatever runs the app.
    """

    def __init__(self) -> None:
        self.count = 0

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while self.count > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


class _Body:
    """A request body: chunks in memory up to MEMORY_BODY_BYTES, then a temporary file."""

    def __init__(self) -> None:
        self.size = 0
        self._chunks: list[bytes] = []
        self._file: IO[bytes] | None = None

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None and self.size > MEMORY_BODY_BYTES:
            self._file = tempfile.TemporaryFile()
            self._file.writelines(self._chunks)
            self._chunks = []
        if self._file is not None:
            self._file.write(data)
        elif data:
            self._chunks.append(data)

    def chunks(self) -> list[bytes] | None:
        """The chunks when the body is in memory; None when it is on disk (read it with ``read``)."""
        return None if self._file is not None else self._chunks

    def rewind(self) -> None:
        if self._file is not None:
            self._file.seek(0)

    def read(self) -> bytes:
        assert self._file is not None
        return self._file.read(CHUNK)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._chunks = []


def _is_upload(scope: Scope) -> bool:
    """A file upload (multipart, up to ``documents.limit_bytes``), not a JSON body."""
    return bool(scope["path"] == "/v1/files" and scope["method"] == "POST")


class _Refused(Exception):
    """Raised while reading a body: answer ``error`` and close the connection."""

    def __init__(self, error: ProxyError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings, tracker: InFlight | None = None) -> None:
        self.app = app
        self.settings = settings
        self.tracker = tracker or InFlight()
        s = settings.server
        named = settings.named_keys()
        self.keys = [k.key.encode() for k in named]
        self.names = {k.key: k.name for k in named}  # what handlers, budgets and logs know a key by
        self.limit_in_flight = s.limit_in_flight
        self.limit_in_flight_per_key = s.limit_in_flight_per_key
        self.limit_arriving = s.limit_bodies_arriving
        self.limit_arriving_per_key = s.limit_bodies_arriving_per_key
        self.rpm = s.limit_requests_per_minute
        self.trusted_proxies = parse_networks(s.trusted_proxies)
        # Built here, not in the lifespan: the guard runs before any handler; a Redis client connects lazily.
        self.limiter = make_limiter(s.limit_requests_per_minute, s.resolved_redis_url(), failure=s.redis_failure,
                                    timeout=s.timeout_redis)
        self.in_flight = 0
        self.arriving = 0
        self._in_flight_by: Counter[str] = Counter()
        self._arriving_by: Counter[str] = Counter()

    # --- checks --------------------------------------------------------------------------------------
    def _address(self, scope: Scope) -> str:
        """The client's address: the peer's, or the one a trusted proxy forwarded (``proxy.client_addr``)."""
        client = scope.get("client")
        peer = client[0] if client else ""
        if not self.trusted_proxies:
            return peer
        forwarded = [value for name, value in scope.get("headers", []) if name == b"x-forwarded-for"]
        return client_address(peer, b",".join(forwarded) if forwarded else None, self.trusted_proxies)

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

    async def _rate_limit(self, key: str) -> None:
        """Count the request against its key's requests-per-minute (``proxy.edge.limits``), or raise."""
        assert self.limiter is not None
        try:
            wait = await self.limiter.hit(key)
        except LimitStoreDown as exc:
            raise Overloaded(f"{exc}; retry", code="rate_limit_unavailable", headers={"retry-after": "1"}) from None
        if wait is not None:
            who = "client address" if key.startswith("addr:") else "key"
            raise RateLimited(f"this {who} is limited to {self.rpm} requests per minute",
                              headers={"retry-after": str(max(1, int(wait) + 1))})

    def _too_large(self, scope: Scope, size: int | None) -> tuple[int | None, PayloadTooLarge]:
        """The body limit for this request, and the error for a body over it (``size``: as declared)."""
        if _is_upload(scope):
            limit = self.settings.documents.limit_bytes
            told = f"upload of {size} bytes" if size is not None else "the upload"
            return limit + UPLOAD_OVERHEAD, PayloadTooLarge(f"{told} exceeds the {limit}-byte file limit",
                                                            param="file")
        limit_body = self.settings.server.limit_body_bytes
        told = f"request body of {size} bytes" if size is not None else "request body"
        return limit_body, PayloadTooLarge(f"{told} exceeds this proxy's limit of {limit_body} bytes")

    @staticmethod
    def _has_body(scope: Scope) -> bool:
        if scope["method"] not in _BODYLESS:
            return True
        return any(name in (b"content-length", b"transfer-encoding") and value not in (b"0", b"")
                   for name, value in scope.get("headers", []))

    def _take(self, who: str, *, arriving: bool) -> None:
        """Take a slot of one budget for ``who``, or raise Overloaded (503 + Retry-After)."""
        if arriving:
            total, per, count, by, what = (self.arriving, self.limit_arriving_per_key, self.limit_arriving,
                                           self._arriving_by, "requests still sending their body")
        else:
            total, per, count, by, what = (self.in_flight, self.limit_in_flight_per_key, self.limit_in_flight,
                                           self._in_flight_by, "requests in flight")
        if per is not None and by[who] >= per:
            raise Overloaded(f"this key already has {per} {what}, its limit; retry when one has finished",
                             headers={"retry-after": "1"})
        if count is not None and total >= count:
            raise Overloaded(f"the proxy is at its limit of {count} {what}; retry", headers={"retry-after": "1"})
        by[who] += 1
        if arriving:
            self.arriving += 1
        else:
            self.in_flight += 1
            metrics.IN_FLIGHT.inc()

    def _give(self, who: str, *, arriving: bool) -> None:
        by = self._arriving_by if arriving else self._in_flight_by
        by[who] -= 1
        if by[who] <= 0:
            del by[who]
        if arriving:
            self.arriving -= 1
        else:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()

    # --- the body ------------------------------------------------------------------------------------
    async def _read_body(self, scope: Scope, receive: Receive, life: Life) -> _Body | None:
        """The whole body, read within ``timeout_body``; None when the client went away first.

        A JSON body's values are counted as it arrives (:class:`proxy.edge.jsonbody.ValueCount`): one over
        ``server.limit_json_values`` is refused as soon as a chunk crosses the limit, so such a body costs a few
        megabytes read, never its whole size in memory and a count of all of it. Uploads are not JSON.
        """
        limit, _ = self._too_large(scope, None)
        limit_values = self.settings.server.limit_json_values
        values = None if limit_values is None or _is_upload(scope) else ValueCount()
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and limit is not None and int(value) > limit:
                raise _Refused(self._too_large(scope, int(value))[1], "too_large")
        timeout = self.settings.server.timeout_body
        deadline = time.monotonic() + timeout
        body = _Body()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise _Refused(RequestTimeout(f"the request body did not arrive within {timeout:g} s"),
                                   "body_timeout") from None
                if message["type"] == "http.disconnect":
                    life.disconnected = True
                    body.close()
                    return None
                data = message.get("body", b"")
                body.add(data)
                if limit is not None and body.size > limit:
                    raise _Refused(self._too_large(scope, None)[1], "too_large")
                if values is not None and limit_values is not None and values.add(data) > limit_values:
                    raise _Refused(too_many_values_error(limit_values), "too_many_values")
                if not message.get("more_body", False):
                    # The handler's parse need not count again (proxy.edge.routes.read_json).
                    scope.setdefault("state", {})["values_counted"] = values is not None
                    body.rewind()
                    return body
        except BaseException:
            body.close()
            raise

    @staticmethod
    def _replay(body: _Body | None, receive: Receive, life: Life) -> Receive:
        """A receive that hands out the buffered body, then passes through (to see a disconnect)."""
        pending = body.chunks() if body is not None else []  # None: the body is on disk
        done = False

        async def replay() -> Message:
            nonlocal done
            if not done:
                if pending is not None:
                    data = b"".join(pending)
                    done = True
                    return {"type": "http.request", "body": data, "more_body": False}
                assert body is not None
                data = await asyncio.to_thread(body.read)
                done = not data
                return {"type": "http.request", "body": data, "more_body": bool(data)}
            message = await receive()
            if message["type"] == "http.disconnect":
                life.disconnected = True
            return message

        return replay

    # --- the request ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit_headers = self.settings.server.limit_header_count
        if len(scope.get("headers", [])) > limit_headers:
            # Bytes were bounded by the protocol (proxy.edge.protocol); the count is known only now.
            metrics.REJECTED.labels("headers_too_large").inc()
            await self._refuse(HeadersTooLarge(f"the request has more than {limit_headers} headers, this proxy's "
                                               "limit"), scope, receive, send, close=True)
            return
        path: str = scope["path"]
        guarded = path.startswith("/v1/") or (path == "/metrics" and not self.settings.server.open_metrics)
        life = Life()
        state = scope.setdefault("state", {})
        state["life"] = life
        try:
            key = self._authenticate(scope) if (guarded and self.keys) else None
            state["owner"] = owner_of(key)
            state["key_name"] = self.names.get(key) if key is not None else None
            who = key if key is not None else f"addr:{self._address(scope)}"
            if guarded and self.limiter is not None:
                await self._rate_limit(who)
        except ProxyError as exc:
            # Refused before any handler ran, so route_llm_requests_total never sees these.
            reason = ("unauthorized" if isinstance(exc, Unauthorized) else
                      "overloaded" if isinstance(exc, Overloaded) else "rate_limited")
            metrics.REJECTED.labels(reason).inc()
            await self._refuse(exc, scope, receive, send)
            return
        if not path.startswith("/v1/"):  # health probes and scrapes: neither limited nor counted in flight
            await self.app(scope, receive, send)
            return
        state["party"] = state["owner"] or who  # the fairness key handlers share work by, never the key itself
        pools.PARTY.set(state["party"])  # this request's task: its work in a fair pool waits in this party's line
        body: _Body | None = None
        try:
            if self._has_body(scope):
                self._take(who, arriving=True)
                try:
                    with tracing.span("route_llm.read_body"):
                        body = await self._read_body(scope, receive, life)
                finally:
                    self._give(who, arriving=True)
                if body is None:
                    return  # the client left before its body was complete: nobody to answer
            self._take(who, arriving=False)
        except (ProxyError, _Refused) as exc:
            error = exc.error if isinstance(exc, _Refused) else exc
            reason = exc.reason if isinstance(exc, _Refused) else "overloaded"
            metrics.REJECTED.labels(reason).inc()
            if body is not None:
                body.close()
            await self._refuse(error, scope, receive, send, close=True)
            return
        self.tracker.count += 1
        try:
            await self._run(scope, self._replay(body, receive, life), send, life)
        finally:
            self.tracker.count -= 1
            self._give(who, arriving=False)
            if body is not None:
                body.close()

    async def _run(self, scope: Scope, receive: Receive, send: Send, life: Life) -> None:
        started = False
        finished = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs at the shutdown deadline (server.timeout_shutdown) and would
            # answer a bare text 500 or cut a stream mid-way; a 503 in OpenAI's shape tells the client to
            # retry elsewhere, and a stream gets the ending its handler left (an error event and [DONE]).
            if not started:
                await error_response(Overloaded("the proxy is shutting down; retry", code="shutting_down",
                                                headers={"retry-after": "1"}))(scope, receive, send)
                what = "answered 503 shutting_down"
            elif life.ending and not finished and not life.disconnected:
                await send({"type": "http.response.body", "body": life.ending, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                what = "ended its stream with a shutting_down error event"
            else:
                what = "closed its response"
            # The request is answered: ending here, rather than re-raising, spares the log uvicorn's
            # "Exception in ASGI application" and a traceback per request, for what is an orderly stop.
            # Nothing awaits this task (uvicorn only cancels it), so no caller misses the cancellation.
            log.warning("%s %s: cut at the shutdown deadline (server.timeout_shutdown), %s", scope["method"],
                        scope["path"], what)

    @staticmethod
    async def _refuse(error: ProxyError, scope: Scope, receive: Receive, send: Send, *, close: bool = False) -> None:
        if close:
            # The body was not (fully) read: the connection cannot carry another request, and a client that
            # is still sending must not keep it open.
            error.headers = {**error.headers, "connection": "close"}
        await error_response(error)(scope, receive, send)
