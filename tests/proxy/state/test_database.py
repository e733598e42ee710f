"""proxy/state/database.py: versioned migrations (idempotent, safe when replicas start at once, refusing a newer
schema) on SQLite and on PostgreSQL, and a database that goes away while the proxy serves."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.state.database import (
    Database,
    Migration,
    PostgresDatabase,
    SchemaTooNew,
    SqliteDatabase,
    StorageUnavailable,
)
from tests.conftest import RunningProxy
from tests.helpers import REPORT, upload
from tests.services import Services, fresh_schema

STEPS = (
    Migration(1, ("CREATE TABLE IF NOT EXISTS things (name TEXT PRIMARY KEY)",)),
    # Not idempotent on its own: applied twice it would fail, so it shows each step runs once.
    Migration(2, ("INSERT INTO things (name) VALUES ('seeded by migration 2')",)),
)


def _run_at_once(target: Any, count: int) -> None:
    """Run ``target`` in ``count`` threads started together, and wait for all of them."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _open(url: str) -> Database:
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url[len("sqlite:///"):]) / "test.db")
    return PostgresDatabase(url, limit_connections=2)


def test_each_migration_runs_once_however_often_the_store_starts(storage_url: str) -> None:
    for _ in range(3):
        db = _open(storage_url)
        assert db.migrate("things", STEPS) == 2
        db.close()
    db = _open(storage_url)
    with db.transaction() as tx:
        assert tx.execute("SELECT name FROM things") == [("seeded by migration 2",)]
    db.close()


def test_replicas_starting_at_once_migrate_once(storage_url: str) -> None:
    """Six processes' worth of connections migrate the same empty database at the same moment."""
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def replica() -> None:
        db = _open(storage_url)
        try:
            start.wait()
            db.migrate("things", STEPS)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    _run_at_once(replica, 6)
    assert errors == []
    db = _open(storage_url)
    with db.transaction() as tx:
        assert tx.execute("SELECT COUNT(*) FROM things") == [(1,)]
    db.close()


def test_a_schema_newer_than_this_code_stops_the_start(storage_url: str) -> None:
    db = _open(storage_url)
    db.migrate("things", STEPS)
    with pytest.raises(SchemaTooNew, match="version 2, newer than this route-llm knows \\(1\\)"):
        db.migrate("things", STEPS[:1])
    db.close()


def test_an_unreachable_postgres_fails_the_start_without_showing_the_password(services: Services) -> None:
    url = services.need("postgresql").replace("@127.0.0.1:", ":s3cret-pw@127.0.0.1:").rsplit(":", 1)[0]
    with pytest.raises(StorageUnavailable) as err:
        PostgresDatabase(f"{url}:1/routellm", timeout_connect=1)  # port 1: nothing listens
    assert "s3cret-pw" not in str(err.value) and "***" in str(err.value)


def _set_connections(services: Services, allowed: bool) -> None:
    import psycopg

    admin = services.need("postgresql").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE routellm ALLOW_CONNECTIONS {'true' if allowed else 'false'}")
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = 'routellm' AND pid <> pg_backend_pid()")


def test_postgres_going_away_mid_service_is_a_503_and_chat_goes_on(make_proxy: Any, services: Services,
                                                                   standin: Any) -> None:
    url = fresh_schema(services.need("postgresql"))
    proxy: RunningProxy = make_proxy(storage={"url": url, "timeout_connect": 1})
    client = proxy.client()
    stored = upload(client, REPORT)
    _set_connections(services, allowed=False)
    try:
        for call in (lambda: client.files.retrieve(stored.id), lambda: client.files.list(),
                     lambda: upload(client, REPORT)):
            with pytest.raises(openai.APIStatusError) as err:
                call()
            assert err.value.status_code == 503
            assert err.value.body["code"] == "storage_unavailable"  # type: ignore[index]
        answer = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content  # no file involved: served; its decision record is dropped
    finally:
        _set_connections(services, allowed=True)
    # The pool reconnects once Postgres is back: its refill runs in the background with a back-off, so the first
    # requests after the outage may still be 503s (answered, never hung); within a minute one must succeed.
    for _ in range(120):
        try:
            assert client.files.retrieve(stored.id).id == stored.id
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
            time.sleep(0.5)
    else:
        pytest.fail("the file store did not come back within a minute of Postgres accepting connections again")


def test_many_connections_switching_a_new_file_to_wal_at_once_all_succeed(tmp_path: Path) -> None:
    """SQLite can answer "database is locked" to a WAL switch racing another one, without waiting; without the
    retry in connect_sqlite about one start in twenty of twelve connections failed here."""
    from proxy.state.database import connect_sqlite

    errors: list[str] = []
    for trial in range(40):
        path = tmp_path / f"race{trial}.db"
        barrier = threading.Barrier(12)

        def connect(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                db = connect_sqlite(path, timeout=30)
                db.execute("BEGIN IMMEDIATE")
                db.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER)")
                db.execute("COMMIT")
                assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
                db.close()
            except Exception as exc:  # noqa: BLE001 (collected and asserted below)
                errors.append(repr(exc))

        _run_at_once(connect, 12)
    assert errors == []
