"""The `slow` marker: registered, on the slow tests, kept by the default run and skipped by `-m "not slow"`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

SLOW = "tests/proxy/test_start.py::test_wheel_carries_the_default_config_and_the_router_model"
QUICK = "tests/proxy/test_start.py::test_standin_command_runs_the_bundled_stand_in"
RUNS = [(), ("-m", "not slow"), ("-m", "slow")]
SEPARATOR = "=== next collection ==="

# The three collections in one interpreter: each is pytest's own (a fresh config, the marker expression parsed and
# applied by pytest), and the second and third reuse the first's imports (the stand-in, LiteLLM, the router), which
# were two thirds of this test's time as three processes.
_COLLECT = f"""
import sys, pytest
for args in {RUNS!r}:
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests/proxy/test_start.py", *args])
    print({SEPARATOR!r}, int(code), flush=True)
"""


def _collected_each() -> list[set[str]]:
    out = subprocess.run([sys.executable, "-c", _COLLECT], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    chunks = out.stdout.split(SEPARATOR)[:-1]
    codes = [line.split()[0] for line in out.stdout.split(SEPARATOR)[1:]]
    assert len(chunks) == len(RUNS) and codes == ["0"] * len(RUNS), out.stdout[-2000:] + out.stderr[-2000:]
    return [{line for line in chunk.splitlines() if "::" in line} for chunk in chunks]


@pytest.mark.slow  # pytest collections in a new interpreter
def test_the_quick_run_skips_slow_tests_and_the_default_run_keeps_them() -> None:
    default, quick, slow = _collected_each()
    assert {SLOW, QUICK} <= default
    assert QUICK in quick and SLOW not in quick
    assert SLOW in slow and QUICK not in slow
