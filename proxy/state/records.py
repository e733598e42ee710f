"""Decision records and ratings: one SQLite file beside the uploaded files, written off the request path.

Every routed chat request that was answered leaves a record keyed by (owner, x-request-id): what the router
decided and which tier answered. A rating (``POST /v1/feedback``) copies the fields retraining needs from its
record, so ratings outlive the records' retention; they are the training data.

A request must never wait for, or fail because of, this store. Records go into a bounded in-memory queue that
one writer thread drains in batches; a full queue, a full disk or a broken database drops the record, logs and
counts ``route_llm_decision_record_errors_total{reason}``. Ratings are written synchronously (in the thread pool)
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
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from proxy import metrics

if TYPE_CHECKING:
    from proxy.upstream.accounting import Outcome

log = logging.getLogger("route_llm")

DB_FILE = "feedback.db"
Rating = Literal["good", "bad"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    alias TEXT NOT NULL,
    score REAL,
    threshold REAL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    fallback INTEGER NOT NULL,
    router_error INTEGER NOT NULL,
    router_version TEXT NOT NULL,
    prompt TEXT,
    prompt_hash TEXT NOT NULL,
    PRIMARY KEY (owner, request_id)
);
CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    rating TEXT NOT NULL,
    rating_score REAL,
    comment TEXT,
    decided_at REAL NOT NULL,
    alias TEXT NOT NULL,
    score REAL,
    threshold REAL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    fallback INTEGER NOT NULL,
    router_version TEXT NOT NULL,
    prompt TEXT,
    prompt_hash TEXT NOT NULL,
    UNIQUE (owner, request_id)
);
"""
_DECISION_COLUMNS = ("owner, request_id, created_at, alias, score, threshold, tier, model, fallback, router_error, "
                     "router_version, prompt, prompt_hash")
_QUEUE_SIZE = 10_000
_BATCH = 256
_PRUNE_SECONDS = 60.0


def prompt_hash(text: str) -> str:
    """What a record keeps instead of the prompt when ``feedback.store_prompts`` is off."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


@dataclass(frozen=True)
class DecisionRecord:
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

    def row(self) -> tuple[object, ...]:
        return (self.owner, self.request_id, self.created_at, self.alias, self.score, self.threshold, self.tier,
                self.model, int(self.fallback), int(self.router_error), self.router_version, self.prompt,
                self.prompt_hash)


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


class StoreError(Exception):
    """The store cannot take a write; ``reason`` is one of metrics.RECORD_ERROR_REASONS."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownRequest(LookupError):
    """No live record of that request for that owner (never made, expired, or another key's)."""


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "full" in text:
        return "full"
    if isinstance(exc, (OSError, sqlite3.OperationalError)) and ("readonly" in text or "read-only" in text
                                                                   or "unable to open" in text):
        return "unavailable"
    return "error"


def from_outcome(o: Outcome, *, tier: str, model: str, text: str, owner: str, version: str,
                 store_prompts: bool) -> DecisionRecord | None:
    """The record of a finished chat request, or None when there is nothing to rate (not routed, not answered)."""
    d = o.decision
    if d is None or o.target is None or not o.target.routed or o.status != "ok":
        return None
    return DecisionRecord(owner=owner, request_id=o.request_id, created_at=time.time(), alias=o.requested,
                          score=d.score, threshold=d.threshold, tier=tier, model=model, fallback=tier != d.tier.name,
                          router_error=d.failed, router_version=version, prompt=text if store_prompts else None,
                          prompt_hash=prompt_hash(text))


class RecordStore:
    """``root/feedback.db``: decision records (bounded by age and count) and the ratings given to them.

    One connection shared by the writer thread and the thread-pool calls, serialised by a lock; WAL and a busy
    timeout let the workers of ``--workers N`` share the file. If the database cannot be opened the store
    stays up in a failed state: every write is counted as ``unavailable`` and ratings answer 503.
    """

    def __init__(self, root: Path, *, retention_days: float, limit_records: int | None,
                 limit_store_bytes: int | None = None) -> None:
        self.path = Path(root) / DB_FILE
        self.retention = retention_days * 86400.0
        self.limit_records = limit_records
        self.problem: str | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue[DecisionRecord | None] = queue.Queue(_QUEUE_SIZE)
        self._db: sqlite3.Connection | None = None
        self._last_log = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            if limit_store_bytes is not None:
                (page,) = db.execute("PRAGMA page_size").fetchone()
                db.execute(f"PRAGMA max_page_count = {max(1, limit_store_bytes // int(page))}")
            self._db = db
        except (OSError, sqlite3.Error) as exc:
            self.problem = f"cannot open {self.path}: {exc}"
            log.error("decision records are off: %s (requests are still served)", self.problem)
        self._writer = threading.Thread(target=self._write_loop, name="route-llm-records", daemon=True)
        self._writer.start()

    # --- the request path: never blocks ----------------------------------------------------------------
    def add(self, record: DecisionRecord) -> None:
        if self._db is None:
            self._failed("unavailable", self.problem or "store closed")
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._failed("queue_full", f"{_QUEUE_SIZE} records waiting for the disk")

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
            item = self._queue.get()
            batch = [item]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
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
        try:
            with self._lock:
                assert self._db is not None
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(f"INSERT OR REPLACE INTO decisions ({_DECISION_COLUMNS}) "
                                         f"VALUES ({', '.join('?' * 13)})", [r.row() for r in records])
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLITE_FULL has already rolled it back
                        self._db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as exc:
            reason = _reason(exc)
            metrics.RECORD_ERRORS.labels(reason).inc(len(records) - 1)
            self._failed(reason, str(exc))

    def prune(self) -> None:
        """Delete records past their retention and beyond ``limit_records`` (the oldest first); ratings too."""
        if self._db is None:
            return
        try:
            with self._lock:
                self._db.execute("DELETE FROM decisions WHERE created_at < ?", (time.time() - self.retention,))
                if self.limit_records is not None:
                    for table in ("decisions", "feedback"):
                        self._db.execute(f"DELETE FROM {table} WHERE rowid <= "  # noqa: S608 (fixed names)
                                         f"(SELECT MAX(rowid) FROM {table}) - ?", (self.limit_records,))
        except sqlite3.Error as exc:
            log.warning("pruning decision records failed: %s", exc)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until the records queued so far are written (a rating may follow its answer immediately)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.002)

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=5)
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # --- ratings (thread pool) -------------------------------------------------------------------------
    def _find(self, owner: str, request_id: str) -> tuple[object, ...] | None:
        assert self._db is not None
        row: tuple[object, ...] | None = self._db.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE owner = ? AND request_id = ? AND created_at >= ?",
            (owner, request_id, time.time() - self.retention)).fetchone()
        return row

    def rate(self, owner: str, request_id: str, rating: Rating, score: float | None,
             comment: str | None) -> Feedback:
        """Store a rating of one of ``owner``'s requests; a later rating of the same request replaces it."""
        if self._db is None:
            raise StoreError(f"the feedback store is unavailable ({self.problem})", "unavailable")
        with self._lock:
            found = self._find(owner, request_id)
        if found is None:
            # The record may still be queued (a rating can arrive right after its answer), or be in the queue of
            # another worker process: wait for this one's queue, then give the others a moment.
            self.flush()
            for pause in (0.0, 0.1, 0.3):
                time.sleep(pause)
                with self._lock:
                    found = self._find(owner, request_id)
                if found is not None:
                    break
        if found is None:
            raise UnknownRequest(request_id)
        (_, _, decided_at, alias, d_score, threshold, tier, model, fallback, _, version, prompt, p_hash) = found
        fb = Feedback(id="fb-" + secrets.token_hex(12), request_id=request_id, created_at=time.time(),
                      rating=rating, rating_score=score, comment=comment, tier=str(tier), model=str(model),
                      alias=str(alias), score=d_score, threshold=threshold,  # type: ignore[arg-type]
                      fallback=bool(fallback), router_version=str(version),
                      prompt=prompt, prompt_hash=str(p_hash))  # type: ignore[arg-type]
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO feedback (id, owner, request_id, created_at, rating, rating_score, "
                    "comment, decided_at, alias, score, threshold, tier, model, fallback, router_version, prompt, "
                    "prompt_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (fb.id, owner, request_id, fb.created_at, rating, score, comment, decided_at, fb.alias,
                     fb.score, fb.threshold, fb.tier, fb.model, int(fb.fallback), fb.router_version, fb.prompt,
                     fb.prompt_hash))
        except (sqlite3.Error, OSError) as exc:
            reason = _reason(exc)
            metrics.RECORD_ERRORS.labels(reason).inc()
            raise StoreError(f"the rating could not be stored: {exc}", reason) from exc
        return fb


def read_feedback(root: Path) -> Iterator[Feedback]:
    """Every stored rating, oldest first, read-only (for ``route-llm feedback export``)."""
    path = Path(root) / DB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no feedback store here (feedback.storage_dir / documents.storage_dir)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT id, request_id, created_at, rating, rating_score, comment, tier, model, alias, "
                          "score, threshold, fallback, router_version, prompt, prompt_hash FROM feedback "
                          "ORDER BY created_at").fetchall()
    finally:
        db.close()
    for r in rows:
        yield Feedback(id=r[0], request_id=r[1], created_at=r[2], rating=r[3], rating_score=r[4], comment=r[5],
                       tier=r[6], model=r[7], alias=r[8], score=r[9], threshold=r[10], fallback=bool(r[11]),
                       router_version=r[12], prompt=r[13], prompt_hash=r[14])
