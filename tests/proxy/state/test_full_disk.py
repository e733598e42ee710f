"""A full disk under the file store: uploads get 507 in OpenAI's shape, and deleting files always works, so users
can free space. Tested on a real small filesystem (a 4 MB tmpfs), which needs root to mount."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.settings import settings_from_dict
from tests.conftest import RunningProxy, base_config, start_proxy, stop_proxy
from tests.proxy.pdfs import assemble

PDF = assemble(b"BT /F1 12 Tf 72 720 Td (a file to fill the disk) Tj ET\n%" + b"0" * 600_000 + b"\n")


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture()
def proxy_on_small_disk(small_disk: Path, router: Any, tmp_path: Path) -> Iterator[RunningProxy]:
    proxy = start_proxy(settings_from_dict(base_config(tmp_path, documents={"storage_dir": str(small_disk)})), router)
    yield proxy
    stop_proxy(proxy)


def test_full_disk_uploads_get_507_and_deletes_still_free_space(proxy_on_small_disk: RunningProxy) -> None:
    stored: list[str] = []
    with proxy_on_small_disk.http() as http:
        for _ in range(12):  # 12 × 0.6 MB: more than the 4 MB disk holds
            r = http.post("/v1/files", files={"file": ("fill.pdf", PDF)}, data={"purpose": "user_data"})
            if r.status_code != 200:
                break
            stored.append(r.json()["id"])
        assert r.status_code == 507, r.text[:300]
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "insufficient_storage"
        assert stored, "the disk should have held a few files"
        # Every file can be deleted, the disk being full.
        for file_id in stored:
            assert http.delete(f"/v1/files/{file_id}").status_code == 200
        assert http.get("/v1/files").json()["data"] == []
        # With the space back, uploads work again, and nothing else was harmed.
        again = http.post("/v1/files", files={"file": ("again.pdf", PDF)}, data={"purpose": "user_data"})
        assert again.status_code == 200, again.text[:300]
        assert http.get("/v1/models").status_code == 200
