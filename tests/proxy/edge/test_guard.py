"""The edge under slow clients: header and body deadlines, the arriving and in-flight budgets, per-key fairness.

Raw sockets play the slow clients (an HTTP client library would not send half a request); normal requests
from another key go through httpx and the official SDK.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.settings import settings_from_dict
from tests.conftest import base_config, start_proxy, stop_proxy
from tests.helpers import read_raw_response as _read_response
from tests.standin import Fault, StandInServer

MSG = [{"role": "user", "content": "hi"}]


def _rejected(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("route_llm_rejected_total", {"reason": reason}) or 0.0


def _open(port: int, key: str, *, first: bytes = b"{", length: int = 100_000) -> socket.socket:
    """A connection that sent complete headers and the start of a body it never finishes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
                 f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n".encode() + first)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_bodies_of_one_key_leave_other_keys_served(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["k-slow", "k-normal"], "limit_bodies_arriving_per_key": 4,
                               "limit_bodies_arriving": 50, "limit_in_flight": 6, "timeout_body": 3})
    before = _rejected("overloaded")
    held = [_open(proxy.port, "k-slow") for _ in range(4)]
    time.sleep(0.3)
    # The fifth body of the same key is refused at once, 503 with Retry-After, and the connection closed.
    extra = _open(proxy.port, "k-slow")
    status, headers, body = _read_response(extra)
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "overloaded"
    assert "still sending their body" in json.loads(body)["error"]["message"]
    assert _rejected("overloaded") - before == 1
    # Slow bodies do not count in flight (limit 6 here): another key is served, more than 6 times over.
    with httpx.Client(base_url=proxy.base_url, headers={"authorization": "Bearer k-normal"}, timeout=10) as http:
        for _ in range(8):
            assert http.get("/v1/models").status_code == 200
            assert http.post("/v1/route", json={"prompt": "hello"}).status_code == 200
    out = proxy.client(api_key="k-normal").chat.completions.create(model="gemini-1.5-flash", messages=MSG)
    assert out.choices[0].message.content
    for sock in held:
        sock.close()


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closed(make_proxy: Any) -> None:
    proxy = make_proxy(server={"timeout_body": 0.5})
    before = _rejected("body_timeout")
    sock = _open(proxy.port, "unused")
    status, headers, body = _read_response(sock)
    sock.close()
    assert status == 408 and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_timeout" and "0.5 s" in error["message"]
    assert _rejected("body_timeout") - before == 1
    # A body that arrives in time, in pieces, is still fine.
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    payload = json.dumps({"prompt": "hello"}).encode()
    sock.sendall(b"POST /v1/route HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n"
                 b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload[:5])
    time.sleep(0.1)
    sock.sendall(payload[5:])
    status, _, body = _read_response(sock)
    sock.close()
    assert status == 200 and json.loads(body)["object"] == "route.decision"


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_trickled_or_missing_headers_are_closed_at_the_header_deadline(router: Any, tmp_path: Path,
                                                                        http: str) -> None:
    settings = settings_from_dict(base_config(tmp_path, server={"timeout_header": 0.5, "timeout_keep_alive": 30}))
    proxy = start_proxy(settings, router, http=http)
    try:
        _check_header_deadline(proxy)
    finally:
        stop_proxy(proxy)


def _check_header_deadline(proxy: Any) -> None:
    silent = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    trickle = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    trickle.sendall(b"GET /v1/models HTTP/1.1\r\n")
    for _ in range(3):
        time.sleep(0.1)
        trickle.sendall(b"x-a: b\r\n")
    assert _closed_within(silent, 5) and _closed_within(trickle, 5)
    silent.close()
    trickle.close()
    # The deadline starts again after each response: a kept-alive connection that then trickles is closed too.
    kept = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    kept.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
    assert b"200 OK" in kept.recv(65536)
    kept.sendall(b"GET /health/live HTTP/1.1\r\n")
    assert _closed_within(kept, 5)
    kept.close()
    # Prompt clients are unaffected.
    assert httpx.get(proxy.base_url + "/health/live", timeout=10).status_code == 200


def test_one_key_cannot_take_every_in_flight_slot(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["k1", "k2"], "limit_in_flight_per_key": 2, "limit_in_flight": 10})
    standin.state.faults.extend([Fault("delay", seconds=1.0), Fault("delay", seconds=1.0)])

    async def go() -> tuple[Any, Any, list[Any]]:
        k1, k2 = proxy.async_client("k1"), proxy.async_client("k2")
        slow = [asyncio.create_task(k1.chat.completions.create(model="gemini-1.5-flash", messages=MSG))
                for _ in range(2)]
        await asyncio.sleep(0.4)
        try:
            await k1.chat.completions.create(model="gemini-1.5-flash", messages=MSG)
            third: Any = None
        except openai.APIStatusError as exc:
            third = exc
        other = await k2.chat.completions.create(model="gemini-1.5-flash", messages=MSG)
        done = await asyncio.gather(*slow)
        await k1.close()
        await k2.close()
        return third, other, done

    third, other, done = asyncio.run(go())
    assert third is not None and third.status_code == 503 and third.response.headers["retry-after"] == "1"
    assert "this key already has 2 requests in flight" in third.message
    assert other.choices[0].message.content
    assert all(d.choices[0].message.content for d in done)


def test_bodies_over_a_megabyte_are_buffered_on_disk_and_still_served(proxy: Any) -> None:
    prompt = "word " * 300_000  # 1.5 MB of JSON
    r = proxy.http().post("/v1/route", json={"prompt": prompt})
    assert r.status_code == 200 and r.json()["object"] == "route.decision"


@pytest.mark.parametrize("length", ["-1", "abc", "1" * 40])
def test_bad_content_length_is_a_clean_error(proxy: Any, length: str) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"POST /v1/route HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n{{}}".encode())
    status, _, _ = _read_response(sock)
    sock.close()
    assert 400 <= status < 500
