"""Per-request overhead of a dialect's edge: POST /v1/messages (Anthropic) against POST /v1/chat/completions.

One stand-in and one ``route-llm serve`` (1 worker, the shipped config pointed at the stand-in), both started here
as subprocesses and killed on exit. The same prompt, the same configured model (no router run, so only the edge
differs), sequential requests over one pooled connection. The two endpoints are measured in interleaved rounds
(each round: ``--per-round`` requests to one, then to the other, the order swapped every round), so drift of the
machine's load hits both alike. For each round the p50 of each endpoint is taken; the table gives the median of the
per-round p50s and of their differences (messages minus chat), with the differences' range as the spread, for
plain and streamed requests (a stream's time is its last byte). Under load the wall-clock spread is wide, so the
script also measures, in this process, the CPU time of what the Anthropic edge adds per request: translating the
body (``parse_messages_request`` against ``parse_chat_request``) and rendering the answer (``render_message``).

Example:
    python scripts/bench_dialects.py --rounds 10 --per-round 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from bench_proxy import ROOT, free_port, loadavg, pct, start, stop

PROMPT = "What is the capital of France?"


def chat_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}


def messages_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}


async def timed(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start_t = time.perf_counter()
    async with session.post(url, data=body, headers={"content-type": "application/json",
                                                      "x-api-key": "bench"}) as r:
        data = await r.read()
        if r.status != 200 or not data:
            raise RuntimeError(f"{url} answered {r.status}: {data[:300]!r}")
    return time.perf_counter() - start_t


async def wait_ready(session: aiohttp.ClientSession, url: str, proc: Any, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"route-llm exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"route-llm not ready after {timeout} s; see {log}")


async def rounds(session: aiohttp.ClientSession, base: str, model: str, args: argparse.Namespace,
                 stream: bool) -> dict[str, list[float]]:
    """Per-round p50s (ms) of each endpoint."""
    targets = {"chat": (f"{base}/v1/chat/completions", json.dumps(chat_body(model, stream)).encode()),
               "messages": (f"{base}/v1/messages", json.dumps(messages_body(model, stream)).encode())}
    for url, body in targets.values():  # warm-up, not counted
        for _ in range(args.warmup):
            await timed(session, url, body)
    out: dict[str, list[float]] = {"chat": [], "messages": []}
    for r in range(args.rounds):
        order = ["chat", "messages"] if r % 2 == 0 else ["messages", "chat"]
        for name in order:
            url, body = targets[name]
            out[name].append(pct([await timed(session, url, body) for _ in range(args.per_round)], 50))
    return out


def edge_cpu_us(n: int) -> dict[str, tuple[float, float]]:
    """CPU microseconds per request, chat edge against Anthropic edge: the body's parse plus the answer's render,
    and a three-chunk stream's formatting (start, chunks, end)."""
    from proxy.edge.chat import parse_chat_request
    from proxy.edge.messages import parse_messages_request
    from proxy.edge.messages_reply import MessagesStream, render_message
    from proxy.edge.routes import ChatStream

    limits: dict[str, Any] = {"limit_messages": 1000, "limit_content_chars": 1_000_000}
    req = parse_messages_request(messages_body("m", True), **limits)
    answer = {"model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Paris is the capital of France."}}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}}
    chunks = [{"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": f"word{i} "},
                                                     "finish_reason": "stop" if i == 2 else None}]}
              for i in range(3)]

    def chat_stream() -> None:
        fmt = ChatStream(False)
        b"".join([fmt.start(), *(fmt.chunk(dict(c)) for c in chunks), fmt.end()])

    def messages_stream() -> None:
        fmt = MessagesStream(req, "m")
        b"".join([fmt.start(), *(fmt.chunk(dict(c)) for c in chunks), fmt.end()])

    def per_call(fn: Any) -> float:
        start_t = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - start_t) / n * 1e6

    return {
        "parse + render": (per_call(lambda: parse_chat_request(chat_body("m", False), **limits)),
                           per_call(lambda: render_message(parse_messages_request(messages_body("m", False),
                                                                                   **limits), answer))),
        "stream of 3 chunks": (per_call(chat_stream), per_call(messages_stream)),
    }


def report(label: str, p50s: dict[str, list[float]]) -> str:
    diffs = [m - c for m, c in zip(p50s["messages"], p50s["chat"])]
    return (f"| {label} | {statistics.median(p50s['chat']):.2f} | {statistics.median(p50s['messages']):.2f} | "
            f"{statistics.median(diffs):+.3f} | {min(diffs):+.3f} … {max(diffs):+.3f} |")


async def amain(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dialects-"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}
    for name in ("ROUTE_LLM_API_KEYS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    sp, port = free_port(), free_port()
    standin = start([sys.executable, "-m", "proxy.demo.standin", "--port", str(sp)], env, tmp / "standin.log")
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=f"http://127.0.0.1:{sp}", api_key="bench-upstream-key")
    cfg["server"].update(host="127.0.0.1", port=port, api_keys=[])
    cfg["documents"]["storage_dir"] = str(tmp / "files")
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    model = cfg["models"]["weak"]["name"]
    proxy = start([args.route_llm, "serve", "--config", str(tmp / "config.yaml")], env, tmp / "route-llm.log")
    base = f"http://127.0.0.1:{port}"
    try:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            await wait_ready(session, f"{base}/health/ready", proxy, tmp / "route-llm.log", args.timeout_ready)
            load_before = loadavg()
            plain = await rounds(session, base, model, args, stream=False)
            streamed = await rounds(session, base, model, args, stream=True)
            load_after = loadavg()
    finally:
        stop(proxy)
        stop(standin)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.rounds} interleaved rounds x "
          f"{args.per_round} sequential requests per endpoint; model {model}; load average {load_before} before, "
          f"{load_after} after; {os.cpu_count()} CPUs")
    print("| requests | chat p50 ms | messages p50 ms | messages − chat, median of rounds (ms) | spread (ms) |")
    print("|---|---|---|---|---|")
    print(report("non-streamed", plain))
    print(report("streamed (last byte)", streamed))
    print("edge CPU per request, in process (20,000 requests each):")
    for label, (chat_us, messages_us) in edge_cpu_us(20_000).items():
        print(f"  {label}: chat {chat_us:.1f} µs, messages {messages_us:.1f} µs, difference "
              f"{messages_us - chat_us:+.1f} µs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=100, help="sequential requests per endpoint and round")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--route-llm", default=str(Path(sys.executable).parent / "route-llm"))
    p.add_argument("--timeout-ready", type=float, default=180)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
