"""Per-thread CPU of one route-llm worker under concurrent load: is the event loop or the router thread the limit?

Starts the Gemini stand-in and `route-llm serve` (one worker, the shipped config pointed at the stand-in), sends
warm-up requests, then ``--requests`` chat completions with ``--in-flight`` at a time, and reads every thread's
utime+stime from /proc before and after. Prints req/s and, per busy thread, its share of a core and its CPU ms
per request. Linux only (it reads /proc).

With ``model: auto`` a worker has two busy threads: the event loop (parsing, LiteLLM, HTTP) and the router thread
(tokenizer, ONNX run, head). When neither is near 100% of a core, they are waiting for each other (the GIL).

Example:
    python scripts/thread_cpu.py --model auto
    python scripts/thread_cpu.py --model gemini-1.5-flash
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_proxy import PROMPTS, free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_ticks(pid: int) -> dict[str, tuple[str, int]]:
    """Thread id → (name, utime+stime in clock ticks) for every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


async def drive(port: int, model: str, requests: int, in_flight: int, pid: int) -> None:
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with session.get(f"{url}/health/ready") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("route-llm did not become ready")
            await asyncio.sleep(0.05)

        async def one(i: int) -> None:
            body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
            async with session.post(f"{url}/v1/chat/completions", json=body) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")

        for i in range(100):
            await one(i)
        gate = asyncio.Semaphore(in_flight)

        async def gated(i: int) -> None:
            async with gate:
                await one(i)

        before = thread_ticks(pid)
        started = time.perf_counter()
        await asyncio.gather(*(gated(i) for i in range(requests)))
        wall = time.perf_counter() - started
        after = thread_ticks(pid)
    print(f"model {model}, {in_flight} in flight: {requests / wall:.0f} req/s")
    for tid, (name, ticks) in sorted(after.items(), key=lambda kv: kv[1][1] - before.get(kv[0], ("", 0))[1],
                                     reverse=True):
        used = (ticks - before.get(tid, (name, 0))[1]) / CLK_TCK
        if used / wall >= 0.02:
            print(f"  thread {tid} ({name}): {used / wall:.0%} of a core, {1000 * used / requests:.2f} ms/request")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="auto")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--in-flight", type=int, default=32)
    p.add_argument("--route-llm", default=str(Path(sys.executable).parent / "route-llm"))
    args = p.parse_args()
    if args.requests < 1 or args.in_flight < 1:
        p.error("--requests and --in-flight must be positive")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    standin_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
        for tier in ("weak", "strong"):
            cfg["models"][tier].update(api_base=f"http://127.0.0.1:{standin_port}", api_key="bench-upstream-key")
        cfg["server"].update(host="127.0.0.1", port=port, api_keys=[])
        cfg["documents"]["storage_dir"] = str(Path(tmp) / "files")
        path = Path(tmp) / "route-llm.yaml"
        path.write_text(yaml.safe_dump(cfg))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        standin = subprocess.Popen([sys.executable, "-m", "proxy.demo.standin", "--port", str(standin_port)], env=env,
                                   cwd=ROOT, **quiet)  # type: ignore[call-overload]
        server = subprocess.Popen([args.route_llm, "serve", "--config", str(path)], env=env, cwd=ROOT,
                                  **quiet)  # type: ignore[call-overload]
        try:
            asyncio.run(drive(port, args.model, args.requests, args.in_flight, server.pid))
        finally:
            for proc in (server, standin):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
