"""The official OpenAI Node SDK against route-llm: chat, streaming, models, Responses (create and stream) and an
error, through ``tests/node/client_check.mjs``.

The SDK is installed with ``npm ci`` from ``tests/node/package-lock.json`` into a temporary directory (npm's
cache makes repeats cheap). Without node and npm the test is skipped, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningProxy
from tests.standin import StandInServer

NODE_DIR = ROOT / "tests" / "node"
FLASH = "gemini-1.5-flash"


@pytest.fixture(scope="module")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Node SDK checks need them (CI installs Node)")
    project = tmp_path_factory.mktemp("node")
    for name in ("package.json", "package-lock.json", "client_check.mjs"):
        shutil.copy(NODE_DIR / name, project / name)
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=project,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"npm ci failed:\n{done.stderr[-3000:]}"
    return project


def test_node_sdk_chat_stream_models_and_responses(node_project: Path, proxy: RunningProxy,
                                                   standin: StandInServer) -> None:
    done = subprocess.run(["node", "client_check.mjs", proxy.base_url + "/v1"], cwd=node_project,
                          capture_output=True, text=True, timeout=120)  # below the suite's 300 s: a hang names itself
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["chat"] == {"model": FLASH, "content": report["chat"]["content"], "tier": "weak"}
    assert report["chat"]["content"].startswith(f"answer from {FLASH}")
    assert report["chat_stream"]["ids"] == 1 and report["chat_stream"]["content"].startswith(f"answer from {FLASH}")
    assert report["models"]["retrieved"] == "auto"
    assert {"auto", FLASH, "gemini-1.5-pro"} <= set(report["models"]["ids"])
    assert report["responses"]["status"] == "completed" and report["responses"]["model"] == FLASH
    assert report["responses"]["output_text"].startswith(f"answer from {FLASH}")
    stream = report["responses_stream"]
    assert (stream["first"], stream["last"]) == ("response.created", "response.completed"), stream
    assert stream["output_text"] == stream["deltas"] and stream["deltas"].startswith(f"answer from {FLASH}")
    assert report["bad_request"]["status"] == 400 and "previous_response_id" in report["bad_request"]["error"]
    assert standin.state.requests[-1].system_instruction is None  # the last call was the stream, no instructions
    assert any(r.system_instruction == "Be brief." for r in standin.state.requests)
