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
from collections import OrderedDict, deque
from collections.abc import Callable
from contextvars import ContextVar
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

#: Kinds whose threads are handed out fairly: waiting parties take turns (:class:`FairLane`).
FAIR: frozenset[Kind] = frozenset({"cpu"})

#: Who the running request's work is for: the guard's fairness key, set by the guard for each request (each
#: request is a task of its own, so the value is the request's). Work queued in a fair kind waits in its party's
#: line.
PARTY: ContextVar[str] = ContextVar("route_llm_party", default="")


class FairLane:
    """At most one holder at a time; waiters queue per party, and the parties take turns.

    A lane of one thread handed out first come, first served would let one party's pile of waiting work hold
    back another party's single piece for the whole pile. Here the lane passes to the oldest waiter of the
    next party in line, the party that just held it going to the back: another party waits one turn.
    """

    def __init__(self) -> None:
        self._held = False
        self._last: str | None = None  # the party holding the lane, or that held it last
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    async def acquire(self, party: str) -> None:
        if not self._held and not self._waiting:
            self._held, self._last = True, party
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(party, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed the lane just as it was cancelled: pass it on
                self.release()
            else:
                line = self._waiting.get(party)
                if line is not None and waiter in line:
                    line.remove(waiter)
                    if not line:
                        del self._waiting[party]
            raise

    def release(self) -> None:
        """Hand the lane to the next party's oldest waiter, or free it."""
        while self._waiting:
            party = next((p for p in self._waiting if p != self._last), self._last)
            assert party is not None
            line = self._waiting[party]
            waiter = line.popleft()
            if not line:
                del self._waiting[party]
            if not waiter.done():
                self._last = party
                waiter.set_result(None)  # still held: it passes to the waiter
                return
        self._held = False


_lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Kind, FairLane]] = weakref.WeakKeyDictionary()

_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Kind, anyio.CapacityLimiter]] = (
    weakref.WeakKeyDictionary())


def _limiter(kind: Kind) -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    per_loop = _limiters.get(loop)
    if per_loop is None:
        per_loop = _limiters[loop] = {k: anyio.CapacityLimiter(n) for k, n in SHARES.items()}
    return per_loop[kind]


def _lane(kind: Kind) -> FairLane:
    loop = asyncio.get_running_loop()
    per_loop = _lanes.setdefault(loop, {})
    if kind not in per_loop:
        per_loop[kind] = FairLane()
    return per_loop[kind]


async def run(kind: Kind, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, holding one of ``kind``'s threads while it runs; for a fair
    kind (one thread), after waiting for the lane in the line of the request's party (:data:`PARTY`)."""
    call = functools.partial(fn, *args, **kwargs)
    if kind not in FAIR:
        return await anyio.to_thread.run_sync(call, limiter=_limiter(kind))
    lane = _lane(kind)
    await lane.acquire(PARTY.get())
    try:
        # Not abandoned on cancellation: the lane is given back once the thread has really finished.
        return await anyio.to_thread.run_sync(call, limiter=_limiter(kind))
    finally:
        lane.release()
