from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.state.database import Database, PostgresDatabase, SqliteDatabase
from proxy.state.files import FileStore


def open_store(url: str) -> tuple[FileStore, Database]:
    """A FileStore as the proxy builds it for a storage URL: SQLite + blob directory, or Postgres."""
    if url.startswith("sqlite:///"):
        root = Path(url[len("sqlite:///"):])
        db: Database = SqliteDatabase(root / "files.db")
        return FileStore(db, blobs=root / "blobs"), db
    db = PostgresDatabase(url, limit_connections=4)
    return FileStore(db), db


@pytest.fixture
def store(storage_url: str) -> Iterator[FileStore]:
    store, db = open_store(storage_url)
    yield store
    store.close()
    db.close()


def _on_disk(store: FileStore) -> Path:
    if store.db.kind != "sqlite":
        pytest.skip("bytes on disk: the SQLite layout (Postgres keeps them in file_chunks)")
    return Path(store._blobs or "")


def test_add_returns_an_openai_file_object(store: FileStore) -> None:
    record = store.add("alice", "report.pdf", "user_data", b"%PDF-1.7 data", ["page one", "page two"])
    obj = record.to_openai()
    assert re.fullmatch(r"file-[A-Za-z0-9_-]{24}", obj["id"])
    assert obj == {
        "id": record.id,
        "object": "file",
        "bytes": 13,
        "created_at": record.created_at,
        "filename": "report.pdf",
        "purpose": "user_data",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
    assert record.page_count == 2


def test_get_and_document_return_what_was_added(store: FileStore) -> None:
    record = store.add("alice", "résumé.pdf", "user_data", b"bytes", ["Привет", "東京"], index="3 1\nx\t0:1")
    assert store.get("alice", record.id) == record
    assert store.document("alice", record.id) == (record, ["Привет", "東京"], "3 1\nx\t0:1")
    assert store.document("bob", record.id) is None
    store.set_index("alice", record.id, "1 1\ny\t0:1")
    assert store.document("alice", record.id) == (record, ["Привет", "東京"], "1 1\ny\t0:1")


def test_a_store_from_before_page_indexes_gains_the_column_and_keeps_its_files(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "files.db") as old:  # the table as it was before migrations and page_index
        old.execute("CREATE TABLE files (id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, "
                    "purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, "
                    "page_count INTEGER NOT NULL, pages TEXT NOT NULL)")
        old.execute("INSERT INTO files VALUES ('file-AAAAAAAAAAAAAAAAAAAAAAAA', 'alice', 'old.pdf', 'user_data', 5,"
                    " 1, 1, '[\"old text\"]')")
    db = SqliteDatabase(tmp_path / "files.db")
    store = FileStore(db, blobs=tmp_path / "blobs")
    try:
        found = store.document("alice", "file-AAAAAAAAAAAAAAAAAAAAAAAA")
        assert found is not None and found[1:] == (["old text"], None)
        store.set_index("alice", "file-AAAAAAAAAAAAAAAAAAAAAAAA", "2\nold\t0:1")
        assert store.document("alice", "file-AAAAAAAAAAAAAAAAAAAAAAAA")[2] == "2\nold\t0:1"  # type: ignore[index]
    finally:
        store.close()
        db.close()


def test_unknown_id_is_none(store: FileStore) -> None:
    assert store.get("alice", "file-doesnotexist000000000") is None
    assert store.document("alice", "file-doesnotexist000000000") is None
    assert store.delete("alice", "file-doesnotexist000000000") is False


def test_another_owners_file_is_invisible(store: FileStore) -> None:
    mine = store.add("alice", "a.pdf", "user_data", b"a", ["a"])
    assert store.get("bob", mine.id) is None
    assert store.document("bob", mine.id) is None
    assert store.list("bob") == []
    assert store.delete("bob", mine.id) is False
    assert store.get("alice", mine.id) == mine


def test_list_is_newest_first_and_filters_by_purpose(store: FileStore) -> None:
    first = store.add("alice", "1.pdf", "user_data", b"1", ["1"])
    second = store.add("alice", "2.pdf", "assistants", b"2", ["2"])
    third = store.add("alice", "3.pdf", "user_data", b"3", ["3"])
    store.add("", "anonymous.pdf", "user_data", b"x", ["x"])
    assert [r.id for r in store.list("alice")] == [third.id, second.id, first.id]
    assert [r.id for r in store.list("alice", "user_data")] == [third.id, first.id]
    assert [r.filename for r in store.list("")] == ["anonymous.pdf"]


def test_delete_removes_the_row_and_the_bytes(store: FileStore) -> None:
    record = store.add("alice", "a.pdf", "user_data", b"some bytes", ["a"])
    assert store.content("alice", record.id) == b"some bytes"
    assert store.delete("alice", record.id) is True
    assert store.content("alice", record.id) is None
    assert store.get("alice", record.id) is None
    assert store.delete("alice", record.id) is False
    if store.db.kind == "sqlite":
        assert not (_on_disk(store) / record.id).exists()
    else:
        with store.db.transaction() as tx:
            assert tx.execute("SELECT COUNT(*) FROM file_chunks")[0][0] == 0


def test_large_files_are_stored_in_chunks_and_read_back_whole(store: FileStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 12_000  # about 3 MB: several 1 MB chunks on Postgres
    spooled = tmp_path / "upload.partial"
    spooled.write_bytes(data)
    record = store.add("alice", "big.pdf", "user_data", spooled, ["p"])
    assert record.bytes == len(data) and store.content("alice", record.id) == data
    assert not spooled.exists()  # moved (SQLite) or copied in and removed (Postgres)


def test_files_and_text_survive_reopening(storage_url: str) -> None:
    first, db = open_store(storage_url)
    record = first.add("alice", "a.pdf", "user_data", b"abc", ["kept across restarts"])
    first.close()
    db.close()
    second, db = open_store(storage_url)
    try:
        assert second.get("alice", record.id) == record
        assert second.document("alice", record.id)[1] == ["kept across restarts"]  # type: ignore[index]
        assert second.content("alice", record.id) == b"abc"
    finally:
        second.close()
        db.close()


def test_hostile_filenames_are_kept_as_data(store: FileStore) -> None:
    names = ["../../escape.pdf", "/etc/passwd", "..\\..\\win.pdf", "x" * 300, "ü'; DROP TABLE files; --"]
    records = [store.add("alice", name, "user_data", b"data", ["t"]) for name in names]
    assert [store.get("alice", r.id).filename for r in records] == names  # type: ignore[union-attr]


def test_a_nul_in_a_filename_is_stored_not_refused(store: FileStore) -> None:
    # Postgres text cannot hold NUL: the database layer stores U+FFFD there instead of failing the upload.
    record = store.add("alice", "a\0b.pdf", "user_data", b"data", ["t"])
    found = store.get("alice", record.id)
    assert found is not None
    assert found.filename == ("a\0b.pdf" if store.db.kind == "sqlite" else "a\ufffdb.pdf")


def test_hostile_filenames_never_reach_the_filesystem(store: FileStore, tmp_path: Path) -> None:
    blobs = _on_disk(store)
    names = ["../../escape.pdf", "/etc/passwd", "..\\..\\win.pdf", "a\0b.pdf", "x" * 300]
    records = [store.add("alice", name, "user_data", b"data", ["t"]) for name in names]
    assert [store.get("alice", r.id).filename for r in records] == names  # type: ignore[union-attr]
    assert sorted(p.name for p in blobs.iterdir()) == sorted(r.id for r in records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files"]


def test_malformed_ids_are_rejected_before_touching_paths(store: FileStore) -> None:
    # A lookup by a path-like id finds no row; the id pattern check backs that up for blob paths.
    assert store.get("alice", "../files.db") is None
    assert store.delete("alice", "../files.db") is False
    if store.db.kind == "sqlite":
        with pytest.raises(ValueError, match="not a file id"):
            store._blob("../files.db")


def test_concurrent_adds_from_threads_all_land(store: FileStore) -> None:
    def add_some(owner: str) -> None:
        for n in range(20):
            store.add(owner, f"{n}.pdf", "user_data", b"x", [str(n)])

    threads = [threading.Thread(target=add_some, args=(f"owner{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(store.list(f"owner{i}")) for i in range(4)] == [20, 20, 20, 20]


def test_ids_are_unique(store: FileStore) -> None:
    ids = {store.add("alice", "a.pdf", "user_data", b"", []).id for _ in range(50)}
    assert len(ids) == 50


def test_spool_directories_of_dead_processes_are_swept(storage_url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not storage_url.startswith("postgresql"):
        pytest.skip("on SQLite uploads spool into the blob directory, where the stored file is a rename away")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    left = tmp_path / f"route-llm-spool-{dead.pid}-abc"
    left.mkdir()
    (left / "upload-1.partial").write_bytes(b"half an upload")
    alive = tmp_path / f"route-llm-spool-{os.getpid()}-xyz"
    alive.mkdir()
    store, db = open_store(storage_url)
    try:
        assert not left.exists() and alive.exists()
    finally:
        store.close()
        db.close()
