"""uvicorn's HTTP/1.1 protocol with a deadline for request headers.

uvicorn closes a connection that stays idle between requests (``timeout_keep_alive``), but it has no limit
on how long the headers of a request may take: a client that sends one header byte every few seconds
holds its connection, and the memory behind it, for as long as it likes. Headers never reach the ASGI app
until they are complete, so the deadline has to live here, in the protocol: it starts when the connection
opens (and again when a response is complete and the connection waits for the next request), stops when
the headers are complete, and closes the connection when it passes. The body has its own deadline, in
``proxy.edge.guard``.

Headers are bounded in bytes here too, for the same reason: a parser holds an unfinished head in memory
(httptools keeps a header line it has not seen the end of; h11 its whole receive buffer), so the bytes a
client sends before its head is complete are fed to the parser only up to ``limit_header_bytes`` per request
and ``limit_header_bytes_total`` across every connection of the process. A request over its own limit gets a
431, a request that finds the shared budget spent a 503; either way the socket is closed and nothing more of
it is read, however fast it sends. The number of headers is checked in ``proxy.edge.guard``, once the head is
complete (its bytes bound it here).

Each accepted connection's kernel send buffer is fixed at ``send_buffer_bytes``. Left to itself the kernel grows it
while the client's window is open (to 4 MB by default), and the proxy reads, parses and serialises the upstream's
answer until it is full, whether or not the client is still reading: a client that stops reading a fast stream made
the proxy do megabytes of work for nobody, and 20 of them kept every core busy for seconds (issue 29, row 17). With
the buffer fixed, such a stream costs a buffer's worth of work, then waits. A fixed buffer also bounds a
connection's throughput to about ``send_buffer_bytes`` per round trip (256 kB at 100 ms: 2.5 MB/s), far above what a
model's answer needs; ``null`` gives the sizing back to the kernel.

``uvicorn_config`` builds the one uvicorn configuration the CLI and the tests both use.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] is a dependency

from proxy.errors import HeadersTooLarge, Overloaded, ProxyError
from proxy.settings import Settings

DEFAULT_TIMEOUT_HEADER = 10.0


class _HeaderDeadline:
    """The timer; mixed into both of uvicorn's protocol classes."""

    transport: asyncio.Transport
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self, config: Any) -> None:
        self._disarm_header_deadline()
        timeout = float(getattr(config, "route_llm_timeout_header", DEFAULT_TIMEOUT_HEADER))
        self._header_timer = asyncio.get_running_loop().call_later(timeout, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            # No response: the request is not known yet, and a client this slow is not waiting for one.
            self.transport.close()


def _fix_send_buffer(transport: asyncio.Transport, config: Any) -> None:
    size = getattr(config, "route_llm_send_buffer_bytes", None)
    sock = transport.get_extra_info("socket")
    if size is not None and sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:  # a socket that takes no such option (not TCP): its buffer stays the kernel's
            pass


@dataclass
class HeadBudget:
    """The head limits of one server process, and the bytes of unfinished heads its connections hold now.

    One per uvicorn config: each worker process unpickles its own, so the total is per process.
    """

    limit: int
    limit_total: int
    pending: int = 0


def _raw_error(error: ProxyError) -> bytes:
    """A complete HTTP/1.1 response for ``error`` in OpenAI's shape, written straight to the transport: there is
    no request yet to answer through the app."""
    body = json.dumps(error.body()).encode()
    head = [f"HTTP/1.1 {error.status_code} {_PHRASES[error.status_code]}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close",
            *(f"{k}: {v}" for k, v in error.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_PHRASES = {431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class _HeadLimit:
    """Feeds the parser at most the head bytes the budgets allow; mixed into both protocol classes.

    ``_head_open`` says whether the bytes now arriving belong to a request head; each protocol class sets it
    from its parser's events.
    """

    transport: asyncio.Transport
    config: Any
    _head_open = True
    _head_bytes = 0

    def _budget(self) -> HeadBudget:
        return self.config.route_llm_head_budget  # type: ignore[no-any-return]

    def _feed_head_limited(self, data: bytes, feed: Any) -> None:
        budget = self._budget()
        while data and not self.transport.is_closing():
            if not self._head_open:
                feed(data)
                return
            own, shared = budget.limit - self._head_bytes, budget.limit_total - budget.pending
            if own <= 0 or shared <= 0:
                self._refuse_head(own <= 0)
                return
            piece, data = data[:min(own, shared)], data[min(own, shared):]
            self._head_bytes += len(piece)
            budget.pending += len(piece)
            feed(piece)

    def _head_complete(self) -> None:
        """The head's bytes no longer count: they are the app's request now (or were released on close)."""
        self._budget().pending -= self._head_bytes
        self._head_bytes = 0
        self._head_open = False

    def _head_starts(self) -> None:
        self._head_complete()
        self._head_open = True

    def _refuse_head(self, own: bool) -> None:
        # Imported here: the --workers supervisor imports this module for uvicorn_config, and must not declare the
        # metrics (each process that does writes its own multiprocess files; the supervisor serves nothing).
        from proxy import metrics

        budget = self._budget()
        if own:
            error: ProxyError = HeadersTooLarge(f"the request line and headers exceed this proxy's limit of "
                                                f"{budget.limit} bytes")
            metrics.REJECTED.labels("headers_too_large").inc()
        else:
            error = Overloaded("the proxy is receiving too many request headers at once; retry",
                               headers={"retry-after": "1"})
            metrics.REJECTED.labels("overloaded").inc()
        self._head_complete()
        self.transport.write(_raw_error(error))
        self.transport.close()


class HttpToolsWithDeadline(_HeadLimit, _HeaderDeadline, HttpToolsProtocol):
    """The protocol uvicorn picks by default (httptools), as the CLI runs it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _fix_send_buffer(transport, self.config)
        super().connection_made(transport)
        self._arm_header_deadline(self.config)

    def data_received(self, data: bytes) -> None:
        self._feed_head_limited(data, super().data_received)

    def on_headers_complete(self) -> None:
        self._head_complete()
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_starts()  # what arrives next is the head of the next request

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_header_deadline(self.config)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_complete()
        self._disarm_header_deadline()
        super().connection_lost(exc)


class H11WithDeadline(_HeadLimit, _HeaderDeadline, H11Protocol):
    """The same for uvicorn's pure-Python protocol (``uvicorn_config(..., http="h11")``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _fix_send_buffer(transport, self.config)
        super().connection_made(transport)
        self._arm_header_deadline(self.config)

    def data_received(self, data: bytes) -> None:
        self._feed_head_limited(data, super().data_received)

    def handle_events(self) -> None:
        super().handle_events()
        # h11 leaves IDLE for SEND_BODY (or DONE) once it has parsed a request's headers, and comes back to it
        # when the next request may begin.
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()
            if self._head_open:
                self._head_complete()
        elif not self._head_open:
            self._head_starts()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline(self.config)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_complete()
        self._disarm_header_deadline()
        super().connection_lost(exc)


def uvicorn_config(app: Any, settings: Settings, *, http: str = "httptools", **kwargs: Any) -> uvicorn.Config:
    """uvicorn's Config with route-llm's connection deadlines (keep-alive, headers, shutdown).

    The protocol is named by import string: multi-worker mode hands the config to spawned processes.
    """
    server = settings.server
    kwargs.setdefault("timeout_graceful_shutdown", int(server.timeout_shutdown))
    name = "H11WithDeadline" if http == "h11" else "HttpToolsWithDeadline"
    # h11 refuses (400) a head longer than its own limit: ours answers first, so h11's must not be smaller.
    kwargs.setdefault("h11_max_incomplete_event_size", server.limit_header_bytes)
    # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default, so any local client could pick its own
    # address; server.trusted_proxies decides instead (proxy.client_addr, in the guard).
    kwargs.setdefault("proxy_headers", False)
    config = uvicorn.Config(app, http=f"{__name__}:{name}",
                            timeout_keep_alive=server.timeout_keep_alive,  # type: ignore[arg-type]
                            **kwargs)
    config.route_llm_timeout_header = server.timeout_header  # type: ignore[attr-defined]
    config.route_llm_send_buffer_bytes = server.send_buffer_bytes  # type: ignore[attr-defined]
    config.route_llm_head_budget = HeadBudget(server.limit_header_bytes,  # type: ignore[attr-defined]
                                              server.limit_header_bytes_total)
    return config
