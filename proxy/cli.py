"""The ``route-llm`` command. Each subcommand parses arguments and calls a plain function."""

from __future__ import annotations

import copy
import gc
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from proxy import __version__
from proxy.settings import BREAKER_DB_ENV, LIMITS_DB_ENV, ConfigError, Settings, load_settings, tier_key

if TYPE_CHECKING:
    from proxy.standin import StandInServer

log = logging.getLogger("route_llm")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # also click's usage-error code: the command line or config is wrong
EXIT_MODEL = 3  # the router model could not be loaded
EXIT_INPUT = 4  # bad input data for score / calibrate
EXIT_NOT_SERVED = 6  # check: the provider does not serve a configured tier's model
EXIT_UNCHECKED = 7  # check: a Gemini tier could not be checked (no key, provider unreachable, key refused)
# Seconds a server may take, past server.timeout_shutdown, to close its stores and exit before it exits by force.
SHUTDOWN_SLACK = 10


def _load(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        click.echo(f"route-llm: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _router(model_dir: str | None, threads: int = 1) -> Any:
    from router import ModelLoadError, Router

    try:
        return Router.load(model_dir, threads=threads)
    except ModelLoadError as exc:
        click.echo(f"route-llm: cannot load the router model: {exc}", err=True)
        sys.exit(EXIT_MODEL)


_CHECK_MODEL = """
import sys
from router import ModelLoadError, Router
try:
    Router.load(sys.argv[1] or None)
except ModelLoadError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def _check_model_in_subprocess(model_dir: str | None) -> None:
    """Multi-worker mode: each worker loads its own model, so the supervisor only checks that it loads,
    in a throwaway process; loaded here it would hold ~100 MB for the server's lifetime."""
    done = subprocess.run([sys.executable, "-c", _CHECK_MODEL, model_dir or ""], capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        click.echo(f"route-llm: cannot load the router model: {reason}", err=True)
        sys.exit(EXIT_MODEL)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _nodelay_socket(host: str, port: int) -> socket.socket:
    """A listening socket created with IPPROTO_TCP, for multi-worker mode.

    uvicorn pre-binds with ``socket.socket(family, SOCK_STREAM)`` (protocol 0); asyncio only sets
    TCP_NODELAY on accepted sockets when the listener's proto is IPPROTO_TCP, so every small response
    waited for Nagle + delayed ACK (~40 ms). Binding it ourselves with the protocol named avoids that.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _log_config() -> dict[str, Any]:
    """uvicorn's logging plus ours (JSON access lines, warnings) as plain lines on stderr.

    Handed to uvicorn rather than applied here, because uvicorn applies it again in every worker it
    spawns: a spawned worker starts with a bare interpreter and would otherwise drop INFO records.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["route_llm"] = {"format": "%(message)s"}
    config["handlers"]["route_llm"] = {"class": "logging.StreamHandler", "formatter": "route_llm",
                                       "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["route_llm"], "level": "WARNING"}  # libraries: warnings and up
    config["loggers"]["route_llm"] = {"level": "INFO"}
    return config


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def public_url(host: str, port: int) -> str:
    """The base URL clients should use: a wildcard bind is reached on loopback from this machine."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://{_url_host(host)}:{port}/v1"


def bounded_server(config: Any, within: float) -> Any:
    """uvicorn's Server, which exits by force ``within`` seconds after the first SIGTERM or SIGINT.

    uvicorn bounds the wait for requests (``timeout_graceful_shutdown``) but not what follows: the
    lifespan's shutdown, threads still running (asyncio joins its thread pool without a limit) and the
    interpreter's exit. An orchestrator that is kept waiting sends SIGKILL; exiting by ourselves first says why.
    """
    import uvicorn

    class BoundedServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:  # the first signal starts the clock
                timer = threading.Timer(within, _exit_now, args=(within,))
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    return BoundedServer(config)


def _exit_now(within: float) -> None:
    log.error("route-llm: still shutting down %.0f s after the signal (server.timeout_shutdown + %d s); exiting now",
              within, SHUTDOWN_SLACK)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_FAILURE)


def announce_when_ready(host: str, port: int, started: float) -> threading.Thread:
    """Log "ready" with the URL once ``/health/ready`` answers 200 on the listening socket.

    The app's lifespan finishes before uvicorn binds (one worker) and each worker has its own (several), so
    only asking the server itself tells when a client would be served. A daemon thread: it dies with the
    process if start-up fails.
    """
    base = public_url(host, port)
    probe = base.removesuffix("/v1") + "/health/ready"

    def poll() -> None:
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=2) as answer:
                    info = json.loads(answer.read())
                    log.info("route-llm ready at %s (router %s, %.1fs after start)", base,
                             info.get("router_model"), time.monotonic() - started)
                    return
            except (OSError, ValueError):  # not listening yet, or 503 "starting" (HTTPError is an OSError)
                time.sleep(0.1)

    thread = threading.Thread(target=poll, name="route-llm-ready", daemon=True)
    thread.start()
    return thread


def serve(settings: Settings, *, workers: int = 1, config_path: str | None = None) -> None:
    """Run the proxy with uvicorn; with several workers, metrics go through a private multiprocess dir."""
    import uvicorn

    started = time.monotonic()
    host, port = settings.server.host, settings.server.port
    announce_when_ready(host, port, started)
    from proxy.upstream.catalog import start_check_thread

    start_check_thread(settings)  # here, in the one process that starts the workers: once per server
    # Load the model before uvicorn: a bad model dir then stops start-up with a message naming the path
    # and EXIT_MODEL, not as a traceback from the lifespan.
    if workers <= 1:
        router = _router(settings.router.model_dir, settings.router.threads)
        from proxy.app import create_app

        # After a graceful shutdown uvicorn re-raises SIGTERM under the handler it found; with the default
        # one the process then dies by the signal (status -15). A no-op handler makes it exit 0 instead.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        from proxy.edge.protocol import uvicorn_config

        config = uvicorn_config(create_app(settings, router=router, freeze_heap=True), settings, host=host, port=port,
                                log_level="warning", log_config=_log_config(), access_log=False)
        bounded_server(config, settings.server.timeout_shutdown + SHUTDOWN_SLACK).run()
        # What is left is the interpreter's own exit, whose final garbage collection walks every object the
        # server ever made: seconds on a busy machine, a minute after a day of traffic. The OS frees it all
        # anyway, so the collector is told to leave the heap alone.
        gc.freeze()
        return
    _check_model_in_subprocess(settings.router.model_dir)
    # Workers rebuild the app from the config file (uvicorn needs an import string); the socket is ours.
    metrics_dir = tempfile.mkdtemp(prefix="route-llm-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # Without Redis, the workers count requests per minute in one shared file, so the limit holds for the
    # server as a whole (proxy.edge.limits); its directory is private to this server, like the metrics one
    # (not the same one: the metrics collector reads every *.db file there).
    limits_dir = tempfile.mkdtemp(prefix="route-llm-limits-")
    os.environ[LIMITS_DB_ENV] = str(Path(limits_dir) / "limits.db")
    os.environ[BREAKER_DB_ENV] = str(Path(limits_dir) / "breaker.db")  # the tiers' breakers, one for the server
    if config_path:
        os.environ["ROUTE_LLM_CONFIG"] = str(Path(config_path).resolve())
    sock: socket.socket | None = None
    try:  # the directory goes away however this ends, a failed bind included
        sock = _nodelay_socket(host, port)
        from proxy.edge.protocol import uvicorn_config

        config = uvicorn_config("proxy.app:app_from_env", settings, factory=True, workers=workers,
                                log_level="warning", log_config=_log_config(), access_log=False)
        import uvicorn.supervisors

        from proxy.routing.supervisor import SUPERVISOR_ENV, reloading

        # Workers inherit this: one that takes POST /admin/reload signals the supervisor to reload them all.
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
        reloading(uvicorn.supervisors.Multiprocess)(config, sockets=[sock]).run()
    finally:
        if sock is not None:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(limits_dir, ignore_errors=True)
        os.environ.pop(BREAKER_DB_ENV, None)  # names a file in the directory just removed


@click.group()
@click.version_option(__version__, prog_name="route-llm")
def main() -> None:
    """route-llm: an OpenAI-compatible proxy that routes each request to a weak or a strong model."""
    # LiteLLM downloads its price list at import unless told otherwise; a proxy must not depend on that.
    # Set here, before any subcommand imports LiteLLM, and inherited by worker processes.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@main.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config.yaml to use")
@click.option("--host", help="bind address (default from config: 127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535), help="port (default from config: 8000)")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--allow-unauthenticated", is_flag=True,
              help="allow a non-loopback bind without proxy keys (anyone who reaches it spends your quota)")
@click.option("--demo", is_flag=True,
              help="no Gemini key needed: both models answer from a built-in Gemini stand-in (fixed text, not a "
                   "model); routing, headers and metrics are real")
def serve_cmd(config_path: str | None, host: str | None, port: int | None, workers: int,
              allow_unauthenticated: bool, demo: bool) -> None:
    """Run the proxy."""
    ignore_early_hangup()
    settings = _load(config_path).with_overrides(host=host, port=port)
    if not is_loopback(settings.server.host) and not settings.all_api_keys() and not allow_unauthenticated:
        click.echo(f"route-llm: refusing to listen on {settings.server.host} without proxy keys: set "
                   "server.api_keys or ROUTE_LLM_API_KEYS, or pass --allow-unauthenticated", err=True)
        sys.exit(EXIT_CONFIG)
    if demo:
        try:
            url = start_demo_upstream(settings).base_url
        except ConfigError as exc:
            click.echo(f"route-llm: --demo: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        click.echo(f"route-llm: demo mode: both models answer from the built-in Gemini stand-in at {url} "
                   "(a fixed text, not a model); routing decisions, headers and metrics are real", err=True)
    serve(settings, workers=workers, config_path=config_path or settings.source)


def ignore_early_hangup() -> None:
    """Keep a SIGHUP that arrives during start-up from killing the server (its default action).

    Reload on SIGHUP is installed only once there is something to reload: by the lifespan (one worker) or by
    uvicorn's supervisor (``--workers N``). Before that the process spends seconds loading the model and
    importing LiteLLM; this handler, installed first, logs the signal and drops it rather than queue a reload
    of a server that has not started (a sender that wants one sends it again once the server is ready).
    """

    def early(signum: int, frame: object) -> None:
        log.warning("route-llm: SIGHUP during start-up ignored (reload on SIGHUP starts once the server is ready)")

    signal.signal(signal.SIGHUP, early)


def start_demo_upstream(settings: Settings) -> StandInServer:
    """Start the Gemini stand-in in this process and point LiteLLM's Gemini provider at it.

    Through the environment (``GEMINI_API_BASE``, ``GEMINI_API_KEY``) rather than the settings, because
    ``--workers`` processes rebuild their settings from the config file but inherit the environment. A real
    key in the environment is replaced, so it is not sent anywhere in demo mode. The stand-in keeps no request
    (its log is for tests): a demo server would otherwise hold every body it was sent.
    """
    for tier, m in zip(settings.models.tiers, settings.models.entries):
        if not m.model.startswith("gemini/") or m.api_base is not None:
            where = " with an api_base" if m.api_base else ""
            raise ConfigError(f"{tier_key(settings, tier)} is {m.model!r}{where}; the stand-in speaks the Gemini API, "
                              "so the demo needs gemini/ models without api_base")
    from proxy.demo.standin import StandInServer

    standin = StandInServer(record=False).start()
    os.environ["GEMINI_API_BASE"] = standin.base_url
    os.environ["GEMINI_API_KEY"] = "route-llm-demo"
    return standin


@main.command("standin")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--fault-rate", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="share of calls that fail (503 unless --fault-mix)")
@click.option("--fault-mix", is_flag=True,
              help="random faults of every kind (503, 500, 429, dropped connection, broken stream, delay)")
def standin_cmd(host: str, port: int, fault_rate: float, fault_mix: bool) -> None:
    """Run the Gemini-API stand-in (fixed answers) to try route-llm, or test it, without a Gemini key."""
    from proxy.demo.standin import serve as serve_standin

    click.echo(f"route-llm standin: Gemini API stand-in on http://{_url_host(host)}:{port}; point route-llm at "
               f"it with GEMINI_API_BASE=http://{_url_host(host)}:{port} GEMINI_API_KEY=any", err=True)
    serve_standin(host=host, port=port, fault_rate=fault_rate, fault_mix=fault_mix)


@main.command("check")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--timeout", type=click.FloatRange(0.1, 600.0), default=None,
              help="seconds to wait for the provider's model list (default: upstream.timeout_check)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per tier instead of lines for a person")
def check_cmd(config_path: str | None, timeout: float | None, as_json: bool) -> None:
    """Ask the provider which models it serves and compare each tier's model (exit 6: a tier is not served)."""
    from proxy.upstream.catalog import check_tiers, describe, not_served

    settings = _load(config_path)
    checks = check_tiers(settings, timeout=timeout or settings.upstream.timeout_check)
    for c in checks:
        if as_json:
            click.echo(json.dumps({"tier": c.tier.name, "key": c.key, "model": c.model, "status": c.status,
                                   "nearest": c.nearest, "note": c.note or None}))
        else:
            click.echo(describe(c))
    missing = not_served(checks)
    if missing:
        click.echo(f"route-llm check: change {', '.join(c.key for c in missing)} in {settings.source} (with its "
                   "prices, or drop them: LiteLLM prices current Gemini models), or start from "
                   "deploy/config.current-gemini.yaml", err=True)
        sys.exit(EXIT_NOT_SERVED)
    if any(c.status == "unknown" for c in checks):
        sys.exit(EXIT_UNCHECKED)


@main.command("route")
@click.argument("text")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", default=None,
              help="alias, router-bert-<threshold> or a configured model name (default: first alias)")
def route_cmd(text: str, config_path: str | None, model_name: str | None) -> None:
    """Print the routing decision for one prompt (no upstream call)."""
    from proxy.errors import ProxyError
    from proxy.routing.decider import Decider, Decision
    from proxy.routing.render import decision_view

    settings = _load(config_path)
    router = _router(settings.router.model_dir, settings.router.threads)
    decider = Decider(settings, router)
    # The proxy's own name resolution and decision, so the command reports what a request would get.
    try:
        target = decider.resolve(model_name or next(iter(settings.aliases)))
    except ProxyError as exc:
        click.echo(f"route-llm route: {exc.message}", err=True)
        sys.exit(EXIT_INPUT)
    score = router.score([text])[0]
    cuts: tuple[float, ...] | None = None
    if target.tier is not None:  # a concrete model name: no threshold applies
        tier = target.tier
    else:
        assert target.policy is not None
        tier, score = decider.choose(target.policy, [score])
        cuts = target.policy.cuts
    view = decision_view(Decision(tier, score, cuts, 0.0), model=settings.models.model(tier).name)
    rounded = {k: _round6(view[k]) for k in ("score", "tier", "tier_index", "model", "threshold", "thresholds")}
    click.echo(json.dumps({**rounded, "router_model": router.version}))


def _round6(value: Any) -> Any:
    """``route-llm route`` prints six decimals (``/v1/route`` gives the floats whole); names and ints pass."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [_round6(v) for v in value]
    return value


@main.command("score")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None, help="default: the shipped model")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True)
def score_cmd(model_dir: str | None, threads: int, batch_size: int) -> None:
    """Score JSONL prompts: stdin {"prompt": ...} lines -> stdout {"score": p} lines, in order."""
    from router import ScoreInputError, score_jsonl

    router = _router(model_dir, threads)
    try:
        score_jsonl(router, sys.stdin, sys.stdout, batch_size=batch_size)
    except ScoreInputError as exc:
        sys.stdout.flush()
        click.echo(f"route-llm score: {exc}", err=True)
        sys.exit(EXIT_INPUT)


@main.command("calibrate")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL file of {"prompt": ...}: a sample of your own traffic')
@click.option("--strong-share", type=click.FloatRange(0.0, 1.0), required=True,
              help="wanted share of requests sent to the strong model")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None)
def calibrate_cmd(prompts_path: str, strong_share: float, model_dir: str | None) -> None:
    """Compute the threshold that sends STRONG_SHARE of your traffic to the strong model."""
    from router import ScoreInputError, calibrate

    router = _router(model_dir, 2)
    try:
        with open(prompts_path, encoding="utf-8") as f:
            result = calibrate(router, f, strong_share)
    except ScoreInputError as exc:
        click.echo(f"route-llm calibrate: {prompts_path}: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    click.echo(json.dumps({"threshold": round(result.threshold, 6), "strong_share": strong_share, "prompts": result.n}))
    click.echo(f"# put `threshold: {result.threshold:.4f}` under router: (or an alias) in config.yaml", err=True)


def _open_records(settings: Settings | None, store_dir: str | None) -> Any:
    """The decision records' database: ``store_dir``'s SQLite file, else the one ``settings`` name (Postgres
    or SQLite). A missing SQLite file is an error rather than a new empty store."""
    from proxy.state.database import RECORDS_FILE, PostgresDatabase, SqliteDatabase

    if settings is not None and (where := settings.storage_location()).kind == "postgresql":
        return PostgresDatabase(where.url, timeout_connect=settings.storage.timeout_connect)
    path = (Path(store_dir) if store_dir else settings.feedback_dir()) / RECORDS_FILE  # type: ignore[union-attr]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no feedback store here (feedback.storage_dir / storage.url / "
                                "documents.storage_dir)")
    return SqliteDatabase(path)


@main.command("report")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config.yaml naming the store and tiers")
@click.option("--since", default="7d", show_default=True, help="the window, back from now: 7d, 36h, 90m, 2w")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, allow_dash=True), default="report.html",
              show_default=True, help="the HTML file to write (- for stdout)")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None,
              help="the router whose score scale the cut points are drawn on (default: the shipped one)")
def report_cmd(config_path: str | None, since: str, out_path: str, model_dir: str | None) -> None:
    """Write a self-contained HTML page of the window's requests, scores, cost, ratings and errors."""
    import sqlite3

    from proxy.report import Inputs, ReportError, parse_since, render
    from proxy.routing.decider import policy_for
    from proxy.state.database import StorageUnavailable
    from proxy.state.records import read_decisions, read_feedback
    from proxy.upstream.pricing import prices_of

    settings = _load(config_path)
    try:
        window = parse_since(since)
    except ReportError as exc:
        click.echo(f"route-llm report: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    until = time.time()
    try:
        db = _open_records(settings, None)
        try:
            records = read_decisions(db, until - window)
            ratings = [f for f in read_feedback(db) if f.created_at >= until - window]
        finally:
            db.close()
    except (OSError, StorageUnavailable, sqlite3.Error) as exc:
        click.echo(f"route-llm report: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    tiers = settings.models.tiers
    cuts = policy_for(settings.router, _router(model_dir).meta.quantiles).cuts
    page = render(Inputs(records=records, ratings=ratings, tiers=[t.name for t in tiers],
                         prices=prices_of(settings.models.entries), cuts=cuts, since=until - window, until=until))
    with click.open_file(out_path, "w", encoding="utf-8") as out:
        out.write(page)
    click.echo(f"route-llm report: {len(records)} requests and {len(ratings)} ratings since {since} ago -> {out_path}",
               err=True)


class KeyShare(click.ParamType):
    """``--max-key-share``: a number above 0 and at most 1 (click's FloatRange lets NaN through: every comparison
    with NaN is false)."""

    name = "share"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from router.rater_share import check_share

        try:
            share = float(value)
        except (TypeError, ValueError):
            self.fail(f"must be a number above 0 and at most 1, got {value!r}", param, ctx)
        try:
            return check_share(share)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _rater_names(settings: Settings | None) -> dict[str, str]:
    """Owner hash -> configured key name, so exported rows can name their rater (never the key)."""
    from proxy.edge.guard import owner_of

    return {owner_of(k.key): k.name for k in settings.named_keys()} if settings is not None else {}


@main.group("feedback")
def feedback_group() -> None:
    """Ratings clients sent through POST /v1/feedback."""


@feedback_group.command("export")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config.yaml naming the store")
@click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
              help="the feedback store directory (default: feedback.storage_dir, else documents.storage_dir)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True,
              help="JSONL file for the training rows (- for stdout)")
@click.option("--strong-good", type=click.Choice(["drop", "soft"]), default="drop", show_default=True,
              help="what a good rating of a tier above the cheapest becomes: dropped, or a soft target of 0.5")
@click.option("--tiers", "tier_names", default=None, metavar="A,B,...",
              help="the tier names, cheapest first (default: the configuration's models)")
@click.option("--max-key-share", type=KeyShare(), default=None, metavar="F",
              help="no proxy key gives more than this share (0 < F <= 1) of the rows written; the largest raters "
                   "are cut, deterministically (default: no cap)")
def feedback_export_cmd(config_path: str | None, store_dir: str | None, out_path: str, strong_good: str,
                        tier_names: str | None, max_key_share: float | None) -> None:
    """Write stored ratings as training rows {"prompt", "weak_score", "strong_score"} (see the README's mapping)."""
    import sqlite3

    from proxy.state.database import StorageUnavailable
    from proxy.state.feedback_export import export_rows
    from proxy.state.records import read_feedback

    settings = None if store_dir else _load(config_path)
    if tier_names is not None:
        tiers = [t.strip() for t in tier_names.split(",")]
        if len(tiers) < 2 or "" in tiers or len(set(tiers)) != len(tiers):
            click.echo(f"route-llm feedback export: --tiers needs two or more distinct names, cheapest first, "
                       f"separated by commas; got {tier_names!r}", err=True)
            sys.exit(EXIT_CONFIG)
    # the configuration, when there is one to read, also names the keys that rated
    named = settings or (_load(config_path) if tier_names is None or config_path else None)
    if tier_names is None:
        assert named is not None
        tiers = [t.name for t in named.models.tiers]
    try:
        db = _open_records(settings, store_dir)
        try:
            ratings = list(read_feedback(db))
        finally:
            db.close()
    except (OSError, StorageUnavailable, sqlite3.Error) as exc:
        click.echo(f"route-llm feedback export: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    with click.open_file(out_path, "w", encoding="utf-8") as out:
        summary = export_rows(ratings, out, tiers=tiers, strong_good=strong_good,  # type: ignore[arg-type]
                              names=_rater_names(named), max_key_share=max_key_share)
    from training.retrain import MIN_JUDGE_ROWS, MIN_TRAIN_ROWS

    click.echo("route-llm feedback export: " + summary.describe().replace("\n", "\n  "), err=True)
    click.echo(f"  route-llm retrain holds out a fifth of the rows to judge by: it needs at least {MIN_TRAIN_ROWS} "
               f"rows left to train on, and judges only from {MIN_JUDGE_ROWS} held-out rows (about "
               f"{5 * MIN_JUDGE_ROWS} exported); with fewer it refuses unless given --accept", err=True)


EXIT_NOT_BETTER = 5  # retrain: the candidate was refused (worse, or too little held-out feedback), nothing written


@main.command("retrain")
@click.option("--feedback", "feedback_paths", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False), help="training rows from `route-llm feedback export`")
@click.option("--data-dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="the base training data (train.jsonl, chat_alpacaeval.jsonl, ...); default: the base rows shipped "
                   "beside the model (base_rows.npz)")
@click.option("--model-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="the current model (default: the shipped one)")
@click.option("--out-dir", type=click.Path(file_okay=False), default="models", show_default=True,
              help="where the new versioned model directory is written, if the candidate is kept")
@click.option("--work-dir", type=click.Path(file_okay=False), default=".route-llm-retrain", show_default=True,
              help="embedding cache")
@click.option("--base-per-source", type=click.IntRange(0), default=400, show_default=True,
              help="with --data-dir: base training rows sampled per source (0: all, slow)")
@click.option("--tolerance", type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True,
              help="largest APGR drop beyond noise allowed on any base validation source")
@click.option("--accept", is_flag=True,
              help="keep the candidate even if the held-out feedback is too small to judge (the base checks apply)")
@click.option("--holdout-seed", type=click.IntRange(0), default=0, show_default=True,
              help="which hash split of the feedback is held out to judge by")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--words", type=click.Choice(["fixed", "refit"]), default="fixed", show_default=True,
              help="a head's word term: kept as it is, or refitted with the dense layers")
@click.option("--full", is_flag=True, help="fine-tune the encoder too (torch, and --data-dir; tens of minutes on two "
              "cores, where the default head refit takes one or two)")
@click.option("--epochs", type=click.FloatRange(0.01, 20.0), default=1.0, show_default=True,
              help="--full: passes over the base sample and the feedback")
@click.option("--max-key-share", type=KeyShare(), default=0.5, show_default=True, metavar="F",
              help="no proxy key (the rows' rater) gives more than this share (0 < F <= 1) of the feedback rows; "
                   "the largest raters are cut, deterministically; 1: no cap")
def retrain_cmd(feedback_paths: tuple[str, ...], data_dir: str | None, model_dir: str | None, out_dir: str,
                work_dir: str, base_per_source: int, tolerance: float, accept: bool, holdout_seed: int, threads: int,
                words: str, full: bool, epochs: float, max_key_share: float) -> None:
    """Refit the routing head on the current encoder with feedback added (--full: the encoder too); keep the
    candidate unless it is worse beyond noise."""
    from training.retrain import RetrainConfig, RetrainError, retrain

    # --full runs for tens of minutes and logs its progress; the head refit's output is the explanation and table
    logging.basicConfig(level=logging.INFO if full else logging.WARNING, format="%(asctime)s %(message)s")
    if full:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            click.echo(f"route-llm retrain --full needs torch and transformers (pip install 'route-llm[train]'): "
                       f"{exc}", err=True)
            sys.exit(EXIT_FAILURE)
    config = RetrainConfig(base_per_source=base_per_source or None, tolerance=tolerance, accept=accept,
                           holdout_seed=holdout_seed, threads=threads, words=words, full=full, full_epochs=epochs,
                           max_key_share=max_key_share)
    try:
        result = retrain(Path(data_dir) if data_dir else None, [Path(p) for p in feedback_paths],
                         current_dir=model_dir, out_dir=Path(out_dir), work_dir=Path(work_dir), config=config)
    except RetrainError as exc:
        click.echo(f"route-llm retrain: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    click.echo(result.explanation)
    click.echo(result.table)
    if result.path is None:
        click.echo(f"route-llm retrain: refused, nothing written: {result.verdict}", err=True)
        sys.exit(EXIT_NOT_BETTER)
    click.echo(f"route-llm retrain: {result.verdict}; wrote {result.path} (version {result.version}); point "
               "router.model_dir at it and reload (kill -HUP or POST /admin/reload)", err=True)


@main.command("spend")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config.yaml naming the keys and store")
@click.option("--reset", "reset_name", default=None, metavar="NAME",
              help="forget what the key of this configured name has spent (every period's)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per key instead of a table")
def spend_cmd(config_path: str | None, reset_name: str | None, as_json: bool) -> None:
    """Each proxy key's spend in its budget's current period (read from the store the servers write)."""
    import sqlite3

    from proxy.routing.budget import spend_now
    from proxy.state.database import StorageUnavailable
    from proxy.state.spend import open_spend_store

    settings = _load(config_path)
    try:
        store = open_spend_store(settings)
        try:
            rows = spend_now(settings, store, reset=reset_name)
        finally:
            store.close()
    except (KeyError, ValueError) as exc:
        click.echo(f"route-llm spend: {exc.args[0]}", err=True)
        sys.exit(EXIT_INPUT)
    except (OSError, StorageUnavailable, sqlite3.Error) as exc:
        click.echo(f"route-llm spend: the spend store is unavailable: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    if reset_name is not None:
        click.echo(f"route-llm spend: reset {reset_name}", err=True)
    if as_json:
        for status in rows:
            click.echo(json.dumps(status.body()))
        return
    click.echo(f"{'key':<24} {'spent USD':>12} {'limit USD':>12} {'remaining':>12}  {'period':<12} resets")
    for s in rows:
        limit = "-" if s.limit is None else f"{s.limit:.6f}"
        left = "-" if s.remaining is None else f"{s.remaining:.6f}"
        period = s.budget.window or s.budget.period if s.budget is not None else "day"
        click.echo(f"{s.name:<24} {s.spent:>12.6f} {limit:>12} {left:>12}  {period:<12} {s.reset_iso()}")
