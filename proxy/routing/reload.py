"""Hot reload of the router model and the routing config, without dropping a request.

``kill -HUP <pid>`` and ``POST /admin/reload`` re-read config.yaml's ``router`` and ``aliases`` sections and
the model directory, load the new model, check it scores, and only then swap it in. The swap is one attribute
assignment (:attr:`Reloader.current`); each request pins the model, decider and settings that were current
when it arrived (``proxy.edge.admin.PinMiddleware`` copies them into the request's own state), so a request in flight
finishes on the model it started with, and a failed reload changes nothing.

With ``--workers N`` each worker holds its own model. The supervisor forwards SIGHUP to every worker
(:func:`reloading`), and a worker that took ``POST /admin/reload`` reloads itself first (so its
answer says whether the new model loads) and then signals the supervisor, so every worker swaps. The HTTP side
(the admin handler, the pinning middleware) is the edge's: ``proxy.edge.admin``.

The version a response reports (``x-route-llm-router-version``) is a short hash of the model directory's
files, so two directories with the same files are the same version whatever their router.json calls them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from proxy import metrics
from proxy.errors import ProxyError
from proxy.routing.decider import Decider
from proxy.settings import ConfigError, Settings, load_settings
from router import Router

log = logging.getLogger("route_llm")

VERSION_HEADER = "x-route-llm-router-version"
#: Prompts every candidate model must score (finite, in [0, 1]) before it may serve.
SELF_CHECK = ("Hi!", "Prove that there are infinitely many primes.", "def add(a, b):\n    return a + b")
#: Sections a reload takes over; the others need a restart (a reload says which of them changed).
RELOADED = ("router", "aliases")


def model_directory(model_dir: str | None) -> Path:
    """The directory ``router.model_dir`` names; None is the model shipped inside the package."""
    if model_dir is None:
        import router

        return Path(router.__file__).parent / "model"
    return Path(model_dir)


def model_version(directory: Path) -> str:
    """12 hex digits of a SHA-256 over the directory's file names and contents (the files a router reads)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Live:
    """What serves requests: replaced as a whole by a reload, never changed in place."""

    settings: Settings
    router: Router
    decider: Decider
    version: str


@dataclass
class ReloadReport:
    result: str  # one of metrics.RELOAD_RESULTS
    version: str  # the version serving after the reload
    previous_version: str
    model_dir: str
    trigger: str
    reason: str | None = None
    ignored: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def body(self) -> dict[str, Any]:
        return {"object": "reload", **dataclasses.asdict(self)}


class ReloadFailed(ProxyError):
    status_code = 500
    type = "server_error"
    code = "reload_failed"


def self_check(router: Router) -> None:
    """Raise ValueError unless the model scores a few fixed prompts as probabilities."""
    scores = router.score(list(SELF_CHECK))
    if len(scores) != len(SELF_CHECK) or not all(isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 1.0
                                                  for s in scores):
        raise ValueError(f"self-check failed: scores {scores!r} are not probabilities")


InfoLabels = Callable[["Live"], tuple[str, ...]]


def publish(live: Live, info_labels: InfoLabels, previous: Live | None = None) -> None:
    """Point the info gauges at ``live`` (the previous version's series drop to 0)."""
    if previous is not None:
        metrics.INFO.labels(*info_labels(previous)).set(0)
        metrics.ROUTER_INFO.labels(previous.version).set(0)
    metrics.INFO.labels(*info_labels(live)).set(1)
    metrics.ROUTER_INFO.labels(live.version).set(1)


def restart_only_changes(started: Settings, edited: Settings) -> list[str]:
    """The settings outside :data:`RELOADED` that differ between two readings of the file, named down to the
    key (``server.port``, ``upstream.retries``; a whole section where it is not a settings record)."""
    changed: list[str] = []
    for section in dataclasses.fields(Settings):
        if section.name in (*RELOADED, "source"):
            continue
        before, after = getattr(started, section.name), getattr(edited, section.name)
        if before == after:
            continue
        if dataclasses.is_dataclass(before) and type(before) is type(after):
            changed += [f"{section.name}.{f.name}" for f in dataclasses.fields(before)
                        if getattr(before, f.name) != getattr(after, f.name)]
        else:
            changed.append(section.name)
    return changed


class Reloader:
    """Holds the live model and config and replaces them, one reload at a time."""

    def __init__(self, live: Live, info_labels: InfoLabels) -> None:
        self.current = live
        self.info_labels = info_labels
        self._lock = asyncio.Lock()
        source = Path(live.settings.source)
        self.config_path = source if source.is_file() else None  # settings built in code (tests) have no file
        # The file as this process started from it: restart-only settings are compared with it, not with the
        # running values, which the command line's --host/--port override (that hid a server.port edit).
        self._started_from = self._file_settings() or live.settings

    def _file_settings(self) -> Settings | None:
        if self.config_path is None:
            return None
        try:
            return load_settings(self.config_path)
        except (ConfigError, OSError, ValueError):  # edited since serve read it: the running values stand in
            return None

    @classmethod
    def start(cls, settings: Settings, router: Router, decider: Decider, info_labels: InfoLabels) -> Reloader:
        live = Live(settings, router, decider, model_version(router.path))
        publish(live, info_labels)
        return cls(live, info_labels)

    def _read_settings(self) -> tuple[Settings, list[str]]:
        old = self.current.settings
        if self.config_path is None:
            return old, []
        new = load_settings(self.config_path)
        return dataclasses.replace(old, router=new.router, aliases=new.aliases), restart_only_changes(
            self._started_from, new)

    async def reload(self, trigger: str) -> ReloadReport:
        async with self._lock:
            started = time.perf_counter()
            old = self.current
            directory = model_directory(old.settings.router.model_dir)
            report = ReloadReport("failed", old.version, old.version, str(directory), trigger)
            try:
                settings, report.ignored = await run_in_threadpool(self._read_settings)
                directory = model_directory(settings.router.model_dir)
                report.model_dir = str(directory)
                if not directory.is_dir():
                    raise ValueError(f"{directory}: model directory not found")
                version = await run_in_threadpool(model_version, directory)
                if (version == old.version and settings.router == old.settings.router
                        and settings.aliases == old.settings.aliases):
                    report.result = "unchanged"
                else:
                    router = await run_in_threadpool(Router.load, directory, threads=settings.router.threads)
                    await run_in_threadpool(self_check, router)
                    decider = Decider(settings, router)
                    live = Live(settings, router, decider, version)
                    metrics.precreate(list(settings.aliases), [(t.name, m.name) for t, m in
                                                               zip(settings.models.tiers, settings.models.entries)])
                    self.current = live  # the swap: requests arriving from here on use the new model
                    publish(live, self.info_labels, old)
                    report.result, report.version = "ok", version
            except Exception as exc:  # any failure keeps the old model; the reason goes to the caller and the log
                known = isinstance(exc, (ConfigError, ValueError))
                report.reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
            report.seconds = round(time.perf_counter() - started, 3)
            metrics.RELOADS.labels(report.result).inc()
            if report.result == "failed":
                log.error("router reload (%s) failed, still serving %s: %s", trigger, old.version, report.reason)
            else:
                log.info("router reload (%s): %s, serving %s (was %s) from %s%s", trigger, report.result,
                         report.version, old.version, report.model_dir,
                         f"; changes to {', '.join(report.ignored)} need a restart" if report.ignored else "")
            return report

    def install_signal_handler(self) -> bool:
        """Reload on SIGHUP, when this worker runs the event loop in the main thread (not in tests' threads)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("SIGHUP")))
        return True

    @staticmethod
    def remove_signal_handler() -> None:
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
