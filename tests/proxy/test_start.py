"""Starting route-llm as a new user does: from a built wheel, in an empty directory, with or without a Gemini
key. The wheel is built from this checkout (no build isolation, so no package index is needed) and run from
its unpacked contents in a subprocess, so the bundled config and model are read from the wheel, not the tree.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from click.testing import CliRunner
from starlette.testclient import TestClient

from proxy import cli
from proxy.app import create_app
from proxy.settings import settings_from_dict
from router import Router
from tests.conftest import ROOT, base_config
from tests.standin import free_port

START_TIMEOUT = 240  # seconds: the machine running the suite may be busy; not a performance bound


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = out.glob("route_llm-*.whl")
    unpacked = out / "unpacked"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    return unpacked


@pytest.mark.slow
def test_wheel_carries_the_default_config_and_the_router_model(wheel_dir: Path) -> None:
    packaged = wheel_dir / "proxy" / "config.yaml"
    assert packaged.is_file() and not packaged.is_symlink()
    assert packaged.read_text(encoding="utf-8") == (ROOT / "config.yaml").read_text(encoding="utf-8")
    assert (wheel_dir / "router" / "model" / "router.json").is_file()
    assert (wheel_dir / "proxy" / "demo" / "standin.py").is_file()  # `route-llm serve --demo` needs it


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int, wheel_dir: Path) -> None:
        self.wheel_dir = wheel_dir
        self.proc, self.port = proc, port
        self.lines: list[str] = []

    def wait_for(self, text: str) -> str:
        """Read stderr lines until one contains ``text``; return it."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                pytest.fail(f"route-llm serve exited ({self.proc.wait()}):\n{''.join(self.lines)[-3000:]}")
            self.lines.append(line)
            if text in line:
                return line
        pytest.fail(f"no {text!r} line in {START_TIMEOUT}s:\n{''.join(self.lines)[-3000:]}")


@pytest.fixture()
def demo_from_wheel(wheel_dir: Path, tmp_path: Path) -> Iterator[Served]:
    """``route-llm serve --demo`` from the unpacked wheel, in an empty directory, with no Gemini key."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("GEMINI_API_KEY", "GEMINI_API_BASE", "ROUTE_LLM_CONFIG", "PROMETHEUS_MULTIPROC_DIR")}
    env["PYTHONPATH"] = str(wheel_dir)
    port = free_port()
    code = "import sys, proxy; print('proxy from', proxy.__file__, file=sys.stderr, flush=True); " \
           "from proxy.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--demo",
                             "--port", str(port)], cwd=empty, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        yield Served(proc, port, wheel_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_serve_from_an_empty_directory_uses_the_bundled_config_and_says_ready_with_the_url(
        demo_from_wheel: Served) -> None:
    served = demo_from_wheel
    url = f"http://127.0.0.1:{served.port}/v1"
    assert str(served.wheel_dir / "proxy") in served.wait_for("proxy from")  # not this checkout's
    demo_line = served.wait_for("demo mode")
    assert "stand-in" in demo_line
    ready_line = served.wait_for("route-llm ready")
    assert f"ready at {url} " in ready_line
    # "ready" is said only once the server answers ready: asked right after the line, it must be 200.
    assert httpx.get(f"http://127.0.0.1:{served.port}/health/ready", timeout=30).status_code == 200
    assert not any("ready" in line for line in served.lines[:-1])
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}])
    answer = raw.parse()
    assert answer.choices[0].message.content.startswith(f"answer from {answer.model}")
    assert raw.headers["x-route-llm-model"] == answer.model in ("gemini-1.5-flash", "gemini-1.5-pro")
    assert client.models.retrieve("auto-quality").id == "auto-quality"  # an alias of the bundled config
    assert client.responses.create(model="auto", input="hi").status == "completed"


def test_demo_refuses_models_the_stand_in_cannot_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = base_config(tmp_path)
    cfg["models"]["strong"].update(model="openai/gpt-4o")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    monkeypatch.setattr(cli, "serve", lambda settings, **kw: pytest.fail("must not serve"))
    result = CliRunner().invoke(cli.main, ["serve", "--demo", "--config", str(config)])
    assert result.exit_code == cli.EXIT_CONFIG
    assert "models.strong is 'openai/gpt-4o'" in result.output


def test_standin_command_runs_the_bundled_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    monkeypatch.setattr("proxy.demo.standin.serve", lambda **kw: calls.append(kw))
    result = CliRunner().invoke(cli.main, ["standin", "--port", "8799", "--fault-rate", "0.1"])
    assert result.exit_code == 0, result.output
    assert calls == [{"host": "127.0.0.1", "port": 8799, "fault_rate": 0.1, "fault_mix": False}]
    assert "GEMINI_API_BASE=http://127.0.0.1:8799" in result.output


def test_missing_key_warning_names_the_variable_once_and_the_demo(tmp_path: Path, router: Router,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    cfg = base_config(tmp_path, upstream={"warmup": False})
    for tier in ("weak", "strong"):
        cfg["models"][tier]["api_key"] = "os.environ/GEMINI_API_KEY"
    with caplog.at_level(logging.WARNING, logger="route_llm"), \
            TestClient(create_app(settings_from_dict(cfg), router=router)) as client:
        r = client.post("/v1/chat/completions", json={"model": "gemini-1.5-flash",
                                                     "messages": [{"role": "user", "content": "hi"}]})
    warnings = [r.getMessage() for r in caplog.records if "no API key" in r.getMessage()]
    assert len(warnings) == 2  # one per tier
    for text in warnings:
        assert text.count("GEMINI_API_KEY") == 1 and "route-llm serve --demo" in text
    assert r.status_code == 503
    assert r.json()["error"]["message"].count("GEMINI_API_KEY") == 1


def test_a_served_app_freezes_its_start_up_heap_so_full_collections_skip_it(tmp_path: Path, router: Router) -> None:
    # Full collections walked every object of start-up (LiteLLM's modules and tables, ours, the vocabulary), about
    # 0.4 s with the GIL held each time; under requests that make many objects they came every few seconds and were
    # every other key's slowest moments (issue 29: 500 tools at the limits). Frozen once ready, they are skipped.
    import gc

    before = gc.get_freeze_count()
    settings = settings_from_dict(base_config(tmp_path, upstream={"warmup": False}))
    try:
        with TestClient(create_app(settings, router=router, freeze_heap=True)) as client:
            frozen = gc.get_freeze_count()
            assert client.get("/health/ready").status_code == 200
    finally:
        gc.unfreeze()  # this test process runs many servers: give its heap back to the collector
    assert frozen > before
    with TestClient(create_app(settings, router=router)):  # tests' in-process servers leave the heap alone
        assert gc.get_freeze_count() == 0
