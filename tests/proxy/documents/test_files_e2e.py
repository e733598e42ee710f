"""End to end for documents: the OpenAI SDK's Files API and file chat parts -> route-llm on a real socket
-> LiteLLM -> the Gemini stand-in. PDFs are built on the fly (``tests.proxy.pdfs``)."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningProxy, stop_proxy
from tests.helpers import QUESTION, REPORT, file_part_by_id, file_part_inline, sent_text, upload
from tests.proxy.both_backends import *  # noqa: F403 (fixtures: backend, proxy)
from tests.proxy.pdfs import bomb_pdf, encrypted_pdf, image_only_pdf, pdf_with_pages
from tests.standin import StandInServer

MakeProxy = Callable[..., RunningProxy]

EASY = "What is the capital of France?"


# --- helpers -------------------------------------------------------------------------------------------

def metric_values(proxy: RunningProxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (sample name, sorted labels)."""
    text = proxy.http().get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


UPLOADED = "route_llm_documents_uploaded_total"
FAILURES = "route_llm_document_failures_total"


def ask(proxy: RunningProxy, part: dict[str, Any], question: str = QUESTION, *, api_key: str = "unused",
        model: str = "auto") -> Any:
    return proxy.client(api_key=api_key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": [part, {"type": "text", "text": question}]}])


def route_score(proxy: RunningProxy, prompt: str, api_key: str | None = None, model: str = "auto") -> str:
    """The dry run's score of ``prompt`` asked about a document: the chat path must route on the question, not
    on the document's text (which the upstream receives). The document head's score is placed against the
    alias's own cut, so the dry run asks with the same ``model``."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    d = proxy.http().post("/v1/route", json={"model": model, "prompt": prompt, "document": True},
                          headers=headers).json()
    return f"{d['score']:.4f}"


def assert_still_serving(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.reset()
    out = proxy.client().chat.completions.create(model="auto-cheap", messages=[{"role": "user", "content": EASY}])
    assert out.choices[0].message.content
    assert standin.state.models_called() == ["gemini-1.5-flash"]


def openai_error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


# --- Files API -----------------------------------------------------------------------------------------

def test_upload_list_retrieve_delete_round_trip_in_openai_shape(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    client = proxy.client()
    before = metric_values(proxy)
    started = int(time.time())
    created = upload(client)
    assert created.id.startswith("file-") and len(created.id) == len("file-") + 24
    assert created.object == "file" and created.purpose == "user_data" and created.filename == "report.pdf"
    assert created.bytes == len(REPORT) and created.status == "processed"
    assert started - 1 <= created.created_at <= time.time() + 1
    raw = proxy.http().get(f"/v1/files/{created.id}").json()
    assert set(raw) == {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at",
                        "status_details"}
    after = metric_values(proxy)
    assert delta(before, after, UPLOADED) == 1
    assert delta(before, after, "route_llm_document_pages_extracted_total") == 2

    second = upload(client, pdf_with_pages(["another document"]), "second.pdf")
    listed = client.files.list()
    assert [f.id for f in listed.data] == [second.id, created.id]  # newest first
    assert listed.data[1] == created
    assert client.files.retrieve(created.id) == created

    deleted = client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted is True and deleted.object == "file"
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(created.id)
    error = openai_error(info.value)
    assert error["code"] == "file_not_found" and created.id in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)
    assert [f.id for f in client.files.list().data] == [second.id]


def test_files_survive_a_restart(make_proxy: MakeProxy, standin: StandInServer) -> None:
    first = make_proxy()
    created = upload(first.client())
    stop_proxy(first)
    deadline = time.monotonic() + 10
    while True:  # wait until the first proxy has really gone (its lifespan closed the store)
        try:
            httpx.get(first.base_url + "/health/live", timeout=1)
        except httpx.TransportError:
            break
        assert time.monotonic() < deadline, "the first proxy did not stop"
        time.sleep(0.05)

    second = make_proxy()
    assert second.settings.documents.storage_dir == first.settings.documents.storage_dir
    client = second.client()
    assert client.files.retrieve(created.id) == created
    assert [f.id for f in client.files.list().data] == [created.id]
    raw = ask(second, file_part_by_id(created.id))
    assert raw.parse().choices[0].message.content
    assert "Zephyrine Widgets" in sent_text(standin)


def test_each_key_sees_only_its_own_files(make_proxy: MakeProxy, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["sk-alice", "sk-bob"]})
    alice, bob = proxy.client(api_key="sk-alice"), proxy.client(api_key="sk-bob")
    mine = upload(alice)
    theirs = upload(bob, pdf_with_pages(["Bob's private notes."]), "bob.pdf")
    assert [f.id for f in alice.files.list().data] == [mine.id]
    assert [f.id for f in bob.files.list().data] == [theirs.id]
    with pytest.raises(openai.NotFoundError) as info:
        bob.files.retrieve(mine.id)
    assert openai_error(info.value)["code"] == "file_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        bob.files.delete(mine.id)
    assert openai_error(info.value)["code"] == "file_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        ask(proxy, file_part_by_id(mine.id), api_key="sk-bob")
    error = openai_error(info.value)
    assert error["code"] == "file_not_found" and mine.id in error["message"]
    assert error["param"] == "messages[0].content[0].file"
    assert standin.state.requests == []
    # Bob's failed delete did not touch Alice's file, and she can still ask about it.
    assert alice.files.retrieve(mine.id) == mine
    raw = ask(proxy, file_part_by_id(mine.id), api_key="sk-alice")
    assert raw.headers["x-route-llm-documents"] == "full"
    assert "Zephyrine Widgets" in sent_text(standin)
    with pytest.raises(openai.AuthenticationError):
        proxy.client(api_key="sk-mallory").files.list()


# --- asking about documents ----------------------------------------------------------------------------

def test_ask_by_file_id_sends_delimited_text_and_routes_on_the_question(proxy: RunningProxy,
                                                                        standin: StandInServer) -> None:
    created = upload(proxy.client())
    raw = ask(proxy, file_part_by_id(created.id))
    assert raw.parse().choices[0].message.content
    text = sent_text(standin)
    assert '<document name="report.pdf" pages="2">' in text
    assert text.index('<page number="1">') < text.index("Zephyrine Widgets") < text.index('<page number="2">')
    assert text.index('<page number="2">') < text.index("twelve million euros") < text.index("</document>")
    assert QUESTION in text
    assert raw.headers["x-route-llm-documents"] == "full"
    assert raw.headers["x-route-llm-document-pages"] == "report.pdf:1,2"
    # The router judged the question, not the document around it.
    assert raw.headers["x-route-llm-score"] == route_score(proxy, QUESTION)


def test_ask_by_inline_file_data_sends_delimited_text(proxy: RunningProxy, standin: StandInServer) -> None:
    before = metric_values(proxy)
    raw = ask(proxy, file_part_inline(REPORT, "inline report.pdf"), model="auto-cheap")
    assert raw.parse().model == "gemini-1.5-flash"
    text = sent_text(standin)
    assert '<document name="inline report.pdf" pages="2">' in text
    assert '<page number="1">' in text and "Zephyrine Widgets" in text
    assert '<page number="2">' in text and "twelve million euros" in text
    assert raw.headers["x-route-llm-document-pages"] == "inline report.pdf:1,2"
    assert raw.headers["x-route-llm-score"] == route_score(proxy, QUESTION, model="auto-cheap")
    after = metric_values(proxy)
    assert delta(before, after, UPLOADED) == 0  # inline documents are not stored
    assert delta(before, after, "route_llm_document_pages_extracted_total") == 2


def test_streaming_answer_about_a_file_carries_the_document_headers(proxy: RunningProxy,
                                                                    standin: StandInServer) -> None:
    created = upload(proxy.client())
    with proxy.client().chat.completions.with_streaming_response.create(
            model="auto", stream=True,
            messages=[{"role": "user", "content": [file_part_by_id(created.id),
                                                   {"type": "text", "text": QUESTION}]}]) as response:
        assert response.headers["x-route-llm-document-pages"] == "report.pdf:1,2"
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Zephyrine Widgets" in sent_text(standin)


def test_long_document_over_budget_sends_the_relevant_page(make_proxy: MakeProxy, standin: StandInServer) -> None:
    topics = ["harbour tariffs", "grain storage", "railway timetables", "bridge tolls", "wool exports",
              "river dredging", "postal routes", "salt taxes", "canal locks", "mill licences", "ferry fares",
              "market days"]
    pages = [f"Chapter {i + 1} concerns {topic}. " + f"The ledger records {topic} in great detail. " * 8
             for i, topic in enumerate(topics)]
    pages[6] += "The lighthouse keeper was named Bartholomew Quince."
    proxy = make_proxy(documents={"budget_chars": 700})
    created = upload(proxy.client(), pdf_with_pages(pages), "ledger.pdf")
    question = "What was the name of the lighthouse keeper?"
    raw = ask(proxy, file_part_by_id(created.id), question)
    assert raw.headers["x-route-llm-documents"] == "selected-bm25"
    name, _, numbers = raw.headers["x-route-llm-document-pages"].partition(":")
    sent_pages = [int(n) for n in numbers.split(",")]
    assert name == "ledger.pdf" and 7 in sent_pages and len(sent_pages) <= 2
    text = sent_text(standin)
    assert '<document name="ledger.pdf" pages="12" complete="false">' in text
    assert '<page number="7">' in text and "Bartholomew Quince" in text
    assert text.count("<page number=") == len(sent_pages)
    assert len(text) < 700 + 400  # the budget plus tags and the question, not 12 pages
    assert raw.headers["x-route-llm-score"] == route_score(proxy, question)

    # The same document under the default budget goes whole.
    standin.state.reset()
    roomy = make_proxy()
    whole = ask(roomy, file_part_inline(pdf_with_pages(pages), "ledger.pdf"), question)
    assert whole.headers["x-route-llm-documents"] == "full"
    assert whole.headers["x-route-llm-document-pages"] == "ledger.pdf:" + ",".join(map(str, range(1, 13)))
    assert sent_text(standin).count("<page number=") == 12


@pytest.mark.parametrize("name", ["отчёт 2025.pdf", "a;b:c,d.pdf"])
def test_any_filename_is_usable_in_chat_and_percent_encoded_in_the_header(proxy: RunningProxy,
                                                                          standin: StandInServer, name: str) -> None:
    created = upload(proxy.client(), name=name)
    assert proxy.client().files.retrieve(created.id).filename == name
    raw = ask(proxy, file_part_by_id(created.id))
    assert raw.parse().choices[0].message.content
    assert f'<document name="{html.escape(name)}" pages="2">' in sent_text(standin)
    assert raw.headers["x-route-llm-documents"] == "full"
    encoded, _, pages = raw.headers["x-route-llm-document-pages"].rpartition(":")
    assert unquote(encoded) == name and pages == "1,2" and not set(encoded) & set(";:,")


@pytest.mark.parametrize("stream", [False, True])
def test_inline_filename_with_a_lone_surrogate_is_a_400_in_both_modes(proxy: RunningProxy, standin: StandInServer,
                                                                      stream: bool) -> None:
    body = {"model": "auto", "stream": stream, "messages": [{"role": "user", "content": [
        file_part_inline(REPORT, "\ud800report.pdf"), {"type": "text", "text": QUESTION}]}]}
    with proxy.http() as http:  # json.dumps escapes the surrogate as "\\ud800", as a client would send it
        r = http.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages[0].content[0].file.filename"
    assert r.json()["error"]["code"] == "invalid_unicode"
    assert standin.state.requests == []


# --- bad files -----------------------------------------------------------------------------------------

_REPORT_CUT = REPORT[: len(REPORT) // 2]


@pytest.mark.parametrize(("make_data", "code", "words"), [
    (lambda: b"Quarterly notes, plain text.\n" * 20, "pdf_not_pdf", "is not a PDF"),
    (lambda: _REPORT_CUT, "pdf_truncated", "is truncated"),
    (lambda: encrypted_pdf("secret plans", user_password="hunter2"), "pdf_encrypted", "is encrypted"),
    (lambda: bomb_pdf(), "pdf_bomb", "decompression bomb"),
    (lambda: image_only_pdf(), "pdf_no_text", "no extractable text"),
], ids=["not_pdf", "truncated", "encrypted", "bomb", "image_only"])
def test_bad_upload_is_refused_with_the_reason(proxy: RunningProxy, standin: StandInServer,
                                               make_data: Callable[[], bytes], code: str, words: str) -> None:
    data = make_data()
    client = proxy.client()
    before = metric_values(proxy)
    with pytest.raises(openai.BadRequestError) as info:
        upload(client, data, "bad.pdf")
    error = openai_error(info.value)
    assert error["code"] == code and error["param"] == "file"
    assert "bad.pdf" in error["message"] and words in error["message"]
    assert "bad.pdf" not in [f.filename for f in client.files.list().data]
    # Inline, the same file fails the same way, and nothing is sent upstream.
    with pytest.raises(openai.BadRequestError) as info:
        ask(proxy, file_part_inline(data, "bad.pdf"))
    assert openai_error(info.value)["code"] == code
    assert standin.state.requests == []
    after = metric_values(proxy)
    reason = code.removeprefix("pdf_")
    assert delta(before, after, FAILURES, reason=reason) == 2
    assert delta(before, after, UPLOADED) == 0
    assert_still_serving(proxy, standin)


def test_upload_over_the_byte_limit_is_413(make_proxy: MakeProxy, standin: StandInServer) -> None:
    proxy = make_proxy(documents={"limit_bytes": 1000})
    client = proxy.client()
    assert len(REPORT) > 1000
    before = metric_values(proxy)
    with pytest.raises(openai.APIStatusError) as info:  # read, then refused: the body is near the limit
        upload(client)
    assert info.value.status_code == 413
    error = openai_error(info.value)
    assert error["param"] == "file" and "1000-byte limit" in error["message"]
    big = b"%PDF-1.7\n" + b"0" * 200_000
    with pytest.raises(openai.APIStatusError) as info:  # refused from Content-Length alone
        upload(client, big)
    assert info.value.status_code == 413 and "1000-byte" in openai_error(info.value)["message"]
    with pytest.raises(openai.APIStatusError) as info:  # inline documents have the same limit
        ask(proxy, file_part_inline(REPORT, "report.pdf"))
    assert info.value.status_code == 413
    error = openai_error(info.value)
    assert error["code"] == "pdf_too_large" and "report.pdf" in error["message"]
    after = metric_values(proxy)
    assert delta(before, after, FAILURES, reason="too_large") == 1
    assert delta(before, after, UPLOADED) == 0
    assert client.files.list().data == []
    assert standin.state.requests == []
    upload(client, pdf_with_pages(["ok"]), "small.pdf")  # a file under the limit is still accepted
    assert_still_serving(proxy, standin)


def test_chunked_upload_over_the_byte_limit_is_refused_without_reading_it_all(make_proxy: MakeProxy) -> None:
    # No Content-Length to refuse up front: the guard must stop reading near the limit, not after the whole
    # body, and close the connection so the client stops sending.
    proxy = make_proxy(documents={"limit_bytes": 1000})
    head = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.pdf"\r\n\r\n%PDF-1.7\n')
    sent = 0

    def body() -> Any:
        nonlocal sent
        yield head
        for _ in range(400):  # 25 MB, chunked
            sent += 1
            yield b"0" * 65536
        yield b"\r\n--b--\r\n"

    try:
        r = httpx.post(proxy.base_url + "/v1/files", content=body(), timeout=30,
                       headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "1000-byte" in r.json()["error"]["message"]
    except httpx.TransportError:
        pass  # the server answered and closed while the client was still writing
    assert sent < 200


def test_bad_purpose_is_400(proxy: RunningProxy, standin: StandInServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        proxy.client().files.create(file=("report.pdf", REPORT, "application/pdf"), purpose="homework")
    error = openai_error(info.value)
    assert error["param"] == "purpose" and "`purpose` must be one of" in error["message"]
    assert "user_data" in error["message"]
    assert_still_serving(proxy, standin)


@pytest.mark.parametrize(("request_kw", "param", "words"), [
    ({"files": {"purpose": (None, "user_data")}}, "file", "`file` is required"),
    ({"files": {"purpose": (None, "user_data"), "file": (None, "not a file")}}, "file", "`file` is required"),
    ({"json": {"purpose": "user_data", "file": "JVBERi0="}}, None, "multipart/form-data"),
    ({"content": b"no boundary in sight", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
     None, "could not parse the multipart body"),
    ({"content": b"--xyz\r\n", "headers": {"content-type": "multipart/form-data"}}, None, "Missing boundary"),
], ids=["missing_file", "file_is_a_field", "json_body", "malformed_multipart", "no_boundary"])
def test_malformed_upload_request_is_400(proxy: RunningProxy, standin: StandInServer, request_kw: dict[str, Any],
                                         param: str | None, words: str) -> None:
    r = proxy.http().post("/v1/files", **request_kw)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"]
    assert_still_serving(proxy, standin)


@pytest.mark.parametrize(("file_data", "words"), [
    ("data:application/pdf;base64,@@@not base64!!", "invalid base64"),
    ("data:text/plain;base64,aGVsbG8=", "media type 'text/plain' is not supported"),
    ("data:application/pdf,%PDF-1.7", "not base64-encoded"),
    ("JVBERi0xLjcK", "must be a data URL"),
], ids=["bad_base64", "wrong_media_type", "not_base64", "not_a_data_url"])
def test_bad_inline_file_data_is_400(proxy: RunningProxy, standin: StandInServer, file_data: str,
                                     words: str) -> None:
    part = {"type": "file", "file": {"filename": "x.pdf", "file_data": file_data}}
    with pytest.raises(openai.BadRequestError) as info:
        ask(proxy, part)
    error = openai_error(info.value)
    assert error["param"] == "messages[0].content[0].file.file_data"
    assert words in error["message"]
    assert standin.state.requests == []
    assert_still_serving(proxy, standin)


def test_unknown_file_id_in_chat_is_404(proxy: RunningProxy, standin: StandInServer) -> None:
    for file_id in ("file-" + "A" * 24, "not-even-an-id", "../../etc/passwd"):
        with pytest.raises(openai.NotFoundError) as info:
            ask(proxy, file_part_by_id(file_id))
        error = openai_error(info.value)
        assert error["code"] == "file_not_found" and file_id in error["message"]
        assert error["param"] == "messages[0].content[0].file"
    r = proxy.http().get("/v1/files/file-" + "A" * 24)
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
    assert standin.state.requests == []
    assert_still_serving(proxy, standin)


@pytest.mark.parametrize("bad", ["yes", 1, None, [True]])
def test_a_dry_run_document_flag_must_be_a_boolean(proxy: RunningProxy, bad: Any) -> None:
    r = proxy.http().post("/v1/route", json={"model": "auto", "prompt": QUESTION, "document": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "document"
    assert proxy.http().post("/v1/route", json={"prompt": QUESTION, "document": True}).status_code == 200
