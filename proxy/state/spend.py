"""What each proxy key has spent, in USD: ``spend.db`` beside the uploaded files (SQLite, shared by the workers of
one server) or the shared PostgreSQL database (``storage.url``, shared by every replica).

One table of buckets: (key name, bucket start, USD). A calendar budget (day, month) has one bucket per period, its
start; a rolling one has buckets of a sixtieth of its window, so the spend "in the last 24 h" is a sum over at
most 61 rows and is never more than one bucket too high. Adding is one upsert (``ON CONFLICT ... DO UPDATE``, the
same statement on both databases), so concurrent writers from any process add up instead of overwriting each other.
Keys are stored by their configured name, never the key itself.

Why not Redis (``server.redis_url``), which the rate limits use: there it counts requests in a sliding minute that
may be lost or fail open (``server.redis_failure``); spend is money, which a restart or a Redis eviction must not
lose and an outage must not wave through. A database write per answered request (off the request path, batched)
and one indexed read per request of a budgeted key are cheap next to an upstream model call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from proxy.settings import Settings
from proxy.state.database import Database, Databases, Migration, SqliteDatabase

SPEND_FILE = "spend.db"
STORE = "spend"
#: Rows of keys no longer configured are kept this long (a key renamed back finds its month's spend).
KEEP_UNKNOWN_SECONDS = 62 * 86400.0

_TABLE = """CREATE TABLE IF NOT EXISTS key_spend (
    key_name TEXT NOT NULL,
    bucket {int} NOT NULL,
    usd {real} NOT NULL,
    PRIMARY KEY (key_name, bucket)
)"""
_SQLITE = (Migration(1, (_TABLE.format(int="INTEGER", real="REAL"),)),)
_POSTGRES = (Migration(1, (_TABLE.format(int="BIGINT", real="DOUBLE PRECISION"),)),)


class SpendStore:
    """Synchronous (callers use a thread): the budgets service in ``proxy.routing.budget`` and ``route-llm spend``."""

    def __init__(self, db: Database, *, own: bool) -> None:
        self.db = db
        self._own = own  # a SQLite file of its own is closed with the store; a shared Postgres pool is not
        db.migrate(STORE, _SQLITE if db.kind == "sqlite" else _POSTGRES)

    def add(self, charges: Sequence[tuple[str, int, float]]) -> None:
        """Add USD to (key name, bucket) rows, in one transaction."""
        if not charges:
            return
        with self.db.transaction() as tx:
            tx.executemany("INSERT INTO key_spend (key_name, bucket, usd) VALUES (?, ?, ?) ON CONFLICT (key_name, "
                           "bucket) DO UPDATE SET usd = key_spend.usd + excluded.usd", charges)

    def buckets(self, name: str, since: int) -> list[tuple[int, float]]:
        """The key's buckets starting at or after ``since``, oldest first."""
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT bucket, usd FROM key_spend WHERE key_name = ? AND bucket >= ? ORDER BY bucket",
                              (name, since))
        return [(int(b), float(u)) for b, u in rows]

    def reset(self, name: str) -> int:
        """Forget everything the key spent; the number of buckets removed."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM key_spend WHERE key_name = ?", (name,))
            return tx.rowcount

    def prune(self, horizons: dict[str, int], *, now: float | None = None) -> None:
        """Drop buckets no budget reads any more: before each key's ``horizons[name]`` (its oldest readable
        bucket), and those of unknown keys after :data:`KEEP_UNKNOWN_SECONDS`."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            for name, since in horizons.items():
                tx.execute("DELETE FROM key_spend WHERE key_name = ? AND bucket < ?", (name, since))
            names = list(horizons)
            unknown = f"key_name NOT IN ({', '.join('?' * len(names))}) AND " if names else ""
            tx.execute(f"DELETE FROM key_spend WHERE {unknown}bucket < ?",
                       (*names, int(now - KEEP_UNKNOWN_SECONDS)))

    def close(self) -> None:
        if self._own:
            self.db.close()


def open_spend_store(settings: Settings, databases: Databases | None = None) -> SpendStore:
    """The store for these settings: Postgres through the files' pool when given, else its own connection to
    ``storage.url``'s database; on SQLite, ``spend.db`` in the storage directory."""
    url = settings.storage_url()
    if url.startswith("sqlite:///"):
        return SpendStore(SqliteDatabase(Path(settings.storage_dir()) / SPEND_FILE), own=True)
    if databases is not None:
        return SpendStore(databases.files, own=False)
    from proxy.state.database import PostgresDatabase

    st = settings.storage
    return SpendStore(PostgresDatabase(url, limit_connections=1, timeout_connect=st.timeout_connect), own=True)
