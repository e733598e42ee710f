"""uvicorn's HTTP/1.1 protocol with a deadline for request headers.

uvicorn closes a connection that stays idle between requests (``timeout_keep_alive``), but it has no limit
on how long the headers of a request may take: a client that sends one header byte every few seconds
holds its connection, and the memory behind it, for as long as it likes. Headers never reach the ASGI app
until they are complete, so the deadline has to live here, in the protocol: it starts when the connection
opens (and again when a response is complete and the connection waits for the next request), stops when
the headers are complete, and closes the connection when it passes. The body has its own deadline, in
``proxy.edge.guard``.

``uvicorn_config`` builds the one uvicorn configuration the CLI and the tests both use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] is a dependency

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


class HttpToolsWithDeadline(_HeaderDeadline, HttpToolsProtocol):
    """The protocol uvicorn picks by default (httptools), as the CLI runs it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline(self.config)

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_header_deadline(self.config)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


class H11WithDeadline(_HeaderDeadline, H11Protocol):
    """The same for uvicorn's pure-Python protocol (``uvicorn_config(..., http="h11")``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline(self.config)

    def handle_events(self) -> None:
        super().handle_events()
        # h11 leaves IDLE for SEND_BODY (or DONE) once it has parsed a request's headers.
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline(self.config)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


def uvicorn_config(app: Any, settings: Settings, *, http: str = "httptools", **kwargs: Any) -> uvicorn.Config:
    """uvicorn's Config with route-llm's connection deadlines (keep-alive, headers, shutdown).

    The protocol is named by import string: multi-worker mode hands the config to spawned processes.
    """
    server = settings.server
    kwargs.setdefault("timeout_graceful_shutdown", int(server.timeout_shutdown))
    name = "H11WithDeadline" if http == "h11" else "HttpToolsWithDeadline"
    config = uvicorn.Config(app, http=f"{__name__}:{name}",
                            timeout_keep_alive=server.timeout_keep_alive,  # type: ignore[arg-type]
                            **kwargs)
    config.route_llm_timeout_header = server.timeout_header  # type: ignore[attr-defined]
    return config
