"""Attack the proxy the ways issues 15 and 29 found, and check that nobody else notices.

Starts the Gemini stand-in (in this process) and ``route-llm serve`` on loopback only, with two proxy keys:
one attacks, the other sends a normal request (``POST /v1/route``) every 20 ms throughout each attack. For
each attack it prints what the attacker got (status counts), the limit that answered it, the normal key's
latency p50/p99 (measured from a process of its own), and the server's RSS before the attack, at its peak
and after. Every attack is bounded in
time and size; nothing leaves 127.0.0.1.

Rows with servers of their own: the file store on a full disk (a 4 MB tmpfs, mounted here: needs root, and the
row says NOT RUN without it), ``serve --demo`` with large chats, and one key's ratings through ``route-llm
feedback export`` and ``route-llm retrain``.

The last rows stop a server: streams at the shutdown deadline (SIGTERM with ``timeout_shutdown: 3``), the same
under ``--workers 2`` (a server of its own), and PDF extraction children of a SIGKILLed server (another). The
per-address limit row needs a server without proxy keys: it gets one of its own too.

Nothing here imports from ``tests/``: the stand-in is ``proxy.standin`` and the PDFs are written out here.

    python scripts/attack.py            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _probe(url: str, key: str) -> None:
    """``--probe URL KEY``: POST /v1/route every 20 ms until stdin closes, then print the latencies as JSON.

    A process of its own, so that the attacking threads of this one cannot slow its clock (they share a GIL).
    """
    import select

    latencies: list[float] = []
    failed = 0
    print("ready", flush=True)
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
        while not (select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1)):
            start = time.perf_counter()
            try:
                ok = http.post("/v1/route", json={"prompt": "What is the capital of France?"}).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - start) * 1000)
            failed += not ok
            time.sleep(0.02)
    print(json.dumps({"latencies": latencies, "failed": failed}), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--probe"]:
    _probe(sys.argv[2], sys.argv[3])
    sys.exit(0)

from proxy.demo.standin import Fault, StandInServer, free_port  # noqa: E402

ATTACKER, NORMAL = "sk-attacker", "sk-normal"
ROUTE_LLM = str(Path(sys.executable).with_name("route-llm"))
SHUTDOWN, SIGKILL = "8 streams of ~9 s, then SIGTERM", "SIGKILL during 2 PDF extractions"
SHUTDOWN_WORKERS = "8 streams of ~9 s, then SIGTERM, --workers 2"
FULL_DISK = "files directory on a 4 MB tmpfs: uploads until refused, delete them all, upload again"
ONE_KEY = "one key's 400 ratings, then feedback export and retrain; 50 from another key, capped export"
DEMO = "serve --demo: 100 chats of 500 kB, 4 clients"
PER_ADDRESS = "no proxy keys, limit_requests_per_minute 20: 25 requests from one address, 5 from another"
CONFIG: dict[str, Any] = {
    "server": {"api_keys": [ATTACKER, NORMAL], "timeout_shutdown": 3},
    "documents": {"limit_storage_bytes": 10_000_000},
    "router": {"context": "conversation"},  # the turn-cache row needs it; /v1/route with a prompt is unaffected
    # No circuit breaker: the fault rows would open it (as they should), and the rows after them (the leaving
    # streams, the shutdown) were then refused 503 without reaching the upstream, and the error-body row scanned the
    # breaker's one body instead of each fault's. The breaker has its own tests (tests/proxy/upstream/test_breaker.py).
    "upstream": {"breaker": {"failures": None}},
}
#: What an error body must never show (issue 29 row 13): addresses and ports, reprs, LiteLLM's names, tracebacks.
LEAKS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|localhost|object at 0x|SSLContext|litellm|Traceback|api_base",
                   re.IGNORECASE)


def many_pages_pdf(pages: list[str], padding: int = 0) -> bytes:
    """A PDF with one line of text per page, written out directly (fpdf takes minutes for 300 pages).

    ``padding`` bytes go into an object no page refers to: a file that big costs nothing to extract.
    """
    return _pdf([b"BT /F1 10 Tf 72 720 Td (" + text.encode("ascii") + b") Tj ET" for text in pages], padding)


def pdf_with_pages(pages: list[str]) -> bytes:
    """A small PDF, one line of (ASCII) text per page."""
    return many_pages_pdf(pages)


def slow_pdf(lines: int = 50_000) -> bytes:
    """One page of ``lines`` text-showing operators: seconds of extraction for pypdf."""
    return _pdf([b"BT /F1 12 Tf 72 720 Td " + b"(lorem ipsum dolor) Tj 0 -1 Td\n" * lines + b"ET"])


def _pdf(contents: list[bytes], padding: int = 0) -> bytes:
    """A PDF with one page per content stream (Helvetica as F1)."""
    n = len(contents)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n)), n),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, content in enumerate(contents):
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
                       b" /Resources << /Font << /F1 3 0 R >> >> >>" % (5 + 2 * i))
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    if padding:
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (padding, b"0" * padding))
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    def __init__(self, work: Path, standin: StandInServer, name: str = "proxy", *, workers: int = 1,
                 server: dict[str, Any] | None = None, sections: dict[str, dict[str, Any]] | None = None,
                 demo: bool = False) -> None:
        """``sections``: configuration sections to update (``documents``, ``feedback``); ``demo``: run
        ``serve --demo``, whose models answer from its own stand-in (``standin`` is not used then)."""
        cfg = json.loads(json.dumps(CONFIG))
        cfg["server"].update(server or {})
        upstream = {} if demo else {"api_base": standin.base_url, "api_key": "x"}
        cfg["models"] = {t: {"name": n, "model": f"gemini/{n}", **upstream, "timeout": 30}
                         for t, n in (("weak", "gemini-1.5-flash"), ("strong", "gemini-1.5-pro"))}
        cfg["documents"]["storage_dir"] = str(work / f"{name}-files")
        for section, values in (sections or {}).items():
            cfg.setdefault(section, {}).update(values)
        self.port = free_port()
        cfg["server"]["port"] = self.port
        path = self.config = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        env.pop("ROUTE_LLM_API_KEYS", None)
        self.log = work / f"{name}.log"
        self.proc = subprocess.Popen([ROUTE_LLM, "serve", "--config", str(path), "--workers", str(workers),
                                      *(["--demo"] if demo else [])],
                                     env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300  # a busy shared machine can take minutes
        while True:
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"route-llm did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Row:
    attack: str
    limit: str
    outcome: str
    p50: float = float("nan")
    p99: float = float("nan")
    rss_before: float = float("nan")
    rss_peak: float = float("nan")
    rss_after: float = float("nan")
    probes: int = 0
    failed_probes: int = 0


def measure(server: Server, attack: str, limit: str, run: Callable[[], str]) -> Row:
    """Run ``run`` while the normal key probes /v1/route every 20 ms and RSS is sampled every 50 ms."""
    stop = threading.Event()
    peak = [rss_mib(server.proc.pid)]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib(server.proc.pid))
            stop.wait(0.05)

    before = rss_mib(server.proc.pid)
    probe = subprocess.Popen([sys.executable, __file__, "--probe", server.url, NORMAL], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert probe.stdout is not None and probe.stdout.readline() == "ready\n"
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        outcome = run()
    finally:
        stop.set()
        sampler.join()
        out, _ = probe.communicate(timeout=120)
    result = json.loads(out.strip().splitlines()[-1])
    latencies = result["latencies"]
    time.sleep(1.0)
    return Row(attack, limit, outcome, pct(latencies, 0.5), pct(latencies, 0.99), before, peak[0],
               rss_mib(server.proc.pid), len(latencies), result["failed"])


def statuses(codes: list[int]) -> str:
    return ", ".join(f"{code}×{n}" for code, n in sorted(Counter(codes).items()))


def repeat(seconds: float, workers: int, once: Callable[[], int]) -> list[int]:
    """Call ``once`` from ``workers`` threads until ``seconds`` pass; the status codes it returned."""
    end = time.monotonic() + seconds
    codes: list[int] = []

    def loop() -> None:
        while time.monotonic() < end:
            codes.append(once())

    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(loop) for _ in range(workers)]:
            f.result()
    return codes


def chat(http: httpx.Client, content: Any, **extra: Any) -> int:
    body = {"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": content}], **extra}
    return http.post("/v1/chat/completions", content=json.dumps(body),
                     headers={"content-type": "application/json"}).status_code


def inline(data: bytes, name: str) -> dict[str, Any]:
    return {"type": "file", "file": {"filename": name,
                                     "file_data": "data:application/pdf;base64," + base64.b64encode(data).decode()}}


# --- the attacks ---------------------------------------------------------------------------------------

def idle_for(seconds: float) -> Callable[[], str]:
    def run() -> str:
        time.sleep(seconds)
        return "-"
    return run


def plain_chats(server: Server) -> str:
    """The reference for the document rows: the same four clients asking without a document."""
    with server.client(ATTACKER) as http:
        return statuses(repeat(8, 4, lambda: chat(http, "the revenue?")))


def file_id_repeats(server: Server, big: bytes) -> Callable[[], str]:
    with server.client(ATTACKER) as http:
        file_id = http.post("/v1/files", files={"file": ("big.pdf", big)}, data={"purpose": "user_data"}).json()["id"]

    def run() -> str:
        with server.client(ATTACKER) as http:
            part = {"type": "file", "file": {"file_id": file_id}}
            codes = repeat(8, 4, lambda: chat(http, [part] * 200 + [{"type": "text", "text": "the revenue?"}]))
        return statuses(codes)
    return run


def distinct_files(server: Server) -> Callable[[], str]:
    with server.client(ATTACKER) as http:
        ids = [http.post("/v1/files", files={"file": (f"f{i}.pdf", pdf_with_pages([f"doc {i}"]))},
                         data={"purpose": "user_data"}).json()["id"] for i in range(21)]

    def run() -> str:
        with server.client(ATTACKER) as http:
            parts = [{"type": "file", "file": {"file_id": i}} for i in ids]
            return statuses(repeat(4, 4, lambda: chat(http, [*parts, {"type": "text", "text": "?"}])))
    return run


def inline_copies(server: Server) -> str:
    small = pdf_with_pages(["a small inline document " * 40])
    with server.client(ATTACKER) as http:
        return statuses(repeat(6, 4, lambda: chat(http, [inline(small, "s.pdf")] * 12 + [{"type": "text",
                                                                                            "text": "?"}])))


def inline_distinct(server: Server) -> str:
    docs = [inline(pdf_with_pages([f"inline document {i}"]), f"d{i}.pdf") for i in range(6)]
    with server.client(ATTACKER) as http:
        return statuses(repeat(4, 4, lambda: chat(http, [*docs, {"type": "text", "text": "?"}])))


def slow_bodies(server: Server) -> str:
    socks: list[socket.socket] = []
    refused: list[int] = []
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ATTACKER}\r\n"
            "content-type: application/json\r\ncontent-length: 100000\r\n\r\n{").encode()
    for _ in range(512):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(head)
        socks.append(s)
    time.sleep(1.0)
    for s in socks:  # those refused got a 503 at once; the others are held, up to timeout_body
        s.setblocking(False)
        try:
            data = s.recv(4096)
            refused.append(int(data.split()[1]) if data else 0)
        except BlockingIOError:
            pass
    time.sleep(7.0)
    held = len(socks) - len(refused)
    for s in socks:
        s.close()
    return f"{statuses(refused)} at once; {held} held"


def trickled_headers(server: Server) -> str:
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(200)]
    start = time.monotonic()
    for s in socks:
        s.sendall(b"GET /v1/models HTTP/1.1\r\n")
        s.setblocking(False)
    closed: dict[int, float] = {}
    while len(closed) < len(socks) and time.monotonic() - start < 15:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                if s.recv(4096) == b"":
                    closed[i] = time.monotonic() - start
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = time.monotonic() - start
                continue
            try:
                s.send(b"x")  # one more header byte
            except OSError:
                closed[i] = time.monotonic() - start
        time.sleep(0.5)
    for s in socks:
        s.close()
    when = sorted(closed.values())
    return f"{len(closed)}/{len(socks)} closed by the server, after {pct(when, 0.5):.1f} s" if when else "none closed"


def deep_schemas(server: Server) -> str:
    # Written out by hand: json.dumps itself recurses, and 900 levels is past its limit too.
    schema = '{"type": "object", "properties": {"a": ' * 450 + '{"type": "string"}' + "}}" * 450
    body = ('{"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}], "tools": '
            '[{"type": "function", "function": {"name": "f", "parameters": ' + schema + "}}]}")
    with server.client(ATTACKER) as http:
        return statuses(repeat(6, 8, lambda: http.post("/v1/chat/completions", content=body,
                                                       headers={"content-type": "application/json"}).status_code))


def lone_surrogates(server: Server) -> str:
    with server.client(ATTACKER) as http:
        return statuses(repeat(3, 4, lambda: chat(http, "half a pair: \ud800", stream=True))
                        + repeat(3, 4, lambda: chat(http, "half a pair: \ud800")))


def big_uploads(server: Server, count: int, mb: int) -> str:
    junk = b"%PDF-1.4\n" + os.urandom(mb * 1_000_000 - 16) + b"\n%%EOF\n"  # a PDF's frame, no PDF inside

    def once() -> int:
        with server.client(ATTACKER) as http:
            return http.post("/v1/files", files={"file": ("big.pdf", junk)}, data={"purpose": "user_data"}).status_code

    with ThreadPoolExecutor(count) as pool:
        return statuses(list(pool.map(lambda _: once(), range(count))))


def storage_quota(server: Server) -> str:
    padded = many_pages_pdf(["a 2 MB file that is cheap to read"], padding=2_000_000)
    codes: list[int] = []
    with server.client(ATTACKER) as http:
        while len(codes) < 40 and (not codes or codes[-1] == 200):
            r = http.post("/v1/files", files={"file": ("q.pdf", padded)}, data={"purpose": "user_data"})
            codes.append(r.status_code)
    return statuses(codes)


def streams_at_shutdown(server: Server, standin: StandInServer, name: str = SHUTDOWN) -> Row:
    standin.state.faults.extend([Fault("slow_stream", seconds=3)] * 8)
    results: list[str] = []
    started: list[bool] = []

    def stream() -> None:
        try:
            with server.client(NORMAL) as http, http.stream("POST", "/v1/chat/completions", json={
                    "model": "gemini-1.5-flash", "stream": True,
                    "messages": [{"role": "user", "content": "a long story"}]}) as r:
                lines = []
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        if len(lines) == 1:
                            started.append(True)
            ok = lines[-1] == "data: [DONE]" and "shutting_down" in lines[-2]
            results.append("error event + [DONE]" if ok else "other ending")
        except httpx.HTTPError:
            results.append("cut")

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(started) < 8 and time.monotonic() < deadline:  # every stream has its first chunk
        time.sleep(0.1)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    server.proc.wait(timeout=60)
    logged = sum(1 for line in server.log.read_text().splitlines()
                 if line.startswith('{"request_id"') and json.loads(line)["status"] == "shutdown")
    endings = ", ".join(f"{n}× {what}" for what, n in Counter(results).most_common())
    return Row(name, "server.timeout_shutdown 3 s",
               f"{endings}; {logged} logged as \"shutdown\"")


def children_after_sigkill(work: Path, standin: StandInServer) -> Row:
    server = Server(work, standin, "sigkill")
    name = f"rlpdf-{server.proc.pid}"

    def alive() -> int:
        n = 0
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "comm").read_text().strip() == name and \
                        (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    n += 1
            except OSError:
                pass
        return n

    data = slow_pdf(150_000)  # 4.8 MB: two of them stay within the 10 MB storage quota, checked first

    def upload() -> None:
        try:
            with server.client(ATTACKER) as http:
                http.post("/v1/files", files={"file": ("slow.pdf", data)}, data={"purpose": "user_data"})
        except httpx.HTTPError:
            pass

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while alive() < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    running = alive()
    server.proc.kill()
    server.proc.wait()
    time.sleep(3)
    left = alive()
    for t in threads:
        t.join(timeout=30)
    return Row(SIGKILL, "children exit with the server",
               f"{running} running before, {left} left 3 s after")


# --- issue 29 ------------------------------------------------------------------------------------------

def header_flood(server: Server, sockets: int = 10, seconds: float = 10) -> str:
    """Unauthenticated connections sending 8 kB header lines as fast as they can, reconnecting when closed."""
    line = b"x-filler: " + b"a" * 8000 + b"\r\n"
    end = time.monotonic() + seconds
    answers: list[int] = []
    sent = [0]

    def one() -> None:
        while time.monotonic() < end:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.settimeout(1)
            try:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
                while time.monotonic() < end:
                    sent[0] += s.send(line)
            except OSError:
                pass
            try:
                data = s.recv(4096)
                answers.append(int(data.split()[1]) if data.startswith(b"HTTP/1.1") else 0)
            except (OSError, ValueError, IndexError):
                answers.append(0)
            s.close()

    threads = [threading.Thread(target=one) for _ in range(sockets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return f"{statuses(answers)} over {len(answers)} connections; {sent[0] / 1e6:.0f} MB sent"


def _tools(n: int, padding: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": f"tool_{i}", "description": "does a thing", "parameters": {
        "type": "object", "properties": {"path": {"type": "string", "description": "p" * padding}}}}}
            for i in range(n)]


def _body(**extra: Any) -> bytes:
    return json.dumps({"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "hi"}],
                       **extra}).encode()


def tool_floods(server: Server) -> str:
    big_schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 120}
                                                   for i in range(130_000)}}  # about 18 MB
    bodies = [_body(tools=_tools(40_000, 60)),  # about 6 MB
              _body(tools=[{"type": "function", "function": {"name": "f", "parameters": big_schema}}]),
              _body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                  "type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 120}
                                                   for i in range(36_000)}}}})]  # about 5 MB
    turn = [0]

    def once(http: httpx.Client) -> int:
        turn[0] += 1
        return http.post("/v1/chat/completions", content=bodies[turn[0] % 3],
                         headers={"content-type": "application/json"}).status_code

    with server.client(ATTACKER) as http:
        return statuses(repeat(8, 4, lambda: once(http)))


def agent_tools(server: Server) -> str:
    body = _body(tools=_tools(500, 1700))  # 500 tools, about 0.9 MB: just inside both limits
    with server.client(ATTACKER) as http:
        return statuses(repeat(8, 4, lambda: http.post("/v1/chat/completions", content=body, headers={
            "content-type": "application/json"}).status_code))


def big_turns(server: Server) -> str:
    n = [0]

    def once(http: httpx.Client) -> int:
        n[0] += 1
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{n[0]}-{i} " + "x" * 480_000}
                 for i in range(3)] + [{"role": "user", "content": f"{n[0]} and so?"}]
        return chat_messages(http, turns)

    with server.client(ATTACKER) as http:
        return statuses(repeat(8, 4, lambda: once(http)))


def chat_messages(http: httpx.Client, messages: list[dict[str, Any]]) -> int:
    return http.post("/v1/chat/completions", json={"model": "auto", "messages": messages}).status_code


def broken_streams(server: Server, standin: StandInServer) -> str:
    standin.state.faults.extend([Fault("cut"), Fault("garbled")] * 100)
    endings: list[str] = []

    def once(http: httpx.Client) -> int:
        with http.stream("POST", "/v1/chat/completions", json={
                "model": "gemini-1.5-flash", "stream": True,
                "messages": [{"role": "user", "content": "a story"}]}) as r:
            lines = [line for line in r.iter_lines() if line]
        last = lines[-2] if len(lines) >= 2 else ""
        endings.append("error event" if '"error"' in last else "finish_reason stop" if '"stop"' in last else "other")
        return r.status_code

    try:
        with server.client(ATTACKER) as http:
            codes = repeat(6, 4, lambda: once(http))
    finally:
        standin.state.faults.clear()
    ends = ", ".join(f"{n}× {what}" for what, n in Counter(endings).most_common())
    return f"{statuses(codes)}; streams ended: {ends}"


def error_bodies(server: Server, standin: StandInServer) -> str:
    kinds = [Fault("status", status=s) for s in (400, 401, 403, 404, 429, 500, 503)] + [
        Fault("reset"), Fault("body", body="<html>502 at 10.1.2.3:8443</html>")]
    bodies: list[str] = []
    try:
        with server.client(ATTACKER) as http:
            for _ in range(3):
                for fault in kinds:
                    standin.state.faults.extend([fault] * 6)  # past retries and the fallback
                    for stream in (False, True):
                        bodies.append(http.post("/v1/chat/completions", json={
                            "model": "gemini-1.5-flash", "stream": stream,
                            "messages": [{"role": "user", "content": "hi"}]}).text)
                    standin.state.faults.clear()
    finally:
        standin.state.faults.clear()
    leaks = [b for b in bodies if LEAKS.search(b)]
    return f"{len(bodies)} error bodies, {len(leaks)} with internals" + (f": {leaks[0][:120]}" if leaks else "")


def feedback_flood(server: Server) -> str:
    """100 clients rating request ids that do not exist."""
    with server.client(ATTACKER) as http:
        return statuses(repeat(6, 100, lambda: http.post("/v1/feedback", json={
            "request_id": f"req-{time.monotonic_ns()}", "rating": "good"}).status_code))


def unread_downloads(server: Server, mb: int = 8, clients: int = 40) -> Callable[[], str]:
    data = many_pages_pdf(["a file to download"], padding=mb * 1_000_000)
    with server.client(NORMAL) as http:  # the attacker's quota is spent by the quota row
        file_id = http.post("/v1/files", files={"file": ("dl.pdf", data)}, data={"purpose": "user_data"}).json()["id"]

    def run() -> str:
        socks = []
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /v1/files/{file_id}/content HTTP/1.1\r\nhost: x\r\n"
                      f"authorization: Bearer {NORMAL}\r\n\r\n".encode())
            socks.append(s)
        time.sleep(6)
        codes = []
        for s in socks:
            try:
                codes.append(int(s.recv(12).split()[1]))
            except (OSError, ValueError, IndexError):
                codes.append(0)
            s.close()
        return f"{statuses(codes)} (never read)"
    return run


def per_address(server: Server) -> Row:
    def burst(source: str, n: int) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=30,
                          transport=httpx.HTTPTransport(local_address=source)) as http:
            return [http.post("/v1/route", json={"prompt": "hi"}).status_code for _ in range(n)]

    first, second = burst("127.0.0.2", 25), burst("127.0.0.3", 5)  # 127.0.0.1 keeps its budget for the next row
    return Row(PER_ADDRESS, "per client address (server.trusted_proxies for X-Forwarded-For)",
               f"first address: {statuses(first)}; second: {statuses(second)}")


def leaving_streams(server: Server, standin: StandInServer, clients: int = 20, events: int = 1000) -> str:
    """``clients`` streams of ``events`` 10 kB events (10 MB each, sent as fast as the proxy reads), each left after
    its first event, all at once."""
    standin.state.faults.extend([Fault("long", events=events)] * clients)
    closed_before, ended_before = standin.state.streams_closed_early, standin.state.long_streams_ended
    codes: list[int] = []
    started = threading.Barrier(clients + 1, timeout=120)
    leave = threading.Event()

    def one() -> None:
        try:
            with server.client(ATTACKER) as http, http.stream("POST", "/v1/chat/completions", json={
                    "model": "gemini-1.5-flash", "stream": True,
                    "messages": [{"role": "user", "content": "a very long story"}]}) as r:
                codes.append(r.status_code)
                lines = r.iter_lines()  # held: a dropped line iterator closes the response
                next(lines, None)
                started.wait()
                leave.wait(120)
        except (httpx.HTTPError, threading.BrokenBarrierError):
            codes.append(0)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        started.wait()
    except threading.BrokenBarrierError:
        pass
    time.sleep(3)  # the proxy fills each client's socket buffers meanwhile
    leave.set()
    left = time.monotonic()
    for t in threads:
        t.join(timeout=60)
    # A stream the sockets between the stand-in and a client could hold whole (about 10 MB on loopback) was sent to its
    # end before the client left; every other one must be closed early.
    while standin.state.long_streams_ended - ended_before < clients and time.monotonic() - left < 20:
        time.sleep(0.05)
    closed = standin.state.streams_closed_early - closed_before
    ended = standin.state.long_streams_ended - ended_before
    closing = time.monotonic() - left
    standin.state.faults.clear()
    time.sleep(2)  # and the other key keeps probing after
    return (f"{statuses(codes)}; {closed}/{clients} upstream streams closed before their end, {ended - closed} "
            f"sent whole into the sockets, {clients - ended} still open {closing:.1f} s after the clients left")


def demo_chats(server: Server, count: int = 100, size: int = 500_000) -> str:
    """``count`` chats of ``size`` characters, 4 clients, against ``serve --demo``."""
    body = json.dumps({"model": "gemini-1.5-flash", "messages": [{"role": "user", "content": "x" * size}]})
    codes: list[int] = []
    with server.client(ATTACKER) as http, ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: http.post("/v1/chat/completions", content=body, headers={
            "content-type": "application/json"}).status_code, range(count)))
    return statuses(codes)


def demo_row(work: Path, standin: StandInServer) -> Row:
    server = Server(work, standin, "demo", demo=True)
    try:
        return measure(server, DEMO, "the demo stand-in keeps no bodies", lambda: demo_chats(server))
    finally:
        server.stop()


def full_disk(work: Path, standin: StandInServer) -> Row:
    """The file store on a 4 MB tmpfs: uploads until refused, every file deleted, one upload again."""
    disk = work / "small-disk"
    disk.mkdir()
    if os.geteuid() != 0:
        return Row(FULL_DISK, "507 insufficient_storage", "NOT RUN: mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        return Row(FULL_DISK, "507 insufficient_storage",
                   f"NOT RUN: cannot mount a tmpfs: {mounted.stderr.strip()[:120]}")
    try:
        server = Server(work, standin, "disk", sections={"documents": {"storage_dir": str(disk)}})
        try:
            return measure(server, FULL_DISK, "507 insufficient_storage; deletes always run (1 MB reserve)",
                           lambda: fill_and_free(server))
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill_and_free(server: Server) -> str:
    pdf = many_pages_pdf(["a file to fill the disk"], padding=600_000)
    uploads: list[int] = []
    stored: list[str] = []
    with server.client(ATTACKER) as http:
        while len(uploads) < 20 and (not uploads or uploads[-1] == 200):
            r = http.post("/v1/files", files={"file": ("fill.pdf", pdf)}, data={"purpose": "user_data"})
            uploads.append(r.status_code)
            if r.status_code == 200:
                stored.append(r.json()["id"])
        deletes = [http.delete(f"/v1/files/{file_id}").status_code for file_id in stored]
        again = http.post("/v1/files", files={"file": ("again.pdf", pdf)}, data={"purpose": "user_data"}).status_code
    return f"uploads {statuses(uploads)}; deletes {statuses(deletes)}; an upload after them: {again}"


def one_key_ratings(work: Path, standin: StandInServer) -> Row:
    """400 chats rated by one key, then ``route-llm feedback export`` and ``route-llm retrain`` as a user runs them;
    then 50 ratings from another key and an export capped with ``--max-key-share 0.5``."""
    server = Server(work, standin, "ratings", sections={"feedback": {"store_prompts": True}})
    try:
        return measure(server, ONE_KEY, "rater recorded; --max-key-share (retrain: 0.5)",
                       lambda: rate_export_retrain(work, server))
    finally:
        server.stop()


def _rate(server: Server, key: str, count: int) -> list[int]:
    with server.client(key) as http:
        ids = [http.post("/v1/chat/completions", json={"model": "gemini-1.5-flash", "messages": [
            {"role": "user", "content": f"question {i} from {key}: what is {i} times {i}?"}]}).headers["x-request-id"]
               for i in range(count)]
        time.sleep(1.0)  # decision records are written off the request path
        return [http.post("/v1/feedback", json={"request_id": rid, "rating": "good" if i % 3 else "bad"}).status_code
                for i, rid in enumerate(ids)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run([ROUTE_LLM, *args], capture_output=True, text=True, env=env, timeout=300)


def _raters(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    named = Counter(str(r.get("rater_name") or ("unnamed" if r.get("rater") else "none")) for r in rows)
    return f"{len(rows)} rows ({', '.join(f'{n} from {k}' for k, n in sorted(named.items()))})"


def rate_export_retrain(work: Path, server: Server) -> str:
    rated = _rate(server, ATTACKER, 400)
    rows, capped = work / "ratings.jsonl", work / "ratings-capped.jsonl"
    export = _cli("feedback", "export", "--config", str(server.config), "--out", str(rows))
    retrain = _cli("retrain", "--feedback", str(rows), "--out-dir", str(work / "models"),
                   "--work-dir", str(work / "retrain"))
    said = (retrain.stderr.strip().splitlines() or ["(nothing)"])[-1].removeprefix("route-llm retrain: ")
    other = _rate(server, NORMAL, 50)
    capped_export = _cli("feedback", "export", "--config", str(server.config), "--out", str(capped),
                         "--max-key-share", "0.5")
    first = _raters(rows) if export.returncode == 0 else f"failed: {export.stderr.strip()[-120:]}"
    second = _raters(capped) if capped_export.returncode == 0 else f"failed: {capped_export.stderr.strip()[-120:]}"
    return (f"one key rated {statuses(rated)}; export: {first}; retrain: exit {retrain.returncode}, "
            f"\"…{said[-150:]}\"; another key rated {statuses(other)}; export --max-key-share 0.5: {second}")


def _guarded(attack: str, limit: str, run: Callable[[], Row]) -> Row:
    """One row, whatever happens: a broken attack is reported in the table instead of ending the run."""
    print(f"  {attack} ...", flush=True)
    try:
        row = run()
    except Exception as exc:  # noqa: BLE001 - reported, and the other attacks still run
        row = Row(attack, limit, f"script error: {type(exc).__name__}: {exc}"[:200])
    print(f"    {row.outcome}; normal p50/p99 {row.p50:.1f}/{row.p99:.1f} ms; RSS {row.rss_before:.0f} → "
          f"{row.rss_peak:.0f} → {row.rss_after:.0f} MB", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=24, help="concurrent big uploads (default 24)")
    parser.add_argument("--upload-mb", type=int, default=24, help="size of each big upload in MB (default 24)")
    parser.add_argument("--only", action="append", default=[], metavar="WORDS",
                        help="run only the attacks whose description contains WORDS (repeatable); the baseline "
                             "always runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="route-llm-attack-"))
    standin = StandInServer().start()
    server = Server(work, standin)
    print(f"route-llm on {server.url}, work dir {work}; building inputs ...", flush=True)
    big = many_pages_pdf([f"Page {p}: " + " ".join(f"word{(p * 7 + i) % 997}" for i in range(500))
                          for p in range(300)])  # 300 pages, about 1.2 M characters
    with server.client(NORMAL) as http:  # warm up before measuring idle RSS
        for _ in range(20):
            http.post("/v1/route", json={"prompt": "warm up"})
    idle = rss_mib(server.proc.pid)
    plans: list[tuple[str, str, Callable[[], str]]] = [
        ("no attack (baseline)", "-", idle_for(5)),
        ("reference: plain short chats, no document, 4 clients, 8 s", "-", lambda: plain_chats(server)),
        ("same file_id ×200 per chat, 4 clients, 8 s", "duplicates resolved once", file_id_repeats(server, big)),
        ("21 distinct file_ids per chat, 4 clients, 4 s", "documents.limit_documents_per_request 20",
         distinct_files(server)),
        ("same inline PDF ×12 per chat, 4 clients, 6 s", "duplicates extracted once",
         lambda: inline_copies(server)),
        ("6 distinct inline PDFs per chat, 4 clients, 4 s", "documents.limit_inline_per_request 4",
         lambda: inline_distinct(server)),
        ("512 sockets: headers + '{' of a 100 kB body, 8 s", "server.limit_bodies_arriving_per_key 32",
         lambda: slow_bodies(server)),
        ("200 sockets trickling header bytes, 15 s", "server.timeout_header 10 s", lambda: trickled_headers(server)),
        ("tools schema nested 900 deep, 8 clients, 6 s", "server.limit_json_depth 64", lambda: deep_schemas(server)),
        ("lone surrogate, stream and not, 4 clients, 6 s", "checked before routing", lambda: lone_surrogates(server)),
        (f"{args.uploads} concurrent {args.upload_mb} MB uploads", "spooled to disk; documents.limit_bytes 25 MB",
         lambda: big_uploads(server, args.uploads, args.upload_mb)),
        ("uploads of a 2 MB PDF until refused", "documents.limit_storage_bytes 10 MB", lambda: storage_quota(server)),
        ("10 unauthenticated sockets flooding 8 kB header lines, 10 s",
         "server.limit_header_bytes 32 kB (431), limit_header_bytes_total 16 MB (503)", lambda: header_flood(server)),
        ("40,000 tools (6 MB) / one 18 MB schema / 5 MB response_format, 4 clients, 8 s",
         "server.limit_json_values 100,000 (413), limit_tools 512 (400), limit_schema_bytes 1 MB (413)",
         lambda: tool_floods(server)),
        ("500 tools of 0.9 MB in all (inside the limits), 4 clients, 8 s", "one cpu lane per worker, frozen heap",
         lambda: agent_tools(server)),
        ("router.context conversation: 3 turns of 480 kB + 1, 4 clients, 8 s", "router batches of max_length tokens",
         lambda: big_turns(server)),
        ("upstream streams cut mid-event or garbled, 4 clients, 6 s", "error event stream_broken",
         lambda: broken_streams(server, standin)),
        ("every upstream fault kind, streamed and not: bodies scanned", "fixed texts, scrubbed",
         lambda: error_bodies(server, standin)),
        ("100 clients rating unknown request ids, 6 s", "feedback's own thread share (8)",
         lambda: feedback_flood(server)),
        ("40 clients downloading an 8 MB file, never reading, 6 s", "streamed from disk in 64 kB pieces",
         unread_downloads(server)),
        ("20 clients leaving 10 MB streams after one event (held 3 s), all at once",
         "upstream stream closed at the next chunk", lambda: leaving_streams(server, standin)),
    ]
    def chosen(attack: str) -> bool:
        return not args.only or attack == plans[0][0] or any(words in attack for words in args.only)

    rows: list[Row] = []
    load = os.getloadavg()[0]
    try:
        for attack, limit, run in plans:
            if chosen(attack):
                rows.append(_guarded(attack, limit, functools.partial(measure, server, attack, limit, run)))
        if chosen(SHUTDOWN):
            rows.append(_guarded(SHUTDOWN, "server.timeout_shutdown 3 s",
                                 lambda: streams_at_shutdown(server, standin)))
        if chosen(PER_ADDRESS) or chosen(SHUTDOWN_WORKERS):
            second = Server(work, standin, "workers", workers=2,
                            server={"api_keys": [], "limit_requests_per_minute": 20})
            try:
                if chosen(PER_ADDRESS):
                    rows.append(_guarded(PER_ADDRESS, "per client address", lambda: per_address(second)))
                if chosen(SHUTDOWN_WORKERS):
                    rows.append(_guarded(SHUTDOWN_WORKERS, "server.timeout_shutdown 3 s",
                                         lambda: streams_at_shutdown(second, standin, SHUTDOWN_WORKERS)))
            finally:
                second.stop()
        if chosen(FULL_DISK):
            rows.append(_guarded(FULL_DISK, "507 insufficient_storage", lambda: full_disk(work, standin)))
        if chosen(DEMO):
            rows.append(_guarded(DEMO, "the demo stand-in keeps no bodies", lambda: demo_row(work, standin)))
        if chosen(ONE_KEY):
            rows.append(_guarded(ONE_KEY, "rater recorded; --max-key-share", lambda: one_key_ratings(work, standin)))
        if chosen(SIGKILL):
            rows.append(_guarded(SIGKILL, "children exit with the server",
                                 lambda: children_after_sigkill(work, standin)))
    finally:
        server.stop()
        standin.stop()
    print(f"\nidle RSS {idle:.0f} MB; normal key: POST /v1/route every 20 ms during each attack; "
          f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    print("| attack | answered by | attacker got | normal p50 / p99 ms | normal failed "
          "| RSS MB before → peak → after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lat = f"{r.p50:.1f} / {r.p99:.1f}" if r.probes else "–"
        rss = f"{r.rss_before:.0f} → {r.rss_peak:.0f} → {r.rss_after:.0f}" if r.probes else "–"
        failed = f"{r.failed_probes}/{r.probes}" if r.probes else "–"
        print(f"| {r.attack} | {r.limit} | {r.outcome} | {lat} | {failed} | {rss} |")
    worst = max((r.p99 for r in rows if r.probes), default=0.0)
    peak = max((r.rss_peak for r in rows if r.probes), default=idle)
    print(f"\nworst normal p99 {worst:.1f} ms (target 200); RSS peak {peak - idle:+.0f} MB over idle (target 100)")
    unrun = [r.attack for r in rows if r.outcome.startswith(("NOT RUN", "script error"))]
    if unrun:  # a row that could not run is a failure of the run, never a pass
        print(f"{len(unrun)} rows did not run: {'; '.join(unrun)}")
    return 0 if worst <= 200 and peak - idle <= 100 and not unrun else 1


if __name__ == "__main__":
    sys.exit(main())
