"""The tests' wait helpers (tests/conftest.py): a wait on a client that has already failed raises that client's
own error, and a wait on a server that has exited says so, instead of polling until the deadline."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ClientThread, until_upstream_has, wait_until
from tests.standin import StandInServer


class SDKBroke(TypeError):
    pass


def _broken_client() -> None:
    raise SDKBroke("Timeout must be an instance of httpx2.Timeout")


def test_wait_raises_the_error_of_a_client_that_died() -> None:
    client = ClientThread(_broken_client)
    client.start()
    with pytest.raises(SDKBroke, match="httpx2.Timeout"):
        wait_until(lambda: False, "the upstream to see the request", timeout=120, clients=[client])


def test_wait_fails_naming_a_server_that_exited(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text("boom: the config is broken\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(pytest.fail.Exception, match=r"(?s)the server exited with 3.*the config is broken"):
        wait_until(lambda: False, "readiness", timeout=120, processes=[proc], log=log)


def test_wait_returns_once_the_condition_holds_and_fails_at_its_deadline() -> None:
    calls: list[int] = []
    wait_until(lambda: calls.append(1) or len(calls) > 2, "three polls", timeout=120)
    assert len(calls) == 3
    with pytest.raises(pytest.fail.Exception, match="never: not within 0 s"):
        wait_until(lambda: False, "never", timeout=0)


def test_until_upstream_has_raises_the_first_client_tasks_error(standin: StandInServer) -> None:
    async def scenario() -> None:
        async def client() -> None:
            _broken_client()

        tasks = [asyncio.create_task(client()) for _ in range(3)]
        await asyncio.sleep(0)
        await until_upstream_has(standin, 3, tasks)

    with pytest.raises(SDKBroke):
        asyncio.run(scenario())
