"""The Files API's list parameters, the per-key storage quota, filenames, and uploads kept on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningProxy
from tests.helpers import REPORT, upload
from tests.proxy.both_backends import *  # noqa: F403 (fixtures: backend, proxy)
from tests.proxy.pdfs import pdf_with_pages


def _storage(proxy: RunningProxy) -> Path:
    return Path(proxy.settings.documents.storage_dir) / "blobs"


def test_list_pages_with_limit_after_and_order(make_proxy: Any) -> None:
    proxy = make_proxy()
    client = proxy.client()
    ids = [upload(client, pdf_with_pages([f"file {i}"]), f"f{i}.pdf").id for i in range(5)]
    newest_first = ids[::-1]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2] and page.has_more
    assert [f.id for f in client.files.list(limit=2)] == newest_first  # the SDK follows `after` page by page
    assert [f.id for f in client.files.list(limit=3, order="asc")] == ids
    after = client.files.list(limit=10, after=ids[3])
    assert [f.id for f in after.data] == newest_first[2:] and not after.has_more
    raw = proxy.http().get("/v1/files", params={"limit": 5}).json()
    assert raw["first_id"] == ids[-1] and raw["last_id"] == ids[0] and raw["has_more"] is False
    assert proxy.http().get("/v1/files", params={"after": ids[0]}).json() == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "10001"}, "limit"), ({"limit": "two"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"limit": ""}, "limit"), ({"order": "sideways"}, "order"),
    ({"order": "DESC"}, "order"), ({"after": "file-doesnotexist000000000"}, "after"), ({"after": "x" * 5000}, "after"),
])
def test_list_rejects_bad_parameters_with_a_400(proxy: RunningProxy, params: dict[str, str], param: str) -> None:
    r = proxy.http().get("/v1/files", params=params)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_storage_quota_is_per_key_and_freed_by_delete(make_proxy: Any) -> None:
    proxy = make_proxy(server={"api_keys": ["k1", "k2"]}, documents={"limit_storage_bytes": 2 * len(REPORT) + 10})
    k1, k2 = proxy.client(api_key="k1"), proxy.client(api_key="k2")
    first = upload(k1)
    upload(k1)
    with pytest.raises(openai.APIStatusError) as info:
        upload(k1)
    assert info.value.status_code == 413
    error = info.value.response.json()["error"]
    assert error["code"] == "storage_quota_exceeded" and "DELETE /v1/files" in error["message"]
    assert upload(k2).id  # another key has its own quota
    k1.files.delete(first.id)
    assert upload(k1).id
    assert not list(_storage(proxy).glob("*.partial"))


@pytest.mark.parametrize("length", [256, 5000])
def test_overlong_filename_is_a_clear_400(proxy: RunningProxy, length: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        upload(proxy.client(), REPORT, "a" * (length - 4) + ".pdf")
    error = info.value.response.json()["error"]
    assert error["code"] == "filename_too_long" and "255" in error["message"] and error["param"] == "file"


def test_filename_of_255_characters_is_kept_whole(proxy: RunningProxy) -> None:
    name = "b" * 251 + ".pdf"
    assert upload(proxy.client(), REPORT, name).filename == name


def test_refused_uploads_leave_no_partial_file(proxy: RunningProxy, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("the spool directory is private to the process on Postgres (the same code spools both)")
    with pytest.raises(openai.BadRequestError):
        upload(proxy.client(), b"not a pdf at all" * 100_000, "big.txt")  # 1.6 MB: spooled to disk, then refused
    assert not list(_storage(proxy).glob("*.partial"))
    r = httpx.post(proxy.base_url + "/v1/files", files={"file": ("x.pdf", REPORT)}, data={"purpose": "nope"})
    assert r.status_code == 400 and not list(_storage(proxy).glob("*.partial"))
