"""Stored responses of ``POST /v1/responses``: what ``previous_response_id``, ``GET``/``DELETE
/v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items`` read, on SQLite (``responses.db`` in the storage
directory, the default) or on the shared PostgreSQL database (``storage.url``), where every replica sees them.

A row holds one response as it was sent (the Response object, output included) and its whole input context:
the items of the chain it continues followed by the request's own input, as OpenAI's ``input_items`` lists them.
Continuing a response is then one indexed read of one row, whatever the chain's length, and deleting a response
in the middle of a chain does not break the responses that continue it. The price is that a long chain's items
are stored once per turn; the request body limits bound each row, and ``responses.limit_per_key`` the rows.

Each row belongs to an owner (a hash of the proxy key); every query filters on it, so another key's response is
indistinguishable from a missing one. Rows expire ``responses.retention_days`` after they were created: reads
skip expired rows at once, and a purge deletes them at most once a minute per process, on a write.

``request_id`` is the ``x-request-id`` of the request that produced the response, the key of its decision record
(``proxy.state.records``), and ``previous_id`` the response it continued: together they link a chain to the
routing decisions taken along it without a column in the records table. Called from the thread pool.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.state.database import Database, Migration, SqliteDatabase, Tx

DB_FILE = "responses.db"  # on SQLite, beside files.db
_PURGE_INTERVAL = 60.0  # seconds between purges of expired rows, per process

_TABLE = """CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at {real} NOT NULL,
    expires_at {real},  -- NULL: kept until deleted
    previous_id TEXT,
    request_id TEXT NOT NULL,
    items TEXT NOT NULL,  -- JSON list: the whole input context, oldest first
    response TEXT NOT NULL  -- JSON: the Response object as sent
)"""
_SQLITE = (Migration(1, (
    _TABLE.format(real="REAL"),
    "CREATE INDEX IF NOT EXISTS responses_by_owner ON responses (owner, expires_at)",
    "CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at)",
)),)
_POSTGRES = (Migration(1, (
    _TABLE.format(real="DOUBLE PRECISION"),
    "CREATE INDEX IF NOT EXISTS responses_by_owner ON responses (owner, expires_at)",
    "CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at)",
)),)


class QuotaExceeded(Exception):
    """The owner already has as many stored responses as ``responses.limit_per_key`` allows."""


@dataclass(frozen=True)
class Stored:
    """One stored response: the object as sent and its whole input context (earlier turns included)."""

    id: str
    previous_id: str | None
    request_id: str
    items: list[dict[str, Any]]
    response: dict[str, Any]
    size: int  # characters of the stored JSON (items and response): what continuing it adds to a request

    def context(self) -> list[dict[str, Any]]:
        """What a request continuing this response starts from: its input items, then its output."""
        return [*self.items, *self.response.get("output", [])]


class ResponseStore:
    """Responses of many owners in ``db``; ``own_db`` is closed with the store (the SQLite file it opened)."""

    def __init__(self, db: Database, *, retention_days: float | None, limit_per_key: int | None,
                 own_db: bool = False) -> None:
        self.db = db
        self.retention = retention_days * 86400.0 if retention_days is not None else None
        self.limit_per_key = limit_per_key
        self._own_db = own_db
        self._purged_at = 0.0
        self._purge_lock = threading.Lock()
        db.migrate("responses", _SQLITE if db.kind == "sqlite" else _POSTGRES)

    def close(self) -> None:
        if self._own_db:
            self.db.close()

    def _count(self, tx: Tx, owner: str, now: float) -> int:
        rows = tx.execute("SELECT COUNT(*) FROM responses WHERE owner = ? AND (expires_at IS NULL OR expires_at > ?)",
                          (owner, now))
        return int(rows[0][0])

    def _quota_error(self, count: int) -> QuotaExceeded:
        return QuotaExceeded(f"this key has {count} stored responses, the most this proxy keeps per key "
                             f"(responses.limit_per_key = {self.limit_per_key}); delete some with "
                             "DELETE /v1/responses/{id}, or send `store: false`")

    def check_quota(self, owner: str) -> None:
        """Raise QuotaExceeded when one more response would take ``owner`` past the quota (checked before the
        model is asked, so a refused request costs nothing upstream)."""
        if self.limit_per_key is None:
            return
        with self.db.transaction() as tx:
            count = self._count(tx, owner, time.time())
        if count >= self.limit_per_key:
            raise self._quota_error(count)

    def put(self, owner: str, response: dict[str, Any], items: list[dict[str, Any]], *, request_id: str) -> None:
        """Store a response, committed before this returns (the client's next turn may come at once, to any
        replica). The quota is checked again in the insert's transaction, under a per-owner lock: two requests
        of one key may race, on two workers or two replicas."""
        now = time.time()
        expires = now + self.retention if self.retention is not None else None
        row = (response["id"], owner, now, expires, response.get("previous_response_id"), request_id,
               json.dumps(items, ensure_ascii=False), json.dumps(response, ensure_ascii=False))
        lock = f"responses:{owner}" if self.limit_per_key is not None else None
        with self.db.transaction(lock=lock) as tx:
            if self.limit_per_key is not None:
                count = self._count(tx, owner, now)
                if count >= self.limit_per_key:
                    raise self._quota_error(count)
            tx.execute("INSERT INTO responses (id, owner, created_at, expires_at, previous_id, request_id, items, "
                       "response) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        self._purge(now)

    def _purge(self, now: float) -> None:
        """Delete expired rows, at most once per ``_PURGE_INTERVAL`` in this process (reads skip them anyway)."""
        if self.retention is None or now - self._purged_at < _PURGE_INTERVAL:
            return
        with self._purge_lock:
            if now - self._purged_at < _PURGE_INTERVAL:
                return
            self._purged_at = now
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))

    def get(self, owner: str, response_id: str) -> Stored | None:
        """The owner's response, or None when it is unknown, another owner's, deleted or expired."""
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT id, previous_id, request_id, items, response FROM responses WHERE id = ? AND "
                              "owner = ? AND (expires_at IS NULL OR expires_at > ?)", (response_id, owner, time.time()))
        if not rows:
            return None
        rid, previous, request_id, items, response = rows[0]
        return Stored(rid, previous, request_id, json.loads(items), json.loads(response), len(items) + len(response))

    def delete(self, owner: str, response_id: str) -> bool:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM responses WHERE id = ? AND owner = ? AND (expires_at IS NULL OR expires_at > ?)",
                       (response_id, owner, time.time()))
            return tx.rowcount > 0


def open_response_store(db: Database, storage_dir: str, *, retention_days: float | None,
                        limit_per_key: int | None) -> ResponseStore:
    """On Postgres the shared pool (``db``); on SQLite a file of its own, ``responses.db`` beside ``files.db``
    (a SQLite file holds one store's schema version)."""
    if db.kind == "sqlite":
        own = SqliteDatabase(Path(storage_dir) / DB_FILE)
        return ResponseStore(own, retention_days=retention_days, limit_per_key=limit_per_key, own_db=True)
    return ResponseStore(db, retention_days=retention_days, limit_per_key=limit_per_key)
