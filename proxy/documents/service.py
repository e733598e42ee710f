"""Documents: extraction of uploads and the expansion of file parts in chat messages into document text.

Uploads are extracted once, at upload time, in a killable child process (``proxy.documents.pdf``) and the page text
is stored with the file (``proxy.state.files``), so asking about a document costs a database read, not a parse.
Inline ``file_data`` parts are extracted per request under the same limits. The Files API's HTTP handlers are
the edge's (``proxy.edge.files``); this module takes plain values.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from proxy import metrics, pools
from proxy.documents.assemble import Document, DocumentInputError, PageIndex, decode_file_data, render_documents
from proxy.documents.pdf import PdfError, PdfExecutor, PdfLimits, extract_document_async, sweep_orphans
from proxy.documents.slots import FairSlots
from proxy.errors import BadRequest, InsufficientStorage, NotFound, PayloadTooLarge
from proxy.request import ChatRequest, FilePart, text_of
from proxy.settings import Settings
from proxy.state.files import FileRecord, FileStore, QuotaExceeded, StorageFull


class DocumentService:
    def __init__(self, settings: Settings, store: FileStore) -> None:
        d = settings.documents
        self.settings = settings
        self.limits = PdfLimits(limit_bytes=d.limit_bytes, limit_pages=d.limit_pages, limit_chars=d.limit_chars,
                                limit_decompressed_bytes=d.limit_decompressed_bytes,
                                timeout_extract=d.timeout_extract)
        self.store = store
        self.executor = PdfExecutor(max_workers=2)
        # Loading and ranking hold a request's documents in memory (and ranking the GIL, for milliseconds now
        # that pages are indexed at upload): one request's documents at a time, taken in turn by keys, bounds
        # both to one request's worth.
        self._render_slot = FairSlots(1)
        sweep_orphans()  # extraction children of a server that was killed

    def close(self) -> None:
        self.store.close()

    async def add_upload(self, file: BinaryIO, *, filename: str, purpose: str, owner: str, party: str) -> FileRecord:
        """Store an uploaded PDF for ``owner`` without ever holding it whole in this process's memory.

        It is copied in chunks to a partial file in the store, which the extraction child reads by path; the
        stored file is that partial file, renamed once its text is known (removed if anything fails first).
        """
        d = self.settings.documents
        partial: Path | None = None
        try:
            partial = spooled = (await pools.run("files", self.store.spool, file, d.limit_bytes))[0]
            size = spooled.stat().st_size
            if size > d.limit_bytes:
                raise PayloadTooLarge(f"the file exceeds the {d.limit_bytes}-byte limit", param="file")
            await pools.run("files", self.store.check_quota, owner, size, d.limit_storage_bytes)
            doc = await self.extract(spooled, filename, party)
            record = await pools.run("files", self.store.add, owner, filename, purpose, spooled, doc.pages,
                                             index=doc.index.dumps(), quota=d.limit_storage_bytes)
            partial = None  # it is the stored file now
        except QuotaExceeded as exc:
            raise PayloadTooLarge(str(exc), param="file", code="storage_quota_exceeded") from exc
        except StorageFull as exc:
            raise InsufficientStorage("the proxy's file storage is full: nothing was stored; delete files you no "
                                      "longer need, or retry later", param="file") from exc
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
        metrics.DOC_UPLOADS.inc()
        return record

    async def extract(self, data: bytes | Path, filename: str, party: str) -> Document:
        """Page texts and index of a PDF given as bytes or as a file the extraction child reads itself.

        ``party`` (the guard's fairness key) takes its turn for an extraction slot with the other parties.
        """
        start = time.perf_counter()
        try:
            doc = await extract_document_async(data, limits=self.limits, executor=self.executor, filename=filename,
                                               who=party)
        except PdfError as exc:
            metrics.DOC_FAILURES.labels(exc.reason).inc()
            status = 413 if exc.reason == "too_large" else 400
            raise BadRequest(str(exc), param="file", code=f"pdf_{exc.reason}", status_code=status) from exc
        metrics.DOC_SECONDS.observe(time.perf_counter() - start)
        metrics.DOC_PAGES.inc(len(doc.pages))
        return doc

    async def expand(self, chat: ChatRequest, *, owner: str,
                     party: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Messages with each file part replaced by the document's text, and headers describing it.

        Work per request is bounded before it is done: a document named twice (the same ``file_id``, or the
        same inline data) is loaded and rendered once, at its first mention; the distinct documents, the
        inline ones among them (each is a PDF parse) and their total page text are capped. Ranking and
        rendering run in a thread, never on the event loop. ``owner`` (the key's owner hash) is whose stored
        files ``file_id`` may name; ``party`` (the guard's fairness key) takes its turn for the slots.
        """
        d = self.settings.documents
        first: dict[tuple[str, str], FilePart] = {}  # distinct documents in order of first mention
        for part in chat.files:
            key = ("id", part.file_id) if part.file_id is not None else \
                ("data", hashlib.sha256((part.file_data or "").encode("utf-8", "surrogatepass")).hexdigest())
            first.setdefault(key, part)
        parts = list(first.values())
        inline = [p for p in parts if p.file_id is None]
        if d.limit_documents_per_request is not None and len(parts) > d.limit_documents_per_request:
            raise BadRequest(f"this request attaches {len(parts)} different documents; this proxy accepts at most "
                             f"{d.limit_documents_per_request} per request", param=_where(parts[-1]),
                             code="too_many_documents")
        if d.limit_inline_per_request is not None and len(inline) > d.limit_inline_per_request:
            raise BadRequest(f"this request sends {len(inline)} different inline PDFs (file_data); this proxy reads at "
                             f"most {d.limit_inline_per_request} per request: upload them with POST /v1/files and "
                             "refer to them by file_id", param=_where(inline[-1]), code="too_many_inline_documents")
        extracted = {id(p): await self._load(owner, party, p) for p in inline}  # in child processes, own slots
        # Stored pages are loaded inside the slot too, so that waiting requests do not hold them in memory.
        async with self._render_slot.hold(party):
            docs: dict[tuple[int, int], Document] = {}
            total = 0
            for part in parts:
                doc = extracted.get(id(part)) or await self._load(owner, party, part)
                total += sum(map(len, doc.pages))
                if d.limit_request_chars is not None and total > d.limit_request_chars:
                    raise PayloadTooLarge(f"the documents of this request hold more than {d.limit_request_chars} "
                                          "characters of text together, this proxy's limit per request",
                                          param=_where(part), code="documents_too_large")
                docs[(part.message_index, part.part_index)] = doc
            dropped = {(p.message_index, p.part_index) for p in chat.files} - set(docs)
            return await pools.run("documents", self._render, chat, docs, dropped)

    async def _load(self, owner: str, party: str, part: FilePart) -> Document:
        where = _where(part)
        if part.file_id is not None:
            found = await pools.run("files", self.store.document, owner, part.file_id)
            if found is None:
                raise NotFound(f"No such file: {part.file_id!r}", param=where, code="file_not_found")
            record, pages, index = found
            if index is None:  # stored before indexes were: built once, now, and kept
                doc = await pools.run("documents", Document.of, record.filename, pages)
                await pools.run("files", self.store.set_index, owner, part.file_id, doc.index.dumps())
                return doc
            return Document(record.filename, pages, PageIndex.loads(index))
        assert part.file_data is not None and part.filename is not None
        try:
            data = await pools.run("documents", decode_file_data, part.file_data)
        except DocumentInputError as exc:
            raise BadRequest(f"{where}.file_data: {exc}", param=f"{where}.file_data") from exc
        return await self.extract(data, part.filename, party)

    def _render(self, chat: ChatRequest, docs: dict[tuple[int, int], Document],
                dropped: set[tuple[int, int]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Blocking: BM25 ranking and rendering, with the messages copied (they can be megabytes)."""
        d = self.settings.documents
        messages = copy.deepcopy(chat.messages)
        question = text_of(messages[chat.files[-1].message_index])
        by_message: dict[int, list[tuple[int, Document]]] = {}
        for (i, j), doc in docs.items():
            by_message.setdefault(i, []).append((j, doc))
        sent: list[str] = []
        cut = False
        texts: dict[int, str] = {}
        for index, found in by_message.items():
            rendered = render_documents([doc for _, doc in found], question=question, budget_chars=d.budget_chars,
                                        selection=d.selection)
            texts[index] = rendered.text
            cut = cut or rendered.truncated
            for name, numbers in rendered.selected.items():
                # Percent-encoded: header values are Latin-1 only, and ':' ';' ',' separate the fields.
                sent.append(f"{quote(name, safe=' ')}:{','.join(map(str, numbers))}")
        # File parts leave their messages; a message with documents starts with their text. A repeat of a
        # document already rendered earlier simply goes.
        for index in {i for i, _ in (*docs, *dropped)}:
            gone = {j for i, j in (*docs, *dropped) if i == index}
            kept = [p for j, p in enumerate(messages[index]["content"]) if j not in gone]
            if index in texts:
                kept.insert(0, {"type": "text", "text": texts[index]})
            messages[index]["content"] = kept or [{"type": "text", "text": "(the document attached above)"}]
        headers = {"x-route-llm-documents": "full" if not cut else f"selected-{d.selection}"}
        headers["x-route-llm-document-pages"] = ";".join(sent)[:1000]
        return messages, headers


def _where(part: FilePart) -> str:
    return f"messages[{part.message_index}].content[{part.part_index}].file"

