"""A circuit breaker per tier: stop calling a provider that keeps failing, try it again after a cool-down.

States, per tier (``upstream.breaker``):

- **closed**: calls go through; each failed attempt adds one to a run of failures, a success ends the run.
- **open**: ``failures`` failed attempts in a row opened it; the tier is skipped (requests fall back along the tier
  list, ``x-route-llm-breaker: open:<tier>``) until ``cooldown`` seconds have passed.
- **half_open**: the cool-down is over and one request, the trial, is let through; the others keep skipping the
  tier. The trial's success closes the breaker, its failure opens it for another cool-down. A trial that never
  reports (its worker died) is replaced by another one a cool-down later.

What counts as a failure is the upstream's fault only: timeouts, resets, 5xx, 429, refused credentials, a model the
provider does not serve. A request the upstream rejects as malformed (400) says nothing about its health.

The state lives in SQLite: in memory for one worker, in a file for ``route-llm serve --workers N`` (the supervisor
names it in ``ROUTE_LLM_BREAKER_DB``, in its private per-server directory). A file rather than shared memory
because workers are spawned, not forked, so they cannot inherit a lock; SQLite gives every process the same
atomic read-modify-write (``BEGIN IMMEDIATE``) with no extra dependency, and a worker that dies mid-update leaves no
lock behind. The hot path (a closed breaker with no failures) reads one row and writes nothing. Times are wall-clock
(``time.time``), the one clock the processes share.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from proxy import metrics
from proxy.settings import BREAKER_DB_ENV, BreakerSettings
from proxy.state.database import connect_sqlite
from router.policy import Tier

log = logging.getLogger("route_llm")

State = Literal["closed", "open", "half_open"]
STATES: tuple[State, ...] = ("closed", "open", "half_open")
STATE_VALUE = {"closed": 0, "open": 1, "half_open": 2}  # route_llm_breaker_state


@dataclass(frozen=True)
class Row:
    state: State
    failures: int
    until: float  # open: when the cool-down ends; half_open: when the trial is given up on


class Breakers:
    """The breakers of every tier; ``allow`` before an attempt, ``succeeded``/``failed`` after it."""

    def __init__(self, settings: BreakerSettings, tiers: Sequence[Tier], path: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.failures = settings.failures
        self.cooldown = settings.cooldown
        self._clock = clock
        self._lock = threading.Lock()  # one connection per process, used from the loop and from to_thread callers
        self._db = connect_sqlite(path, timeout=5) if path is not None else sqlite3.connect(
            ":memory:", isolation_level=None, check_same_thread=False)
        if path is not None:
            self._db.execute("PRAGMA synchronous=OFF")  # a state lost in a power cut is harmless
        self._db.execute("CREATE TABLE IF NOT EXISTS breaker (tier TEXT PRIMARY KEY, state TEXT NOT NULL, "
                         "failures INTEGER NOT NULL, until REAL NOT NULL)")
        for tier in tiers:
            for to in STATES:
                metrics.BREAKER_TRANSITIONS.labels(tier.name, to)
            metrics.BREAKER_STATE.labels(tier.name).set(STATE_VALUE[self.row(tier).state])

    @classmethod
    def from_env(cls, settings: BreakerSettings, tiers: Sequence[Tier]) -> Breakers | None:
        """This process's breakers: shared through the supervisor's file, else private; None when switched off."""
        if settings.failures is None:
            return None
        shared = os.environ.get(BREAKER_DB_ENV)
        if shared:
            try:
                return cls(settings, tiers, Path(shared))
            except sqlite3.Error as exc:  # the breaker must never stop a server: this worker keeps its own
                log.warning("circuit breaker: cannot open the workers' shared state %s (%s); this worker keeps its "
                            "own", shared, exc)
        return cls(settings, tiers)

    @property
    def enabled(self) -> bool:
        return self.failures is not None

    def row(self, tier: Tier) -> Row:
        with self._lock:
            found = self._db.execute("SELECT state, failures, until FROM breaker WHERE tier = ?",
                                     (tier.name,)).fetchone()
        return Row(found[0], int(found[1]), float(found[2])) if found else Row("closed", 0, 0.0)

    def allow(self, tier: Tier) -> bool:
        """Whether an attempt on ``tier`` may go out now; taking the trial of a cooled-down breaker is atomic, so of
        all the workers' requests exactly one gets it."""
        row = self.row(tier)  # the common case, closed, answers from one read
        if row.state == "closed" or self._clock() < row.until:
            return row.state == "closed"
        return self._update(tier, self._take_trial)

    def retry_after(self, tiers: Sequence[Tier]) -> float:
        """Seconds until the first of ``tiers`` lets a trial through (for a 503's Retry-After)."""
        now = self._clock()
        return max(0.0, min((self.row(t).until - now for t in tiers), default=0.0))

    def succeeded(self, tier: Tier) -> None:
        row = self.row(tier)
        if row.state != "closed" or row.failures:
            self._update(tier, lambda r, now: (Row("closed", 0, 0.0), True))

    def failed(self, tier: Tier) -> bool:
        """Count a failed attempt; True when the breaker is (now) open, so the caller stops trying this tier."""
        return not self._update(tier, self._count_failure)

    # --- transitions: (current row, now) -> (new row, result) ------------------------------------------------
    def _take_trial(self, r: Row, now: float) -> tuple[Row, bool]:
        if r.state == "closed" or now < r.until:  # changed since our read: closed by a success, or trial taken
            return r, r.state == "closed"
        return Row("half_open", r.failures, now + self.cooldown), True

    def _count_failure(self, r: Row, now: float) -> tuple[Row, bool]:
        """The result is whether the tier may still be tried (the breaker stayed closed)."""
        failures = r.failures + 1
        if r.state == "half_open" or (r.state == "closed" and self.failures is not None and failures >= self.failures):
            return Row("open", failures, now + self.cooldown), False
        if r.state == "open":  # an attempt that left before the breaker opened: already counted as open
            return Row("open", failures, r.until), False
        return Row("closed", failures, 0.0), True

    def _update(self, tier: Tier, change: Callable[[Row, float], tuple[Row, bool]]) -> bool:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    found = self._db.execute("SELECT state, failures, until FROM breaker WHERE tier = ?",
                                             (tier.name,)).fetchone()
                    old = Row(found[0], int(found[1]), float(found[2])) if found else Row("closed", 0, 0.0)
                    new, result = change(old, self._clock())
                    if new != old:
                        self._db.execute("INSERT OR REPLACE INTO breaker (tier, state, failures, until) "
                                         "VALUES (?, ?, ?, ?)", (tier.name, new.state, new.failures, new.until))
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:  # a broken state file must not fail requests: the breaker stays out of the way
            log.warning("circuit breaker: the shared state failed (%s); the %s tier is tried", exc, tier.name)
            return True
        if new.state != old.state:
            self._note(tier, old, new)
        return result

    def _note(self, tier: Tier, old: Row, new: Row) -> None:
        metrics.BREAKER_TRANSITIONS.labels(tier.name, new.state).inc()
        metrics.BREAKER_STATE.labels(tier.name).set(STATE_VALUE[new.state])
        if new.state == "open":
            log.warning("circuit breaker: the %s tier failed %d times in a row; skipped for %gs", tier.name,
                        new.failures, self.cooldown)
        else:
            log.info("circuit breaker: %s tier %s -> %s", tier.name, old.state, new.state)

    def close(self) -> None:
        with self._lock:
            self._db.close()
