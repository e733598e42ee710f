"""Streams that do not run to their end: cut at the shutdown deadline, or left by the client.

Both end with the status that really happened in the access log and metrics, never "ok"; a stream cut by
the server ends with an OpenAI-shaped error event and ``data: [DONE]``, as one broken by the upstream does.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.conftest import RunningProxy
from tests.helpers import serve_process as _serve
from tests.helpers import wait_ready as _wait_ready
from tests.helpers import write_served_config as _write_config
from tests.standin import Fault, StandInServer, free_port

MSG = [{"role": "user", "content": "tell me a long story"}]

@pytest.mark.slow

@pytest.mark.parametrize("workers", [1, 2])
def test_streams_at_the_shutdown_deadline_end_with_an_error_event_and_done(tmp_path: Path, standin: StandInServer,
                                                                           workers: int) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(_write_config(tmp_path, standin, server={"timeout_shutdown": 1}), port, log, workers=workers)
    results: dict[int, tuple[int, str]] = {}
    first_chunk = threading.Barrier(4)
    try:
        _wait_ready(proc, port, log)
        standin.state.faults.extend([Fault("slow_stream", seconds=4)] * 3)

        def stream(i: int) -> None:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                              json={"model": "gemini-1.5-flash", "messages": MSG, "stream": True}) as r:
                lines = r.iter_lines()
                seen = [next(lines)]
                first_chunk.wait(timeout=20)
                try:
                    seen += list(lines)
                except httpx.HTTPError as exc:  # what the issue saw: the body cut without an ending
                    seen.append(f"TRANSPORT ERROR {exc}")
                results[i] = (r.status_code, "\n".join(seen))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        first_chunk.wait(timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(results) == 3
    for status, body in results.values():
        events = [line for line in body.splitlines() if line]
        assert status == 200 and events[-1] == "data: [DONE]", body + "\n" + log.read_text()[-3000:]
        error = json.loads(events[-2][len("data: "):])["error"]
        assert error["code"] == "shutting_down" and set(error) == {"message", "type", "param", "code"}
        assert json.loads(events[0][len("data: "):])["object"] == "chat.completion.chunk"
    access = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"request_id"')]
    assert [a["status"] for a in access] == ["shutdown"] * 3, log.read_text()
    # One plain line per stream cut, not uvicorn's "Exception in ASGI application" with a traceback.
    assert log.read_text().count("cut at the shutdown deadline") == 3, log.read_text()
    # Each decision record was stored before the store closed.
    with sqlite3.connect(tmp_path / "files" / "feedback.db") as db:
        assert [row[0] for row in db.execute("SELECT status FROM decisions")] == ["shutdown"] * 3
    assert "Traceback" not in log.read_text() and "Exception in ASGI" not in log.read_text()


def _requests(status: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "route_llm_requests" for s in m.samples
               if s.name.endswith("_total") and s.labels["status"] == status)


@pytest.mark.parametrize("model", ["gemini-1.5-flash", "auto"])
def test_client_leaving_mid_stream_is_logged_as_disconnected(proxy: RunningProxy, standin: StandInServer,
                                                             caplog: Any, model: str) -> None:
    standin.state.faults.append(Fault("slow_stream", seconds=2))
    gone, ok = _requests("client_disconnected"), _requests("ok")
    with caplog.at_level("INFO", logger="route_llm.access"), httpx.Client(base_url=proxy.base_url) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": model, "messages": MSG, "stream": True}) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        deadline = time.monotonic() + 10
        while _requests("client_disconnected") == gone and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _requests("client_disconnected") == gone + 1 and _requests("ok") == ok
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "route_llm.access"]
    assert lines and lines[-1]["status"] == "client_disconnected"
