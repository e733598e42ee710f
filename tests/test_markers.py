"""The `slow` marker: registered, on the slow tests, kept by the default run and skipped by `-m "not slow"`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

SLOW = "tests/proxy/test_start.py::test_wheel_carries_the_default_config_and_the_router_model"
QUICK = "tests/proxy/test_start.py::test_standin_command_runs_the_bundled_stand_in"


def _collected(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "tests/proxy/test_start.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return {line for line in out.stdout.splitlines() if "::" in line}


@pytest.mark.slow  # three pytest start-ups
def test_the_quick_run_skips_slow_tests_and_the_default_run_keeps_them() -> None:
    default, quick, slow = _collected(), _collected("-m", "not slow"), _collected("-m", "slow")
    assert {SLOW, QUICK} <= default
    assert QUICK in quick and SLOW not in quick
    assert SLOW in slow and QUICK not in slow
