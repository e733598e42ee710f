"""Work per request is bounded: repeated documents are read once, and distinct ones are capped."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY

from tests.conftest import RunningProxy
from tests.helpers import COMPANY, QUESTION, REPORT, file_part_by_id, file_part_inline, sent_text, upload
from tests.proxy.pdfs import pdf_with_pages
from tests.standin import StandInServer


def _extractions() -> float:
    return REGISTRY.get_sample_value("route_llm_document_extraction_seconds_count") or 0.0


def _chat(proxy: RunningProxy, content: list[Any], **kw: Any) -> Any:
    return proxy.client(**kw).chat.completions.with_raw_response.create(
        model="gemini-1.5-flash", messages=[{"role": "user", "content": content}])


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    return exc.response.json()["error"]  # type: ignore[no-any-return]


def test_a_file_id_repeated_many_times_is_sent_once(proxy: RunningProxy, standin: StandInServer) -> None:
    f = upload(proxy.client())
    raw = _chat(proxy, [file_part_by_id(f.id)] * 200 + [{"type": "text", "text": QUESTION}])
    assert raw.http_response.status_code == 200
    text = sent_text(standin)
    assert text.count("<document ") == 1 and text.count(COMPANY) == 1
    assert raw.headers["x-route-llm-document-pages"] == "report.pdf:1,2"


def test_a_document_repeated_in_later_messages_is_sent_at_its_first_mention(proxy: RunningProxy,
                                                                            standin: StandInServer) -> None:
    f = upload(proxy.client())
    messages = [{"role": "user", "content": [file_part_by_id(f.id), {"type": "text", "text": "Read this."}]},
                {"role": "assistant", "content": "Done."},
                {"role": "user", "content": [file_part_by_id(f.id)]}]
    out = proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=messages)  # type: ignore[arg-type]
    assert out.choices[0].message.content
    [request] = standin.state.requests
    first, _, last = request.body["contents"]
    assert "<document " in first["parts"][0]["text"]
    assert all("<document " not in p.get("text", "") for p in last["parts"]) and last["parts"]


def test_the_same_inline_pdf_repeated_is_extracted_once(proxy: RunningProxy, standin: StandInServer) -> None:
    before = _extractions()
    raw = _chat(proxy, [file_part_inline(REPORT, "a.pdf")] * 12 + [{"type": "text", "text": QUESTION}])
    assert raw.http_response.status_code == 200
    assert _extractions() - before == 1
    assert sent_text(standin).count("<document ") == 1


def test_too_many_distinct_documents_is_a_400_naming_the_part(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(documents={"limit_documents_per_request": 2})
    ids = [upload(proxy.client(), pdf_with_pages([f"document number {i}"])).id for i in range(3)]
    ok = _chat(proxy, [file_part_by_id(ids[0]), file_part_by_id(ids[1]), file_part_by_id(ids[0]),
                       {"type": "text", "text": QUESTION}])
    assert ok.http_response.status_code == 200  # two distinct, one of them twice
    with pytest.raises(openai.BadRequestError) as info:
        _chat(proxy, [*map(file_part_by_id, ids), {"type": "text", "text": QUESTION}])
    error = _error(info.value)
    assert error["code"] == "too_many_documents" and error["param"] == "messages[0].content[2].file"
    assert "3 different documents" in error["message"] and "at most 2" in error["message"]
    assert len(standin.state.requests) == 1


def test_too_many_inline_pdfs_is_a_400_before_any_is_read(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(documents={"limit_inline_per_request": 1})
    before = _extractions()
    with pytest.raises(openai.BadRequestError) as info:
        _chat(proxy, [file_part_inline(REPORT, "a.pdf"), file_part_inline(pdf_with_pages(["other"]), "b.pdf"),
                      {"type": "text", "text": QUESTION}])
    error = _error(info.value)
    assert error["code"] == "too_many_inline_documents" and "POST /v1/files" in error["message"]
    assert _extractions() == before and standin.state.requests == []


def test_too_much_document_text_per_request_is_a_413(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(documents={"limit_request_chars": 150})
    a, b = upload(proxy.client()).id, upload(proxy.client(), pdf_with_pages(["x" * 100])).id
    assert _chat(proxy, [file_part_by_id(a), {"type": "text", "text": QUESTION}]).http_response.status_code == 200
    with pytest.raises(openai.APIStatusError) as info:
        _chat(proxy, [file_part_by_id(a), file_part_by_id(b), {"type": "text", "text": QUESTION}])
    assert info.value.status_code == 413
    error = _error(info.value)
    assert error["code"] == "documents_too_large" and error["param"] == "messages[0].content[1].file"
    assert len(standin.state.requests) == 1


def test_a_file_stored_before_page_indexes_is_indexed_on_first_use_and_ranked(make_proxy: Any, tmp_path: Path,
                                                                              standin: StandInServer) -> None:
    store = tmp_path / "old-store"
    store.mkdir()
    pages = ["Minutes of the meeting. " * 20, "The kiwifruit export quota rose to 40 tonnes. " * 4,
             "Closing remarks and thanks. " * 20]
    with sqlite3.connect(store / "files.db") as db:  # the schema before page_index existed
        db.execute("CREATE TABLE files (id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, "
                   "purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, "
                   "page_count INTEGER NOT NULL, pages TEXT NOT NULL)")
        db.execute("INSERT INTO files VALUES (?, '', 'old.pdf', 'user_data', 10, 1, 3, ?)",
                   ("file-OLDOLDOLDOLDOLDOLDOLDOLDO", json.dumps(pages)))
    proxy = make_proxy(documents={"storage_dir": str(store), "budget_chars": 150})
    raw = _chat(proxy, [file_part_by_id("file-OLDOLDOLDOLDOLDOLDOLDOLDO"),
                        {"type": "text", "text": "What was the kiwifruit quota?"}])
    assert raw.http_response.status_code == 200
    assert raw.headers["x-route-llm-document-pages"] == "old.pdf:2"  # ranked: the page with the question's words
    assert "kiwifruit export quota" in sent_text(standin)
    with sqlite3.connect(store / "files.db") as db:
        [(index,)] = db.execute("SELECT page_index FROM files").fetchall()
    assert index is not None and "\nkiwifruit\t1:4" in index  # built once and kept
