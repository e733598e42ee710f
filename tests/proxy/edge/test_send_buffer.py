"""What a client that stops reading can make the proxy do: fill a send buffer of a bounded size, then wait.

The kernel grows a connection's send buffer while the other side's window is open (on loopback up to
``net.ipv4.tcp_wmem``'s 4 MB), and everything that fits was read from the upstream, parsed and serialised first:
20 clients that read one event of a fast 10 MB stream each had the worker parse about 80 MB for nobody, with every
core busy for seconds (issue 29 row 17: another key's routing p99 over 200 ms). ``server.send_buffer_bytes`` fixes
the buffer of every accepted connection, for both of uvicorn's HTTP parsers.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.settings import ConfigError, settings_from_dict
from tests.conftest import RunningProxy, base_config, start_proxy, stop_proxy
from tests.standin import Fault, StandInServer


def _send_buffers(proxy: RunningProxy) -> list[int]:
    """SO_SNDBUF of the server's side of each open connection."""
    sizes = []
    for connection in list(proxy.server.server_state.connections):
        sock = connection.transport.get_extra_info("socket")
        if sock is not None:
            sizes.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    return sizes


def _held_stream(proxy: RunningProxy, standin: StandInServer) -> list[int]:
    """Open a long fast stream, read one event, stop reading a while; the server's send buffers then."""
    standin.state.faults.append(Fault("long", events=3000))  # 30 MB: more than any buffer holds
    with httpx.Client(base_url=proxy.base_url, timeout=30) as http, http.stream("POST", "/v1/chat/completions", json={
            "model": "gemini-1.5-flash", "stream": True,
            "messages": [{"role": "user", "content": "a very long story"}]}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        time.sleep(1.5)  # the proxy passes on what the sockets take meanwhile
        return _send_buffers(proxy)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_client_that_stops_reading_gets_a_send_buffer_of_the_configured_size(
        tmp_path: Path, router: Any, standin: StandInServer, http: str) -> None:
    settings = settings_from_dict(base_config(tmp_path, server={"send_buffer_bytes": 65536}))
    proxy = start_proxy(settings, router, http=http)
    try:
        sizes = _held_stream(proxy, standin)
        assert sizes
        # Linux reports twice what was set (its bookkeeping); autotuned, this connection's reached megabytes.
        assert max(sizes) <= 2 * 65536, sizes
        # And the server keeps serving once the client left.
        assert httpx.get(proxy.base_url + "/v1/models", timeout=10).status_code == 200
    finally:
        stop_proxy(proxy)


def test_null_leaves_the_send_buffer_to_the_kernel(tmp_path: Path, router: Any, standin: StandInServer) -> None:
    settings = settings_from_dict(base_config(tmp_path, server={"send_buffer_bytes": None}))
    proxy = start_proxy(settings, router)
    try:
        # Autotuned while the client's window was open: past what the setting above allows. (This is what a
        # connection did before the setting; if a kernel stops growing buffers, this test says so.)
        assert max(_held_stream(proxy, standin)) > 2 * 65536
    finally:
        stop_proxy(proxy)


@pytest.mark.parametrize("value,says", [(0, "must be an integer of at least 4096 (or null"),
                                        (100, "must be an integer of at least 4096 (or null"),
                                        (-1, "must be an integer of at least 4096 (or null"),
                                        (True, "expected an integer, got True"),
                                        ("big", "expected an integer, got 'big'"),
                                        (1.5, "expected an integer, got 1.5")])
def test_send_buffer_bytes_is_validated(tmp_path: Path, value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from_dict(base_config(tmp_path, server={"send_buffer_bytes": value}))
    assert str(raised.value).startswith(f"server.send_buffer_bytes: {says}")
