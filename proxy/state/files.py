"""Stored files: metadata, page text and bytes, on SQLite + a directory (the default) or on PostgreSQL.

The page text is stored at upload time so a question about a document costs a database read, not a parse,
and survives restarts. Each file belongs to an owner (a hash of the proxy key, or "" without auth); every
query filters on it, so another owner's file is indistinguishable from a missing one.

Where the bytes live depends on the database (``proxy.state.database``):

- SQLite: ``root/blobs/<id>``, beside ``root/files.db``. Bytes first, row second: a row is only visible once its
  bytes are complete; a crash in between leaves an orphan blob, which is harmless.
- PostgreSQL: the ``file_chunks`` table, 1 MB rows of ``bytea`` keyed by (file id, part), written in the same
  transaction as the file's row, so a replica killed mid-upload leaves nothing visible; replicas share them.

Uploads are spooled to a local partial file first (the extraction child reads it by path) and copied to the
store in chunks, so a file never sits whole in memory on the way in. Filenames come from users and are only
ever stored as data: bytes live under the generated id, which matches a fixed pattern before it is joined to a
path.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from proxy.state.database import Database, Migration, Tx

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ID_PATTERN = re.compile(r"file-[A-Za-z0-9_-]{24}")

# The pages' ranking index (proxy.documents.assemble.PageIndex), built at upload; NULL for files stored before
# version 2, whose index is built on first use (FileStore.set_index).
_ADD_PAGE_INDEX = "ALTER TABLE files ADD COLUMN page_index TEXT"
_SQLITE = (Migration(1, (
    """CREATE TABLE IF NOT EXISTS files (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        page_count INTEGER NOT NULL,
        pages TEXT NOT NULL  -- JSON array of page texts; only read by FileStore.document
    )""",
    "CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, created_at)",
)), Migration(2, (_ADD_PAGE_INDEX,)))
_POSTGRES = (Migration(1, (
    """CREATE TABLE IF NOT EXISTS files (
        seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,  -- insertion order, SQLite's rowid
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        page_count INTEGER NOT NULL,
        pages TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, created_at)",
    """CREATE TABLE IF NOT EXISTS file_chunks (
        file_id TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        part INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (file_id, part)
    )""",
)), Migration(2, (_ADD_PAGE_INDEX,)))
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


_SPOOL_PREFIX = "route-llm-spool-"


def _sweep_spools() -> None:
    """Remove the spool directories of processes that are gone (a replica killed mid-upload leaves its partial
    file behind; in a pod, /tmp outlives a restarted container)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_SPOOL_PREFIX}*-*"):
        pid = path.name[len(_SPOOL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


class StorageFull(Exception):
    """The disk under the file store is full (or the reserve kept for deletes could not be set aside)."""


#: Space set aside beside the blob directory (SQLite store, ``<storage_dir>/.reserve``) so that deletes can always run: SQLite needs room for its
#: journal even to delete. A full disk releases it for the delete; the next write that finds room keeps it again,
#: and uploads are refused while it cannot be kept.
RESERVE_BYTES = 1 << 20
_RESERVE = ".reserve"


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or the quota is full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(seen, sqlite3.OperationalError) and "full" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class FileStore:
    """Files of many owners in ``db``; on SQLite the bytes go to ``blobs`` (a directory), on Postgres into the
    database. ``spool_dir`` holds uploads while they are extracted (on SQLite, the blob directory itself, so that
    storing is a rename). Called from the thread pool.
    """

    # Annotations below say ``builtins.list``: inside the class body the ``list`` method shadows the builtin,
    # and mypy resolves the name there.

    def __init__(self, db: Database, *, blobs: Path | None = None) -> None:
        self.db = db
        self._blobs = Path(blobs) if blobs is not None else None
        if self._blobs is not None:
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._spool = self._blobs
            self.keep_reserve()
        else:
            _sweep_spools()
            self._spool = Path(tempfile.mkdtemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-"))
        db.migrate("files", _SQLITE if db.kind == "sqlite" else _POSTGRES)

    def close(self) -> None:
        if self._blobs is None:
            shutil.rmtree(self._spool, ignore_errors=True)

    def _blob(self, file_id: str) -> Path:
        if not _ID_PATTERN.fullmatch(file_id):  # ids are ours, but never trust a string that reaches a path
            raise ValueError(f"not a file id: {file_id!r}")
        assert self._blobs is not None
        return self._blobs / file_id

    def keep_reserve(self) -> bool:
        """Set the delete reserve aside if it is not (SQLite store only); False when there is no room for it."""
        if self._blobs is None:
            return True
        path = self._blobs.parent / _RESERVE
        try:
            if path.stat().st_size >= RESERVE_BYTES:
                return True
        except FileNotFoundError:
            pass
        try:
            with path.open("wb") as out:
                out.write(bytes(RESERVE_BYTES))
                out.flush()
                os.fsync(out.fileno())
            return True
        except OSError:
            path.unlink(missing_ok=True)
            return False

    def _release_reserve(self) -> bool:
        if self._blobs is None or not (self._blobs.parent / _RESERVE).exists():
            return False
        (self._blobs.parent / _RESERVE).unlink(missing_ok=True)
        return True

    def spool(self, source: IO[bytes], limit: int) -> tuple[Path, int]:
        """Copy ``source`` in chunks to a new partial file here; stop a chunk past ``limit`` bytes.

        Returns the path and the bytes copied; the caller hands the path to :meth:`add` or deletes it. On a
        failure part-way the partial file is removed here; a full disk (or no room for the delete reserve) is
        :class:`StorageFull`.
        """
        if not self.keep_reserve():
            raise StorageFull("the file store's disk is full")
        partial = self._spool / f"upload-{secrets.token_hex(12)}.partial"
        size = 0
        try:
            with partial.open("wb") as out:
                while size <= limit and (chunk := source.read(_CHUNK)):
                    out.write(chunk)
                    size += len(chunk)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if is_full(exc):
                raise StorageFull("the file store's disk is full") from exc
            raise
        return partial, size

    @staticmethod
    def _used(tx: Tx, owner: str) -> int:
        return int(tx.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ?", (owner,))[0][0])

    def check_quota(self, owner: str, size: int, quota: int | None) -> None:
        """Raise QuotaExceeded when ``size`` more bytes would take ``owner`` past ``quota``."""
        if quota is None:
            return
        with self.db.transaction() as tx:
            used = self._used(tx, owner)
        _check(used, size, quota)

    def add(self, owner: str, filename: str, purpose: str, data: bytes | Path, pages: builtins.list[str], *,
            index: str | None = None, quota: int | None = None) -> FileRecord:
        """Store a file given as bytes or as a partial file from :meth:`spool` (moved or copied in, then gone).

        ``index`` is the pages' ranking index in its stored form; the store keeps it and does not read it.
        """
        record = FileRecord(
            id=new_file_id(),
            owner=owner,
            filename=filename,
            purpose=purpose,
            bytes=data.stat().st_size if isinstance(data, Path) else len(data),
            created_at=int(time.time()),
            page_count=len(pages),
        )
        try:
            blob = self._put_blob(record.id, data) if self._blobs is not None else None
        except OSError as exc:
            if is_full(exc):
                raise StorageFull("the file store's disk is full") from exc
            raise
        try:
            # The quota is checked again inside the insert's transaction, under a per-owner lock: two uploads
            # may race, on two workers or two replicas.
            with self.db.transaction(lock=f"files:{owner}" if quota is not None else None) as tx:
                if quota is not None:
                    _check(self._used(tx, owner), record.bytes, quota)
                tx.execute(f"INSERT INTO files ({_COLUMNS}, pages, page_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (record.id, owner, filename, purpose, record.bytes, record.created_at,
                            record.page_count, json.dumps(pages, ensure_ascii=False), index))
                if blob is None:
                    self._put_chunks(tx, record.id, data)
        except BaseException as exc:
            if blob is not None:
                blob.unlink(missing_ok=True)
            if is_full(exc):
                raise StorageFull("the file store's disk is full") from exc
            raise
        if isinstance(data, Path):
            data.unlink(missing_ok=True)  # Postgres: copied in; SQLite: already renamed, so gone
        return record

    def _put_blob(self, file_id: str, data: bytes | Path) -> Path:
        path = self._blob(file_id)
        if isinstance(data, Path):
            os.replace(data, path)
        else:
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            os.replace(partial, path)
        return path

    @staticmethod
    def _put_chunks(tx: Tx, file_id: str, data: bytes | Path) -> None:
        insert = "INSERT INTO file_chunks (file_id, part, data) VALUES (?, ?, ?)"
        if not isinstance(data, Path):
            for part, start in enumerate(range(0, len(data), _CHUNK)):
                tx.execute(insert, (file_id, part, data[start:start + _CHUNK]))
            return
        with data.open("rb") as source:
            part = 0
            while chunk := source.read(_CHUNK):
                tx.execute(insert, (file_id, part, chunk))
                part += 1

    def get(self, owner: str, file_id: str) -> FileRecord | None:
        with self.db.transaction() as tx:
            rows = tx.execute(f"SELECT {_COLUMNS} FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        return FileRecord(*rows[0]) if rows else None

    def list(self, owner: str, purpose: str | None = None, *, limit: int | None = None, after: str | None = None,
             order: Literal["asc", "desc"] = "desc") -> builtins.list[FileRecord]:
        """Newest first by default, as OpenAI lists files; ``after`` is the id of the last file already seen.

        Raises KeyError when ``after`` is not one of the owner's files.
        """
        seq = self.db.order_column
        query = f"SELECT {_COLUMNS} FROM files WHERE owner = ?"
        params: tuple[Any, ...] = (owner,)
        if purpose is not None:
            query += " AND purpose = ?"
            params += (purpose,)
        direction, beyond = ("DESC", "<") if order == "desc" else ("ASC", ">")
        with self.db.transaction() as tx:
            if after is not None:
                cursor = tx.execute(f"SELECT created_at, {seq} FROM files WHERE id = ? AND owner = ?", (after, owner))
                if not cursor:
                    raise KeyError(after)
                query += f" AND (created_at, {seq}) {beyond} (?, ?)"
                params += tuple(cursor[0])
            query += f" ORDER BY created_at {direction}, {seq} {direction}"
            if limit is not None:
                query += " LIMIT ?"
                params += (limit,)
            rows = tx.execute(query, params)
        return [FileRecord(*row) for row in rows]

    def document(self, owner: str, file_id: str) -> tuple[FileRecord, builtins.list[str], str | None] | None:
        """The file's record, page texts and stored index (None for a file stored before indexes were)."""
        with self.db.transaction() as tx:
            rows = tx.execute(f"SELECT {_COLUMNS}, pages, page_index FROM files WHERE id = ? AND owner = ?",
                              (file_id, owner))
        if not rows:
            return None
        row = tuple(rows[0])
        return FileRecord(*row[:-2]), list(json.loads(row[-2])), row[-1]

    def set_index(self, owner: str, file_id: str, index: str) -> None:
        """Keep the index of a file stored without one, built on its first use."""
        with self.db.transaction() as tx:
            tx.execute("UPDATE files SET page_index = ? WHERE id = ? AND owner = ?", (index, file_id, owner))

    def content(self, owner: str, file_id: str) -> bytes | None:
        """The uploaded bytes, or None when ``owner`` has no such file (or it was deleted meanwhile)."""
        with self.db.transaction() as tx:
            # The row says whose it is; ids of other owners read as missing.
            if not tx.execute("SELECT 1 FROM files WHERE id = ? AND owner = ?", (file_id, owner)):
                return None
            if self._blobs is None:
                rows = tx.execute("SELECT data FROM file_chunks WHERE file_id = ? ORDER BY part", (file_id,))
                return b"".join(bytes(r[0]) for r in rows)
        try:
            return self._blob(file_id).read_bytes()
        except FileNotFoundError:
            return None

    def pieces(self, owner: str, file_id: str) -> tuple[int, Iterator[bytes]] | None:
        """The uploaded bytes as (size, pieces of :data:`DOWNLOAD_PIECE` bytes), read as they are taken; None when
        ``owner`` has no such file. A download is streamed from these, so a client that asks for a large file
        and reads slowly, or never, costs the server a piece, not the file.

        On SQLite the blob is opened here: a delete meanwhile unlinks it, and the open file still reads whole.
        On Postgres each piece is one stored chunk, read in a transaction of its own.
        """
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT bytes FROM files WHERE id = ? AND owner = ?", (file_id, owner))
            if not rows:
                return None
            size = int(rows[0][0])
            parts = ([int(r[0]) for r in tx.execute("SELECT part FROM file_chunks WHERE file_id = ? ORDER BY part",
                                                    (file_id,))] if self._blobs is None else [])
        if self._blobs is None:
            return size, self._chunk_pieces(file_id, parts)
        try:
            handle = self._blob(file_id).open("rb")
        except FileNotFoundError:
            return None
        return size, _file_pieces(handle)

    def _chunk_pieces(self, file_id: str, parts: builtins.list[int]) -> Iterator[bytes]:
        for part in parts:
            with self.db.transaction() as tx:
                rows = tx.execute("SELECT data FROM file_chunks WHERE file_id = ? AND part = ?", (file_id, part))
            if not rows:
                return  # deleted meanwhile: the download ends short, and its length tells the client
            chunk = memoryview(rows[0][0])
            for start in range(0, len(chunk), DOWNLOAD_PIECE):
                yield bytes(chunk[start:start + DOWNLOAD_PIECE])

    def delete(self, owner: str, file_id: str) -> bool:
        """Delete a file; on a full disk, with the space of the reserve (then kept again when there is room)."""
        try:
            return self._delete(owner, file_id)
        except Exception as exc:
            if not is_full(exc) or not self._release_reserve():
                raise
            return self._delete(owner, file_id)
        finally:
            self.keep_reserve()

    def _delete(self, owner: str, file_id: str) -> bool:
        """Row first (with its chunks, on Postgres), then bytes: once the row is gone the file is gone for
        every reader."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner))
            deleted = tx.rowcount
        if not deleted:
            return False
        if self._blobs is not None:
            self._blob(file_id).unlink(missing_ok=True)
        return True


#: A download's piece: what one slow reader holds (plus the transport's buffer of about as much).
DOWNLOAD_PIECE = 64 * 1024


def _file_pieces(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        while piece := handle.read(DOWNLOAD_PIECE):
            yield piece
    finally:
        handle.close()
