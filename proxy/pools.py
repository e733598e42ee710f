"""A share of worker threads for each kind of blocking work, so that one kind cannot starve another.

Starlette's ``run_in_threadpool`` draws every call from one limiter of 40 tokens. A flood of slow calls of one
kind (feedback lookups against a busy database, say) then held all 40, and file requests of every key queued
behind them. Each kind here has its own limiter: a flood fills its own share and waits there, while the other
kinds (and Starlette's own pool, for everything else) keep their threads. The threads themselves are anyio's
one pool; only how many each kind may hold at once is divided.

Limiters belong to an event loop, and tests run several servers, each in a loop of its own: one set per loop.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from typing import Literal, TypeVar

import anyio
import anyio.to_thread

Kind = Literal["feedback", "files", "documents", "cpu"]
T = TypeVar("T")

#: Threads each kind may hold at once. ``cpu``: pure-Python work in proportion to a request's size, done off the
#: event loop (parsing a large JSON body, measuring its schemas, LiteLLM building the upstream request with
#: tools, a response schema or long text). Such work holds the GIL throughout, so two at once finish no sooner
#: than one after the other, and every extra one is another thread the event loop waits behind for the GIL
#: (each forces a switch every ``sys.getswitchinterval()``): one lane per worker.
SHARES: dict[Kind, int] = {"feedback": 8, "files": 8, "documents": 8, "cpu": 1}

_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Kind, anyio.CapacityLimiter]] = (
    weakref.WeakKeyDictionary())


def _limiter(kind: Kind) -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    per_loop = _limiters.get(loop)
    if per_loop is None:
        per_loop = _limiters[loop] = {k: anyio.CapacityLimiter(n) for k, n in SHARES.items()}
    return per_loop[kind]


async def run(kind: Kind, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, holding one of ``kind``'s threads while it runs."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=_limiter(kind))
