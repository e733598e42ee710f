"""Shared fixtures: the Gemini stand-in, the shipped router, and proxies on real sockets.

Environment set here, before LiteLLM is imported anywhere: the local price map (no download) and the
stand-in as LiteLLM's Gemini endpoint.
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
for _name in ("ROUTE_LLM_API_KEYS", "ROUTE_LLM_DATABASE_URL", "ROUTE_LLM_REDIS_URL", "ROUTE_LLM_LIMITS_DB"):
    os.environ.pop(_name, None)  # tests choose their own storage and limits

import asyncio  # noqa: E402
import ssl  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
import uvicorn  # noqa: E402

from tests.services import Services, fresh_redis, fresh_schema, start_services  # noqa: E402
from tests.standin import StandInServer, free_port  # noqa: E402

STANDIN = StandInServer().start()
os.environ["GEMINI_API_BASE"] = STANDIN.base_url
os.environ["GEMINI_API_KEY"] = "test-upstream-key"

from proxy.app import create_app  # noqa: E402
from proxy.edge.protocol import uvicorn_config  # noqa: E402
from proxy.settings import Settings, settings_from_dict  # noqa: E402
from router import Router  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def base_config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The test configuration: both tiers on the stand-in, fast retries, files under ``tmp``."""
    cfg: dict[str, Any] = {
        "models": {
            "weak": {"name": "gemini-1.5-flash", "model": "gemini/gemini-1.5-flash", "timeout": 5,
                     "input_cost_per_million": 0.075, "output_cost_per_million": 0.30},
            "strong": {"name": "gemini-1.5-pro", "model": "gemini/gemini-1.5-pro", "timeout": 5,
                       "input_cost_per_million": 1.25, "output_cost_per_million": 5.0},
        },
        "router": {"threshold": 0.5},
        "aliases": {"auto": {}, "auto-cheap": {"threshold": 0.99}, "auto-quality": {"threshold": 0.01}},
        # No circuit breaker unless a test asks for one: tests sharing a proxy count upstream calls exactly, and
        # failures injected by one test must not open a breaker for the next (tests/proxy/upstream/test_breaker.py).
        "upstream": {"retries": 1, "backoff_base": 0.01, "backoff_max": 0.05, "timeout_total": 10,
                     "breaker": {"failures": None}},
        "documents": {"storage_dir": str(tmp / "files"), "timeout_extract": 10},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Real PostgreSQL and Redis (tests/services.py); started on first use, skipped with a reason if absent."""
    yield from start_services()


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage suite runs once per backend: a SQLite directory, or an empty schema of the test Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'files'}"
    return fresh_schema(request.getfixturevalue("services").need("postgresql"))


@pytest.fixture(scope="module")
def backend() -> str:
    """The storage backend of ``proxy`` and ``make_proxy``. Modules whose tests should pass on both override it
    with ``params=BACKENDS`` and their ``proxy`` with :func:`backend_proxy` (module-scoped)."""
    return "sqlite"


def storage_section(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``storage`` config of a new proxy on ``backend``: the default, or a fresh schema of the test Postgres."""
    if backend == "sqlite":
        return {}
    return {"url": fresh_schema(request.getfixturevalue("services").need("postgresql"))}


def backend_proxy(backend: str, router: Router, tmp: Path, request: pytest.FixtureRequest) -> Iterator[RunningProxy]:
    running = start_proxy(settings_from_dict(base_config(tmp, storage=storage_section(backend, request))), router)
    yield running
    stop_proxy(running)


@pytest.fixture()
def redis_url(services: Services) -> str:
    """An emptied database of the test Redis."""
    return fresh_redis(services.need("redis"))


@pytest.fixture(scope="session")
def router() -> Router:
    return Router.load()


@pytest.fixture()
def standin() -> Iterator[StandInServer]:
    STANDIN.state.reset()
    yield STANDIN
    STANDIN.state.reset()


#: One TLS context for every client of a test proxy. httpx and the OpenAI SDK otherwise build one per client, reading
#: the CA bundle each time (40-100 ms: a third of the time of the tests that make a client per request); these
#: clients speak plain HTTP to loopback, so the context is never used for a handshake.
LOOPBACK_TLS = ssl.create_default_context()


@dataclass
class RunningProxy:
    settings: Settings
    port: int
    server: uvicorn.Server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = "unused", **kw: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0,
                             http_client=openai.DefaultHttpxClient(verify=LOOPBACK_TLS), **kw)

    def async_client(self, api_key: str = "unused") -> Any:
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0,
                                  http_client=openai.DefaultAsyncHttpxClient(verify=LOOPBACK_TLS))

    def http(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, verify=LOOPBACK_TLS, **kw)


def start_proxy(settings: Settings, router: Router, **uvicorn_kw: Any) -> RunningProxy:
    port = free_port()
    config = uvicorn_config(create_app(settings, router=router), settings, host="127.0.0.1", port=port,
                            log_level="warning", timeout_graceful_shutdown=5, **uvicorn_kw)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("proxy did not start")
        time.sleep(0.01)
    return RunningProxy(settings, port, server)


def stop_proxy(proxy: RunningProxy) -> None:
    proxy.server.should_exit = True


async def until_upstream_has(standin: StandInServer, count: int, clients: list[asyncio.Task[Any]],
                             timeout: float = 120) -> None:
    """Wait until the stand-in has seen ``count`` requests from ``clients``.

    A client task that ends first has failed (a client library that rejects our arguments fails every task at
    once): its own error is raised here, so the test names it within seconds instead of spinning until the
    suite's global timeout.
    """
    deadline = time.monotonic() + timeout
    while len(standin.state.requests) < count:
        for task in clients:
            if task.done():
                await _settle(clients)
                task.result()  # re-raises the client's error
                pytest.fail("a client finished before the upstream had seen every client's request")
        if time.monotonic() > deadline:
            pytest.fail(f"the upstream saw {len(standin.state.requests)} of {count} requests in {timeout:.0f} s")
        await asyncio.sleep(0.01)


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the clients still running and collect every outcome, so that no task's error goes unretrieved.

    An unretrieved one is logged when the task is garbage-collected; on CPython 3.11.7 that log, written from
    inside the collector, left the interpreter failing every later ``ast.parse`` ("SystemError: AST constructor
    recursion depth mismatch"), which broke pytest's own reporting of the failure.
    """
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ClientThread(threading.Thread):
    """A test's client running in the background that keeps the exception which ended it, so that a wait on it
    (:func:`wait_until`) fails at once naming that error, not at its deadline with a guess."""

    def __init__(self, target: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # kept for the waiting test to raise
            self.error = exc


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float, clients: Iterable[ClientThread] = (),
               processes: Iterable[subprocess.Popen[Any]] = (), log: Path | None = None) -> None:
    """Poll ``condition`` until it holds; fail at once when a client it waits on has died with an error (that
    error is raised) or a server process it waits on has exited (its exit status and ``log``'s tail are shown).
    """
    clients, processes = list(clients), list(processes)
    deadline = time.monotonic() + timeout
    while not condition():
        for client in clients:
            if client.error is not None:
                raise client.error
        for proc in processes:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
                pytest.fail(f"waiting for {what}: the server exited with {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def proxy(router: Router, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """One proxy with the default test configuration, shared by the tests that don't change it."""
    tmp = tmp_path_factory.mktemp("proxy")
    running = start_proxy(settings_from_dict(base_config(tmp)), router)
    yield running
    stop_proxy(running)


@pytest.fixture()
def make_proxy(router: Router, tmp_path: Path, backend: str,
               request: pytest.FixtureRequest) -> Iterator[Callable[..., RunningProxy]]:
    """Start a proxy with sections of the configuration replaced, e.g. ``make_proxy(server={...})``; on the
    module's storage ``backend`` (all proxies of one test share its database, as they share ``tmp_path``)."""
    started: list[RunningProxy] = []
    storage = storage_section(backend, request)

    def make(**sections: dict[str, Any]) -> RunningProxy:
        sections = {"storage": storage, **sections}
        running = start_proxy(settings_from_dict(base_config(tmp_path, **sections)), router)
        started.append(running)
        return running

    yield make
    for running in started:
        stop_proxy(running)
