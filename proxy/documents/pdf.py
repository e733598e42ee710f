"""PDF text extraction, page by page, with limits that make hostile files cheap to reject.

Uploaded PDFs are untrusted input to a long-running server. pypdf is a pure-Python parser, so the threats are
CPU time (pathological content streams), memory (decompression bombs) and plain garbage. Three layers:

1. Cheap checks on the raw bytes before parsing: size, the ``%PDF-`` header, the ``%%EOF`` trailer marker.
2. pypdf's own limits (``pypdf.Configuration``, applied with ``apply_configuration`` for this call only), so a
   stream that inflates past ``limit_decompressed_bytes`` raises instead of allocating.
3. A wall-time limit enforced from outside: :func:`extract_document_async` runs the parse in a child process and
   kills it when ``timeout_extract`` passes. A thread could not be stopped, and a timed-out
   ``ProcessPoolExecutor`` task would keep its worker busy; a process of our own can be killed outright.

Every failure is a :class:`PdfError` whose ``reason`` comes from a closed set, so the HTTP layer can map it
to a 400 and metrics can label failures by reason without unbounded label values.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pypdf import Configuration, PasswordType, PdfReader, apply_configuration
from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

from proxy.documents.assemble import Document
from proxy.documents.slots import FairSlots

PdfErrorReason = Literal[
    "not_pdf", "too_large", "truncated", "corrupt", "encrypted", "too_many_pages", "bomb", "no_text", "timeout"
]

# Acrobat accepts the header anywhere in the first 1024 bytes and the end-of-file marker anywhere in the
# last 1024; we use the same tolerance so files that real viewers open are not refused here.
_HEADER_WINDOW = 1024
_EOF_WINDOW = 1024

# Extraction children name themselves ``rlpdf-<pid of the server process>`` (Linux's 15-character comm), so
# a server starting up can find the ones a killed predecessor left behind.
CHILD_PREFIX = "rlpdf-"
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

log = logging.getLogger("route_llm")


class _WarningCounter(logging.Handler):
    """Counts pypdf's repair warnings, to tell a damaged file from a scan when no text comes out."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class PdfError(Exception):
    """A PDF could not be turned into text; ``reason`` says why, the message says it for humans."""

    def __init__(self, reason: PdfErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: PdfErrorReason = reason
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Default exception pickling passes only ``args`` (the message) back to __init__; errors cross the
        # process boundary, so both fields must survive the trip.
        return (PdfError, (self.reason, self.message))


@dataclass(frozen=True)
class PdfLimits:
    """Limits for one extraction. ``None`` means unlimited, except the timeout, which is always set."""

    limit_bytes: int | None = 25_000_000
    limit_pages: int | None = 1000
    limit_chars: int | None = 3_000_000  # total extracted characters across all pages
    limit_decompressed_bytes: int | None = 200_000_000  # per stream, after decoding
    timeout_extract: float = 30.0  # seconds of wall time for the whole extraction


def _pypdf_configuration(limits: PdfLimits) -> Configuration:
    """pypdf's limits on decoded sizes, all set to ``limit_decompressed_bytes`` (pypdf reads 0 as 'none').

    Built from pypdf's defaults, not the process's current configuration, so the same limits hold wherever
    this runs. The other defaults (array sizes, page-tree depth, parsing work) already guard against
    structural abuse and are kept.
    """
    cap = limits.limit_decompressed_bytes or 0
    return Configuration(
        zlib_maximum_output_length=cap,
        lzw_maximum_output_length=cap,
        run_length_maximum_output_length=cap,
        brotli_maximum_output_length=cap,
        jbig2_maximum_output_length=cap,
        array_based_stream_maximum_output_length=cap,
        image_maximum_buffer_size=cap,
    )


def _check_raw(data: bytes, limits: PdfLimits, filename: str) -> None:
    if limits.limit_bytes is not None and len(data) > limits.limit_bytes:
        raise PdfError("too_large", f"{filename} is {len(data)} bytes; the limit is {limits.limit_bytes} bytes")
    if b"%PDF-" not in data[:_HEADER_WINDOW]:
        raise PdfError("not_pdf", f"{filename} is not a PDF (no %PDF- header)")
    # A file cut off in transit loses its trailer. pypdf would try to "recover" it and may return a subset of
    # the pages without complaint; answering questions over half a document is worse than refusing it.
    if b"%%EOF" not in data[-_EOF_WINDOW:]:
        raise PdfError("truncated", f"{filename} is truncated (no %%EOF marker at the end of the file)")


def extract_pages(data: bytes, *, limits: PdfLimits, filename: str = "the file") -> list[str]:
    """Return the text of each page, in order. Blocking and CPU-bound: call it through
    :func:`extract_document_async` in a server, which adds the wall-time limit.

    ``filename`` only goes into error messages, so users learn which attachment failed.
    """
    _check_raw(data, limits, filename)
    bomb = f"{filename} looks like a decompression bomb: a stream inflates past {limits.limit_decompressed_bytes} bytes"
    repairs = _WarningCounter()
    pypdf_logger = logging.getLogger("pypdf")
    pypdf_logger.addHandler(repairs)
    try:
        with apply_configuration(_pypdf_configuration(limits)):
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
                raise PdfError("encrypted", f"{filename} is encrypted and no password was given")
            count = len(reader.pages)
            if limits.limit_pages is not None and count > limits.limit_pages:
                raise PdfError("too_many_pages", f"{filename} has {count} pages; the limit is {limits.limit_pages}")
            pages: list[str] = []
            total = 0
            for page in reader.pages:
                text = page.extract_text()
                total += len(text)
                if limits.limit_chars is not None and total > limits.limit_chars:
                    raise PdfError(
                        "too_large",
                        f"{filename} has more than {limits.limit_chars} characters of text (the limit)",
                    )
                pages.append(text)
    except PdfError:
        raise
    except LimitReachedError as exc:
        # Decoded sizes are the usual culprit; the other limits (nesting, element counts, parsing work) are
        # the same kind of attack, a small file built to exhaust the reader, so they share the reason.
        if "decompress" in str(exc).lower():
            raise PdfError("bomb", bomb) from exc
        raise PdfError("bomb", f"{filename} exceeds a safety limit of the PDF reader ({exc})") from exc
    except (FileNotDecryptedError, DependencyError) as exc:
        # DependencyError: AES needs the optional `cryptography` package even to try the empty password.
        raise PdfError("encrypted", f"{filename} is encrypted and no password was given") from exc
    except MemoryError as exc:
        raise PdfError("bomb", f"{filename} needs more memory to read than this server allows") from exc
    except RecursionError as exc:
        raise PdfError("corrupt", f"{filename} is corrupt (its object structure nests without end)") from exc
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on broken input; all mean "corrupt"
        raise PdfError("corrupt", f"{filename} is corrupt and could not be read ({type(exc).__name__})") from exc
    finally:
        pypdf_logger.removeHandler(repairs)
    if not any(text.strip() for text in pages):
        if repairs.count:
            # pypdf "recovered" a structure with no text in it: the file is broken, not a scan.
            raise PdfError("corrupt", f"{filename} is corrupt: no readable text could be recovered from it")
        raise PdfError(
            "no_text", f"{filename} has no extractable text (scanned or image-only pages are not supported)"
        )
    return pages


def _die_with_server(server: int, conn: multiprocessing.connection.Connection) -> None:
    """Make this child exit when the server process goes, however it goes (SIGKILL runs no clean-up).

    Without this a parse of a hostile PDF keeps running, at full CPU and growing memory, with nobody left
    to kill it. The child's parent is multiprocessing's forkserver, not the server, and the forkserver
    outlives the server for as long as any child lives (each child inherits its "server alive" pipe), so
    PR_SET_PDEATHSIG alone would never fire. What does notice is the result pipe: only the server holds
    its reading end, so when the server dies the child's writing end reports an error; a thread waits for
    that and exits. PR_SET_PDEATHSIG is set as well, for a forkserver that is itself killed, and the child
    is named ``rlpdf-<server pid>`` for the start-up sweep.
    """
    threading.Thread(target=_exit_when_unread, args=(conn.fileno(),), daemon=True).start()
    if not sys.platform.startswith("linux"):  # pragma: no cover - the server runs on Linux
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        libc.prctl(_PR_SET_NAME, f"{CHILD_PREFIX}{server}".encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return
    try:
        os.kill(server, 0)
    except ProcessLookupError:
        os._exit(1)
    except PermissionError:  # pragma: no cover - alive, under another user after a pid reuse
        pass


def sweep_orphans(proc: Path = Path("/proc")) -> int:
    """Kill extraction children whose server is gone; return how many. Call once, at start-up.

    A child is an orphan when the server pid in its name no longer exists, or names this very process but
    does not descend from it: left by an earlier process that had the same pid (containers reuse small pids
    on every restart). Only this user's processes are touched.
    """
    if not proc.is_dir():  # pragma: no cover - not Linux
        return 0
    killed = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if not comm.startswith(CHILD_PREFIX) or entry.stat().st_uid != os.getuid() or _zombie(entry):
                continue
        except OSError:  # gone meanwhile, or not ours to read
            continue
        server = comm[len(CHILD_PREFIX):]
        if not server.isdigit():
            continue
        if int(server) == os.getpid():
            if _ppid(proc, _ppid(proc, int(entry.name))) == os.getpid():
                continue  # ours, through our forkserver
        else:
            try:
                os.kill(int(server), 0)
                continue  # its server is alive: not an orphan
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        try:
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    if killed:
        log.warning("killed %d PDF extraction process(es) left behind by a server that is gone", killed)
    return killed


def _exit_when_unread(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLERR)
    for _, event in poller.poll():
        if event & (select.POLLERR | select.POLLHUP):  # no reader left: the server is gone
            os._exit(1)
    # POLLNVAL alone: the child closed the pipe itself after answering, and exits normally.


def _zombie(entry: Path) -> bool:
    """Dead already, waiting to be reaped (a container's init may never do it)."""
    return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _ppid(proc: Path, pid: int | None) -> int | None:
    try:
        # The command name in field 2 may hold spaces; the fields after its closing parenthesis do not.
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _child(conn: multiprocessing.connection.Connection, data: bytes | Path, limits: PdfLimits, filename: str,
           server: int) -> None:
    """Child-process entry point: one extraction, one message back, exit.

    The pages' ranking index is built here too: it is pure Python and, in the server, would hold the GIL.
    """
    _die_with_server(server, conn)
    # A broken file can make pypdf log a line per damaged object; the child has no log configuration, so
    # these would go to the server's stderr unfiltered. The outcome is reported through PdfError instead.
    logging.getLogger("pypdf").propagate = False
    try:
        if isinstance(data, Path):  # an upload: read here, so the server never holds it whole
            size = data.stat().st_size
            if limits.limit_bytes is not None and size > limits.limit_bytes:
                raise PdfError("too_large", f"{filename} is {size} bytes; the limit is {limits.limit_bytes} bytes")
            data = data.read_bytes()
        result: tuple[str, Any] = ("ok", Document.of(filename, extract_pages(data, limits=limits, filename=filename)))
    except PdfError as exc:
        result = ("error", exc)
    except BaseException as exc:  # noqa: BLE001 - anything else still has to reach the parent as an answer
        result = ("error", PdfError("corrupt", f"{filename} could not be read ({type(exc).__name__})"))
    conn.send(result)
    conn.close()


class PdfExecutor:
    """Runs extractions in short-lived child processes, at most ``max_workers`` at a time.

    Why a process per extraction rather than a ``ProcessPoolExecutor``: a pool cannot cancel a running task,
    and terminating its workers breaks the whole pool for every other caller. A child of our own can be killed
    on timeout with nothing else to repair. Children are forked from a ``forkserver`` that has already
    imported this module and pypdf, so each start costs a fork (milliseconds), not an interpreter start, and
    the server process itself is never forked while it has threads (uvicorn's threadpool, onnxruntime).

    Create one in the app's lifespan; it holds no processes between calls, so there is nothing to close.
    """

    def __init__(self, max_workers: int = 2) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([__name__])
        # Public so extract_document_async can hold a slot while it waits; bounds CPU and memory use, and
        # shares the children fairly between keys (one key's pile of slow PDFs delays another's by one slot).
        self.slots = FairSlots(max_workers)

    def run(self, data: bytes | Path, limits: PdfLimits, filename: str) -> Document:
        """Blocking: extract in a child process, killing it after ``limits.timeout_extract`` seconds."""
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child, args=(sender, data, limits, filename, os.getpid()), name="route-llm-pdf", daemon=True
        )
        try:
            process.start()
        except BaseException:
            receiver.close()
            raise
        finally:
            # Our copy of the sending end must go, or a crashed child would leave poll() waiting forever
            # instead of reporting EOF.
            sender.close()
        try:
            if not receiver.poll(limits.timeout_extract):
                raise PdfError(
                    "timeout", f"{filename} took longer than {limits.timeout_extract:g} s to read and was abandoned"
                )
            try:
                status, payload = receiver.recv()
            except EOFError:
                raise PdfError("corrupt", f"{filename} crashed the PDF reader") from None
        finally:
            receiver.close()
            if process.is_alive():
                process.kill()
            process.join()
            process.close()
        if status == "ok":
            assert isinstance(payload, Document)
            return payload
        raise payload


async def extract_document_async(
    data: bytes | Path, *, limits: PdfLimits, executor: PdfExecutor, filename: str = "the file", who: str = ""
) -> Document:
    """The pages and their index (named ``filename``), extracted off the event loop with a wall-time limit.

    Raises :class:`PdfError` (reason ``timeout`` too).

    The slots bound concurrent child processes, shared fairly between parties (``who``: the key's owner id,
    or the client's address); the waiting itself happens in a thread because
    ``Connection.poll`` blocks. If the awaiting request is cancelled, its slot is freed at once but the
    thread still finishes (or times out and kills the child), so no child outlives ``timeout_extract``.
    """
    async with executor.slots.hold(who):
        return await asyncio.to_thread(executor.run, data, limits, filename)
