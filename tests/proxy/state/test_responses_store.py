"""proxy/state/responses.py on both databases: expiry and its purge, the per-owner quota, owners kept apart,
and the schema's own migration list."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.state.database import Database, PostgresDatabase, SqliteDatabase
from proxy.state.responses import QuotaExceeded, ResponseStore


@pytest.fixture()
def db(storage_url: str) -> Iterator[Database]:
    opened: Database = SqliteDatabase(Path(storage_url[len("sqlite:///"):]) / "responses.db") \
        if storage_url.startswith("sqlite:///") else PostgresDatabase(storage_url, limit_connections=2)
    yield opened
    opened.close()


def _response(rid: str) -> dict[str, object]:
    return {"id": rid, "object": "response", "output": [{"type": "message", "id": f"msg_{rid}", "role": "assistant",
                                                        "content": [{"type": "output_text", "text": rid}]}]}


def _rows(db: Database) -> int:
    with db.transaction() as tx:
        return int(tx.execute("SELECT COUNT(*) FROM responses")[0][0])


def test_expired_rows_are_unreadable_at_once_and_purged_on_a_later_write(db: Database) -> None:
    store = ResponseStore(db, retention_days=0.2 / 86400, limit_per_key=None)  # 0.2 s
    store.put("a", _response("resp_old"), [], request_id="r1")
    time.sleep(0.4)
    assert store.get("a", "resp_old") is None and not store.delete("a", "resp_old")
    assert _rows(db) == 1  # unreadable, not yet deleted: this process purged at its first write
    ResponseStore(db, retention_days=0.2 / 86400, limit_per_key=None).put("a", _response("resp_new"), [],
                                                                          request_id="r2")
    assert _rows(db) == 1 and store.get("a", "resp_new") is not None  # a new process purges at its first write


def test_the_quota_counts_one_owners_live_responses(db: Database) -> None:
    store = ResponseStore(db, retention_days=None, limit_per_key=2)
    for i in range(2):
        store.put("a", _response(f"resp_a{i}"), [], request_id=f"r{i}")
    with pytest.raises(QuotaExceeded, match="limit_per_key = 2"):
        store.check_quota("a")
    with pytest.raises(QuotaExceeded):
        store.put("a", _response("resp_a2"), [], request_id="r2")
    store.check_quota("b")  # another owner has room
    assert store.delete("a", "resp_a0")
    store.put("a", _response("resp_a2"), [], request_id="r2")


def test_owners_are_kept_apart_and_a_row_holds_its_chain_context(db: Database) -> None:
    store = ResponseStore(db, retention_days=None, limit_per_key=None)
    items = [{"type": "message", "id": "msg_in", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    store.put("a", {**_response("resp_1"), "previous_response_id": "resp_0"}, items, request_id="req-1")
    assert store.get("b", "resp_1") is None and not store.delete("b", "resp_1")
    found = store.get("a", "resp_1")
    assert found is not None and found.previous_id == "resp_0" and found.request_id == "req-1"
    assert [i["id"] for i in found.context()] == ["msg_in", "msg_resp_1"]
    assert ResponseStore(db, retention_days=None, limit_per_key=None).get("a", "resp_1") == found  # migrated once
