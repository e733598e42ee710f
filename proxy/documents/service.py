"""The Files API and the expansion of file parts in chat messages into document text.

Uploads are extracted once, at upload time, in a killable child process (``proxy.documents.pdf``) and the page text
is stored with the file (``proxy.state.files``), so asking about a document costs a database read, not a parse.
Inline ``file_data`` parts are extracted per request under the same limits.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from proxy import metrics, pools
from proxy.documents.assemble import Document, DocumentInputError, PageIndex, decode_file_data, render_documents
from proxy.documents.pdf import PdfError, PdfExecutor, PdfLimits, extract_document_async, sweep_orphans
from proxy.documents.slots import FairSlots
from proxy.edge.chat import ChatRequest, FilePart
from proxy.errors import BadRequest, InsufficientStorage, NotFound, PayloadTooLarge
from proxy.settings import Settings
from proxy.state.files import FileStore, QuotaExceeded, StorageFull, is_full

PURPOSES = {"user_data", "assistants", "batch", "fine-tune", "vision", "evals"}
FILENAME_CHARS = 255
LIST_LIMIT = 10_000  # OpenAI's largest page, and its default


def _caused_by_long_part_header(exc: BaseException) -> bool:
    """python-multipart refuses a part whose headers pass 4 KB; in an upload that is the filename.

    Starlette reports it as "Invalid multipart data", two exceptions up the chain from the parser's reason.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if "maximum header size" in str(cause).lower():
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _service(request: Request) -> DocumentService:
    """The app's document service (``proxy.services``; imported here lazily, as services imports this module)."""
    from proxy.services import services

    return services(request).documents


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

    async def expand(self, request: Request,
                     chat: ChatRequest) -> tuple[builtins.list[dict[str, Any]], dict[str, str]]:
        """Messages with each file part replaced by the document's text, and headers describing it.

        Work per request is bounded before it is done: a document named twice (the same ``file_id``, or the
        same inline data) is loaded and rendered once, at its first mention; the distinct documents, the
        inline ones among them (each is a PDF parse) and their total page text are capped. Ranking and
        rendering run in a thread, never on the event loop.
        """
        d = self.settings.documents
        first: dict[tuple[str, str], FilePart] = {}  # distinct documents in order of first mention
        for part in chat.files:
            key = ("id", part.file_id) if part.file_id is not None else \
                ("data", hashlib.sha256((part.file_data or "").encode("utf-8", "surrogatepass")).hexdigest())
            first.setdefault(key, part)
        parts = builtins.list(first.values())
        inline = [p for p in parts if p.file_id is None]
        if d.limit_documents_per_request is not None and len(parts) > d.limit_documents_per_request:
            raise BadRequest(f"this request attaches {len(parts)} different documents; this proxy accepts at most "
                             f"{d.limit_documents_per_request} per request", param=_where(parts[-1]),
                             code="too_many_documents")
        if d.limit_inline_per_request is not None and len(inline) > d.limit_inline_per_request:
            raise BadRequest(f"this request sends {len(inline)} different inline PDFs (file_data); this proxy reads at "
                             f"most {d.limit_inline_per_request} per request: upload them with POST /v1/files and "
                             "refer to them by file_id", param=_where(inline[-1]), code="too_many_inline_documents")
        owner: str = request.state.owner
        party: str = request.state.party
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
                dropped: set[tuple[int, int]]) -> tuple[builtins.list[dict[str, Any]], dict[str, str]]:
        """Blocking: BM25 ranking and rendering, with the messages copied (they can be megabytes)."""
        d = self.settings.documents
        messages = copy.deepcopy(chat.messages)
        question = _text_of(messages[chat.files[-1].message_index])
        by_message: dict[int, builtins.list[tuple[int, Document]]] = {}
        for (i, j), doc in docs.items():
            by_message.setdefault(i, []).append((j, doc))
        sent: builtins.list[str] = []
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

    # --- Files API -------------------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        """Store a PDF without ever holding it whole in this process's memory.

        The guard has already read the body (refusing it past ``limit_bytes`` and on its deadline), spooling
        anything over a megabyte to disk; the multipart parser spools the file part again, and it is copied
        in chunks to a partial file in the store, which the extraction child reads by path. The stored file
        is that partial file, renamed once its text is known.
        """
        d = self.settings.documents
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise BadRequest("POST /v1/files takes multipart/form-data with `file` and `purpose`")
        try:
            form = await request.form(max_files=1, max_fields=10, max_part_size=64 * 1024)
        except Exception as exc:  # malformed multipart bodies
            if _caused_by_long_part_header(exc):
                raise BadRequest(f"the file's name is too long: at most {FILENAME_CHARS} characters are accepted",
                                 param="file", code="filename_too_long") from exc
            raise BadRequest(f"could not parse the multipart body: {exc}") from exc
        owner: str = request.state.owner
        partial: Path | None = None
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise BadRequest("`file` is required: the PDF to upload", param="file")
            if not isinstance(purpose, str) or purpose not in PURPOSES:
                raise BadRequest(f"`purpose` must be one of {', '.join(sorted(PURPOSES))}", param="purpose")
            filename = upload.filename or "upload.pdf"
            if len(filename) > FILENAME_CHARS:
                raise BadRequest(f"the file's name is {len(filename)} characters long; at most {FILENAME_CHARS} are "
                                 "accepted", param="file", code="filename_too_long")
            partial = spooled = (await pools.run("files", self.store.spool, upload.file, d.limit_bytes))[0]
            size = spooled.stat().st_size
            if size > d.limit_bytes:
                raise PayloadTooLarge(f"the file exceeds the {d.limit_bytes}-byte limit", param="file")
            await pools.run("files", self.store.check_quota, owner, size, d.limit_storage_bytes)
            doc = await self.extract(spooled, filename, request.state.party)
            record = await pools.run("files", self.store.add, owner, filename, purpose, spooled, doc.pages,
                                             index=doc.index.dumps(), quota=d.limit_storage_bytes)
            partial = None  # it is the stored file now
        except QuotaExceeded as exc:
            raise PayloadTooLarge(str(exc), param="file", code="storage_quota_exceeded") from exc
        except StorageFull as exc:
            raise InsufficientStorage("the proxy's file storage is full: nothing was stored; delete files you no "
                                      "longer need, or retry later", param="file") from exc
        finally:
            await form.close()
            if partial is not None:
                partial.unlink(missing_ok=True)
        metrics.DOC_UPLOADS.inc()
        return JSONResponse(record.to_openai())

    async def list(self, request: Request) -> Response:
        """OpenAI's list: newest first by default, ``limit`` (1-10000), ``order``, and an ``after`` cursor."""
        q = request.query_params
        purpose = q.get("purpose")
        raw_limit = q.get("limit", str(LIST_LIMIT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIST_LIMIT:
            raise BadRequest(f"`limit` must be an integer between 1 and {LIST_LIMIT}; got {raw_limit!r}"[:300],
                             param="limit")
        raw_order = q.get("order", "desc")
        if raw_order not in ("asc", "desc"):
            raise BadRequest(f"`order` must be 'asc' or 'desc'; got {raw_order!r}"[:300], param="order")
        order: Literal["asc", "desc"] = "asc" if raw_order == "asc" else "desc"
        limit, after = int(raw_limit), q.get("after")
        try:
            records = await pools.run("files", self.store.list, request.state.owner, purpose, limit=limit + 1,
                                              after=after, order=order)
        except KeyError:
            raise BadRequest(f"`after` must be the id of one of your files; {after!r} is not"[:300],
                             param="after") from None
        page = records[:limit]
        return JSONResponse({"object": "list", "data": [r.to_openai() for r in page],
                             "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                             "has_more": len(records) > limit})

    async def retrieve(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        record = await pools.run("files", self.store.get, request.state.owner, file_id)
        if record is None:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
        return JSONResponse(record.to_openai())

    async def content(self, request: Request) -> Response:
        """GET /v1/files/{id}/content: the bytes as uploaded (``client.files.content(id)``)."""
        file_id = request.path_params["file_id"]
        found = await pools.run("files", self.store.pieces, request.state.owner, file_id)
        if found is None:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
        size, pieces = found
        # Read piece by piece in a thread, each only once the client has taken the one before (uvicorn's flow
        # control holds the send): memory per download is a piece or two, whatever the file's size.
        return StreamingResponse(iterate_in_threadpool(pieces), media_type="application/octet-stream",
                                 headers={"content-length": str(size)})

    async def delete(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        try:
            deleted = await pools.run("files", self.store.delete, request.state.owner, file_id)
        except Exception as exc:
            if not is_full(exc):
                raise
            raise InsufficientStorage("the proxy's file storage is too full even to delete; retry later") from exc
        if not deleted:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    @staticmethod
    def routes() -> builtins.list[BaseRoute]:
        """Routes that find the service in request state (it is built in the lifespan)."""
        async def upload(request: Request) -> Response:
            return await _service(request).upload(request)

        async def list_files(request: Request) -> Response:
            return await _service(request).list(request)

        async def retrieve(request: Request) -> Response:
            return await _service(request).retrieve(request)

        async def delete(request: Request) -> Response:
            return await _service(request).delete(request)

        async def content(request: Request) -> Response:
            return await _service(request).content(request)

        return [
            Route("/v1/files", upload, methods=["POST"]),
            Route("/v1/files", list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
            Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", content, methods=["GET"]),
        ]


def _where(part: FilePart) -> str:
    return f"messages[{part.message_index}].content[{part.part_index}].file"


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")
