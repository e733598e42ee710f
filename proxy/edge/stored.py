"""Stored responses at the edge: continuing a chain (``previous_response_id``), keeping an answer, and the
``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items`` endpoints, in OpenAI's shapes.

``proxy.edge.responses`` translates; this module decides what is stored and read for a proxy key, through
``proxy.state.responses``. Storage may be off (``responses.store``; off by default without proxy keys): then
nothing is stored, ``previous_response_id`` is a 400 that says so, and the endpoints answer 404.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from proxy.edge.paging import Order, list_params
from proxy.errors import BadRequest, NotFound, Overloaded, PayloadTooLarge
from proxy.services import services
from proxy.state.responses import QuotaExceeded, ResponseStore, Stored

LIST_LIMIT = 100  # OpenAI's largest input_items page
LIST_DEFAULT = 20
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def store_of(request: Request) -> ResponseStore | None:
    return services(request).responses


def storage_off(what: str) -> BadRequest:
    return BadRequest(f"this proxy does not store responses (responses.store is off; without proxy keys it is off "
                      f"unless the operator turns it on), so `{what}` cannot be used; send the whole conversation "
                      "in `input` (earlier output items included)", param=what, code="unsupported_parameter")


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found (it may never have existed for this key, or it was "
                    "deleted or expired).", param="response_id", code="response_not_found")


def quota_error(exc: QuotaExceeded) -> BadRequest:
    """A 400, not a 429: waiting does not help, and the SDKs retry a 429 on their own."""
    return BadRequest(str(exc), param="store", code="response_quota_exceeded")


def _storage_failed() -> Overloaded:
    return Overloaded("the proxy could not store this response (its database is unavailable); retry",
                      code="storage_unavailable", headers={"retry-after": "1"})


# --- items as stored and listed ---------------------------------------------------------------------------

def stored_item(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as OpenAI lists it (``input_items``): with a type, an id and a status, and a message's content
    as a list of parts. The translation to chat reads either form, so the stored one continues chains unchanged."""
    out = dict(item)
    kind = out.setdefault("type", "message")
    if kind == "message" and isinstance(out.get("content"), str):
        part = "output_text" if out.get("role") == "assistant" else "input_text"
        out["content"] = [{"type": part, "text": out["content"]}]
    if not isinstance(out.get("id"), str):
        out["id"] = f"{_ID_PREFIX.get(str(kind), 'item')}_{uuid.uuid4().hex}"
    out.setdefault("status", "completed")
    return out


def request_items(given: Any) -> list[dict[str, Any]]:
    """The request's ``input`` (already checked by the translation) as stored items."""
    if isinstance(given, str):
        return [stored_item({"type": "message", "role": "user", "content": given})]
    return [stored_item(item) for item in given]


# --- the chain, before and after the model answers ----------------------------------------------------------

def _prepare(store: ResponseStore, owner: str, previous_id: str | None, storing: bool) -> Stored | None:
    """One trip to the thread pool per request: the quota (when this answer will be stored) and the chain."""
    if storing:
        store.check_quota(owner)
    if previous_id is None:
        return None
    found = store.get(owner, previous_id)
    if found is None:
        raise not_found(previous_id)
    return found


async def prepare(request: Request, body: Any) -> tuple[Stored | None, bool]:
    """The stored response a request continues (None: it starts a chain) and whether its answer is stored."""
    previous = body.get("previous_response_id") if isinstance(body, dict) else None
    store = store_of(request)
    if previous is not None and not isinstance(previous, str):
        raise BadRequest("`previous_response_id` must be a string (the id of a stored response)",
                         param="previous_response_id")
    wanted = body.get("store") if isinstance(body, dict) else None
    if wanted is not None and not isinstance(wanted, bool):
        raise BadRequest(f"`store` must be true or false; got {wanted!r}"[:300], param="store")
    if store is None:
        if previous is not None:
            raise storage_off("previous_response_id")
        return None, False
    storing = wanted is not False
    if previous is None and not storing:
        return None, False
    try:
        found = await run_in_threadpool(_prepare, store, request.state.owner, previous, storing)
    except QuotaExceeded as exc:
        raise quota_error(exc) from None
    if found is not None:
        _check_body_limit(request, found)
    return found, storing


def _check_body_limit(request: Request, found: Stored) -> None:
    """A chain is resent to the model whole on every turn: it may not grow past what one request body may hold."""
    limit = services(request).settings.server.limit_body_bytes
    declared = request.headers.get("content-length", "")
    size = found.size + (int(declared) if declared.isdigit() else 0)
    if limit is not None and size > limit:
        raise PayloadTooLarge(f"the conversation stored for previous_response_id '{found.id}' ({found.size} "
                              f"characters) and this request together exceed this proxy's request body limit of "
                              f"{limit} bytes (server.limit_body_bytes); start a new chain: send what the model "
                              "still needs in `input`, without previous_response_id", param="previous_response_id")


async def keep(owner: str, store: ResponseStore, response: dict[str, Any], items: list[dict[str, Any]],
               request_id: str) -> None:
    """Store the answer, committed before the client is told it is complete."""
    try:
        await run_in_threadpool(store.put, owner, response, items, request_id=request_id)
    except QuotaExceeded as exc:  # another request of the key took the last place since the check
        raise quota_error(exc) from None
    except store.db.errors:
        raise _storage_failed() from None


# --- endpoints -------------------------------------------------------------------------------------------

async def _found(request: Request) -> Stored:
    response_id: str = request.path_params["response_id"]
    store = store_of(request)
    found = None if store is None else await run_in_threadpool(store.get, request.state.owner, response_id)
    if found is None:
        raise not_found(response_id)
    return found


async def retrieve(request: Request) -> Response:
    """GET /v1/responses/{id}: the Response object as it was sent."""
    if request.query_params.get("stream") not in (None, "false"):
        raise BadRequest("replaying a stored response as a stream is not supported here; retrieve it without "
                         "`stream`", param="stream")
    return JSONResponse((await _found(request)).response)


async def delete(request: Request) -> Response:
    response_id: str = request.path_params["response_id"]
    store = store_of(request)
    if store is None or not await run_in_threadpool(store.delete, request.state.owner, response_id):
        raise not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def page(items: list[dict[str, Any]], *, limit: int, order: Order, after: str | None
         ) -> dict[str, Any]:
    """OpenAI's list object over the items: ``order`` (desc: newest first, OpenAI's default), then the items
    following the one whose id is ``after``, at most ``limit`` of them."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise BadRequest(f"`after` must be the id of one of this response's input items; {after!r} is not"[:300],
                             param="after")
        ordered = ordered[ids.index(after) + 1:]
    data = ordered[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > limit}


async def input_items(request: Request) -> Response:
    """GET /v1/responses/{id}/input_items: the whole input context, earlier turns of the chain included."""
    limit, order, after = list_params(request, default=LIST_DEFAULT, maximum=LIST_LIMIT)
    found = await _found(request)
    return JSONResponse(page(found.items, limit=limit, order=order, after=after))


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
    ]
