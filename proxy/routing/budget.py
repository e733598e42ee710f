"""Per-key spend budgets: what a key has spent this period, and what that does to its next request.

``Budgets`` is built once per worker (when the proxy has keys) over the shared spend store
(``proxy.state.spend``). A request of a key with a budget reads the key's spend before it is routed
(:meth:`Budgets.status`); :func:`apply_budget` turns the status into the routing it gets: routed as usual, steered
toward the cheapest tier (``router.budget_steer``, ``router.budget``), served by the cheapest tier once the budget is
gone (``when_exhausted: cheapest``), or refused with a 429 ``budget_exceeded`` whose ``Retry-After`` is the reset.
Every answered request of a named key is charged at the end, priced as the cost metrics price it
(``Accounting.cost``); keys without a budget are counted per UTC day, for ``GET /admin/spend`` and the metric.

All store calls go through one thread per worker, in order: a status read queued after a charge sees it, and
charges waiting together are written in one transaction. A budget can be overshot by the requests already in flight
when it runs out (each was allowed on the spend before it); the next request after them is refused.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from proxy import metrics
from proxy.errors import BudgetExceeded, Overloaded
from proxy.routing.decider import Target
from proxy.settings import ApiKeySettings, BudgetSettings, Settings
from proxy.state.spend import SpendStore
from router.budget import steer_fraction
from router.policy import Tier

log = logging.getLogger("route_llm")

BUCKETS_PER_WINDOW = 60  # a rolling window is summed over this many buckets (plus the one it starts in)
DAY = BudgetSettings(usd=math.inf, period="day")  # how keys without a budget are counted
_PRUNE_EVERY = 600.0  # seconds between prunes of buckets no budget reads
T = TypeVar("T")


# --- the periods (pure) ------------------------------------------------------------------------------------
def bucket_width(budget: BudgetSettings) -> int:
    """Seconds per bucket of a rolling budget (a sixtieth of the window, at least one); 0 for calendar periods."""
    return max(1, int(budget.window_seconds() // BUCKETS_PER_WINDOW)) if budget.period == "rolling" else 0


def period_start(budget: BudgetSettings, now: float) -> int:
    """The bucket a charge at ``now`` goes into: the UTC day's or month's start, or the rolling bucket's."""
    if budget.period == "rolling":
        width = bucket_width(budget)
        return int(now // width) * width
    day = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    if budget.period == "month":
        day = day.replace(day=1)
    return calendar.timegm(day.timetuple())


def readable_since(budget: BudgetSettings, now: float) -> int:
    """The oldest bucket that counts at ``now``: the period's start, or for a rolling window every bucket that
    still overlaps it (so the sum is at most one bucket too high, never too low)."""
    if budget.period == "rolling":
        return int(now - budget.window_seconds()) - bucket_width(budget) + 1
    return period_start(budget, now)


def calendar_reset(budget: BudgetSettings, now: float) -> float:
    """When a calendar period ends: the next UTC midnight, or the first of the next month."""
    start = dt.datetime.fromtimestamp(period_start(budget, now), dt.timezone.utc)
    if budget.period == "month":
        nxt = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    else:
        nxt = start + dt.timedelta(days=1)
    return nxt.timestamp()


def rolling_reset(budget: BudgetSettings, buckets: list[tuple[int, float]], now: float) -> float:
    """When enough of a rolling window's spend has left it for the key to be under its budget again: the oldest
    buckets leave one by one (a bucket leaves ``window`` after its end)."""
    window, width = budget.window_seconds(), bucket_width(budget)
    spent = math.fsum(u for _, u in buckets)
    for start, usd in buckets:
        spent -= usd
        if spent < budget.usd:
            return max(now, start + width + window)
    return now + window  # a budget of 0: nothing that leaves the window helps


@dataclass(frozen=True)
class BudgetStatus:
    """A key's budget as the request saw it (before its own cost)."""

    name: str
    budget: BudgetSettings | None
    spent: float
    reset_at: float  # unix time the period resets (rolling: when the key is under its budget again)
    when_exhausted: str = "refuse"

    @property
    def limit(self) -> float | None:
        return self.budget.usd if self.budget is not None else None

    @property
    def remaining(self) -> float | None:
        return None if self.budget is None else max(0.0, self.budget.usd - self.spent)

    @property
    def spent_share(self) -> float:
        """The share of the budget spent; 1 when it is gone (a budget of 0 is always gone)."""
        if self.budget is None:
            return 0.0
        return 1.0 if self.spent >= self.budget.usd else self.spent / self.budget.usd

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and self.spent >= self.budget.usd

    def header(self) -> str:
        """``x-route-llm-budget``: spent/limit/remaining in USD."""
        assert self.budget is not None and self.remaining is not None
        return f"{self.spent:.6f}/{self.budget.usd:.6f}/{self.remaining:.6f}"

    def reset_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.reset_at, dt.timezone.utc).isoformat(timespec="seconds")

    def body(self) -> dict[str, Any]:
        """What ``/v1/route`` and ``GET /admin/spend`` show."""
        b = self.budget
        return {"key": self.name, "spent_usd": self.spent, "limit_usd": None if b is None else b.usd,
                "remaining_usd": self.remaining, "period": "day" if b is None else b.period,
                "window": None if b is None else b.window, "reset_at": self.reset_iso(),
                "exhausted": self.exhausted, "when_exhausted": self.when_exhausted if b is not None else None}


def status_of(key: ApiKeySettings, buckets: list[tuple[int, float]], now: float) -> BudgetStatus:
    budget = key.budget or DAY
    spent = math.fsum(u for _, u in buckets)
    if budget.period == "rolling" and key.budget is not None and spent >= key.budget.usd:
        reset = rolling_reset(budget, buckets, now)
    elif budget.period == "rolling":  # when the oldest spend leaves the window
        reset = buckets[0][0] + bucket_width(budget) + budget.window_seconds() if buckets else now
    else:
        reset = calendar_reset(budget, now)
    return BudgetStatus(key.name, key.budget, spent, reset, key.when_exhausted)


@dataclass(frozen=True)
class BudgetRoute:
    """What a key's budget does to one request: the target it goes to, how far its cuts are steered (0 to 1)."""

    target: Target
    steer: float = 0.0
    cheapest: bool = False  # served by the cheapest tier because the budget is gone (when_exhausted: cheapest)


def apply_budget(status: BudgetStatus | None, target: Target, cheapest: Tier, start: float) -> BudgetRoute:
    """The routing a request gets from its key's budget, or BudgetExceeded (429) when the key must wait."""
    if status is None or status.budget is None:
        return BudgetRoute(target)
    if status.exhausted:
        if status.when_exhausted == "cheapest":
            return BudgetRoute(Target(target.requested, tier=cheapest), steer=1.0, cheapest=True)
        wait = max(1, math.ceil(status.reset_at - time.time()))
        raise BudgetExceeded(f"this key's budget of ${status.budget.usd:g} per "
                             f"{status.budget.window or status.budget.period} is spent "
                             f"(${status.spent:.4f}); it resets at {status.reset_iso()}",
                             headers={"retry-after": str(wait), "x-should-retry": "false",
                                      "x-route-llm-budget": status.header(),
                                      "x-route-llm-budget-reset": status.reset_iso()})
    if not target.routed:  # a concrete model asked for by name is the client's choice until the budget is gone
        return BudgetRoute(target)
    return BudgetRoute(target, steer=steer_fraction(status.spent_share, start))


def budget_headers(status: BudgetStatus | None, route: BudgetRoute | None) -> dict[str, str]:
    if status is None or status.budget is None:
        return {}
    h = {"x-route-llm-budget": status.header(), "x-route-llm-budget-reset": status.reset_iso()}
    if route is not None and route.steer > 0:
        h["x-route-llm-budget-steer"] = f"{route.steer:.4f}"
    return h


# --- the service -------------------------------------------------------------------------------------------
class Budgets:
    """The named keys' budgets over a spend store, for one worker process."""

    def __init__(self, keys: tuple[ApiKeySettings, ...], store: SpendStore) -> None:
        self.keys = {k.name: k for k in keys}
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="route-llm-spend")
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], float] = {}
        self._flushing = False
        self._pruned = 0.0
        for k in keys:
            metrics.BUDGET_SPENT.labels(k.name)
            if k.budget is not None:
                metrics.BUDGET_LIMIT.labels(k.name).set(k.budget.usd)

    @property
    def budgeted(self) -> bool:
        return any(k.budget is not None for k in self.keys.values())

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def status_now(self, name: str, *, now: float | None = None) -> BudgetStatus:
        """Read the key's spend (synchronously; the service thread or the CLI)."""
        key = self.keys[name]
        now = time.time() if now is None else now
        buckets = self.store.buckets(name, readable_since(key.budget or DAY, now))
        status = status_of(key, buckets, now)
        metrics.BUDGET_SPENT.labels(name).set(status.spent)
        return status

    async def status(self, name: str | None) -> BudgetStatus | None:
        """The key's budget before this request, read after every charge this worker queued; None for a key with
        no budget (nothing is read for it) or an unknown name (no keys)."""
        if name is None or name not in self.keys or self.keys[name].budget is None:
            return None
        try:
            return await self._run(lambda: self.status_now(name))
        except self.store.db.errors as exc:  # unknown spend is not waved through: retry shortly
            log.warning("budgets: cannot read the spend of %s: %s", name, exc)
            raise Overloaded("the proxy's spend store is unavailable; retry", code="storage_unavailable",
                             headers={"retry-after": "1"}) from None

    def charge(self, name: str | None, usd: float) -> None:
        """Add a request's cost to the key's spend: queued for the service thread, never awaited by the request."""
        if name is None or name not in self.keys or not usd > 0:
            return
        bucket = period_start(self.keys[name].budget or DAY, time.time())
        with self._lock:
            self._pending[(name, bucket)] = self._pending.get((name, bucket), 0.0) + usd
            if self._flushing:
                return
            self._flushing = True
        try:
            self._pool.submit(self._flush)
        except RuntimeError:  # shut down: a stream cut at the shutdown deadline ended after close()
            metrics.BUDGET_ERRORS.inc()
            log.warning("budgets: a charge of $%.6f to %s arrived after shutdown and is lost", usd, name)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending, self._flushing = self._pending, {}, False
        try:
            self.store.add([(name, bucket, usd) for (name, bucket), usd in pending.items()])
            for name in {name for name, _ in pending}:
                self.status_now(name)  # the metric follows the charge
            if time.monotonic() - self._pruned > _PRUNE_EVERY:
                self._pruned = time.monotonic()
                now = time.time()
                self.store.prune({n: readable_since(k.budget or DAY, now) for n, k in self.keys.items()}, now=now)
        except Exception as exc:  # a lost charge must not fail a request that has already been answered
            metrics.BUDGET_ERRORS.inc()
            log.warning("budgets: could not store the spend of %d charge(s): %s", len(pending), exc)

    async def snapshot(self) -> list[BudgetStatus]:
        return await self._run(lambda: [self.status_now(n) for n in self.keys])

    async def reset(self, name: str) -> BudgetStatus:
        def run() -> BudgetStatus:
            self.store.reset(name)
            return self.status_now(name)
        return await self._run(run)

    def close(self) -> None:
        """Write what is queued, then close the store (on shutdown)."""
        self._pool.submit(self._flush)
        self._pool.shutdown(wait=True)
        self.store.close()


def make_budgets(settings: Settings, store: SpendStore, *, unpriced: list[str]) -> Budgets | None:
    """The service when the proxy has keys (None without: nothing names a spender). ``unpriced``: the models no
    price is known for, which a budget cannot see."""
    keys = settings.named_keys()
    if not keys:
        return None
    if unpriced and any(k.budget is not None for k in keys):
        log.warning("budgets: no price known for %s (set input_cost_per_million and output_cost_per_million): "
                    "requests it serves cost nothing against a budget", ", ".join(unpriced))
    return Budgets(keys, store)


def spend_now(settings: Settings, store: SpendStore, *, reset: str | None = None) -> list[BudgetStatus]:
    """Every named key's spend, read synchronously (``route-llm spend``); ``reset`` first forgets that key's.
    KeyError names an unknown key; ValueError says the proxy has no keys."""
    keys = {k.name: k for k in settings.named_keys()}
    if not keys:
        raise ValueError("no proxy keys are configured (server.api_keys or ROUTE_LLM_API_KEYS): nothing is counted")
    if reset is not None:
        if reset not in keys:
            raise KeyError(f"no proxy key is named {reset!r}; named keys: {', '.join(keys)}")
        store.reset(reset)
    now = time.time()
    return [status_of(k, store.buckets(k.name, readable_since(k.budget or DAY, now)), now) for k in keys.values()]
