"""The admin side of hot reload over HTTP: ``POST /admin/reload`` and the middleware that pins what serves.

The reload itself (load, self-check, swap) is ``proxy.routing.reload``; here is what reads the shared
``Services``: the admin key check, the handler, and :class:`PinMiddleware`, which copies the live model,
decider and settings into each request's services so that a reload mid-request does not reach it.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import signal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import ProxyError, Unauthorized
from proxy.routing.reload import VERSION_HEADER, ReloadFailed
from proxy.routing.supervisor import SUPERVISOR_ENV
from proxy.services import Services, services


class PinMiddleware:
    """Pins the live model, decider and settings into each request's state and names its version.

    uvicorn gives each request a shallow copy of the lifespan state, so writing here changes this request
    only; a reload that swaps :attr:`Reloader.current` mid-request does not reach it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state")
        found = state.get("services") if scope["type"] == "http" and state is not None else None
        if not isinstance(found, Services) or found.reloader is None:
            await self.app(scope, receive, send)
            return
        live = found.reloader.current
        assert state is not None
        state["services"] = dataclasses.replace(found, settings=live.settings, router=live.router,
                                                decider=live.decider, router_version=live.version)
        header = (VERSION_HEADER.encode(), live.version.encode())

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_with_version)


def check_admin(request: Request) -> None:
    keys = services(request).settings.all_admin_keys()
    if not keys:
        raise ProxyError("admin endpoints are off: set server.admin_keys or ROUTE_LLM_ADMIN_KEYS",
                         status_code=403, code="admin_disabled")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Send `Authorization: Bearer <admin key>` (server.admin_keys).")
    if not any(hmac.compare_digest(key.encode(), token.encode()) for key in keys):  # all compared, constant time
        raise Unauthorized("Incorrect admin key provided for this proxy.")


async def admin_reload(request: Request) -> Response:
    """POST /admin/reload: reload here, then (with --workers N) have the supervisor reload every worker."""
    check_admin(request)
    reloader = services(request).reloader
    assert reloader is not None
    report = await reloader.reload("admin")
    if report.result == "failed":
        raise ReloadFailed(f"reload failed, still serving router {report.version}: {report.reason}")
    body = report.body()
    # Only a worker of a --workers supervisor signals it (the variable is inherited by anything it spawns).
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor == str(os.getppid()) and report.result == "ok":
        os.kill(int(supervisor), signal.SIGHUP)  # the other workers; this one will find nothing changed
        body["workers"] = "all signalled"
    return JSONResponse(body)
