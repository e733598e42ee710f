"""Soak the proxy: N concurrent clients for a set time, with upstream faults injected at a chosen rate.

Without ``--url`` it starts everything itself, on loopback only: the Gemini stand-in
(``python -m proxy.demo.standin --fault-rate F``) and ``route-llm serve`` with a config pointing both tiers at it. Clients
mix streaming and plain requests across ``auto``, ``gemini-1.5-flash`` and ``gemini-1.5-pro``. Every request is
classified as answered, a clean error (an HTTP error in OpenAI's shape, or an in-band stream error event
followed by ``[DONE]``), lost (connection dropped, unparseable answer, stream cut without ``[DONE]``) or hung
(no answer within the client timeout). It reports counts, latency percentiles, the server's RSS over the run
and the server's own request count, and exits 1 if any request was lost or hung.

The run is bounded: clients start no request after ``--duration`` (or ``--max-requests``), and whatever is
still running ``--timeout`` seconds later is cancelled and counted as hung.

Several replicas: ``--url`` may be given more than once (running proxies), or ``--replicas N`` starts N
``route-llm serve`` processes sharing one storage and one Redis: ``--database-url``/``--redis-url``, or
``--services`` to start a throwaway PostgreSQL and Redis (``scripts/local_services.py``). Client *i* talks to
target *i mod N*; the report adds the requests per target. With Redis, every request is also counted against a
requests-per-minute limit high enough never to refuse (so each request makes its Redis round trip), and every
routed answer leaves a decision record in the shared database.

Example (32 clients, 5 minutes, 5% of upstream calls answer 503):
    python scripts/loadtest.py --concurrency 32 --duration 300 --fault-rate 0.05
Two replicas on one Postgres and one Redis, every kind of fault:
    python scripts/loadtest.py --replicas 2 --services --concurrency 32 --duration 300 --fault-rate 0.05 --fault-mix
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("auto", "gemini-1.5-flash", "gemini-1.5-pro")
PROMPTS = (
    "hi there",
    "What is the capital of Australia?",
    "Summarise the plot of Hamlet in two sentences.",
    "Prove that the square root of 2 is irrational.",
    "Write a Python function that merges overlapping intervals, with tests.",
    "Explain how a B-tree stays balanced on insert and delete, with a worked example.",
    "translate 'see you tomorrow' into Spanish",
    "Design a rate limiter for a multi-region API and discuss its failure modes.",
)


@dataclass
class Stats:
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # answered | clean_error | lost | hung
    by_status: Counter[str] = field(default_factory=Counter)  # "200", "503", "stream_error", "timeout", ...
    by_kind: Counter[str] = field(default_factory=Counter)  # "stream" / "plain" x model
    by_target: Counter[str] = field(default_factory=Counter)  # finished requests per proxy URL
    latencies: list[float] = field(default_factory=list)  # seconds, requests that got an answer or clean error
    examples: dict[str, str] = field(default_factory=dict)  # first detail seen per lost/hung kind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    """Resident set size from /proc (no psutil), in KiB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _openai_error(body: bytes) -> bool:
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err) and bool(err["message"])


async def one_request(client: httpx.AsyncClient, stats: Stats, rng: random.Random, stream: bool) -> None:
    model = rng.choice(MODELS)
    body = {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "stream": stream}
    stats.sent += 1
    stats.by_kind[f"{'stream' if stream else 'plain'}:{model}"] += 1
    start = time.perf_counter()
    outcome, status, detail = "lost", "?", ""
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            status = str(r.status_code)
            if r.status_code == 200:
                ok = bool(r.json()["choices"][0]["message"]["content"])
                outcome, detail = ("answered", "") if ok else ("lost", "200 without content")
            else:
                outcome = "clean_error" if _openai_error(r.content) else "lost"
                detail = r.text[:200]
        else:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                status = str(r.status_code)
                if r.status_code != 200:
                    raw = await r.aread()
                    outcome = "clean_error" if _openai_error(raw) else "lost"
                    detail = raw[:200].decode(errors="replace")
                else:
                    events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
                    done = bool(events) and events[-1] == "[DONE]"
                    errors = [e for e in events[:-1] if e.startswith('{"error"')]
                    if not done:
                        outcome, detail = "lost", f"stream ended without [DONE] after {len(events)} events"
                    elif errors:
                        outcome, status, detail = "clean_error", "stream_error", errors[0][:200]
                    else:
                        outcome = "answered"
    except httpx.TimeoutException as exc:
        outcome, status, detail = "hung", "timeout", repr(exc)
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        outcome, status, detail = "lost", type(exc).__name__, repr(exc)[:200]
    if outcome in ("answered", "clean_error"):
        stats.latencies.append(time.perf_counter() - start)
    stats.outcomes[outcome] += 1
    stats.by_status[status] += 1
    if outcome in ("lost", "hung"):
        stats.examples.setdefault(f"{outcome}/{status}", detail)


async def client_loop(n: int, base_url: str, api_key: str | None, stats: Stats, stop_at: float, timeout: float,
                      stream_share: float, budget: list[int], seed: int) -> None:
    rng = random.Random(seed * 1000 + n)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers) as client:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            try:
                await one_request(client, stats, rng, rng.random() < stream_share)
                stats.by_target[base_url] += 1
            except asyncio.CancelledError:  # the run's hard stop: whatever is in flight now counts as hung
                stats.outcomes["hung"] += 1
                stats.by_status["cancelled_at_hard_stop"] += 1
                raise


def server_requests_total(base_urls: list[str], api_key: str | None) -> float | None:
    """The proxies' own count (route_llm_requests_total, all labels, every target), to check nothing went
    unrecorded."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    total = 0.0
    for base_url in base_urls:
        try:
            text = httpx.get(base_url + "/metrics", headers=headers, timeout=10).text
        except httpx.HTTPError:
            return None
        total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("route_llm_requests_total{"))
    return total


async def run_load(args: argparse.Namespace, base_urls: list[str],
                   pids: list[int]) -> tuple[Stats, list[tuple[float, int]]]:
    stats = Stats()
    t0 = time.monotonic()
    stop_at = t0 + args.duration
    budget = [args.max_requests]
    rss: list[tuple[float, int]] = []

    def rss_now() -> int | None:  # all servers together
        values = [v for v in map(rss_kib, pids) if v is not None]
        return sum(values) if values else None

    async def sample_rss() -> None:
        while pids:
            value = rss_now()
            if value is not None:
                rss.append((time.monotonic() - t0, value))
            await asyncio.sleep(args.rss_every)

    async def progress() -> None:
        while True:
            await asyncio.sleep(30)
            print(f"  t={time.monotonic() - t0:5.0f}s sent={stats.sent} {dict(stats.outcomes)}"
                  + (f" rss={rss[-1][1] / 1024:.0f}MiB" if rss else ""), flush=True)

    sampler, reporter = asyncio.create_task(sample_rss()), asyncio.create_task(progress())
    clients = [asyncio.create_task(client_loop(i, base_urls[i % len(base_urls)], args.api_key, stats, stop_at,
                                               args.timeout,
                                               args.stream_share, budget, args.seed))
               for i in range(args.concurrency)]
    # Hard stop: no client may outlive the duration by more than one request timeout (plus slack).
    _, pending = await asyncio.wait(clients, timeout=args.duration + args.timeout + 5)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if (value := rss_now()) is not None:
        rss.append((time.monotonic() - t0, value))
    sampler.cancel()
    reporter.cancel()
    return stats, rss


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(stats: Stats, rss: list[tuple[float, int]], elapsed: float, server_counted: float | None) -> bool:
    o = stats.outcomes
    finished = sum(o.values())
    print("\n| metric | value |\n|---|---|")
    rows = [
        ("requests sent", stats.sent),
        ("answered (200)", o["answered"]),
        ("clean errors (OpenAI shape / in-band stream error)", o["clean_error"]),
        ("lost (dropped, unparseable, stream without [DONE])", o["lost"]),
        ("hung (client timeout)", o["hung"]),
        ("unaccounted (sent - finished)", stats.sent - finished),
        ("by status", ", ".join(f"{k}: {v}" for k, v in sorted(stats.by_status.items()))),
        ("by kind", ", ".join(f"{k}: {v}" for k, v in sorted(stats.by_kind.items()))),
        ("by target (finished in the client)", ", ".join(f"{k}: {v}" for k, v in sorted(stats.by_target.items()))),
        ("throughput", f"{finished / elapsed:.1f} req/s over {elapsed:.0f}s"),
        ("latency p50 / p99 / max", f"{_pct(stats.latencies, 0.5) * 1000:.0f} / "
                                    f"{_pct(stats.latencies, 0.99) * 1000:.0f} / "
                                    f"{max(stats.latencies, default=float('nan')) * 1000:.0f} ms"),
        ("server requests counted (/metrics delta)", "n/a" if server_counted is None else f"{server_counted:.0f}"),
    ]
    if rss:
        warm = next((v for t, v in rss if t >= rss[-1][0] * 0.1), rss[0][1])  # after the first 10% of the run
        rows.append(("server RSS (all servers) start / after 10% / end / max",
                     f"{rss[0][1] / 1024:.0f} / {warm / 1024:.0f} / {rss[-1][1] / 1024:.0f} / "
                     f"{max(v for _, v in rss) / 1024:.0f} MiB"))
    for name, value in rows:
        print(f"| {name} | {value} |")
    for kind, detail in stats.examples.items():
        print(f"example {kind}: {detail}")
    return o["lost"] == 0 and o["hung"] == 0 and stats.sent == finished


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode} during start-up")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout:.0f}s")


def start_stack(args: argparse.Namespace, work: Path) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """The stand-in with faults and ``--replicas`` ``route-llm serve`` processes on loopback (sharing
    ``--database-url``/``--redis-url`` when given); returns the proxy URLs and the processes, stand-in first."""
    standin_port = _free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for name in ("ROUTE_LLM_API_KEYS", "ROUTE_LLM_DATABASE_URL", "ROUTE_LLM_REDIS_URL"):
        env.pop(name, None)
    standin = subprocess.Popen([sys.executable, "-m", "proxy.demo.standin", "--port", str(standin_port),
                                "--fault-rate", str(args.fault_rate), *(["--fault-mix"] if args.fault_mix else [])],
                               env=env,
                               stdout=subprocess.DEVNULL, stderr=(work / "standin.log").open("wb"))
    procs = [standin]
    base = f"http://127.0.0.1:{standin_port}"
    config: dict[str, object] = {
        "models": {
            "weak": {"name": "gemini-1.5-flash", "model": "gemini/gemini-1.5-flash", "api_base": base,
                     "api_key": "loadtest-upstream-key", "timeout": 20},
            "strong": {"name": "gemini-1.5-pro", "model": "gemini/gemini-1.5-pro", "api_base": base,
                       "api_key": "loadtest-upstream-key", "timeout": 20},
        },
        "server": {"host": "127.0.0.1",
                   **({"redis_url": args.redis_url, "limit_requests_per_minute": 10_000_000} if args.redis_url
                      else {})},
        "documents": {"storage_dir": str(work / "files")},
        **({"storage": {"url": args.database_url}} if args.database_url else {}),
    }
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    route_llm = Path(sys.executable).with_name("route-llm")
    ports = [args.port + i if args.port else _free_port() for i in range(args.replicas)]
    for i, port in enumerate(ports):
        procs.append(subprocess.Popen([str(route_llm), "serve", "--config", str(cfg), "--port", str(port)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=(work / f"proxy{i}.log").open("wb")))
    try:
        deadline = time.monotonic() + 60
        while True:  # the stand-in answers POST /_control once it is up
            try:
                httpx.post(f"{base}/_control", json={}, timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or standin.poll() is not None:
                    raise SystemExit("the stand-in did not start") from None
                time.sleep(0.2)
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, proxy in zip(urls, procs[1:]):
            _wait_ready(url + "/health/ready", proxy, 180)
    except BaseException:
        stop_stack(procs)
        raise
    return urls, procs


def stop_stack(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", action="append", help="a running proxy, once per target (default: start the stand-in "
                   "and route-llm serve on loopback)")
    p.add_argument("--server-pid", type=int, action="append", default=[], help="with --url: a proxy's pid, for RSS")
    p.add_argument("--replicas", type=int, default=1, help="route-llm serve processes to start (without --url)")
    p.add_argument("--database-url", help="storage.url for the replicas started here (postgresql://...)")
    p.add_argument("--redis-url", help="server.redis_url for the replicas started here")
    p.add_argument("--services", action="store_true",
                   help="start a throwaway PostgreSQL and Redis (scripts/local_services.py) for the replicas")
    p.add_argument("--api-key", help="proxy key, if the proxy needs one")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=300.0, help="seconds to keep starting requests")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request; beyond it: hung")
    p.add_argument("--stream-share", type=float, default=0.5)
    p.add_argument("--fault-rate", type=float, default=0.05, help="share of upstream calls the stand-in fails")
    p.add_argument("--fault-mix", action="store_true",
                   help="faults of every kind (503, 500, 429, reset, broken stream, delay), not only 503")
    p.add_argument("--port", type=int, help="port for the proxy this script starts")
    p.add_argument("--rss-every", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    services: Path | None = None
    if args.url:
        urls, pids = [u.rstrip("/") for u in args.url], args.server_pid
    else:
        work = Path(tempfile.mkdtemp(prefix="route-llm-loadtest-"))  # kept afterwards: the servers' logs
        if args.services:
            work.chmod(0o755)  # the servers run as their own users, who must reach their directories below
            services = work / "services"
            done = subprocess.run([sys.executable, str(ROOT / "scripts" / "local_services.py"), "start",
                                   str(services)], capture_output=True, text=True, check=True)
            found = dict(line.split("=", 1) for line in done.stdout.split())
            args.database_url = found["ROUTE_LLM_TEST_POSTGRES_URL"]
            args.redis_url = found["ROUTE_LLM_TEST_REDIS_URL"]
        urls, procs = start_stack(args, work)
        pids = [proc.pid for proc in procs[1:]]
        print(f"stand-in fault rate {args.fault_rate}; proxies {', '.join(urls)} (pids {pids}); storage "
              f"{args.database_url or 'SQLite'}; limits {args.redis_url or 'in process'}; logs in {work}", flush=True)
    try:
        before = server_requests_total(urls, args.api_key)
        print(f"{args.concurrency} clients for {args.duration:.0f}s, stream share {args.stream_share}", flush=True)
        started = time.monotonic()
        stats, rss = asyncio.run(run_load(args, urls, pids))
        elapsed = time.monotonic() - started
        after = server_requests_total(urls, args.api_key)
        counted = after - before if before is not None and after is not None else None
        ok = report(stats, rss, elapsed, counted)
    finally:
        if procs:
            stop_stack(procs)
            print(f"exit codes after SIGTERM: stand-in {procs[0].returncode}, "
                  f"proxies {[proc.returncode for proc in procs[1:]]}")
        if services is not None:
            subprocess.run([sys.executable, str(ROOT / "scripts" / "local_services.py"), "stop", str(services)],
                           check=False)
    print("PASS: every request answered or cleanly refused" if ok else "FAIL: requests lost or hung")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
