"""File downloads are streamed from the store in pieces: clients that ask for a large file and never read it
cost a piece each, not the file each."""

from __future__ import annotations

import socket
import time
import tracemalloc
from typing import Any

import pytest

from tests.conftest import BACKENDS, backend_proxy
from tests.proxy.pdfs import assemble

PADDED = assemble(b"BT /F1 12 Tf 72 720 Td (streamed to you) Tj ET\n%" + b"0" * 6_000_000 + b"\n")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def proxy(backend: str, router: Any, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Any:
    yield from backend_proxy(backend, router, tmp_path_factory.mktemp("downloads"), request)


def test_a_download_is_the_uploaded_bytes(proxy: Any) -> None:
    client = proxy.client()
    stored = client.files.create(file=("big.pdf", PADDED), purpose="user_data")
    assert client.files.content(stored.id).content == PADDED
    with proxy.http() as http:
        r = http.get(f"/v1/files/{stored.id}/content")
        assert r.headers["content-length"] == str(len(PADDED))
        assert http.get("/v1/files/file-nope/content").status_code == 404


def test_clients_that_never_read_a_download_cost_a_piece_each_not_the_file(proxy: Any) -> None:
    file_id = proxy.client().files.create(file=("big.pdf", PADDED), purpose="user_data").id
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        socks = []
        for _ in range(8):  # 8 × 6 MB: 48 MB if each download were held whole
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            socks.append(s)
        time.sleep(2.0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    for s in socks:
        assert s.recv(12) == b"HTTP/1.1 200"
        s.close()
    assert peak < 20_000_000, f"{peak / 1e6:.1f} MB held for 8 unread downloads"
