"""Request heads are bounded before anything else runs: bytes per request, headers per request, bytes being
received across all connections of a server process; for both of uvicorn's HTTP parsers.

Raw sockets play the flooding client (no HTTP client library sends an unbounded head).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.settings import settings_from_dict
from tests.conftest import RunningProxy, base_config, start_proxy, stop_proxy
from tests.helpers import read_raw_response as _read_response

PARSERS = ["httptools", "h11"]


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _start(router: Any, tmp: Path, parser: str, **server: Any) -> RunningProxy:
    # A long header deadline: what must close the flood is the size limit, not the clock.
    cfg = base_config(tmp, server={"timeout_header": 60, **server})
    return start_proxy(settings_from_dict(cfg), router, http=parser)


@pytest.fixture()
def default_proxy(router: Any, tmp_path: Path, parser: str) -> Iterator[RunningProxy]:
    proxy = _start(router, tmp_path, parser)
    yield proxy
    stop_proxy(proxy)


def _flood(port: int, line: bytes, seconds: float = 5) -> tuple[int, int]:
    """Send header lines as fast as the server takes them; the bytes sent before it stopped reading or closed,
    and the status it answered (0: none within ``seconds``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
    sock.settimeout(0.2)
    sent = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            try:
                sent += sock.send(line)
            except TimeoutError:  # the server stopped reading: see whether it answered
                break
            except (BrokenPipeError, ConnectionResetError):
                break
        status, _, body = _read_response(sock, timeout=5)
    finally:
        sock.close()
    return sent, status if status != 431 or json.loads(body)["error"]["code"] == "headers_too_large" else -1


def test_a_header_flood_gets_431_and_a_closed_socket_after_a_bounded_amount(default_proxy: RunningProxy) -> None:
    sent, status = _flood(default_proxy.port, b"x-filler: " + b"a" * 8000 + b"\r\n")
    assert status == 431
    # Everything beyond the 32 kB limit went to a closed socket or a kernel buffer, never to the parser.
    assert sent < 32_768 + 8 * 1024 * 1024
    # The server is unharmed.
    assert httpx.get(default_proxy.base_url + "/v1/models", timeout=10).status_code == 200


def test_one_endless_header_line_is_cut_at_the_limit(default_proxy: RunningProxy) -> None:
    # No CRLF ever: a parser that buffers a header until it is complete must not buffer this one.
    sock = socket.create_connection(("127.0.0.1", default_proxy.port), timeout=10)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nx-endless: ")
    try:
        for _ in range(16):
            sock.sendall(b"a" * 4096)
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, headers, body = _read_response(sock)
    sock.close()
    assert status == 431 and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "headers_too_large" and "32768 bytes" in error["message"]


def test_too_many_headers_get_431_naming_the_limit(default_proxy: RunningProxy) -> None:
    sock = socket.create_connection(("127.0.0.1", default_proxy.port), timeout=10)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(150))
                 + b"\r\n")
    status, headers, body = _read_response(sock)
    sock.close()
    assert status == 431 and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "headers_too_large" and "100 headers" in error["message"]
    # Just under both limits is fine.
    names = {f"x-h{i}": "v" * 330 for i in range(94)}  # with httpx's own 5: 99 headers, ~32 kB
    assert httpx.get(default_proxy.base_url + "/v1/models", headers=names, timeout=10).status_code == 200


def test_heads_in_progress_across_connections_share_one_budget(router: Any, tmp_path: Path, parser: str) -> None:
    proxy = _start(router, tmp_path, parser, limit_header_bytes=4096, limit_header_bytes_total=10_000)
    try:
        held = []
        for _ in range(3):  # 3 × 3,000 bytes of unfinished heads: within the 10,000 of the server
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nx-a: " + b"a" * 2970)
            held.append(sock)
        time.sleep(0.3)
        fourth = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        fourth.sendall(b"GET /v1/models HTTP/1.1\r\nx-a: " + b"a" * 2970)
        status, headers, body = _read_response(fourth)
        fourth.close()
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "overloaded"
        # Over the per-request limit on its own: 431.
        big = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        for sock in held:
            sock.close()
        time.sleep(0.3)
        big.sendall(b"GET /v1/models HTTP/1.1\r\nx-a: " + b"a" * 5000)
        status, _, _ = _read_response(big)
        big.close()
        assert status == 431
        # Once the unfinished heads are gone, their bytes are free again.
        assert httpx.get(proxy.base_url + "/v1/models", timeout=10).status_code == 200
    finally:
        stop_proxy(proxy)


@pytest.mark.parametrize("key,value", [("limit_header_bytes", 100), ("limit_header_bytes", None),
                                       ("limit_header_count", 0), ("limit_header_bytes_total", 1000)])
def test_header_limits_are_validated(tmp_path: Path, key: str, value: Any) -> None:
    from proxy.settings import ConfigError

    with pytest.raises(ConfigError, match=f"server.{key}"):
        settings_from_dict(base_config(tmp_path, server={key: value}))
