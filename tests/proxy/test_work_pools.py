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


def test_the_cpu_lane_serves_waiting_parties_in_turn_one_at_a_time() -> None:
    # One lane per worker for GIL-holding work (parsing big bodies, LiteLLM's builds): one party's pile of such
    # requests must cost another party's one request a single turn, not the pile, and a cancelled waiter must
    # not keep the lane.
    import asyncio

    from proxy import pools

    order: list[str] = []
    running = [0, 0]  # now, most

    def work(name: str) -> None:
        running[0] += 1
        running[1] = max(running)
        time.sleep(0.02)
        order.append(name)
        running[0] -= 1

    async def job(party: str, name: str) -> None:
        pools.PARTY.set(party)
        await pools.run("cpu", work, name)

    async def main() -> None:
        tasks = [asyncio.create_task(job("a", f"a{i}")) for i in range(4)]
        await asyncio.sleep(0.005)  # a0 runs, a1-a3 wait
        doomed = asyncio.create_task(job("c", "c0"))
        tasks.append(asyncio.create_task(job("b", "b0")))
        await asyncio.sleep(0.005)
        doomed.cancel()
        await asyncio.gather(*tasks)
        await asyncio.gather(doomed, return_exceptions=True)
        await asyncio.wait_for(pools.run("cpu", work, "after"), 5)  # the lane was given back

    asyncio.run(main())
    assert order == ["a0", "b0", "a1", "a2", "a3", "after"]
    assert running[1] == 1
