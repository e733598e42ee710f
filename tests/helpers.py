"""Helpers shared by several test modules, in one place: no test module imports another.

Each section says which tests it serves. Fixtures that many modules use live in the conftest files; these are
plain functions, constants and Hypothesis strategies (and one fixture, ``http``, that the fuzz modules share).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import openai
import pytest
import yaml
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from router import lexical
from router.head import Head
from router.lexical import Lexical
from tests.conftest import LOOPBACK_TLS, RunningProxy, base_config
from tests.proxy.pdfs import pdf_with_pages
from tests.router.conftest import build_tokenizer, default_meta
from tests.standin import StandInServer, free_port

# --- format-2 model directories (router tests, training tests) (from tests/router/test_format2.py) ---------------

HIDDEN = 4


NAMES = ["log_chars", "log_numbers", "choices"]


def build_encoder(vocab_size: int, seed: int = 0) -> onnx.ModelProto:
    """last_hidden_state = E[input_ids] (+ 0 * attention_mask, so the input is used): a (1, seq, HIDDEN) tensor."""
    table = np.random.default_rng(seed).normal(size=(vocab_size, HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask_3d"]),
        helper.make_node("Mul", ["vectors", "mask_3d"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixture_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        initializer=[numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([2]), "axis2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def make_head(inputs: int, hidden: int = 3, seed: int = 1) -> Head:
    rng = np.random.default_rng(seed)
    return Head(
        mean=rng.normal(size=inputs),
        scale=rng.uniform(0.5, 2.0, size=inputs),
        layers=[
            (rng.normal(size=(inputs, hidden)), rng.normal(size=hidden)),
            (rng.normal(size=(hidden, 1)), rng.normal(size=1)),
        ],
    )


def build_format2_dir(directory: Path) -> Path:
    """Write a fixture format-2 model directory (encoder graph, tokenizer, head, router.json) into ``directory``."""
    directory.mkdir()
    tokenizer = build_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    onnx.save(build_encoder(tokenizer.get_vocab_size()), str(directory / "model.onnx"))
    make_head(HIDDEN + len(NAMES)).save(directory / "head.npz")
    meta = default_meta()
    del meta["labels"], meta["strong_label"]
    meta |= {"format": 2, "features": NAMES, "head": "head.npz", "version": "fixture-2"}
    (directory / "router.json").write_text(json.dumps(meta), encoding="utf-8")
    return directory


# --- the word term of a format-2 head (from tests/router/test_lexical.py) ----------------------------------------

BITS = 6


def make_lexical(seed: int = 5) -> Lexical:
    rng = np.random.default_rng(seed)
    return Lexical(idf=rng.uniform(1.0, 3.0, size=1 << BITS), weight=rng.normal(size=1 << BITS))


def with_word_term(directory: Path, scheme: object = lexical.SCHEME) -> Path:
    """Give a fixture format-2 directory a head with a word term and the matching router.json key."""
    dense = make_head(HIDDEN + len(NAMES))
    Head(mean=dense._mean, scale=dense._scale, layers=dense._layers, lexical=make_lexical()).save(  # noqa: SLF001
        directory / "head.npz"
    )
    meta = json.loads((directory / "router.json").read_text()) | {"lexical": scheme}
    (directory / "router.json").write_text(json.dumps(meta))
    return directory


# --- retraining: a fixture model, training data and feedback (from tests/training/test_retrain.py) ---------------

def format2_model(tmp: Path) -> Path:
    return build_format2_dir(tmp / "current")


def retrain_prompt(i: int, hard: bool) -> str:
    return " ".join(f"w{(i * 7 + k) % 400 + 20}" for k in range(6)) + (" w9 w9" if hard else " w3")


def retrain_data(tmp: Path) -> Path:
    """MMLU-like subjects and GSM8K-like rows; "strong needed" iff the prompt has w9."""
    directory = tmp / "data"
    directory.mkdir()
    rows = []
    for i in range(400):
        hard = i % 3 == 0
        benchmark, category = ("mmlu", f"subject{i % 20}") if i < 300 else ("gsm8k", "gsm8k")
        rows.append({"prompt": retrain_prompt(i, hard), "weak_score": 0.0 if hard else 1.0, "strong_score": 1.0,
                     "benchmark": benchmark, "category": category})
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def retrain_feedback(tmp: Path, n: int = 200) -> Path:
    path = tmp / "feedback.jsonl"
    rows = [{"prompt": retrain_prompt(1000 + i, i % 2 == 0) + f" w{i % 13 + 1}",
             "weak_score": 0.0 if i % 2 == 0 else 1.0, "strong_score": 1.0} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- `route-llm serve` as a real process (from tests/proxy/test_shutdown.py) -------------------------------------

ROUTE_LLM = Path(sys.executable).with_name("route-llm")


def write_served_config(tmp_path: Path, standin: StandInServer, **sections: dict[str, Any]) -> Path:
    cfg = base_config(tmp_path, **sections)
    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=standin.base_url, api_key="literal-upstream-key")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def serve_process(config: Path, port: int, log: Path, *, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("GEMINI_API_BASE", None)  # the config's api_base must be enough
    env.pop("ROUTE_LLM_API_KEYS", None)
    with log.open("wb") as out:
        return subprocess.Popen([str(ROUTE_LLM), "serve", "--config", str(config), "--port", str(port),
                                 "--workers", str(workers)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} during start-up:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2, verify=LOOPBACK_TLS).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # a poll is cheap (no TLS set-up), and every test that serves waits here
    proc.kill()
    pytest.fail(f"server not ready after {timeout}s:\n{log.read_text()}")


# --- `route-llm serve --workers N` (from tests/proxy/test_workers.py) --------------------------------------------

def wait_for_workers(proc: subprocess.Popen[bytes], log: Path, workers: int, timeout: float = 180) -> None:
    """Every worker logs once when its lifespan is done; wait for all, so each can take connections."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("route-llm worker loaded") < workers:
        if proc.poll() is not None:
            pytest.fail(f"route-llm serve exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"workers not ready in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


# --- documents end to end: a report, uploads and file parts (from tests/proxy/documents/test_files_e2e.py) -------

COMPANY = "The company's name is Zephyrine Widgets Ltd, registered in Lyon."


REVENUE = "Revenue in 2025 was twelve million euros, up from nine million."


REPORT = pdf_with_pages([COMPANY, REVENUE])


QUESTION = "What is the company's name?"


def upload(client: Any, data: bytes = REPORT, name: str = "report.pdf") -> Any:
    return client.files.create(file=(name, data, "application/pdf"), purpose="user_data")


def file_part_by_id(file_id: str) -> dict[str, Any]:
    return {"type": "file", "file": {"file_id": file_id}}


def file_part_inline(data: bytes, name: str) -> dict[str, Any]:
    return {"type": "file", "file": {"filename": name,
                                     "file_data": "data:application/pdf;base64," + base64.b64encode(data).decode()}}


def sent_text(standin: StandInServer) -> str:
    """All text the (single) upstream request carried."""
    [request] = standin.state.requests
    return "\n".join(p.get("text", "") for c in request.body["contents"] for p in c["parts"])


# --- fuzzing: Hypothesis settings, strategies and the never-5xx property (from tests/proxy/edge/test_fuzz.py) ----

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# Strings that have broken parsers before: NaN-like, numeric-looking, control and non-BMP characters,
# lone surrogates (valid as JSON escapes, invalid as UTF-8), and long ones.
SPECIAL_STRINGS = ["", "NaN", "nan", "Infinity", "-Infinity", "1e999", "-0", "0x10", "null", "true", "\x00",
                   "\ud800", "a\udfffb", "\u202e", "💥" * 10, "é" * 50, "x" * 5000, "router-bert-0.5",
                   "router-bert-nan", "router-bert-1e999", "auto ", "AUTO", "data:application/pdf;base64,!!"]


text = st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL_STRINGS))


number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 10**30, 1e308, -1e308, 5e-324]),
)


leaf = st.one_of(st.none(), st.booleans(), number, text)


junk = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                    max_leaves=12)


model = st.one_of(st.sampled_from(["auto", "auto-cheap", "gemini-1.5-flash", "gemini-1.5-pro", "router-bert-0.5",
                                   "router-bert-2", "gpt-4"]), junk)


def fuzz_dumps(body: Any) -> bytes:
    # allow_nan: Python's json (and so the proxy) accepts NaN/Infinity literals, so they are fair input.
    return json.dumps(body, allow_nan=True).encode()


def fuzz_check(r: httpx.Response) -> None:
    """The property: never a 5xx with a healthy upstream; every error in OpenAI's shape."""
    event(f"status {r.status_code}")  # the mix shows in --hypothesis-show-statistics
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.fixture()
def http(proxy: RunningProxy, standin: StandInServer) -> Iterator[httpx.Client]:
    with proxy.http() as client:
        yield client
    # Still healthy: liveness and a normal routed request.
    with proxy.http() as client:
        assert client.get("/health/live").status_code == 200
        ok = client.post("/v1/chat/completions",
                         json={"model": "auto", "messages": [{"role": "user", "content": "still there?"}]})
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"]


def post_json(http: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json"})


# --- served processes: replicas on a shared database, configs pointed at the stand-in ----------------------
@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "k1") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=60,
                             http_client=openai.DefaultHttpxClient(verify=LOOPBACK_TLS))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Shared:
    database_url: str
    redis_url: str
    config: Path


def start_replicas(shared: Shared, tmp: Path, names: list[str]) -> list[Replica]:
    """Start them all at once (each start loads the router and LiteLLM), then wait until each is ready."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True")
    replicas = []
    for name in names:
        port, log = free_port(), tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(ROUTE_LLM), "serve", "--config", str(shared.config), "--port", str(port)],
                                    cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        replicas.append(Replica(proc, port, log))
    deadline = time.monotonic() + 300
    try:
        for replica in replicas:
            while not replica_ready(replica):
                assert time.monotonic() < deadline, f"not ready in 300 s:\n{replica.log.read_text(errors='replace')}"
                time.sleep(0.05)
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


def replica_ready(replica: Replica) -> bool:
    if replica.proc.poll() is not None:
        pytest.fail(f"a replica exited with {replica.proc.returncode}:\n{replica.log.read_text(errors='replace')}")
    try:
        return httpx.get(replica.base_url + "/health/ready", timeout=5, verify=LOOPBACK_TLS).status_code == 200
    except httpx.HTTPError:
        return False


def point_at_standin(config: Path, standin: StandInServer) -> dict[str, Any]:
    """Point both tiers of a written config at the stand-in with a literal key (a served process reads no test
    environment); returns the config as written."""
    cfg = yaml.safe_load(config.read_text())
    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=standin.base_url, api_key="test-upstream-key")
    config.write_text(yaml.safe_dump(cfg))
    return cfg


def serve_on_free_port(tmp_path: Path, config: Path, *, workers: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`route-llm serve` as its own process on a free port, its output in ``serve.log``."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ROUTE_LLM), "serve", "--config", str(config), "--port", str(port),
                                 "--workers", str(workers)], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, port, log


# --- training rows and evaluation sets for the scripts' tests ------------------------------------------------
CROSSVAL_EASY = ["write a haiku about {}", "translate {} into spanish", "say hello to {}", "a short poem on {}"]
CROSSVAL_HARD = ["prove the theorem about {} rigorously", "design a distributed system for {}", "derive {} step by step"]


def benchmark_line(i: int, topic: str, benchmark: str, category: str) -> dict[str, object]:
    """A train.jsonl row: odd ``i`` is a hard prompt the weak model got wrong, even ``i`` an easy one it got right."""
    hard = i % 2 == 1
    prompt = (CROSSVAL_HARD[i % 3] if hard else CROSSVAL_EASY[i % 4]).format(topic)
    return {
        "prompt": prompt,
        "benchmark": benchmark,
        "category": category,
        "weak_score": 0.0 if hard else 1.0,
        "strong_score": 1.0,
    }


def toy_eval_sets(directory: Path) -> Path:
    """A toy pair of evaluation sets in the repository's format: 8 rows each, both labels in every slice."""
    import json

    directory.mkdir()
    documents = [
        {"id": f"d{i}", "prompt": ("what is the " if i % 2 == 0 else "weigh the risks and judge the ") + f"item {i}",
         "label": i % 2, "kind": ["manual", "paper"][i // 4], "group": f"doc-{i // 2}"}
        for i in range(8)
    ]
    languages = [
        {"id": f"l{i}", "prompt": ("hallo " if i % 2 == 0 else "beweise den satz ") + str(i), "label": i % 2,
         "language": ["de", "ja"][i // 4], "group": f"topic-{i // 2}"}
        for i in range(8)
    ]
    for name, rows in [("documents", documents), ("languages", languages)]:
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


# --- raw sockets -------------------------------------------------------------------------------------------
def read_raw_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response, reading until the server closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def commit_repo(root: Path, files: dict[str, str]) -> str:
    """A git repository at ``root`` holding ``files`` in one commit; returns the commit's hash."""
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "data"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True)
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, check=True, text=True)
    return out.stdout.strip()
