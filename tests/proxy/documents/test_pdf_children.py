"""PDF extraction children die with the server, and a new server sweeps up any that did not."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy.documents.pdf import CHILD_PREFIX, sweep_orphans
from tests.conftest import ClientThread, wait_until
from tests.helpers import serve_process as _serve
from tests.helpers import wait_ready as _wait_ready
from tests.helpers import write_served_config as _write_config
from tests.proxy.pdfs import slow_pdf
from tests.standin import StandInServer, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")


def _named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name \
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # zombies are dead
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _wait_for(check: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False

@pytest.mark.slow

def test_sigkill_of_the_server_takes_its_extraction_children_with_it(tmp_path: Path,
                                                                     standin: StandInServer) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(_write_config(tmp_path, standin, documents={"timeout_extract": 120}), port, log)
    name = f"{CHILD_PREFIX}{proc.pid}"
    try:
        _wait_ready(proc, port, log)

        def upload() -> None:
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/files", timeout=60, data={"purpose": "user_data"},
                           files={"file": ("slow.pdf", slow_pdf(400_000), "application/pdf")})
            except httpx.TransportError:
                pass  # the server is killed under it

        threads = [ClientThread(upload) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: len(_named(name)) == 2, "both extractions started", timeout=90, clients=threads,
                   processes=[proc], log=log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_for(lambda: not _named(name), 20), f"children outlived the server: {_named(name)}"
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _fake_child(server: int) -> subprocess.Popen[bytes]:
    """A process that names itself like an extraction child of ``server`` and then waits."""
    code = ("import ctypes, sys, time; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0); "
            "print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, f"{CHILD_PREFIX}{server}"], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def test_start_up_sweep_kills_children_of_a_dead_server_only() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    orphan, kept = _fake_child(gone.pid), _fake_child(alive.pid)
    try:
        assert sweep_orphans() >= 1
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert kept.poll() is None
        assert sweep_orphans() == 0
    finally:
        for p in (orphan, kept, alive):
            if p.poll() is None:
                p.kill()
                p.wait()
