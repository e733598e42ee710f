"""One version: the package metadata, `route-llm --version` and GET /health/live all report proxy.__version__."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
from click.testing import CliRunner

from proxy import __version__, cli
from tests.conftest import ROOT, RunningProxy


def test_the_version_is_written_once_and_the_metadata_reads_it() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib is Python 3.11+)
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.MULTILINE)
    assert not re.search(r'^version = "', pyproject, re.MULTILINE)
    assert 'version = {attr = "proxy.__version__"}' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+([abc]|rc)?\d*", __version__)
    try:
        installed = importlib.metadata.version("route-llm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("route-llm is not installed (pip install -e .): no metadata to compare")
    assert installed == __version__, "the installed metadata is stale: pip install -e . again"


def test_the_cli_reports_the_version() -> None:
    result = CliRunner().invoke(cli.main, ["--version"])
    assert result.exit_code == 0 and result.output == f"route-llm, version {__version__}\n"


def test_health_live_reports_the_version(proxy: RunningProxy) -> None:
    assert proxy.http().get("/health/live").json() == {"status": "ok", "version": __version__}


def test_the_changelog_has_an_entry_for_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {re.escape(__version__)}\b", text, re.MULTILINE)
    dates = re.findall(r"^### (\d{4}-\d{2}-\d{2})", text, re.MULTILINE)
    assert dates and dates == sorted(dates, reverse=True)  # dated entries, newest first
