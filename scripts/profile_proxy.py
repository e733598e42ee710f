"""Where a routed request's CPU goes: a py-spy profile of `route-llm serve` under sequential load, in buckets.

Starts the Gemini stand-in and `route-llm serve` (one worker, the shipped config pointed at the stand-in),
sends warm-up requests, then records the worker with py-spy (all threads, idle ones left out) while
``--requests`` chat completions go one after another. Each sample is put in the bucket of its innermost
frame that belongs to a known part of the request path (the table below), so time in ``json`` or ``socket``
counts for the library that called it. Prints a markdown table: bucket, share of busy samples, and CPU ms
per request (the worker's utime+stime over the recorded phase, split by the shares).

py-spy is a profiling tool, not a dependency of the proxy: ``pip install py-spy`` in the venv that runs this.

Example:
    python scripts/profile_proxy.py --requests 600 --model auto
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (bucket, substrings of a frame's file path). Each sample goes to the bucket of its innermost frame that matches
# one of these; only when none does, to the first of GENERIC that matches (so a socket write inside aiohttp counts
# for the HTTP client, and a future's callback inside the executor for the thread hop, not for asyncio).
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("router: tokenizer + ONNX run + head", ("/router/", "/onnxruntime/", "site-packages/tokenizers/")),
    ("LiteLLM bookkeeping: cost, logging objects, hidden params",
     ("litellm/cost_calculator", "litellm_logging", "response_metadata", "litellm/integrations",
      "logging_utils", "litellm/caching")),
    ("LiteLLM request building and response parsing (completion(), params, provider transform)", ("litellm/",)),
    ("HTTP client to the upstream (httpx over aiohttp)", ("/httpx/", "/httpcore/", "/aiohttp/", "/yarl/",
                                                         "/multidict/")),
    ("thread hops (executor submit, futures, anyio)", ("concurrent/futures", "/anyio/", "queue.py")),
    ("uvicorn + starlette (HTTP server, routing, middleware)", ("/uvicorn/", "/httptools/", "/starlette/")),
    ("route-llm: parse, resolve, decide, shape, metrics, log", ("/proxy/", "prometheus_client")),
    ("pydantic (LiteLLM response objects)", ("/pydantic",)),
]
GENERIC: list[tuple[str, tuple[str, ...]]] = [
    ("thread hops (executor submit, futures, anyio)", ("threading.py",)),
    ("asyncio (Python parts of the loop)", ("asyncio/", "selectors.py")),
]
OTHER = "other (interpreter, gc, stdlib)"
# Leaf frames where a thread waits: an executor thread on its queue, a condition, and the main thread inside
# uvloop's C loop (py-spy cannot tell its epoll wait from its own native work; both are left out).
IDLE = (("Runner.run ", "/asyncio/runners.py:"), ("_worker ", "/concurrent/futures/thread.py:81)"),
        ("Condition.wait ", "/threading.py:"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bucket_of(stack: str) -> str | None:
    """The bucket of one collapsed stack (``frame;frame;...``, outermost first); None for a waiting thread."""
    frames = stack.split(";")
    leaf = frames[-1]
    if any(leaf.startswith(function) and path in leaf for function, path in IDLE):
        return None
    # py-spy names a frame "function (path:line)"; --full-filenames keeps the whole path (without it, py-spy
    # shortens some of LiteLLM's paths to a bare file name, which would count them as ours)
    files = ["/" + frame[frame.rfind("(") + 1:frame.rfind(":")] for frame in reversed(frames)]
    for table in (BUCKETS, GENERIC):
        for file in files:
            for name, needles in table:
                if any(n in file for n in needles):
                    return name
    return OTHER


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def post(url: str, body: dict[str, object]) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--model", default="auto", help="the model name requests ask for (auto: routed)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--route-llm", default=str(Path(sys.executable).parent / "route-llm"))
    p.add_argument("--config", default=str(ROOT / "config.yaml"),
                   help="the config to point at the stand-in (an older tree needs its own)")
    p.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks in this file")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="profile-proxy-"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}
    sp, port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "proxy.demo.standin", "--port", str(sp)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        cfg = yaml.safe_load(Path(args.config).read_text())
        for tier in ("weak", "strong"):
            cfg["models"][tier].update(api_base=f"http://127.0.0.1:{sp}", api_key="profile-upstream-key")
        cfg["server"].update(host="127.0.0.1", port=port, api_keys=[])
        cfg["documents"]["storage_dir"] = str(tmp / "files")
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
        server = subprocess.Popen([args.route_llm, "serve", "--config", str(tmp / "config.yaml")], env=env,
                                  stdout=open(tmp / "serve.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                  start_new_session=True)
        procs.append(server)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print((tmp / "serve.log").read_text()[-2000:], file=sys.stderr)
                return 1
            time.sleep(0.1)
        prompts = ["What is the capital of France?", "Write a haiku about autumn leaves.",
                   "Explain the difference between a process and a thread, with an example of when each is better.",
                   "How many legs does a spider have?"]

        def body(i: int) -> dict[str, object]:
            return {"model": args.model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}

        for i in range(args.warmup):
            post(f"{url}/v1/chat/completions", body(i))
        pid = server.pid  # one worker serves in the process `route-llm serve` started
        raw = tmp / "profile.txt"
        spy_proc = subprocess.Popen([spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "-p", str(pid),
                                     "--nonblocking", "--full-filenames"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        for i in range(args.requests):
            post(f"{url}/v1/chat/completions", body(i))
        cpu_ms = (cpu_seconds(pid) - cpu0) / args.requests * 1000
        wall_ms = (time.perf_counter() - t0) / args.requests * 1000
        spy_proc.send_signal(signal.SIGINT)
        spy_proc.wait(timeout=30)
        counts: Counter[str] = Counter()
        idle = 0
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                name = bucket_of(stack)
                if name is None:
                    idle += int(n)
                else:
                    counts[name] += int(n)
        if args.raw:
            shutil.copyfile(raw, args.raw)
        total = sum(counts.values()) or 1
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"`python scripts/profile_proxy.py --requests {args.requests} --model {args.model}`: "
              f"{cpu_ms:.2f} ms of worker CPU and {wall_ms:.2f} ms wall per request (sequential), "
              f"{total} busy samples ({idle} waiting left out), load average {load}")
        print()
        print("| part | share of busy samples | CPU ms per request |")
        print("|---|---|---|")
        for name, n in counts.most_common():
            print(f"| {name} | {n / total * 100:.0f} % | {cpu_ms * n / total:.2f} |")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
