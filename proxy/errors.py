"""Errors in OpenAI's shape.

Every failure a client can see is a :class:`ProxyError` (or a subclass) rendered by one handler as
``{"error": {"message", "type", "param", "code"}}``, the body OpenAI's SDKs parse into their exception
classes. Starlette finds the handler along the exception's MRO, so the subclasses need no entries of their own.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("route_llm")


class ProxyError(Exception):
    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status_code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": _utf8(self.message), "type": self.type, "param": _utf8(self.param),
                          "code": _utf8(self.code)}}


def _utf8(text: str | None) -> str | None:
    """Messages quote client input, which may hold lone surrogates (legal JSON escapes, not UTF-8): escape
    them, or rendering the error would itself fail with a 500."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if text is not None else None


class BadRequest(ProxyError):
    status_code = 400
    type = "invalid_request_error"


class Unauthorized(ProxyError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ProxyError):
    status_code = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTimeout(ProxyError):
    """The request (its body) did not arrive in time; the connection is closed after this answer."""

    status_code = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(ProxyError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLarge(ProxyError):
    """The request line and headers exceed a limit; answered by the protocol or the guard, then closed."""

    status_code = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class RateLimited(ProxyError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """429 ``budget_exceeded``: the key spent its budget (``proxy.routing.budget``). It carries ``x-should-retry:
    false``, which stops the OpenAI SDKs (they retry any 429 otherwise) from spending their retries on an answer
    that cannot change before ``Retry-After``, the budget's reset."""

    code = "budget_exceeded"


class Overloaded(ProxyError):
    status_code = 503
    type = "server_error"
    code = "overloaded"


class InsufficientStorage(ProxyError):
    """The disk under the file store is full: nothing was stored; deleting files frees space."""

    status_code = 507
    type = "server_error"
    code = "insufficient_storage"


class UpstreamError(ProxyError):
    """The upstream model failed after retries and fallback; status 502, 503 or 504."""

    status_code = 502
    type = "upstream_error"

    def __init__(self, message: str, *, reason: str, status_code: int = 502,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=reason, status_code=status_code, headers=headers)
        self.reason = reason


class UpstreamNotConfigured(ProxyError):
    """The upstream key is missing: a set-up problem, not a transient fault."""

    status_code = 503
    type = "upstream_error"
    code = "upstream_not_configured"


def error_response(exc: ProxyError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def handle_proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path or method) in OpenAI's shape, saying what is not served and what is.

    These come only from routing (no handler raises HTTPException), so a 404 means the path is not served:
    ``/v1/embeddings`` is the common case, from clients that expect every OpenAI endpoint.
    """
    assert isinstance(exc, HTTPException)
    asked = f"{request.method} {_clipped(request.url.path)}"
    if exc.status_code == 404:
        served = ", ".join(_served_paths(request))
        message = f"route-llm does not serve {asked}: unknown path. It serves {served}."
        code = "not_found"
    elif exc.status_code == 405:
        allowed = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        message = f"route-llm does not serve {asked}: method not allowed here" + (f" (allowed: {allowed})"
                                                                                   if allowed else "") + "."
        code = "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    err = ProxyError(message, status_code=exc.status_code, code=code)
    err.type = "invalid_request_error"
    return JSONResponse(err.body(), status_code=exc.status_code, headers=dict(exc.headers or {}))


def _clipped(path: str, limit: int = 200) -> str:
    """The client's path, bounded: it is echoed back, and a path can be as long as the header limit allows."""
    return path if len(path) <= limit else path[:limit] + "…"


def _served_paths(request: Request) -> list[str]:
    """The app's API paths (``/v1/...``), each once, with path parameters written as in OpenAI's reference."""
    paths = []
    for route in getattr(request.app, "routes", []):
        path = getattr(route, "path", "")
        if path.startswith("/v1/"):
            path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)
            if path not in paths:
                paths.append(path)
    return paths


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # Same shape, never a traceback; Starlette re-raises after this so the error is still logged.
    return JSONResponse(ProxyError("internal error in route-llm; see the server log").body(), status_code=500)
