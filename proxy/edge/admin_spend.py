"""``GET /admin/spend`` and ``POST /admin/spend/reset``: each named key's spend, and forgetting one key's.

Admin keys as for ``POST /admin/reload``. Keys appear by their configured name only; the reset names the key the
same way (``{"key": "team-a"}``), so no secret ever travels to or from these endpoints.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.edge.routes import read_json
from proxy.errors import BadRequest, NotFound, ProxyError
from proxy.routing.budget import Budgets
from proxy.edge.admin import check_admin
from proxy.services import services


def _budgets(request: Request) -> Budgets:
    check_admin(request)
    budgets = services(request).budgets
    if budgets is None:
        raise ProxyError("no spend is counted: the proxy has no keys (server.api_keys or ROUTE_LLM_API_KEYS)",
                         status_code=404, code="no_keys")
    return budgets


async def admin_spend(request: Request) -> Response:
    """GET /admin/spend: every named key's spend in its current period, its budget and when it resets."""
    budgets = _budgets(request)
    return JSONResponse({"object": "list", "data": [s.body() for s in await budgets.snapshot()]})


async def admin_spend_reset(request: Request) -> Response:
    """POST /admin/spend/reset ``{"key": NAME}``: forget what the key has spent (every period's)."""
    budgets = _budgets(request)
    body = await read_json(request, 65536)
    name = body.get("key") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRequest("send {\"key\": NAME}, the configured name of a proxy key (see GET /admin/spend)",
                         param="key")
    if name not in budgets.keys:
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise NotFound(f"no proxy key is named {shown!r}; named keys: {', '.join(budgets.keys)}", param="key",
                       code="key_not_found")
    status = await budgets.reset(name)
    return JSONResponse({"object": "spend.reset", **status.body()})
