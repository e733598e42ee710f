"""Requests per minute per proxy key (``server.limit_requests_per_minute``), counted where every server sees it.

The window is a sliding log, the same in every backend: a request is admitted when fewer than the limit were
admitted for the key in the 60 seconds before it, and a refused request does not count. ``Retry-After`` is the
time until the oldest admitted request leaves the window. Three backends, chosen at start-up:

- **Redis** (``server.redis_url`` / ``ROUTE_LLM_REDIS_URL``): the log is a sorted set per key, trimmed, counted and
  added to by one Lua script, so the check and the add are atomic across every worker and replica; times come
  from the Redis server's clock (``TIME``), so replicas' clocks do not matter. Keys are ``route-llm:rpm:<hash of
  the proxy key>``, never the key itself, and expire after a window without requests.
- **A SQLite file** shared by the workers of ``route-llm serve --workers N`` on one machine (the supervisor makes it
  in a private temporary directory and names it in ``ROUTE_LLM_LIMITS_DB``): the limit holds for the server as a
  whole, it is not divided by N (a key whose connection lands on one worker still gets its whole limit).
- **In process**, for a single worker.

Redis unreachable (down, or slower than ``server.timeout_redis``): with ``server.redis_failure: open`` the request
is counted by this process alone, as without Redis; with ``closed`` it is refused with a 503 ``Retry-After: 1``.
Either way ``route_llm_rate_limit_store_errors_total{outcome}`` counts it and it is never a 500; for a second after
a failure Redis is not asked again, so an outage does not add a timeout to every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from proxy import metrics
from proxy.settings import LIMITS_DB_ENV, FailureMode, redact
from proxy.state.database import connect_sqlite

log = logging.getLogger("route_llm")

WINDOW = 60.0  # seconds
_RETRY_REDIS_AFTER = 1.0  # seconds without asking Redis after it failed


class LimitStoreDown(Exception):
    """The shared count cannot be read and ``redis_failure`` is ``closed``: refuse the request (503)."""


class LocalWindow:
    """The log in this process's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._recent: dict[str, deque[float]] = {}

    async def hit(self, who: str) -> float | None:
        return self.hit_now(who)

    def hit_now(self, who: str) -> float | None:
        """None when admitted (and counted); else the seconds until a request would be."""
        now = time.monotonic()
        window = self._recent.setdefault(who, deque())
        while window and now - window[0] > WINDOW:
            window.popleft()
        if len(window) >= self.limit:
            return WINDOW - (now - window[0])
        window.append(now)
        return None

    async def close(self) -> None:
        return None


class SqliteWindow:
    """The log in a SQLite file that the worker processes of one server share (WAL, one write transaction per
    check: ``BEGIN IMMEDIATE`` makes the count and the add atomic across processes)."""

    def __init__(self, limit: int, path: Path) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._db = connect_sqlite(path, timeout=10)
        self._db.execute("PRAGMA synchronous=OFF")  # a lost count after a power cut is harmless
        self._db.execute("CREATE TABLE IF NOT EXISTS hits (who TEXT NOT NULL, at REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS hits_by_who ON hits (who, at)")
        self._db.execute("CREATE INDEX IF NOT EXISTS hits_by_time ON hits (at)")

    async def hit(self, who: str) -> float | None:
        try:
            return await asyncio.to_thread(self._hit, who)
        except sqlite3.Error as exc:  # a locked or broken file must not fail the request: let it through, counted
            metrics.LIMIT_STORE_ERRORS.labels("allowed").inc()
            log.warning("rate limits: the shared count failed (%s); request let through", exc)
            return None

    def _hit(self, who: str) -> float | None:
        now = time.time()  # wall clock: the one clock the processes share
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM hits WHERE at <= ?", (now - WINDOW,))
                count, oldest = self._db.execute("SELECT COUNT(*), MIN(at) FROM hits WHERE who = ?",
                                                 (who,)).fetchone()
                if count < self.limit:
                    self._db.execute("INSERT INTO hits (who, at) VALUES (?, ?)", (who, now))
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return None if count < self.limit else WINDOW - (now - float(oldest))

    async def close(self) -> None:
        with self._lock:
            self._db.close()


# KEYS[1]: the key's log; ARGV: limit, window in ms, a unique member. Returns {admitted (0/1), ms to wait}.
_SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
"""


class RedisWindow:
    """The log in Redis, shared by every worker of every replica."""

    def __init__(self, limit: int, url: str, *, failure: FailureMode, timeout: float) -> None:
        try:
            import redis.asyncio
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError("server.redis_url is set but the redis package is not installed: "
                               "pip install 'route-llm[redis]'") from exc
        self.limit = limit
        self.failure = failure
        self.url = redact(url)
        self._client: Any = redis.asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                                         health_check_interval=30)
        self._script = self._client.register_script(_SLIDING_LOG)
        self._errors = (redis.RedisError, OSError, asyncio.TimeoutError)
        self._fallback = LocalWindow(limit)
        self._down_until = 0.0
        self._last_log = 0.0

    async def hit(self, who: str) -> float | None:
        if time.monotonic() >= self._down_until:
            key = "route-llm:rpm:" + hashlib.sha256(who.encode()).hexdigest()[:32]
            try:
                admitted, wait_ms = await self._script(keys=[key], args=[self.limit, int(WINDOW * 1000),
                                                                          secrets.token_hex(8)])
                return None if int(admitted) else max(0.0, int(wait_ms) / 1000)
            except self._errors as exc:
                self._down_until = time.monotonic() + _RETRY_REDIS_AFTER
                self._note(exc)
        metrics.LIMIT_STORE_ERRORS.labels("allowed" if self.failure == "open" else "refused").inc()
        if self.failure == "closed":
            raise LimitStoreDown(f"the shared rate-limit store ({self.url}) is unreachable")
        return self._fallback.hit_now(who)

    def _note(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_log > 10:  # one line per outage, not one per request
            self._last_log = now
            log.warning("rate limits: Redis at %s failed (%s: %s); failing %s", self.url, type(exc).__name__, exc,
                        self.failure)

    async def close(self) -> None:
        await self._client.aclose()


Limiter = LocalWindow | SqliteWindow | RedisWindow


def make_limiter(limit: int | None, redis_url: str | None, *, failure: FailureMode = "open",
                 timeout: float = 0.25) -> Limiter | None:
    """The backend for this process (see the module's docstring); None when there is no limit."""
    if limit is None:
        return None
    if redis_url:
        return RedisWindow(limit, redis_url, failure=failure, timeout=timeout)
    shared = os.environ.get(LIMITS_DB_ENV)
    if shared:
        return SqliteWindow(limit, Path(shared))
    return LocalWindow(limit)
