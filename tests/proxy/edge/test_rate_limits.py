"""Requests per minute per key on each backend (proxy/edge/limits.py): in process, a SQLite file shared by the
workers of one server, and Redis shared by replicas; and what happens when Redis is down."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from proxy.edge.limits import WINDOW, Limiter, LimitStoreDown, LocalWindow, RedisWindow, SqliteWindow
from tests.conftest import RunningProxy

LIMIT = 5


def _closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["local", "sqlite", "redis"])
def make_window(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Limiter]:
    """A factory of limiters that share one count (for local: the same object, one process's memory)."""
    if request.param == "local":
        local = LocalWindow(LIMIT)
        return lambda: local
    if request.param == "sqlite":
        return lambda: SqliteWindow(LIMIT, tmp_path / "limits.db")
    url = request.getfixturevalue("redis_url")
    return lambda: RedisWindow(LIMIT, url, failure="closed", timeout=2.0)


async def _hits(window: Limiter, who: str, n: int) -> list[float | None]:
    return [await window.hit(who) for _ in range(n)]


def test_the_limit_admits_exactly_that_many_per_key_then_says_how_long_to_wait(
        make_window: Callable[[], Limiter]) -> None:
    async def go() -> None:
        window = make_window()
        results = await _hits(window, "alice", LIMIT + 3)
        assert results[:LIMIT] == [None] * LIMIT
        assert all(r is not None and 0 < r <= WINDOW for r in results[LIMIT:])
        assert await window.hit("bob") is None  # another key has its own budget
        await window.close()
    asyncio.run(go())


def test_concurrent_requests_through_several_counters_never_pass_the_limit(
        make_window: Callable[[], Limiter]) -> None:
    """The check and the add are one atomic step: 40 requests at once through 4 counters sharing the store,
    each on its own thread and event loop as in separate processes (in process: 40 at once on one loop)."""
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        async def go() -> None:
            window = make_window()
            results = await asyncio.gather(*(window.hit("alice") for _ in range(n)))
            with lock:
                admitted.extend(r is None for r in results)
            if not isinstance(window, LocalWindow):
                await window.close()
        asyncio.run(go())

    if isinstance(make_window(), LocalWindow):
        worker(40)
    else:
        threads = [threading.Thread(target=worker, args=(10,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(admitted) == 40 and sum(admitted) == LIMIT


def test_requests_older_than_the_window_no_longer_count(redis_url: str, tmp_path: Path) -> None:
    """The window slides: entries written a window ago are trimmed (on the shared backends the log is data)."""
    async def go() -> None:
        import redis

        r = RedisWindow(LIMIT, redis_url, failure="closed", timeout=2.0)
        assert await _hits(r, "alice", LIMIT) == [None] * LIMIT
        assert await r.hit("alice") is not None
        client = redis.Redis.from_url(redis_url)
        (key,) = client.keys("route-llm:rpm:*")
        members = client.zrange(key, 0, -1)
        client.zadd(key, {m: 0 for m in members[:2]})  # two of them made long ago
        first, second, third = await _hits(r, "alice", 3)
        assert first is None and second is None and third is not None
        client.close()
        await r.close()

        s = SqliteWindow(LIMIT, tmp_path / "limits.db")
        assert await _hits(s, "alice", LIMIT) == [None] * LIMIT
        s._db.execute("UPDATE hits SET at = at - ? WHERE rowid IN (SELECT rowid FROM hits LIMIT 2)", (WINDOW + 1,))
        first, second, third = await _hits(s, "alice", 3)
        assert first is None and second is None and third is not None
        await s.close()
    asyncio.run(go())


def test_redis_keys_hold_a_hash_of_the_key_never_the_key(redis_url: str) -> None:
    async def go() -> None:
        r = RedisWindow(LIMIT, redis_url, failure="closed", timeout=2.0)
        await r.hit("sk-very-secret")
        await r.close()
    asyncio.run(go())
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.keys("*")]
    assert len(keys) == 1 and keys[0].startswith("route-llm:rpm:") and "secret" not in keys[0]
    assert 0 < client.pttl(keys[0]) <= WINDOW * 1000  # expires after a window without requests
    client.close()


def _store_errors(outcome: str) -> float:
    return REGISTRY.get_sample_value("route_llm_rate_limit_store_errors_total", {"outcome": outcome}) or 0.0


def _redis_client_installed() -> None:
    pytest.importorskip("redis", reason="the redis package is not installed (pip install -e '.[redis]')")


def test_redis_down_fails_open_by_counting_in_process(caplog: pytest.LogCaptureFixture) -> None:
    _redis_client_installed()
    before = _store_errors("allowed")

    async def go() -> list[float | None]:
        r = RedisWindow(2, f"redis://127.0.0.1:{_closed_port()}/0", failure="open", timeout=0.2)
        results = await _hits(r, "alice", 3)
        await r.close()
        return results

    results = asyncio.run(go())
    assert results[:2] == [None, None] and results[2] is not None  # the limit still holds, per process
    assert _store_errors("allowed") - before == 3
    assert "Redis at redis://127.0.0.1" in caplog.text


def test_redis_down_fails_closed_when_configured() -> None:
    _redis_client_installed()
    before = _store_errors("refused")

    async def go() -> None:
        r = RedisWindow(2, f"redis://127.0.0.1:{_closed_port()}/0", failure="closed", timeout=0.2)
        with pytest.raises(LimitStoreDown):
            await r.hit("alice")
        await r.close()

    asyncio.run(go())
    assert _store_errors("refused") - before == 1


@pytest.mark.parametrize("failure", ["open", "closed"])
def test_a_proxy_whose_redis_is_down_answers_200_or_503_never_500(make_proxy: Any, failure: str) -> None:
    _redis_client_installed()
    proxy: RunningProxy = make_proxy(server={"limit_requests_per_minute": 100, "redis_failure": failure,
                                             "redis_url": f"redis://127.0.0.1:{_closed_port()}/0",
                                             "timeout_redis": 0.2})
    with proxy.http() as http:
        statuses = [http.get("/v1/models").status_code for _ in range(4)]
        r = http.get("/v1/models")
        assert http.get("/health/live").status_code == 200  # unguarded paths never ask Redis
    if failure == "open":
        assert statuses == [200] * 4 and r.status_code == 200
    else:
        assert statuses == [503] * 4 and r.status_code == 503
        assert r.json()["error"]["code"] == "rate_limit_unavailable" and r.headers["retry-after"] == "1"


def test_two_proxies_on_one_redis_share_each_keys_limit(make_proxy: Any, redis_url: str) -> None:
    server = {"api_keys": ["k1", "k2"], "limit_requests_per_minute": 4, "redis_url": redis_url}
    a: RunningProxy = make_proxy(server=server)
    b: RunningProxy = make_proxy(server=server)
    k1 = {"authorization": "Bearer k1"}
    with a.http() as on_a, b.http() as on_b:
        statuses = [(on_a if i % 2 else on_b).get("/v1/models", headers=k1).status_code for i in range(6)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert on_a.get("/v1/models", headers={"authorization": "Bearer k2"}).status_code == 200


def test_a_broken_shared_count_file_lets_requests_through_counted(tmp_path: Path) -> None:
    window = SqliteWindow(2, tmp_path / "limits.db")
    window._db.execute("DROP TABLE hits")  # what a damaged or foreign file looks like to the query
    before = _store_errors("allowed")

    async def go() -> list[float | None]:
        return await _hits(window, "alice", 3)

    assert asyncio.run(go()) == [None, None, None]
    assert _store_errors("allowed") - before == 3
