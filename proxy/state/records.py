"""Decision records and ratings, written off the request path: ``feedback.db`` beside the uploaded files (SQLite,
the default) or the shared PostgreSQL database (``storage.url``), where every replica's records and ratings meet.

Every chat request the chat handler saw (routed or for a concrete model, answered or failed) leaves a record
keyed by (owner, x-request-id): what the router decided (empty when nothing was routed), which tier answered
(empty when none did) and the outcome (``status``: ``ok``, ``upstream_error``, ``client_error``, ...). A rating
(``POST /v1/feedback``) copies the fields retraining needs from its record, so ratings outlive the records'
retention; they are the training data. Requests refused by the guard (no key, rate limit, overload) leave none.

A request must never wait for, or fail because of, this store. Records go into a bounded in-memory queue that
one writer thread drains in batches every ``_INTERVAL`` seconds, sooner once ``_BATCH`` are waiting, when a
rating needs its record, and at shutdown (everything queued is written). A request does not wake the writer:
a wake-up per request put a thread switch and a commit in the middle of every answer, which is where the event
loop was about to send it. A full queue, a full disk or a broken database drops the record, logs and counts
``route_llm_decision_record_errors_total{reason}``. Ratings are written synchronously (in the thread pool)
because the client is told whether it was stored.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from proxy import metrics
from proxy.state.database import RECORDS_FILE, Database, Migration, StorageUnavailable

log = logging.getLogger("route_llm")

DB_FILE = RECORDS_FILE
Rating = Literal["good", "bad"]

_DECISIONS = """CREATE TABLE IF NOT EXISTS decisions (
    {seq}
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_at {real} NOT NULL,
    alias TEXT NOT NULL,
    score {real},
    threshold {real},
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    fallback INTEGER NOT NULL,
    router_error INTEGER NOT NULL,
    router_version TEXT NOT NULL,
    prompt TEXT,
    prompt_hash TEXT NOT NULL,
    PRIMARY KEY (owner, request_id)
)"""
_FEEDBACK = """CREATE TABLE IF NOT EXISTS feedback (
    {seq}
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_at {real} NOT NULL,
    rating TEXT NOT NULL,
    rating_score {real},
    comment TEXT,
    decided_at {real} NOT NULL,
    alias TEXT NOT NULL,
    score {real},
    threshold {real},
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    fallback INTEGER NOT NULL,
    router_version TEXT NOT NULL,
    prompt TEXT,
    prompt_hash TEXT NOT NULL,
    UNIQUE (owner, request_id)
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (created_at)"
# SQLite: REAL is a double and rowid gives insertion order; Postgres: REAL is 4 bytes, so DOUBLE PRECISION, and an
# identity column stands in for rowid.
# Version 2: every chat request is recorded, not only routed, answered ones; rows of version 1 were both.
_OUTCOME = tuple(f"ALTER TABLE {table} ADD COLUMN {column}" for table in ("decisions", "feedback")
                 for column in ("routed INTEGER NOT NULL DEFAULT 1", "status TEXT NOT NULL DEFAULT 'ok'",
                                "http_status INTEGER NOT NULL DEFAULT 200"))
# Version 3 (`route-llm report`): what a request cost and why it failed.
_ACCOUNTING = tuple(f"ALTER TABLE decisions ADD COLUMN {column}" for column in (
    "prompt_tokens INTEGER NOT NULL DEFAULT 0", "completion_tokens INTEGER NOT NULL DEFAULT 0", "cost_usd {real}",
    "error_reason TEXT NOT NULL DEFAULT ''"))
_SQLITE = (Migration(1, tuple(t.format(seq="", real="REAL") for t in (_DECISIONS, _INDEX, _FEEDBACK))),
           Migration(2, _OUTCOME),
           Migration(3, tuple(s.format(real="REAL") for s in _ACCOUNTING)))
_POSTGRES = (Migration(1, tuple(t.format(seq="seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,", real="DOUBLE PRECISION")
                                for t in (_DECISIONS, _INDEX, _FEEDBACK))),
             Migration(2, _OUTCOME),
             Migration(3, tuple(s.format(real="DOUBLE PRECISION") for s in _ACCOUNTING)))
_DECISION_COLUMNS = ("owner, request_id, created_at, alias, score, threshold, tier, model, fallback, router_error, "
                     "router_version, prompt, prompt_hash, routed, status, http_status")
# What a record row holds; ratings copy the first part (_DECISION_COLUMNS), the report reads it all.
_RECORD_COLUMNS = _DECISION_COLUMNS + ", prompt_tokens, completion_tokens, cost_usd, error_reason"
_FEEDBACK_COLUMNS = ("id, owner, request_id, created_at, rating, rating_score, comment, decided_at, alias, score, "
                     "threshold, tier, model, fallback, router_version, prompt, prompt_hash, routed, status, "
                     "http_status")
_QUEUE_SIZE = 10_000
_BATCH = 256
_INTERVAL = 0.25  # seconds a record may wait for its batch (a crash loses at most this much)
_PRUNE_SECONDS = 60.0


def prompt_hash(text: str) -> str:
    """What a record keeps instead of the prompt when ``feedback.store_prompts`` is off."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


@dataclass(frozen=True)
class DecisionRecord:
    """One chat request. ``tier``/``model`` are "" when no tier was chosen (the request failed before that);
    ``alias``, ``score``, ``threshold`` and ``router_version`` are empty when nothing was routed."""

    owner: str
    request_id: str
    created_at: float
    alias: str
    score: float | None
    threshold: float | None
    tier: str
    model: str
    fallback: bool
    router_error: bool
    router_version: str
    prompt: str | None
    prompt_hash: str
    routed: bool = True
    status: str = "ok"
    http_status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # priced as route_llm_cost_usd_total is; None when no model answered
    error_reason: str = ""  # the error's code (upstream: its reason, e.g. "timeout"); "" when it was answered

    def row(self) -> tuple[object, ...]:
        return (self.owner, self.request_id, self.created_at, self.alias, self.score, self.threshold, self.tier,
                self.model, int(self.fallback), int(self.router_error), self.router_version, self.prompt,
                self.prompt_hash, int(self.routed), self.status, self.http_status, self.prompt_tokens,
                self.completion_tokens, self.cost_usd, self.error_reason)


@dataclass(frozen=True)
class Feedback:
    """A stored rating with the decision it rates (as exported for training)."""

    id: str
    request_id: str
    created_at: float
    rating: Rating
    rating_score: float | None
    comment: str | None
    tier: str
    model: str
    alias: str
    score: float | None
    threshold: float | None
    fallback: bool
    router_version: str
    prompt: str | None
    prompt_hash: str
    routed: bool = True
    status: str = "ok"  # the rated request's outcome: only "ok" answers can train a router
    http_status: int = 200
    owner: str = ""  # the rater: the hash of the proxy key that made the rated request ("" without keys)


class StoreError(Exception):
    """The store cannot take a write; ``reason`` is one of metrics.RECORD_ERROR_REASONS."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownRequest(LookupError):
    """No live record of that request for that owner (never made, expired, or another key's)."""


def _upsert(table: str, columns: str, key: str) -> str:
    """An insert that replaces the row with the same ``key`` (SQLite and Postgres both speak ON CONFLICT)."""
    names = [c.strip() for c in columns.split(",")]
    keys = {k.strip() for k in key.split(",")}
    updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in keys)
    return (f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}")


_INSERT_DECISION = _upsert("decisions", _RECORD_COLUMNS, "owner, request_id")
_INSERT_FEEDBACK = _upsert("feedback", _FEEDBACK_COLUMNS, "owner, request_id")


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "full" in text or "no space" in text:
        return "full"
    if isinstance(exc, StorageUnavailable):
        return "unavailable"
    if isinstance(exc, (OSError, sqlite3.OperationalError)) and ("readonly" in text or "read-only" in text
                                                                   or "unable to open" in text):
        return "unavailable"
    return "error"


class RecordStore:
    """Decision records (bounded by age and count) and the ratings given to them, in ``db``.

    ``db`` is None when the database could not be opened (``problem`` says why): the store stays up in a failed
    state, every write is counted as ``unavailable`` and ratings answer 503. On SQLite, ``limit_store_bytes``
    caps the file's size.
    """

    def __init__(self, db: Database | None, *, retention_days: float, limit_records: int | None,
                 limit_store_bytes: int | None = None, problem: str | None = None) -> None:
        self.retention = retention_days * 86400.0
        self.limit_records = limit_records
        self.problem = problem
        self._queue: queue.Queue[DecisionRecord | None] = queue.Queue(_QUEUE_SIZE)
        self._wake = threading.Event()  # write now: a batch is full, a rating waits, or the store closes
        self._db: Database | None = None
        self._last_log = 0.0
        if db is not None:
            try:
                migrate(db)
                if limit_store_bytes is not None and db.kind == "sqlite":
                    with db.transaction() as tx:
                        (page,), = tx.execute("PRAGMA page_size")
                        tx.execute(f"PRAGMA max_page_count = {max(1, limit_store_bytes // int(page))}")
                self._db = db
            except db.errors as exc:
                self.problem = f"cannot set up the records store: {exc}"
        if self._db is None:
            log.error("decision records are off: %s (requests are still served)", self.problem)
        self._writer = threading.Thread(target=self._write_loop, name="route-llm-records", daemon=True)
        self._writer.start()

    # --- the request path: never blocks ----------------------------------------------------------------
    def add(self, record: DecisionRecord) -> None:
        if self._db is None:
            self._failed("unavailable", self.problem or "store closed")
            return
        try:
            self._queue.put_nowait(record)  # the writer waits on _wake, not on the queue: nobody to notify
        except queue.Full:
            self._failed("queue_full", f"{_QUEUE_SIZE} records waiting for the disk")
            return
        if self._queue.qsize() >= _BATCH:
            self._wake.set()

    def _failed(self, reason: str, message: str) -> None:
        metrics.RECORD_ERRORS.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_log > 10:  # one line per burst, not one per request
            self._last_log = now
            log.warning("decision record not stored (%s): %s; the request was served", reason, message)

    # --- the writer thread -----------------------------------------------------------------------------
    def _write_loop(self) -> None:
        last_prune = 0.0
        while True:
            self._wake.wait(_INTERVAL)
            self._wake.clear()
            batch: list[DecisionRecord | None] = []
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if len(batch) == _BATCH:
                self._wake.set()  # more may be waiting: go round again at once
            records = [r for r in batch if r is not None]
            if records:
                self._write(records)
            if time.monotonic() - last_prune > _PRUNE_SECONDS:
                last_prune = time.monotonic()
                self.prune()
            for _ in batch:
                self._queue.task_done()
            if None in batch:
                return

    def _write(self, records: list[DecisionRecord]) -> None:
        assert self._db is not None
        try:
            with self._db.transaction() as tx:
                tx.executemany(_INSERT_DECISION, [r.row() for r in records])
        except self._db.errors as exc:
            if len(records) > 1:
                # One record too many (a full store) must not cost the batch: write them one at a time, so every
                # record that fits is kept and each one that does not is counted, however the queue was batched.
                for record in records:
                    self._write([record])
                return
            self._failed(_reason(exc), str(exc))

    def prune(self) -> None:
        """Delete records past their retention and beyond ``limit_records`` (the oldest first); ratings too."""
        if self._db is None:
            return
        seq = self._db.order_column
        try:
            with self._db.transaction() as tx:
                tx.execute("DELETE FROM decisions WHERE created_at < ?", (time.time() - self.retention,))
                if self.limit_records is not None:
                    for table in ("decisions", "feedback"):
                        tx.execute(f"DELETE FROM {table} WHERE {seq} <= "  # noqa: S608 (fixed names)
                                   f"(SELECT MAX({seq}) FROM {table}) - ?", (self.limit_records,))
        except self._db.errors as exc:
            log.warning("pruning decision records failed: %s", exc)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until the records queued so far are written (a rating may follow its answer immediately)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.002)

    def close(self) -> None:
        """Stop the writer once the queue is written; the database belongs to whoever opened it."""
        self._queue.put(None)
        self._wake.set()
        self._writer.join(timeout=5)
        self._db = None

    # --- ratings (thread pool) -------------------------------------------------------------------------
    def _find(self, owner: str, request_id: str) -> tuple[object, ...] | None:
        assert self._db is not None
        with self._db.transaction() as tx:
            rows = tx.execute(f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE owner = ? AND request_id = ? "
                              "AND created_at >= ?", (owner, request_id, time.time() - self.retention))
        return rows[0] if rows else None

    def rate(self, owner: str, request_id: str, rating: Rating, score: float | None,
             comment: str | None) -> Feedback:
        """Store a rating of one of ``owner``'s requests; a later rating of the same request replaces it."""
        db = self._db
        if db is None:
            raise StoreError(f"the feedback store is unavailable ({self.problem})", "unavailable")
        try:
            found = self._find(owner, request_id)
            if found is None:
                # The record may still be queued (a rating can arrive right after its answer), or be in the queue
                # of another worker process or replica: wait for this one's queue, then give the others a moment.
                self.flush()
                for pause in (0.0, 0.1, 0.3):
                    time.sleep(pause)
                    found = self._find(owner, request_id)
                    if found is not None:
                        break
            if found is None:
                raise UnknownRequest(request_id)
            (_, _, decided_at, alias, d_score, threshold, tier, model, fallback, _, version, prompt, p_hash,
             routed, status, http_status) = found
            fb = Feedback(id="fb-" + secrets.token_hex(12), request_id=request_id, created_at=time.time(),
                          rating=rating, rating_score=score, comment=comment, tier=str(tier), model=str(model),
                          alias=str(alias), score=d_score, threshold=threshold,  # type: ignore[arg-type]
                          fallback=bool(fallback), router_version=str(version),
                          prompt=prompt, prompt_hash=str(p_hash),  # type: ignore[arg-type]
                          routed=bool(routed), status=str(status), http_status=int(http_status),  # type: ignore[call-overload]
                          owner=owner)
            with db.transaction() as tx:
                tx.execute(_INSERT_FEEDBACK, (fb.id, owner, request_id, fb.created_at, rating, score, comment,
                                              decided_at, fb.alias, fb.score, fb.threshold, fb.tier, fb.model,
                                              int(fb.fallback), fb.router_version, fb.prompt, fb.prompt_hash,
                                              int(fb.routed), fb.status, fb.http_status))
        except db.errors as exc:
            reason = _reason(exc)
            metrics.RECORD_ERRORS.labels(reason).inc()
            raise StoreError(f"the rating could not be stored: {exc}", reason) from exc
        return fb


def migrate(db: Database) -> None:
    """Bring the records' schema up to this version's (at start-up, and before an export reads a store that an
    older version wrote)."""
    db.migrate("records", _SQLITE if db.kind == "sqlite" else _POSTGRES)


def read_feedback(db: Database) -> Iterator[Feedback]:
    """Every stored rating, oldest first (for ``route-llm feedback export``)."""
    migrate(db)
    with db.transaction() as tx:
        rows = tx.execute("SELECT id, request_id, created_at, rating, rating_score, comment, tier, model, alias, "
                          "score, threshold, fallback, router_version, prompt, prompt_hash, routed, status, "
                          "http_status, owner FROM feedback ORDER BY created_at")
    for r in rows:
        yield Feedback(id=r[0], request_id=r[1], created_at=r[2], rating=r[3], rating_score=r[4], comment=r[5],
                       tier=r[6], model=r[7], alias=r[8], score=r[9], threshold=r[10], fallback=bool(r[11]),
                       router_version=r[12], prompt=r[13], prompt_hash=r[14], routed=bool(r[15]), status=r[16],
                       http_status=r[17], owner=r[18])


def read_decisions(db: Database, since: float) -> list[DecisionRecord]:
    """The records made at or after ``since`` (unix time), oldest first (for ``route-llm report``)."""
    migrate(db)
    with db.transaction() as tx:
        rows = tx.execute(f"SELECT {_RECORD_COLUMNS} FROM decisions WHERE created_at >= ? "  # noqa: S608 (fixed)
                          "ORDER BY created_at", (since,))
    return [DecisionRecord(owner=r[0], request_id=r[1], created_at=r[2], alias=r[3], score=r[4], threshold=r[5],
                           tier=r[6], model=r[7], fallback=bool(r[8]), router_error=bool(r[9]), router_version=r[10],
                           prompt=r[11], prompt_hash=r[12], routed=bool(r[13]), status=r[14], http_status=r[15],
                           prompt_tokens=int(r[16]), completion_tokens=int(r[17]), cost_usd=r[18],
                           error_reason=r[19]) for r in rows]
