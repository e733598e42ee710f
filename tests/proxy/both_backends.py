"""Fixtures for a test module whose every test runs on both storage backends (SQLite and PostgreSQL).

Import them into the module: ``from tests.proxy.both_backends import *``; then its
``proxy`` (one per backend, shared by the module) and ``make_proxy`` (conftest's, on the module's backend) run on
each in turn.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from router import Router
from tests.conftest import BACKENDS, RunningProxy, backend_proxy

__all__ = ["backend", "proxy"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture(scope="module")
def proxy(backend: str, router: Router, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[RunningProxy]:
    yield from backend_proxy(backend, router, tmp_path_factory.mktemp("proxy"), request)
