"""Embedded storage for uploaded files: raw bytes in a directory, metadata and page text in SQLite.

The page text is stored at upload time so a question about a document costs a database read, not a parse,
and survives restarts. Each file belongs to an owner (a hash of the proxy key, or "" without auth); every
query filters on it, so another owner's file is indistinguishable from a missing one.

Filenames come from users and are only ever stored as data: bytes live under the generated id, which
matches a fixed pattern before it is joined to a path.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ID_PATTERN = re.compile(r"file-[A-Za-z0-9_-]{24}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    page_count INTEGER NOT NULL,
    pages TEXT NOT NULL  -- JSON array of page texts; only read by FileStore.pages
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, created_at);
"""
_COLUMNS = "id, owner, filename, purpose, bytes, created_at, page_count"
_CHUNK = 1 << 20


def _check(used: int, size: int, quota: int) -> None:
    if used + size > quota:
        raise QuotaExceeded(f"storing this file ({size} bytes) would take this key's stored files to {used + size} "
                            f"bytes, past its quota of {quota} bytes; delete files with DELETE /v1/files/{{id}}")


class QuotaExceeded(Exception):
    """Storing a file would take its owner past their storage quota; the message says by how much."""


def new_file_id() -> str:
    """``file-`` plus 24 random URL-safe characters, the shape OpenAI SDKs and clients expect."""
    return "file-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int  # Unix seconds, as in OpenAI's file object
    page_count: int

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's file object. ``owner`` stays out: it is derived from a key and is no client's business."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """Files of many owners under ``root``: ``root/files.db`` and ``root/blobs/<id>``.

    Called from a threadpool: one connection, serialised by a lock (SQLite writes are serialised anyway,
    and these queries take microseconds). WAL mode plus a busy timeout let several server worker processes
    share the same root.
    """

    # Annotations below say ``builtins.list``: inside the class body the ``list`` method shadows the builtin,
    # and mypy resolves the name there.

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # check_same_thread=False: the lock, not the thread, guarantees one user at a time.
        self._db = sqlite3.connect(self.root / "files.db", timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _blob(self, file_id: str) -> Path:
        if not _ID_PATTERN.fullmatch(file_id):  # ids are ours, but never trust a string that reaches a path
            raise ValueError(f"not a file id: {file_id!r}")
        return self._blobs / file_id

    def spool(self, source: IO[bytes], limit: int) -> tuple[Path, int]:
        """Copy ``source`` in chunks to a new partial file here; stop a chunk past ``limit`` bytes.

        Returns the path and the bytes copied; the caller hands the path to :meth:`add` or deletes it. On a
        failure part-way (a full disk) the partial file is removed here.
        """
        partial = self._blobs / f"upload-{secrets.token_hex(12)}.partial"
        size = 0
        try:
            with partial.open("wb") as out:
                while size <= limit and (chunk := source.read(_CHUNK)):
                    out.write(chunk)
                    size += len(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return partial, size

    def _used(self, owner: str) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ?",
                                    (owner,)).fetchone()[0])

    def check_quota(self, owner: str, size: int, quota: int | None) -> None:
        """Raise QuotaExceeded when ``size`` more bytes would take ``owner`` past ``quota``."""
        if quota is None:
            return
        with self._lock:
            used = self._used(owner)
        _check(used, size, quota)

    def add(self, owner: str, filename: str, purpose: str, data: bytes | Path, pages: builtins.list[str], *,
            quota: int | None = None) -> FileRecord:
        """Store a file given as bytes or as a partial file from :meth:`spool` (which is moved, not copied)."""
        record = FileRecord(
            id=new_file_id(),
            owner=owner,
            filename=filename,
            purpose=purpose,
            bytes=data.stat().st_size if isinstance(data, Path) else len(data),
            created_at=int(time.time()),
            page_count=len(pages),
        )
        # Bytes first, row second: a row is only visible once its bytes are complete. A crash in between
        # leaves an orphan blob, which is harmless; the reverse would be a file that lists but cannot load.
        path = self._blob(record.id)
        if isinstance(data, Path):
            os.replace(data, path)
        else:
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            os.replace(partial, path)
        try:
            with self._lock:
                if quota is not None:  # checked again here, under the lock: two uploads may race
                    _check(self._used(owner), record.bytes, quota)
                self._db.execute(
                    f"INSERT INTO files ({_COLUMNS}, pages) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, owner, filename, purpose, record.bytes, record.created_at, record.page_count,
                     json.dumps(pages, ensure_ascii=False)),
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return record

    def get(self, owner: str, file_id: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM files WHERE id = ? AND owner = ?", (file_id, owner)
            ).fetchone()
        return FileRecord(*row) if row else None

    def list(self, owner: str, purpose: str | None = None, *, limit: int | None = None, after: str | None = None,
             order: Literal["asc", "desc"] = "desc") -> builtins.list[FileRecord]:
        """Newest first by default, as OpenAI lists files; ``after`` is the id of the last file already seen.

        Raises KeyError when ``after`` is not one of the owner's files.
        """
        query = f"SELECT {_COLUMNS} FROM files WHERE owner = ?"
        params: tuple[Any, ...] = (owner,)
        if purpose is not None:
            query += " AND purpose = ?"
            params += (purpose,)
        direction, beyond = ("DESC", "<") if order == "desc" else ("ASC", ">")
        with self._lock:
            if after is not None:
                cursor = self._db.execute("SELECT created_at, rowid FROM files WHERE id = ? AND owner = ?",
                                          (after, owner)).fetchone()
                if cursor is None:
                    raise KeyError(after)
                query += f" AND (created_at, rowid) {beyond} (?, ?)"
                params += tuple(cursor)
            query += f" ORDER BY created_at {direction}, rowid {direction}"
            if limit is not None:
                query += " LIMIT ?"
                params += (limit,)
            rows = self._db.execute(query, params).fetchall()
        return [FileRecord(*row) for row in rows]

    def pages(self, owner: str, file_id: str) -> builtins.list[str] | None:
        with self._lock:
            row = self._db.execute("SELECT pages FROM files WHERE id = ? AND owner = ?", (file_id, owner)).fetchone()
        return list(json.loads(row[0])) if row else None

    def content(self, owner: str, file_id: str) -> bytes | None:
        """The uploaded bytes, or None when ``owner`` has no such file (or it was deleted meanwhile)."""
        if self.get(owner, file_id) is None:  # the row says whose it is; ids of other owners read as missing
            return None
        try:
            return self._blob(file_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, owner: str, file_id: str) -> bool:
        """Row first, then bytes: once the row is gone the file is gone for every reader."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount
        if not deleted:
            return False
        self._blob(file_id).unlink(missing_ok=True)
        return True
