"""The snippets of docs/clients-openai.md, run as printed (each in its own Python process) against a proxy with a
proxy key on the Gemini stand-in: a snippet that no longer works fails here, not in a reader's terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.settings import settings_from_dict
from router import Router
from tests.conftest import ROOT, RunningProxy, base_config, start_proxy, stop_proxy

PAGE = ROOT / "docs" / "clients-openai.md"
KEY = "docs-key"
_FENCE = re.compile(r'```python title="(?P<title>[^"]+)"\n(?P<code>.*?)```', re.S)


def snippets() -> dict[str, str]:
    return {m["title"]: m["code"] for m in _FENCE.finditer(PAGE.read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def proxy(router: Router, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    tmp: Path = tmp_path_factory.mktemp("docs")
    running = start_proxy(settings_from_dict(base_config(tmp, server={"api_keys": [KEY]})), router)
    yield running
    stop_proxy(running)


def run(proxy: RunningProxy, title: str, tmp_path: Path) -> str:
    script = tmp_path / title
    script.write_text(snippets()[title], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTHONPATH"))}
    env.update(ROUTE_LLM_URL=proxy.base_url + "/v1", ROUTE_LLM_KEY=KEY)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_page_has_the_three_snippets() -> None:
    assert set(snippets()) == {"chat.py", "responses.py", "weather_agent.py"}


def test_chat_snippet(proxy: RunningProxy, tmp_path: Path) -> None:
    out = run(proxy, "chat.py", tmp_path).splitlines()
    assert out[0].startswith("routed to gemini-1.5-") and out[1].startswith("answer from gemini-1.5-")


def test_responses_snippet_chains_lists_streams_and_deletes(proxy: RunningProxy, tmp_path: Path) -> None:
    out = run(proxy, "responses.py", tmp_path).splitlines()
    assert out[0].startswith("answer from gemini-1.5-")
    assert out[1:4] == ["input item: message user", "input item: message assistant", "input item: message user"]
    assert out[4].startswith("answer from gemini-1.5-") and out[5] == "True"


def test_agents_snippet_runs_the_tool_and_a_streamed_second_turn(proxy: RunningProxy, tmp_path: Path) -> None:
    out = run(proxy, "weather_agent.py", tmp_path).splitlines()
    assert out[0].startswith("answer from gemini-1.5-")
    assert out[1].startswith("answer from gemini-1.5-") and out[2] == out[1]  # the deltas, then final_output
