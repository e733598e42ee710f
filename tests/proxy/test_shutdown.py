"""``route-llm serve`` as a real process: graceful shutdown on SIGTERM, and refusing to start on a bad model.

These run the console script in a subprocess (signals, exit codes and stderr are what operators see), with
the in-process Gemini stand-in as the upstream.
"""

from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ClientThread, wait_until
from tests.helpers import serve_process as _serve
from tests.helpers import wait_ready as _wait_ready
from tests.helpers import write_served_config as _write_config
from tests.standin import Fault, StandInServer, free_port

MSG = [{"role": "user", "content": "take your time"}]


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True

@pytest.mark.slow

def test_sigterm_finishes_in_flight_requests_then_exits_0(tmp_path: Path, standin: StandInServer) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    key = "sk-proxy-must-not-be-logged"
    proc = _serve(_write_config(tmp_path, standin, server={"timeout_shutdown": 15, "api_keys": [key]}), port, log)
    auth = {"authorization": f"Bearer {key}"}
    try:
        _wait_ready(proc, port, log)
        standin.state.faults.extend([Fault("delay", seconds=1.5), Fault("delay", seconds=1.5)])
        results: dict[str, Any] = {}

        def plain() -> None:
            results["plain"] = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, headers=auth,
                                          json={"model": "gemini-1.5-flash", "messages": MSG})

        def streamed() -> None:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, headers=auth,
                              json={"model": "gemini-1.5-pro", "messages": MSG, "stream": True}) as r:
                results["stream"] = (r.status_code, r.read().decode())

        threads = [ClientThread(plain), ClientThread(streamed)]
        for t in threads:
            t.start()
        # both are now waiting on the slow upstream
        wait_until(lambda: len(standin.state.requests) >= 2, "both requests upstream", timeout=20, clients=threads,
                   processes=[proc], log=log)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert any(t.is_alive() for t in threads), "the slow requests finished before the test could check"
        assert _refuses_connections(port), "still accepting new connections after SIGTERM"
        for t in threads:
            t.join(timeout=30)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    plain_response = results["plain"]
    assert plain_response.status_code == 200, plain_response.text
    assert plain_response.json()["choices"][0]["message"]["content"].startswith("answer from gemini-1.5-flash")
    status, body = results["stream"]
    assert status == 200 and "answer from" in body and body.rstrip().endswith("data: [DONE]")
    assert '"error"' not in body
    assert _refuses_connections(port)
    assert "Traceback" not in log.read_text()
    assert key not in log.read_text() and all(key not in str(r.headers) for r in standin.state.requests)

@pytest.mark.slow

def test_requests_past_the_shutdown_deadline_get_a_503_and_the_process_still_exits_0(
        tmp_path: Path, standin: StandInServer) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(_write_config(tmp_path, standin, server={"timeout_shutdown": 1}), port, log)
    try:
        _wait_ready(proc, port, log)
        standin.state.faults.append(Fault("delay", seconds=90))
        results: dict[str, Any] = {}

        def slow() -> None:
            results["r"] = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                                      json={"model": "gemini-1.5-flash", "messages": MSG})

        thread = ClientThread(slow)
        thread.start()
        wait_until(lambda: bool(standin.state.requests), "the request upstream", timeout=20, clients=[thread],
                   processes=[proc], log=log)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        # The deadline, not the 90 s upstream delay; the margin is wide because a busy machine can take many
        # seconds to wind a Python process down.
        assert time.monotonic() - sent < 60
        thread.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = results["r"]
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "shutting_down"
    assert "POST /v1/chat/completions: cut at the shutdown deadline" in log.read_text()
    assert "Traceback" not in log.read_text() and "Exception in ASGI" not in log.read_text()


def _corrupt_model(tmp_path: Path) -> Path:
    """A model dir with valid metadata and tokenizer but an ONNX file that is not one."""
    from tests.router.conftest import SHIPPED_MODEL_DIR as shipped  # its path: no need to load it
    broken = tmp_path / "corrupt-model"
    # Not the 76 MB encoder (replaced below) nor the training rows (not read by a start).
    shutil.copytree(shipped, broken, ignore=shutil.ignore_patterns("model.onnx", "embedding.bin", "base_rows.npz"))
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    return broken


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "workers"), [("empty", 1), ("corrupt", 1), ("corrupt", 2)])
def test_unreadable_router_model_stops_start_up_naming_the_path(tmp_path: Path, standin: StandInServer,
                                                                 kind: str, workers: int) -> None:
    model_dir = tmp_path / "empty-model-dir" if kind == "empty" else _corrupt_model(tmp_path)
    model_dir.mkdir(exist_ok=True)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(_write_config(tmp_path, standin, router={"model_dir": str(model_dir)}), port, log,
                  workers=workers)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert code == 3, output  # EXIT_MODEL
    assert str(model_dir) in output and "cannot load the router model" in output
    assert "Traceback" not in output
    assert _refuses_connections(port)
