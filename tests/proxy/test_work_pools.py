"""Each kind of blocking work has its own share of threads: a flood of feedback lookups (slow, say, on a busy
database) cannot take the threads that file requests, of this key or another, need."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from proxy.state.records import RecordStore
from tests.conftest import LOOPBACK_TLS, ClientThread, wait_until


def test_blocked_feedback_lookups_leave_file_requests_served(make_proxy: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = make_proxy()
    release = threading.Event()
    blocked: list[int] = []

    def slow_rate(self: RecordStore, *args: Any, **kwargs: Any) -> Any:
        blocked.append(1)
        release.wait(60)
        raise AssertionError("not reached in this test")

    monkeypatch.setattr(RecordStore, "rate", slow_rate)

    def rate() -> None:
        try:
            httpx.post(proxy.base_url + "/v1/feedback", json={"request_id": "req-unknown", "rating": "good"},
                       timeout=90, verify=LOOPBACK_TLS)
        except httpx.HTTPError:
            pass

    flood = [ClientThread(rate) for _ in range(60)]  # more than the 40 threads every kind of work used to share
    for client in flood:
        client.start()
    try:
        wait_until(lambda: len(blocked) >= 8, "feedback lookups blocked", timeout=60, clients=flood)
        time.sleep(1.0)  # let the rest of the flood queue up behind them
        with httpx.Client(base_url=proxy.base_url, timeout=15) as http:
            assert http.get("/v1/files").status_code == 200
            stored = http.post("/v1/files", files={"file": ("a.pdf", b"%PDF-1.4 not really")},
                               data={"purpose": "user_data"})
            assert stored.status_code in (200, 400), stored.text
        assert len(blocked) < 40  # the flood holds its own share of threads, not every thread
    finally:
        release.set()
        for client in flood:
            client.join(timeout=90)
