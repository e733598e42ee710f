"""One interface over the two databases the stores run on: SQLite (embedded, the default) and PostgreSQL.

``storage.url`` (or ``ROUTE_LLM_DATABASE_URL``) picks the backend. The stores (``files.py``, ``records.py``) write
their SQL once, with ``?`` placeholders, and run it through :meth:`Database.transaction`; the few places where the
dialects differ are attributes here (``order_column``). Both are synchronous: the stores are called from the
thread pool, so a blocking driver costs a thread, never the event loop. PostgreSQL goes through psycopg 3 and a
connection pool (the ``postgres`` extra); nothing of it is imported unless a ``postgresql://`` URL is configured.

Schemas are versioned. Each store owns a list of migrations (a migration is a list of statements) and
:func:`migrate` applies the missing ones at start-up, once, even when several processes start at once: SQLite
holds its write lock (``BEGIN IMMEDIATE``) and Postgres a transaction-scoped advisory lock while it reads and bumps
the version, so a second replica waits, then finds nothing left to do. A schema newer than this code stops the
start with a message instead of being written to by code that does not know it.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from proxy.settings import Settings, StorageKind, redact

RECORDS_FILE = "feedback.db"  # on SQLite, the decision records' file (beside files.db, or feedback.storage_dir)


class StorageUnavailable(Exception):
    """The database cannot be reached or cannot take the statement (down, full, read-only, pool exhausted)."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer route-llm; this one must not write to it."""


class Tx(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @property
    def rowcount(self) -> int: ...


@dataclass(frozen=True)
class Migration:
    """Statements that take a store's schema from ``version - 1`` to ``version``."""

    version: int
    statements: tuple[str, ...]


class Database:
    """A database the stores share. Subclasses: :class:`SqliteDatabase`, :class:`PostgresDatabase`."""

    kind: StorageKind
    order_column: str  # a column that grows with every insert: SQLite's rowid, Postgres's identity column
    errors: tuple[type[BaseException], ...]  # what the driver raises, and StorageUnavailable

    @contextlib.contextmanager
    def transaction(self, *, lock: str | None = None) -> Iterator[Tx]:  # pragma: no cover - interface
        """One transaction; committed on leaving, rolled back on an exception. ``lock`` (a name) serialises
        transactions that take the same name, across processes (SQLite: every write is serialised anyway)."""
        raise NotImplementedError
        yield

    def migrate(self, store: str, migrations: Sequence[Migration]) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def _check_version(store: str, found: int, migrations: Sequence[Migration]) -> list[Migration]:
    latest = migrations[-1].version
    if found > latest:
        raise SchemaTooNew(f"the {store} schema is at version {found}, newer than this route-llm knows ({latest}); "
                           "run the newer route-llm, or point storage.url at another database")
    return [m for m in migrations if m.version > found]


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.rowcount = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._db.execute(sql, tuple(params))
        self.rowcount = cursor.rowcount
        return cursor.fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.rowcount = self._db.executemany(sql, [tuple(r) for r in rows]).rowcount


def connect_sqlite(path: Path | str, *, timeout: float) -> sqlite3.Connection:
    """A WAL-mode connection to ``path`` shared across threads (callers serialise it), for any process.

    Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is locked" to a second
    connection doing the same at that moment without calling its busy handler (seen with replicas or workers
    starting together). The switch is therefore retried, with short sleeps, until ``timeout``.
    """
    db = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                db.close()
                raise
            if time.monotonic() + pause > deadline:
                db.close()
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


class SqliteDatabase(Database):
    """One SQLite file. One connection, serialised by a lock (the stores' queries take microseconds, and
    SQLite serialises writers anyway); WAL and a busy timeout let the workers of ``--workers N`` share it."""

    kind: StorageKind = "sqlite"
    order_column = "rowid"
    errors = (sqlite3.Error, OSError, StorageUnavailable)

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # check_same_thread=False: the lock, not the thread, guarantees one user at a time.
        self._db = connect_sqlite(self.path, timeout=timeout)
        self._db.execute("PRAGMA synchronous=NORMAL")

    def pragma(self, statement: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(f"PRAGMA {statement}").fetchall()

    @contextlib.contextmanager
    def transaction(self, *, lock: str | None = None) -> Iterator[Tx]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
            try:
                yield _SqliteTx(self._db)
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL has already rolled it back
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def migrate(self, store: str, migrations: Sequence[Migration]) -> int:
        """``PRAGMA user_version`` is the file's schema version (one store per file)."""
        with self.transaction(lock="migrate") as tx:
            (found,), = tx.execute("PRAGMA user_version")
            for m in _check_version(store, int(found), migrations):
                for statement in m.statements:
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {int(m.version)}")
            return migrations[-1].version

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _text_safe(params: Sequence[Any]) -> tuple[Any, ...]:
    """Postgres ``text`` cannot hold NUL; SQLite can. A NUL in a user's text (a filename, a prompt, a comment)
    is stored on Postgres as U+FFFD rather than failing the statement."""
    return tuple(p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p for p in params)


class _PostgresTx:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(_pg(sql), _text_safe(params))
        return list(self._cursor.fetchall()) if self._cursor.description is not None else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(_pg(sql), [_text_safe(r) for r in rows])

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


_PLACEHOLDER = re.compile(r"\?")


def _pg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (our SQL has no literal ``?`` or ``%``)."""
    return _PLACEHOLDER.sub("%s", sql)


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name (crc32 is the same in every process)."""
    return 0x524C4C4D_00000000 + zlib.crc32(name.encode())  # "RLLM" in the high half


class PostgresDatabase(Database):
    """A PostgreSQL database through a psycopg 3 connection pool (``limit_connections`` per process)."""

    kind: StorageKind = "postgresql"
    order_column = "seq"

    def __init__(self, url: str, *, limit_connections: int = 10, timeout_connect: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise StorageUnavailable("storage.url is a postgresql:// URL but psycopg is not installed: "
                                     "pip install 'route-llm[postgres]'") from exc
        self.url = url
        self.errors = (psycopg.Error, PoolTimeout, OSError, StorageUnavailable)
        self._operational = (psycopg.OperationalError, PoolTimeout)
        self._pool = ConnectionPool(url, min_size=1, max_size=limit_connections, timeout=timeout_connect,
                                    open=False, kwargs={"connect_timeout": max(1, int(timeout_connect))},
                                    name="route-llm")
        try:
            self._pool.open(wait=True, timeout=timeout_connect)
        except self._operational as exc:
            self._pool.close()
            raise StorageUnavailable(f"cannot connect to {redact(url)} within {timeout_connect:g} s: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self, *, lock: str | None = None) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                if lock is not None:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(lock),))
                yield _PostgresTx(cursor)
        except self._operational as exc:
            raise StorageUnavailable(f"the database {redact(self.url)} is unavailable: {exc}") from exc

    def migrate(self, store: str, migrations: Sequence[Migration]) -> int:
        """A ``route_llm_schema`` row per store holds its version; the advisory lock makes concurrent starts wait."""
        with self.transaction(lock="migrate") as tx:
            tx.execute("CREATE TABLE IF NOT EXISTS route_llm_schema (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            rows = tx.execute("SELECT version FROM route_llm_schema WHERE store = ?", (store,))
            found = int(rows[0][0]) if rows else 0
            for m in _check_version(store, found, migrations):
                for statement in m.statements:
                    tx.execute(statement)
            tx.execute("INSERT INTO route_llm_schema (store, version) VALUES (?, ?) ON CONFLICT (store) DO UPDATE "
                       "SET version = excluded.version", (store, migrations[-1].version))
            return migrations[-1].version

    def close(self) -> None:
        self._pool.close()


@dataclass
class Databases:
    """What the stores run on: on Postgres one pool for both; on SQLite a file each (files.db, feedback.db).
    ``records`` is None, with ``problem`` saying why, when the records' SQLite file cannot be opened."""

    files: Database
    records: Database | None
    problem: str | None = None

    def close(self) -> None:
        for db in {id(d): d for d in (self.files, self.records) if d is not None}.values():
            db.close()


def open_databases(settings: Settings, *, records: bool = True) -> Databases:
    """Connect (or open the files) at start-up; raises StorageUnavailable when Postgres cannot be reached."""
    st = settings.storage
    where = settings.storage_location()
    if where.kind == "sqlite":
        files = SqliteDatabase(Path(settings.storage_dir()) / "files.db")
        if not records:
            return Databases(files, None)
        try:
            return Databases(files, SqliteDatabase(settings.feedback_dir() / RECORDS_FILE))
        except (OSError, sqlite3.Error) as exc:
            return Databases(files, None, f"cannot open {settings.feedback_dir() / RECORDS_FILE}: {exc}")
    db = PostgresDatabase(where.url, limit_connections=st.limit_connections, timeout_connect=st.timeout_connect)
    return Databases(db, db)
