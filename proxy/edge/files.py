"""The Files API (``/v1/files``): OpenAI's upload, list, retrieve, content and delete, over HTTP.

Only the HTTP side lives here: the multipart body, query parameters, path ids and OpenAI's file objects.
Extraction and storage are the documents layer's (``DocumentService.add_upload``) and the store's, reached with
plain values (the key's owner hash, the guard's fairness key), so nothing below the edge reads a ``Request``.
"""

from __future__ import annotations

from starlette.concurrency import iterate_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from proxy import pools
from proxy.edge.paging import list_params
from proxy.errors import BadRequest, InsufficientStorage, NotFound
from proxy.services import services
from proxy.state.files import is_full

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


async def upload(request: Request) -> Response:
    """POST /v1/files: store a PDF without ever holding it whole in this process's memory.

    The guard has already read the body (refusing it past ``limit_bytes`` and on its deadline), spooling
    anything over a megabyte to disk; the multipart parser spools the file part again, and the documents
    layer copies it in chunks into the store.
    """
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
    try:
        file, purpose = form.get("file"), form.get("purpose")
        if not isinstance(file, UploadFile):
            raise BadRequest("`file` is required: the PDF to upload", param="file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise BadRequest(f"`purpose` must be one of {', '.join(sorted(PURPOSES))}", param="purpose")
        filename = file.filename or "upload.pdf"
        if len(filename) > FILENAME_CHARS:
            raise BadRequest(f"the file's name is {len(filename)} characters long; at most {FILENAME_CHARS} are "
                             "accepted", param="file", code="filename_too_long")
        record = await services(request).documents.add_upload(file.file, filename=filename, purpose=purpose,
                                                               owner=request.state.owner, party=request.state.party)
    finally:
        await form.close()
    return JSONResponse(record.to_openai())


async def list_files(request: Request) -> Response:
    """GET /v1/files: OpenAI's list, newest first by default, ``limit`` (1-10000), ``order``, an ``after`` cursor."""
    purpose = request.query_params.get("purpose")
    limit, order, after = list_params(request, default=LIST_LIMIT, maximum=LIST_LIMIT)
    store = services(request).documents.store
    try:
        records = await pools.run("files", store.list, request.state.owner, purpose, limit=limit + 1,
                                          after=after, order=order)
    except KeyError:
        raise BadRequest(f"`after` must be the id of one of your files; {after!r} is not"[:300],
                         param="after") from None
    page = records[:limit]
    return JSONResponse({"object": "list", "data": [r.to_openai() for r in page],
                         "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                         "has_more": len(records) > limit})


async def retrieve(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    record = await pools.run("files", services(request).documents.store.get, request.state.owner, file_id)
    if record is None:
        raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
    return JSONResponse(record.to_openai())


async def content(request: Request) -> Response:
    """GET /v1/files/{id}/content: the bytes as uploaded (``client.files.content(id)``)."""
    file_id = request.path_params["file_id"]
    found = await pools.run("files", services(request).documents.store.pieces, request.state.owner, file_id)
    if found is None:
        raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
    size, pieces = found
    # Read piece by piece in a thread, each only once the client has taken the one before (uvicorn's flow
    # control holds the send): memory per download is a piece or two, whatever the file's size.
    return StreamingResponse(iterate_in_threadpool(pieces), media_type="application/octet-stream",
                             headers={"content-length": str(size)})


async def delete(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    try:
        deleted = await pools.run("files", services(request).documents.store.delete, request.state.owner, file_id)
    except Exception as exc:
        if not is_full(exc):
            raise
        raise InsufficientStorage("the proxy's file storage is too full even to delete; retry later") from exc
    if not deleted:
        raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
    ]
