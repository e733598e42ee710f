from __future__ import annotations

import asyncio
import multiprocessing.forkserver
import os
import pickle
import time
from collections.abc import Callable
from typing import Any

import pytest

from proxy.documents.assemble import PageIndex
from proxy.documents.pdf import PdfError, PdfExecutor, PdfLimits, extract_document_async, extract_pages
from tests.proxy import pdfs

LIMITS = PdfLimits()


def test_extracts_known_text_page_by_page_in_order() -> None:
    data = pdfs.pdf_with_pages(["The first page talks about apples.", "Page two: bananas.", "Third: cherries."])
    pages = extract_pages(data, limits=LIMITS)
    assert [p.strip() for p in pages] == [
        "The first page talks about apples.",
        "Page two: bananas.",
        "Third: cherries.",
    ]


def test_two_column_page_keeps_the_text_of_both_columns() -> None:
    left = "Leftside narrative about harbours and lighthouses."
    right = "Rightside appendix about glaciers and fjords."
    [page] = extract_pages(pdfs.two_column_pdf(left, right), limits=LIMITS)
    words = page.split()
    for word in (left + " " + right).split():
        assert word in words


def test_non_latin_text_is_extracted_as_unicode() -> None:
    texts = ["Привет, мир", "Καλημέρα κόσμε", "東京都の会社"]
    assert [p.strip() for p in extract_pages(pdfs.unicode_pdf(texts), limits=LIMITS)] == texts


def test_owner_password_only_pdf_opens_without_a_password() -> None:
    pages = extract_pages(pdfs.encrypted_pdf("Readable despite encryption", user_password=None), limits=LIMITS)
    assert pages[0].strip() == "Readable despite encryption"


def _truncated() -> bytes:
    whole = pdfs.pdf_with_pages(["one", "two", "three"])
    return whole[: len(whole) // 2]


def _corrupt() -> bytes:
    whole = pdfs.pdf_with_pages(["one", "two"])
    return whole[:200] + b"\0" * 500 + whole[700:]


@pytest.mark.parametrize(
    ("build", "reason", "message"),
    [
        (lambda: b"PK\x03\x04 this is a zip file really", "not_pdf", "report.pdf is not a PDF"),
        (lambda: b"", "not_pdf", "report.pdf is not a PDF"),
        (_truncated, "truncated", "report.pdf is truncated"),
        (_corrupt, "corrupt", "report.pdf is corrupt"),
        (lambda: b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\n%%EOF\n", "corrupt", "report.pdf is corrupt"),
        (
            lambda: pdfs.encrypted_pdf("hidden", user_password="letmein"),
            "encrypted",
            "report.pdf is encrypted and no password was given",
        ),
        (pdfs.image_only_pdf, "no_text", "report.pdf has no extractable text"),
    ],
    ids=["zip", "empty", "truncated", "damaged-xref", "garbage", "encrypted", "image-only"],
)
def test_bad_file_raises_pdf_error_with_reason_and_readable_message(
    build: Callable[[], bytes], reason: str, message: str
) -> None:
    with pytest.raises(PdfError) as info:
        extract_pages(build(), limits=LIMITS, filename="report.pdf")
    assert info.value.reason == reason
    assert str(info.value).startswith(message)


def test_decompression_bomb_is_stopped_at_the_limit_quickly() -> None:
    data = pdfs.bomb_pdf()  # inflates to 256 MB
    assert len(data) < 1_000_000
    started = time.monotonic()
    with pytest.raises(PdfError) as info:
        extract_pages(data, limits=PdfLimits(limit_decompressed_bytes=10_000_000), filename="zip.pdf")
    assert time.monotonic() - started < 2
    assert info.value.reason == "bomb"
    assert "zip.pdf looks like a decompression bomb" in str(info.value)


def test_decompressed_limit_none_lets_a_large_stream_through() -> None:
    data = pdfs.bomb_pdf(3_000_000)
    assert extract_pages(data, limits=PdfLimits(limit_decompressed_bytes=None))[0].strip() == "boom"
    with pytest.raises(PdfError, match="bomb"):
        extract_pages(data, limits=PdfLimits(limit_decompressed_bytes=1_000_000))


def test_other_reader_safety_limits_also_count_as_a_bomb() -> None:
    data = pdfs.assemble(b"BT /F1 12 Tf 72 720 Td [" + b"(a) " * 100_001 + b"] TJ ET")
    with pytest.raises(PdfError) as info:
        extract_pages(data, limits=LIMITS, filename="wide.pdf")
    assert info.value.reason == "bomb"
    assert str(info.value).startswith("wide.pdf exceeds a safety limit of the PDF reader (")


@pytest.mark.parametrize(
    ("limits", "reason", "message"),
    [
        (PdfLimits(limit_bytes=100), "too_large", "big.pdf is "),
        (PdfLimits(limit_pages=2), "too_many_pages", "big.pdf has 3 pages; the limit is 2"),
        (PdfLimits(limit_chars=20), "too_large", "big.pdf has more than 20 characters of text"),
    ],
    ids=["bytes", "pages", "chars"],
)
def test_limits_are_enforced(limits: PdfLimits, reason: str, message: str) -> None:
    data = pdfs.pdf_with_pages(["first page text", "second page text", "third page text"])
    with pytest.raises(PdfError) as info:
        extract_pages(data, limits=limits, filename="big.pdf")
    assert info.value.reason == reason
    assert message in str(info.value)


def test_limits_at_exactly_the_size_pass() -> None:
    data = pdfs.pdf_with_pages(["a", "b"])
    assert len(extract_pages(data, limits=PdfLimits(limit_bytes=len(data), limit_pages=2))) == 2


def test_pdf_error_survives_pickling_with_its_reason() -> None:
    copy = pickle.loads(pickle.dumps(PdfError("bomb", "x.pdf looks like a bomb")))
    assert (copy.reason, str(copy)) == ("bomb", "x.pdf looks like a bomb")


# --- off the event loop, in a child process ----------------------------------------------------------------


@pytest.fixture
def executor() -> PdfExecutor:
    # Per test: its semaphore binds to the event loop of the first asyncio.run that waits on it.
    return PdfExecutor(max_workers=2)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_async_extraction_returns_the_pages(executor: PdfExecutor) -> None:
    data = pdfs.pdf_with_pages(["alpha page", "beta page"])
    doc = _run(extract_document_async(data, limits=LIMITS, executor=executor, filename="ab.pdf"))
    assert [p.strip() for p in doc.pages] == ["alpha page", "beta page"]
    assert doc.name == "ab.pdf" and doc.index == PageIndex.build(doc.pages)  # built in the child


def test_async_extraction_reports_the_child_error_reason(executor: PdfExecutor) -> None:
    with pytest.raises(PdfError) as info:
        _run(extract_document_async(pdfs.image_only_pdf(), limits=LIMITS, executor=executor, filename="scan.pdf"))
    assert info.value.reason == "no_text"
    assert str(info.value).startswith("scan.pdf has no extractable text")


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # The command name (field 2) is parenthesised and may hold spaces; ppid follows it.
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                children.append(int(entry))
    return children


def test_timeout_kills_the_worker_and_the_executor_keeps_working(executor: PdfExecutor) -> None:
    started = time.monotonic()
    with pytest.raises(PdfError) as info:
        _run(extract_document_async(pdfs.slow_pdf(), limits=PdfLimits(timeout_extract=0.2), executor=executor,
                                 filename="s.pdf"))
    # The parse alone takes seconds; returning this fast means the child was killed, not waited for.
    assert time.monotonic() - started < 1.5
    assert info.value.reason == "timeout"
    assert "s.pdf took longer than 0.2 s" in str(info.value)
    # Extraction children are forked by the forkserver; none may be left running after the timeout.
    forkserver_pid = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert forkserver_pid and _children_of(forkserver_pid) == []
    after = _run(extract_document_async(pdfs.pdf_with_pages(["after"]), limits=LIMITS, executor=executor))
    assert after.pages == ["after"]


def test_concurrent_extractions_all_complete(executor: PdfExecutor) -> None:
    docs = [pdfs.pdf_with_pages([f"document {n}"]) for n in range(5)]

    async def all_of_them() -> list[list[str]]:
        return await asyncio.gather(*(extract_document_async(d, limits=LIMITS, executor=executor) for d in docs))

    assert [doc.pages[0].strip() for doc in _run(all_of_them())] == [f"document {n}" for n in range(5)]


def test_executor_needs_at_least_one_worker() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        PdfExecutor(max_workers=0)
