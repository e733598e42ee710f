"""Benchmark the proxy against the Gemini stand-in called directly and, when installed, the LiteLLM proxy.

Everything runs on loopback in subprocesses started here and killed on exit: the stand-in
(``python -m proxy.demo.standin``), ``route-llm serve`` with 1 and 2 workers, and ``litellm --config`` with an
equivalent two-model config (both models' ``api_base`` on the stand-in, a literal key). For each target,
in one run: time to ready, sequential p50/p99, a fixed number of requests with N in flight (req/s,
p50/p99, errors), streaming time to first and last byte, server CPU per request and RSS after warm-up
(the process tree's VmRSS). ``--soak`` adds a bounded soak of route-llm (1 worker): RSS after 1,000 and
after ``--soak`` requests.

The load generator is one aiohttp session (uvloop when present) with a pooled connector. It shares the
machine's cores with the servers, so its own CPU use is printed under the table.

``--responses-rounds N`` measures something else instead: the per-request cost of a stored, chained
``/v1/responses`` request (``previous_response_id``) against ``/v1/chat/completions`` carrying the same
conversation, and a stateless ``/v1/responses`` (``store: false``, the conversation in ``input``), on one
route-llm server with storage on (SQLite), in N interleaved rounds of ``--sequential`` requests of each kind.

Example:
    python scripts/bench_proxy.py --litellm /tmp/litellm-proxy-venv/bin/litellm --soak 10000
    python scripts/bench_proxy.py --responses-rounds 10 --sequential 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain the difference between a process and a thread, with an example of when each is better.",
    "Prove that there are infinitely many primes.",
    "Translate 'good morning' into Spanish.",
    "Design a rate limiter for a distributed API gateway and discuss its failure modes.",
    "How many legs does a spider have?",
    "Summarise the causes of the First World War in three sentences.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- process accounting (/proc, no psutil) ------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def rss_mb(pid: int) -> tuple[float, list[float]]:
    """Total VmRSS of the tree in MB, and each process's (largest first)."""
    each = []
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        each.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return sum(each), sorted(each, reverse=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the tree (live processes only)."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --- targets ------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str  # non-streaming endpoint
    stream_url: str
    body: Any  # callable(prompt, stream) -> dict
    ready_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float | None = None
    results: dict[str, Any] = field(default_factory=dict)


def openai_body(model: str) -> Any:
    def make(prompt: str, stream: bool) -> dict[str, Any]:
        b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        if stream:
            b["stream"] = True
        return b
    return make


def gemini_body(prompt: str, stream: bool) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


async def wait_ready(session: aiohttp.ClientSession, t: Target, started: float, timeout: float, log: Path) -> None:
    assert t.ready_url and t.proc
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if t.proc.poll() is not None:
            raise RuntimeError(f"{t.name} exited with {t.proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            async with session.get(t.ready_url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                await r.read()
                if r.status == 200:
                    t.ready_s = time.perf_counter() - started
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{t.name} not ready after {timeout}s; see {log}")


# --- load ---------------------------------------------------------------------------------------------


async def one(session: aiohttp.ClientSession, t: Target, i: int) -> tuple[float, bool]:
    body = json.dumps(t.body(PROMPTS[i % len(PROMPTS)], False)).encode()
    start = time.perf_counter()
    try:
        async with session.post(t.url, data=body, headers={"content-type": "application/json",
                                                            "authorization": "Bearer bench"}) as r:
            data = await r.read()
            ok = r.status == 200 and len(data) > 0
    except aiohttp.ClientError:
        ok = False
    return time.perf_counter() - start, ok


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1000


async def sequential(session: aiohttp.ClientSession, t: Target, n: int) -> dict[str, Any]:
    lat, errors = [], 0
    for i in range(n):
        dt, ok = await one(session, t, i)
        lat.append(dt)
        errors += not ok
    return {"seq_p50": pct(lat, 50), "seq_p99": pct(lat, 99), "seq_errors": errors}


async def concurrent(session: aiohttp.ClientSession, t: Target, n: int, in_flight: int) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            dt, ok = await one(session, t, i)
            lat.append(dt)
            errors += not ok

    cpu0 = cpu_seconds(t.proc.pid) if t.proc else None
    me0 = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.perf_counter() - start
    out = {"rps": n / wall, "conc_p50": pct(lat, 50), "conc_p99": pct(lat, 99), "conc_errors": errors,
           "client_cpu": (time.process_time() - me0) / wall}
    if t.proc and cpu0 is not None:
        out["cpu_ms_per_req"] = (cpu_seconds(t.proc.pid) - cpu0) / n * 1000
    return out


async def streaming(session: aiohttp.ClientSession, t: Target, n: int) -> dict[str, Any]:
    first, last, errors = [], [], 0
    for i in range(n):
        body = json.dumps(t.body(PROMPTS[i % len(PROMPTS)], True)).encode()
        start = time.perf_counter()
        try:
            async with session.post(t.stream_url, data=body, headers={"content-type": "application/json",
                                                                       "authorization": "Bearer bench"}) as r:
                got_first = None
                async for chunk in r.content.iter_any():
                    if got_first is None and chunk:
                        got_first = time.perf_counter() - start
                if r.status != 200 or got_first is None:
                    errors += 1
                    continue
        except aiohttp.ClientError:
            errors += 1
            continue
        first.append(got_first)
        last.append(time.perf_counter() - start)
    if not first:
        return {"stream_errors": errors}
    return {"ttfb_p50": pct(first, 50), "ttlb_p50": pct(last, 50), "stream_errors": errors}


async def bench(session: aiohttp.ClientSession, t: Target, args: argparse.Namespace) -> None:
    for i in range(args.warmup):
        await one(session, t, i)
    r = t.results
    if t.proc:
        r["rss"], r["rss_each"] = rss_mb(t.proc.pid)
    r.update(await sequential(session, t, args.sequential))
    r.update(await concurrent(session, t, args.requests, args.in_flight))
    r.update(await streaming(session, t, args.streams))
    r["load"] = loadavg()


async def soak(session: aiohttp.ClientSession, t: Target, total: int, in_flight: int) -> list[tuple[int, float]]:
    """RSS of the busiest process in the tree after 1,000 requests and then every 1,000 up to ``total``."""
    assert t.proc
    points, done = [], 0
    while done < total:
        step = min(1000, total - done)
        res = await concurrent(session, t, step, in_flight)
        done += step
        if res["conc_errors"]:
            print(f"  soak: {res['conc_errors']} errors in the last 1000", file=sys.stderr)
        points.append((done, rss_mb(t.proc.pid)[1][0]))
    return points


# --- main ---------------------------------------------------------------------------------------------


def fmt(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def table(targets: list[Target], baseline: Target) -> str:
    base50 = baseline.results.get("seq_p50")
    rows = ["| target | ready s | seq p50 ms | seq p99 ms | added p50 ms | req/s @N | p50 ms @N | p99 ms @N "
            "| errors | server CPU ms/req | stream first ms | stream last ms | RSS MB (per process) | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in targets:
        r = t.results
        added = None if t is baseline or base50 is None or "seq_p50" not in r else r["seq_p50"] - base50
        each = r.get("rss_each") or []
        rss = "–" if not each else f"{r['rss']:.0f}" + (f" ({' + '.join(f'{x:.0f}' for x in each)})"
                                                         if len(each) > 1 else "")
        errors = r.get("seq_errors", 0) + r.get("conc_errors", 0) + r.get("stream_errors", 0)
        rows.append(
            f"| {t.name} | {fmt(t.ready_s, '.2f')} | {fmt(r.get('seq_p50'))} | {fmt(r.get('seq_p99'))} "
            f"| {fmt(added)} | {fmt(r.get('rps'), '.0f')} | {fmt(r.get('conc_p50'))} | {fmt(r.get('conc_p99'))} "
            f"| {errors} | {fmt(r.get('cpu_ms_per_req'))} | {fmt(r.get('ttfb_p50'))} | {fmt(r.get('ttlb_p50'))} "
            f"| {rss} | {r.get('load', '–')} |")
    return "\n".join(rows)


async def amain(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}
    env.pop("ROUTE_LLM_API_KEYS", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    procs: list[subprocess.Popen[bytes]] = []
    sp = free_port()
    standin_url = f"http://127.0.0.1:{sp}"
    env["GEMINI_API_BASE"] = standin_url
    env["GEMINI_API_KEY"] = "bench-upstream-key"
    connector = aiohttp.TCPConnector(limit=max(args.in_flight, 1), limit_per_host=0, force_close=False)
    targets: list[Target] = []
    soak_points: list[tuple[int, float]] = []
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            # the stand-in, measured directly as the baseline
            base = Target("stand-in direct", f"{standin_url}/v1beta/models/gemini-1.5-flash:generateContent",
                          f"{standin_url}/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse",
                          gemini_body, ready_url=None)
            sp_proc = start([sys.executable, "-m", "proxy.demo.standin", "--port", str(sp)], env,
                            tmp / "standin.log")
            procs.append(sp_proc)
            base.proc = sp_proc
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", sp), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline or sp_proc.poll() is not None:
                        raise RuntimeError("stand-in did not start") from None
                    await asyncio.sleep(0.05)
            targets.append(base)
            await bench(session, base, args)
            print(f"measured {base.name}", file=sys.stderr)

            shipped = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]
            models = {tier: {"name": shipped[tier]["name"], "model": shipped[tier]["model"]}
                      for tier in ("weak", "strong")}
            async def route_llm(workers: int, label: str, tree: str | None, suffix: str) -> None:
                nonlocal soak_points
                port = free_port()
                # the shipped config.yaml (its timeouts, prices, router and upstream settings), pointed at the stand-in;
                # a baseline tree's own (an older loader refuses keys added since)
                cfg = yaml.safe_load(((Path(tree) if tree else ROOT) / "config.yaml").read_text())
                for tier in models:
                    cfg["models"][tier].update(api_base=standin_url, api_key="bench-upstream-key")
                cfg["server"].update(host="127.0.0.1", port=port, api_keys=[])
                cfg["documents"]["storage_dir"] = str(tmp / "files")
                path = tmp / f"route-llm-{workers}{suffix}{label}.yaml".replace(" ", "-").replace("/", "_")
                path.write_text(yaml.safe_dump(cfg))
                url = f"http://127.0.0.1:{port}"
                name = f"route-llm{label}, {workers} worker{'s' if workers > 1 else ''}"
                t = Target(f"{name} (model auto){suffix}", f"{url}/v1/chat/completions",
                           f"{url}/v1/chat/completions", openai_body("auto"), ready_url=f"{url}/health/ready")
                log = path.with_suffix(".log")
                started = time.perf_counter()
                # a baseline tree (--baseline-tree) is put first on the path: its proxy/ and router/ serve
                renv = env if tree is None else {**env, "PYTHONPATH": tree}
                t.proc = start([args.route_llm, "serve", "--config", str(path), "--workers", str(workers)], renv, log)
                procs.append(t.proc)
                try:
                    await wait_ready(session, t, started, args.timeout_ready, log)
                except RuntimeError as exc:  # a loaded machine: report the others rather than lose the run
                    print(f"skipped {t.name}: {exc}", file=sys.stderr)
                    stop(t.proc)
                    return
                targets.append(t)
                await bench(session, t, args)
                print(f"measured {t.name}", file=sys.stderr)
                if workers == 1 and args.concrete:
                    # the same server asked for a configured model by name: no router run, the proxy's own cost
                    pinned = models["weak"]["name"]
                    c = Target(f"{name} (model {pinned}){suffix}", t.url, t.stream_url, openai_body(pinned),
                               ready_url=t.ready_url, proc=t.proc, ready_s=t.ready_s)
                    targets.append(c)
                    await bench(session, c, args)
                    print(f"measured {c.name}", file=sys.stderr)
                if workers == 1 and args.soak and tree is None and not soak_points:
                    soak_points = await soak(session, t, args.soak, args.in_flight)
                stop(t.proc)

            async def litellm_proxy(workers: int, suffix: str) -> None:
                port = free_port()
                cfg = {
                    "model_list": [{"model_name": m["name"],
                                    "litellm_params": {"model": m["model"], "api_base": standin_url,
                                                       "api_key": "bench-upstream-key"}}
                                   for m in models.values()],
                    "litellm_settings": {"num_retries": 0, "request_timeout": 60},
                }
                path = tmp / f"litellm-{workers}{suffix}.yaml".replace(" ", "-")
                path.write_text(yaml.safe_dump(cfg))
                url = f"http://127.0.0.1:{port}"
                t = Target(f"LiteLLM proxy, {workers} worker{'s' if workers > 1 else ''}{suffix}",
                           f"{url}/v1/chat/completions", f"{url}/v1/chat/completions",
                           openai_body("gemini-1.5-flash"), ready_url=f"{url}/health/readiness")
                log = path.with_suffix(".log")
                started = time.perf_counter()
                lenv = {k: v for k, v in env.items() if not k.startswith("GEMINI_")}
                lenv["LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY"] = "true"  # no auth, like ours here
                t.proc = start([args.litellm, "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", str(workers)], lenv, log)
                procs.append(t.proc)
                try:
                    await wait_ready(session, t, started, 2 * args.timeout_ready, log)
                except RuntimeError as exc:
                    print(f"skipped {t.name}: {exc}", file=sys.stderr)
                    stop(t.proc)
                    return
                targets.append(t)
                await bench(session, t, args)
                print(f"measured {t.name}", file=sys.stderr)
                stop(t.proc)

            have_litellm = bool(args.litellm) and Path(args.litellm).exists()
            # Rounds alternate the variants, so a change in the machine's load hits all of them alike.
            for rnd in range(1, args.rounds + 1):
                suffix = f" #{rnd}" if args.rounds > 1 else ""
                for workers in args.workers:
                    if args.baseline_tree:
                        await route_llm(workers, f" ({Path(args.baseline_tree).name})", args.baseline_tree, suffix)
                    await route_llm(workers, "", None, suffix)
                if have_litellm:
                    for workers in args.litellm_workers:
                        await litellm_proxy(workers, suffix)
            if args.litellm and not have_litellm:
                print(f"LiteLLM proxy not found at {args.litellm}: column skipped", file=sys.stderr)
    finally:
        for p in procs:
            stop(p)

    print(f"`python scripts/bench_proxy.py {shlex.join(sys.argv[1:])}`".replace(" `", "`"))
    print()
    print(f"N = {args.in_flight} in flight, {args.requests} requests; sequential {args.sequential}; "
          f"{args.streams} streams; {args.warmup} warm-up requests per target; cores: {os.cpu_count()}")
    print()
    print(table(targets, base))
    print()
    client = ", ".join(f"{t.name}: {t.results.get('client_cpu', 0) * 100:.0f} %" for t in targets)
    print(f"Load generator CPU (share of one core) during the {args.in_flight}-in-flight phase: {client}")
    print()
    for rnd in range(1, args.rounds + 1):
        suffix = f" #{rnd}" if args.rounds > 1 else ""
        theirs = next((t for t in targets if t.name == f"LiteLLM proxy, 1 worker{suffix}"), None)
        for ours in targets:
            if ours.name.startswith("route-llm") and ours.name.endswith(f"(model auto){suffix}") \
                    and ", 1 worker " in ours.name and theirs and theirs.results.get("rps") and ours.results.get("rps"):
                print(f"req/s at {args.in_flight} in flight, {ours.name} / {theirs.name}: "
                      f"{ours.results['rps'] / theirs.results['rps']:.2f}x")
    if soak_points:
        pts = ", ".join(f"{n}: {mb:.0f}" for n, mb in soak_points)
        print(f"\nroute-llm 1 worker, RSS MB of the worker after n requests ({args.in_flight} in flight): {pts}")
    return 0


# --- stored Responses against chat (--responses-rounds) -----------------------------------------------------

CHAIN_FIRST = "My name is Ada and I keep bees."
CHAIN_NEXT = "What is my name, and what do I keep?"


async def _timed_post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[float, Any]:
    data = json.dumps(body).encode()
    start = time.perf_counter()
    async with session.post(url, data=data, headers={"content-type": "application/json",
                                                     "authorization": "Bearer bench"}) as r:
        payload = await r.json()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status} {payload}")
    return time.perf_counter() - start, payload


async def responses_overhead(args: argparse.Namespace) -> int:
    """Interleaved rounds on one server: per round ``--sequential`` requests of each kind, in turn, one at a
    time; the p50 of each kind per round, then the median and the range of those p50s across rounds."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-responses-"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}
    for name in ("ROUTE_LLM_API_KEYS", "PROMETHEUS_MULTIPROC_DIR", "ROUTE_LLM_DATABASE_URL"):
        env.pop(name, None)
    sp, port = free_port(), free_port()
    standin_url, url = f"http://127.0.0.1:{sp}", f"http://127.0.0.1:{port}"
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=standin_url, api_key="bench-upstream-key")
    cfg["server"].update(host="127.0.0.1", port=port, api_keys=["bench"])
    cfg["documents"]["storage_dir"] = str(tmp / "files")
    cfg["responses"] = {"store": True, "retention_days": 1, "limit_per_key": None}
    path = tmp / "route-llm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    model = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["weak"]["name"] if args.concrete else "auto"
    procs = [start([sys.executable, "-m", "proxy.demo.standin", "--port", str(sp)], env, tmp / "standin.log")]
    samples: dict[str, list[float]] = {"chat": [], "responses, stateless": [], "responses, chained": []}
    per_round: dict[str, list[float]] = {k: [] for k in samples}
    cpu: dict[str, list[float]] = {k: [] for k in samples}  # server CPU ms per request, per round
    loads = [loadavg()]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            server = Target("route-llm", "", "", None, ready_url=f"{url}/health/ready")
            server.proc = start([args.route_llm, "serve", "--config", str(path)], env, tmp / "route-llm.log")
            procs.append(server.proc)
            await wait_ready(session, server, time.perf_counter(), args.timeout_ready, tmp / "route-llm.log")
            _, first = await _timed_post(session, f"{url}/v1/responses", {"model": model, "input": CHAIN_FIRST})
            answer = first["output"][0]["content"][0]["text"]
            conversation = [{"role": "user", "content": CHAIN_FIRST}, {"role": "assistant", "content": answer},
                            {"role": "user", "content": CHAIN_NEXT}]
            kinds = {
                "chat": (f"{url}/v1/chat/completions", {"model": model, "messages": conversation}),
                "responses, stateless": (f"{url}/v1/responses", {"model": model, "input": conversation,
                                                                   "store": False}),
                "responses, chained": (f"{url}/v1/responses", {"model": model, "input": CHAIN_NEXT,
                                                                "previous_response_id": first["id"]}),
            }
            for url_, body in kinds.values():  # warm-up
                for _ in range(args.warmup):
                    await _timed_post(session, url_, body)
            for _ in range(args.responses_rounds):
                for kind, (url_, body) in kinds.items():
                    cpu0 = cpu_seconds(server.proc.pid)
                    lat = [(await _timed_post(session, url_, body))[0] for _ in range(args.sequential)]
                    cpu[kind].append((cpu_seconds(server.proc.pid) - cpu0) / args.sequential * 1000)
                    samples[kind] += lat
                    per_round[kind].append(pct(lat, 50))
                loads.append(loadavg())
    finally:
        for p in procs:
            stop(p)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"`python scripts/bench_proxy.py {shlex.join(sys.argv[1:])}` on {when}, "
          f"{os.cpu_count()} cores, model {model}; {args.responses_rounds} rounds x {args.sequential} sequential "
          f"requests per kind; load average (1/5/15 min) before and after each round: {'; '.join(loads)}")
    print()
    print("| kind | p50 ms (all) | median of round p50s ms | range of round p50s ms | vs chat, median of round "
          "differences ms (range) | server CPU ms/request, median (range) |")
    print("|---|---|---|---|---|---|")
    for kind in samples:
        rounds = sorted(per_round[kind])
        diffs = sorted(a - b for a, b in zip(per_round[kind], per_round["chat"]))
        vs = "–" if kind == "chat" else f"{diffs[len(diffs) // 2]:+.2f} ({diffs[0]:+.2f} to {diffs[-1]:+.2f})"
        used = sorted(cpu[kind])
        print(f"| {kind} | {pct(samples[kind], 50):.2f} | {rounds[len(rounds) // 2]:.2f} | {rounds[0]:.2f}–"
              f"{rounds[-1]:.2f} | {vs} | {used[len(used) // 2]:.2f} ({used[0]:.2f}–{used[-1]:.2f}) |")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequential", type=int, default=300, help="sequential requests per target")
    p.add_argument("--requests", type=int, default=2000, help="requests in the concurrent phase")
    p.add_argument("--in-flight", type=int, default=32)
    p.add_argument("--streams", type=int, default=50, help="sequential streaming requests")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="route-llm worker counts to run")
    p.add_argument("--route-llm", default=str(Path(sys.executable).parent / "route-llm"))
    p.add_argument("--litellm", default="/tmp/litellm-proxy-venv/bin/litellm",
                   help="the LiteLLM proxy CLI (installed in its own venv); '' to skip")
    p.add_argument("--litellm-workers", type=int, nargs="+", default=[1])
    p.add_argument("--baseline-tree", help="also run route-llm with this tree's proxy/ and router/ first on the "
                   "path (e.g. a `git archive` of an older commit), beside the current one in each round")
    p.add_argument("--rounds", type=int, default=1, help="repeat the route-llm and LiteLLM targets this many times")
    p.add_argument("--timeout-ready", type=float, default=120, help="seconds a route-llm target may take to start")
    p.add_argument("--concrete", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the 1-worker server with a configured model name (no router run)")
    p.add_argument("--soak", type=int, default=0, help="after the 1-worker run, this many more requests for RSS")
    p.add_argument("--responses-rounds", type=int, default=0,
                   help="instead: a chained /v1/responses against chat, in this many interleaved rounds")
    args = p.parse_args()
    try:
        import uvloop  # the client should not be the bottleneck
        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(responses_overhead(args) if args.responses_rounds else amain(args)))


if __name__ == "__main__":
    main()
