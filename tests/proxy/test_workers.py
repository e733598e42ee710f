"""``route-llm serve --workers N``: metrics totals across worker processes, the private multiprocess
directory, logging in workers, and TCP_NODELAY on the socket the CLI binds itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy import cli, metrics
from proxy.settings import settings_from_dict
from tests.conftest import LOOPBACK_TLS, base_config
from tests.helpers import wait_for_workers as _wait_for_workers
from tests.standin import StandInServer, free_port

REQUESTS = 12
ROUTE_LLM = Path(sys.executable).with_name("route-llm")


def _write_config(tmp: Path, standin: StandInServer, **server: Any) -> Path:
    cfg = base_config(tmp, upstream={"warmup": False}, server=server)
    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=standin.base_url, api_key="test-upstream-key")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _post(base_url: str, i: int) -> int:
    with httpx.Client(base_url=base_url, timeout=30, verify=LOOPBACK_TLS) as http:  # a new connection each time
        r = http.post("/v1/chat/completions", json={"model": "auto" if i % 2 else "gemini-1.5-flash",
                                                   "messages": [{"role": "user", "content": f"question {i}"}]})
        return r.status_code

@pytest.mark.slow

def test_two_workers_report_the_total_of_all_requests(tmp_path: Path, standin: StandInServer) -> None:
    """Also: without Redis the requests-per-minute limit holds for the server as a whole, not per worker."""
    config = _write_config(tmp_path, standin, limit_requests_per_minute=REQUESTS + 3)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", TMPDIR=str(tmpdir))
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ROUTE_LLM), "serve", "--config", str(config), "--port", str(port),
                                 "--workers", "2"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_workers(proc, log, 2)
        [metrics_dir] = list(tmpdir.glob("route-llm-metrics-*"))  # private to this server, under its TMPDIR
        base_url = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(lambda i: _post(base_url, i), range(REQUESTS))) == [200] * REQUESTS
        text = httpx.get(f"{base_url}/metrics", timeout=30).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        total = sum(s.value for s in families["route_llm_requests"].samples if s.name == "route_llm_requests_total")
        assert total == REQUESTS
        assert len(standin.state.requests) == REQUESTS
        tokens = [s.value for s in families["route_llm_tokens"].samples if s.name == "route_llm_tokens_total"]
        assert sum(tokens) > 0
        [in_flight] = families["route_llm_requests_in_flight"].samples
        assert in_flight.value == 0 and "pid" not in in_flight.labels  # livesum: one series for the server
        [info] = families["route_llm_info"].samples
        assert info.labels["router_model"] and "pid" not in info.labels
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # one file per worker process
        # 6 more, each on a new connection (so on either worker): 3 fit in the server's limit, 3 get a 429.
        # Counted per worker, as before, 2 x 15 would have let all 6 through.
        [limits_dir] = list(tmpdir.glob("route-llm-limits-*"))
        with ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(lambda i: _post(base_url, i), range(6))) == [200] * 3 + [429] * 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert not metrics_dir.exists() and not limits_dir.exists()
    access = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"request_id"')]
    assert len(access) == REQUESTS + 3  # each worker writes its JSON access lines
    assert {a["status"] for a in access} == {"ok"}


def test_live_gauge_files_of_dead_workers_are_dropped(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    for name in (f"gauge_livesum_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db", f"counter_{dead.pid}.db"):
        (tmp_path / name).write_bytes(b"")
    metrics.forget_dead_workers(str(tmp_path))
    # The dead worker's in-flight count goes; its counters stay, as totals must.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"counter_{dead.pid}.db",
                                                                 f"gauge_livesum_{os.getpid()}.db"])


class _FakeMultiprocess:
    """Stands in for uvicorn's supervisor: records the metrics directory each server was given."""

    seen: list[tuple[str, list[str]]] = []
    fail = False

    def __init__(self, config: Any, sockets: list[socket.socket]) -> None:
        self.config = config

    def run(self) -> None:
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        self.seen.append((path, os.listdir(path)))
        Path(path, "counter_1.db").write_bytes(b"")  # what a worker would leave behind
        if self.fail:
            raise RuntimeError("worker start-up failed")

@pytest.mark.slow

def test_each_server_gets_a_fresh_private_metrics_dir_removed_on_exit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn.supervisors

    # serve() sets the variable in this process; set-then-delete makes monkeypatch restore its absence afterwards
    # (a bare delenv of an absent variable records nothing, and later in-process scrapes would look for the
    # removed directory).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.delenv("ROUTE_LLM_CONFIG", raising=False)
    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", _FakeMultiprocess)
    monkeypatch.setattr(_FakeMultiprocess, "seen", [])
    settings = settings_from_dict(base_config(tmp_path, server={"port": free_port()}))
    cli.serve(settings, workers=2)
    monkeypatch.setattr(_FakeMultiprocess, "fail", True)
    with pytest.raises(RuntimeError):
        cli.serve(settings.with_overrides(port=free_port()), workers=2)
    (first, first_files), (second, second_files) = _FakeMultiprocess.seen
    assert first != second  # two servers on one host never share (or wipe) each other's files
    assert first_files == [] and second_files == []  # created clean
    assert not Path(first).exists() and not Path(second).exists()  # removed, also after a failure


def _accepted_nodelay(listener: socket.socket) -> int:
    """TCP_NODELAY of a connection accepted by a stdlib asyncio server on ``listener``.

    The stdlib loop, not uvloop (which sets the option on every TCP socket): it is the loop whose rule
    (only when the listener's proto is IPPROTO_TCP) makes the trap.
    """

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        value = await asyncio.wait_for(accepted, 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return value

    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_multiworker_socket_gives_accepted_connections_tcp_nodelay() -> None:
    sock = cli._nodelay_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP and sock.type == socket.SOCK_STREAM
    assert sock.get_inheritable()  # handed to spawned workers
    assert _accepted_nodelay(sock) != 0


def test_socket_bound_the_uvicorn_way_lacks_tcp_nodelay() -> None:
    """The trap itself: protocol 0, as uvicorn's own pre-bind creates it, leaves Nagle on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    assert _accepted_nodelay(sock) == 0
