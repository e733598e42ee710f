"""Slots shared fairly between parties (proxy keys, or client addresses without keys).

A plain semaphore queues its waiters first come, first served: a key that sends a dozen slow PDFs at once
queues a dozen extractions, and the next key's single upload waits behind all of them. Here a freed slot goes
to the waiting party that holds the fewest slots (the longest-waiting such party on a tie), so another
party waits for at most one slot to come free, however much one party has queued.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator


class FairSlots:
    """At most ``capacity`` holders at a time, handed out fairly between parties. One event loop only."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._held: Counter[str] = Counter()
        self._total = 0
        # Parties with waiters, in the order they started waiting (a party served goes to the back).
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, who: str) -> AsyncIterator[None]:
        """Wait for a slot for ``who`` and hold it for the ``async with`` block."""
        await self._acquire(who)
        try:
            yield
        finally:
            self._release(who)

    async def _acquire(self, who: str) -> None:
        if self._total < self.capacity and not self._waiting:
            self._take(who)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(who, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(who)  # the slot came just as the wait was given up: pass it on
            else:
                queue = self._waiting.get(who)
                if queue is not None and granted in queue:
                    queue.remove(granted)
                    if not queue:
                        del self._waiting[who]
            raise

    def _take(self, who: str) -> None:
        self._held[who] += 1
        self._total += 1

    def _release(self, who: str) -> None:
        self._held[who] -= 1
        if self._held[who] <= 0:
            del self._held[who]
        self._total -= 1
        while self._total < self.capacity and self._waiting:
            party = min(self._waiting, key=lambda w: self._held[w])  # the first of the least served
            queue = self._waiting.pop(party)
            granted = queue.popleft()
            if queue:
                self._waiting[party] = queue  # back of the line
            self._take(party)
            granted.set_result(None)
