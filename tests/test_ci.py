"""`.ci/run` and the version report it prints before the tests (scripts/client_versions.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "client_versions.py"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_ci_prints_the_client_versions_before_the_tests() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    report = next(i for i, line in enumerate(lines) if line.startswith("python scripts/client_versions.py"))
    tests = next(i for i, line in enumerate(lines) if line.startswith("python -m pytest"))
    install = next(i for i, line in enumerate(lines) if line.startswith("pip install"))
    assert install < report < tests


def test_report_names_every_client_with_its_installed_version() -> None:
    from importlib import metadata

    out = _run()
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines()[1:])
    assert rows["openai"] == metadata.version("openai")  # installed by [dev]
    assert rows["litellm"] == metadata.version("litellm")
    lock = json.loads((ROOT / "tests" / "node" / "package-lock.json").read_text())
    assert rows["openai (Node, lockfile)"] == lock["packages"]["node_modules/openai"]["version"]
    assert {"langchain-openai", "anthropic", "openai-agents"} <= set(rows)


def test_an_absent_client_is_reported_as_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import client_versions
    finally:
        sys.path.remove(str(SCRIPT.parent))
    monkeypatch.setattr(client_versions, "PYTHON_CLIENTS", ("openai", "surely-not-a-route-llm-client"))
    assert dict(client_versions.python_versions())["surely-not-a-route-llm-client"] == "not installed"


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no lockfile at"),
    ("{not json", "unreadable lockfile"),
    (json.dumps({"packages": {"node_modules/other": {"version": "1"}}}), "openai is not in"),
    (json.dumps({"dependencies": {"openai": {"version": "4.2.0"}}}), "4.2.0"),  # lockfileVersion 1
])
def test_node_lockfile_problems_are_reported_not_raised(tmp_path: Path, content: str | None, expected: str) -> None:
    lockfile = tmp_path / "package-lock.json"
    if content is not None:
        lockfile.write_text(content)
    last = _run("--lockfile", str(lockfile)).splitlines()[-1]
    assert last.startswith("openai (Node, lockfile)") and expected in last


def test_every_cap_in_pyproject_is_a_documented_one() -> None:
    """The dependency policy (README): caps only where a major release is known to break us, each named there.

    The ``[train]`` extra is exempt: its exact pins reproduce the shipped model, as the README says.
    """
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml without a dependency")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]] + [r for extra, reqs in project["optional-dependencies"].items()
                                                  if extra != "train" for r in reqs]
    capped = {Requirement(r).name for r in requirements
              if any(spec.operator in ("<", "<=", "==", "~=", "===") for spec in Requirement(r).specifier)}
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Dependency policy")
    policy = readme[start:readme.index("\n## ", start)]  # up to the next section
    assert all(f"`{name}<" in policy for name in capped), policy
