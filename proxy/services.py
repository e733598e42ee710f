"""The objects every handler needs, built once in the app's lifespan and handed over as one typed value.

Starlette passes lifespan state to handlers through ``request.state``, whose attributes are untyped: reading
``request.state.decider`` in five places let a typo or a wrong type through mypy. Handlers call
:func:`services` instead and get this one frozen object; per-request facts the guard sets (``owner``, ``life``)
stay on ``request.state``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from proxy.documents.service import DocumentService
from proxy.routing.budget import Budgets
from proxy.routing.decider import Decider
from proxy.settings import Settings
from proxy.state.records import RecordStore
from proxy.state.responses import ResponseStore
from proxy.upstream.calls import Upstream
from router import Router

if TYPE_CHECKING:
    from proxy.routing.reload import Reloader


@dataclass(frozen=True)
class Services:
    settings: Settings
    router: Router
    decider: Decider
    upstream: Upstream
    documents: DocumentService
    ready: asyncio.Event  # set once the router has run once and LiteLLM is warmed up
    started_at: float  # unix time the worker started (the `created` of /v1/models)
    records: RecordStore | None = None  # decision records and ratings (None: feedback is off)
    reloader: Reloader | None = None  # holds the live router/decider/settings; PinMiddleware copies them in
    router_version: str = ""  # hash of the model directory (x-route-llm-router-version)
    budgets: Budgets | None = None  # per-key spend and budgets (None: the proxy has no keys)
    responses: ResponseStore | None = None  # stored Responses (None: responses.store is off)


def services(request: Request) -> Services:
    """The app's services, as the lifespan yielded them under the key ``services``."""
    found: Services = request.state.services
    return found
