"""The query parameters of OpenAI's list endpoints (``limit``, ``order``, ``after``), read and checked once for every
list this proxy serves (``/v1/files``, ``/v1/responses/{id}/input_items``)."""

from __future__ import annotations

from typing import Literal

from starlette.requests import Request

from proxy.errors import BadRequest

Order = Literal["asc", "desc"]


def list_params(request: Request, *, default: int, maximum: int) -> tuple[int, Order, str | None]:
    """``(limit, order, after)``: ``limit`` an integer in 1..``maximum`` (``default`` when absent), ``order`` asc or
    desc (desc, newest first, when absent); a bad value is a 400 naming the parameter."""
    q = request.query_params
    raw_limit = q.get("limit", str(default))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= maximum:
        raise BadRequest(f"`limit` must be an integer between 1 and {maximum}; got {raw_limit!r}"[:300],
                         param="limit")
    raw_order = q.get("order", "desc")
    if raw_order not in ("asc", "desc"):
        raise BadRequest(f"`order` must be 'asc' or 'desc'; got {raw_order!r}"[:300], param="order")
    return int(raw_limit), "asc" if raw_order == "asc" else "desc", q.get("after")
