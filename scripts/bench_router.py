"""Benchmark the router on CPU: load time, memory, per-decision latency and batch throughput.

Each latency is reported twice: through the runtime wrapper (``router.Router``: tokenize, truncate, run, pool,
features, head) and as a bare ``session.run`` on the same pre-tokenised inputs, so the wrapper's overhead is
visible.
Load time and RSS are measured in a fresh subprocess, because this process has already imported numpy and
may hold other sessions, which would hide what loading the router alone costs.

Example:
    python scripts/bench_router.py --model-dir router/model --threads 1 2

``--encoder-dir`` times a bare encoder directory (model.onnx + tokenizer.json + encoder.json, e.g. the
multilingual one from scripts/data/build_multilingual_encoder.py) before a head is trained for it: it is wrapped
in a model directory with a zero head, which costs the same microseconds as a trained one. Several model and
encoder directories are timed one after another in the same run, so their figures are comparable:

    python scripts/bench_router.py --model-dir router/model --encoder-dir /work/models/e5-int8 --max-length 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from router import Router
from router.classifier import META_FILE, MODEL_FILE, TOKENIZER_FILE, load_session
from router.features import FEATURES
from router.head import Head

ROOT = Path(__file__).resolve().parent.parent

SHORT = "What is the capital of France?"
# A paragraph of ordinary prose repeated: the 128- and 512-token cases are cut from it by token count.
FILLER = (
    "Explain step by step how a distributed database keeps replicas consistent when the network partitions, "
    "compare leader-based replication with quorum writes, and give an example where each one fails. "
)

LOAD_PROBE = r"""
import json, resource, sys, time

def peak_mb():
    # VmHWM belongs to this process's own address space; ru_maxrss survives exec on Linux, so a probe started by a
    # big parent (this benchmark, after loading a model) would report the parent's peak instead
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

sys.path.insert(0, sys.argv[2])
t0 = time.perf_counter()
from router import Router
t1 = time.perf_counter()
r = Router.load(sys.argv[1])
r.score(["warm up"])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "total_s": t2 - t0,
                  "rss_mb": peak_mb(),
                  "torch_imported": "torch" in sys.modules}))
"""


def prompt_of_tokens(router: Router, n_tokens: int) -> str:
    """A prompt of about ``n_tokens`` text tokens, or of as many as the model's max_length keeps.

    Counted on the runtime's own (truncated) ids, so the target is capped at the budget: asking a 128-token model
    for 510 used to grow the prompt forever.
    """
    target = min(n_tokens, router.meta.max_length - 2) + 2
    text = FILLER
    while len(router.classifier.token_ids([text])[0]) < target:
        text += FILLER
    words = text.split()
    while len(router.classifier.token_ids([" ".join(words)])[0]) > target:
        words.pop()
    return " ".join(words)


class RawSession:
    """A bare onnxruntime session fed pre-tokenised, padded ids: the floor the wrapper is compared with."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        self.session = load_session(model_dir / MODEL_FILE, threads=threads)
        self.inputs = {node.name for node in self.session.get_inputs()}

    def run_ids(self, seqs: list[list[int]]) -> Any:
        width = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})


def wrap_encoder(encoder_dir: Path, max_length: int, out: Path) -> Path:
    """A model directory in ``out`` around a bare encoder: its files linked, a zero head, a minimal router.json.

    The encoder's settings (``text_prefix``, ``pad_token_id``) come from its encoder.json, as training reads them.
    """
    out.mkdir(parents=True)
    for name in (MODEL_FILE, TOKENIZER_FILE):
        (out / name).symlink_to((encoder_dir / name).resolve())
    described_path = encoder_dir / "encoder.json"
    described = json.loads(described_path.read_text(encoding="utf-8")) if described_path.is_file() else {}
    hidden = load_session(encoder_dir / MODEL_FILE).get_outputs()[0].shape[-1]
    width = hidden + len(FEATURES)
    Head(mean=np.zeros(width), scale=np.ones(width), layers=[(np.zeros((width, 1)), np.zeros(1))]).save(
        out / "head.npz"
    )
    meta = {
        "format": 2,
        "features": list(FEATURES),
        "head": "head.npz",
        "max_length": max_length,
        "truncation": "head_tail",
        "head_fraction": 0.5,
        "pad_token_id": described.get("pad_token_id", 0),
        "text_prefix": described.get("text_prefix", ""),
        "quantiles": [[0.0, 0.0], [1.0, 1.0]],
        "version": f"bench-{encoder_dir.name}",
    }
    (out / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return out


def timed(fn: Callable[[], Any], repeats: int, min_seconds: float = 0.0) -> np.ndarray:
    """Wall-clock seconds of each call, after two warm-up calls (first runs allocate arenas)."""
    fn()
    fn()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.array(out)


def bench(model_dir: Path, threads: int, repeats: int) -> dict[str, Any]:
    """Latency and throughput with ``threads`` intra-op threads, wrapper beside raw session.run."""
    raw = RawSession(model_dir, threads)
    wrapper = Router.load(model_dir, threads=threads)
    wrapper_name = f"router.Router.load(..., threads={threads})"
    # the last case is the longest input the model reads: its max_length (512 tokens when that is more)
    longest = f"max ({wrapper.meta.max_length})" if wrapper.meta.max_length <= 512 else "512 tokens"
    cases = {"short": SHORT, "128 tokens": prompt_of_tokens(wrapper, 126), longest: prompt_of_tokens(wrapper, 510)}
    result: dict[str, Any] = {"threads": threads, "wrapper": wrapper_name, "latency_ms": {}, "throughput": {}}
    for name, prompt in cases.items():
        seq = wrapper.classifier.token_ids([prompt])
        w = timed(partial(wrapper.score, [prompt]), repeats) * 1000
        r = timed(partial(raw.run_ids, seq), repeats) * 1000
        result["latency_ms"][name] = {
            "tokens": len(seq[0]),
            "wrapper_p50": round(float(np.percentile(w, 50)), 2),
            "wrapper_p99": round(float(np.percentile(w, 99)), 2),
            "raw_p50": round(float(np.percentile(r, 50)), 2),
            "raw_p99": round(float(np.percentile(r, 99)), 2),
        }
    # throughput on 128-token prompts: a realistic mid-length request
    prompt = cases["128 tokens"]
    for bs in (1, 8, 32):
        batch = [prompt] * bs
        seqs = wrapper.classifier.token_ids(batch)
        w = timed(partial(wrapper.score, batch), 3, min_seconds=1.5)
        r = timed(partial(raw.run_ids, seqs), 3, min_seconds=1.5)
        result["throughput"][f"batch {bs}"] = {
            "wrapper_per_s": round(bs / float(np.median(w)), 1),
            "raw_per_s": round(bs / float(np.median(r)), 1),
            "shape": [len(seqs), max(len(x) for x in seqs)],
        }
    return result


def load_cost(model_dir: Path) -> dict[str, Any]:
    """Load time and peak RSS of a fresh interpreter that loads the router and scores one prompt."""
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE, str(model_dir), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def directory_mb(directory: Path) -> float:
    """Size of the regular files in a model directory (links followed), in MB."""
    return round(sum(f.stat().st_size for f in directory.iterdir() if f.is_file()) / 1e6, 2)


def report_for(model_dir: Path, threads: list[int], repeats: int) -> dict[str, Any]:
    """Size, load cost and latency runs of one model directory."""
    return {
        "model_dir": str(model_dir),
        "model_mb": directory_mb(model_dir),
        "load": {"router": load_cost(model_dir)},
        "runs": [bench(model_dir, t, repeats) for t in threads],
    }


def print_report(report: dict[str, Any], label: str) -> None:
    """The human-readable table of one :func:`report_for` result."""
    print(f"### {label}\nmodel directory {report['model_mb']} MB")
    for mode, res in report["load"].items():
        if "error" in res:
            print(f"load ({mode}): {res['error']}")
        else:
            print(
                f"load ({mode}): import {res['import_s']:.3f} s + load and first score {res['load_s']:.3f} s, "
                f"peak RSS {res['rss_mb']:.0f} MB, torch imported: {res['torch_imported']}"
            )
    for run in report["runs"]:
        print(f"\n== {run['threads']} thread(s); wrapper = {run['wrapper']}")
        print(f"{'case':12} {'tokens':>6} {'wrap p50':>9} {'wrap p99':>9} {'raw p50':>8} {'raw p99':>8}  (ms)")
        for name, m in run["latency_ms"].items():
            print(
                f"{name:12} {m['tokens']:>6} {m['wrapper_p50']:>9} {m['wrapper_p99']:>9} {m['raw_p50']:>8} "
                f"{m['raw_p99']:>8}"
            )
        print(f"{'batch (128 tok)':16} {'wrapper/s':>10} {'raw/s':>8}")
        for name, m in run["throughput"].items():
            print(f"{name:16} {m['wrapper_per_s']:>10} {m['raw_per_s']:>8}")
    print()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark for each directory and thread count and print tables (and optionally JSON)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, action="append", default=[], help="model directory (repeatable)")
    p.add_argument("--encoder-dir", type=Path, action="append", default=[], help="bare encoder directory (repeatable)")
    p.add_argument("--max-length", type=int, default=128, help="max_length of the wrapped encoder directories")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.max_length < 3:
        p.error("--max-length must be at least 3")
    for encoder_dir in args.encoder_dir:
        if not (encoder_dir / MODEL_FILE).is_file() or not (encoder_dir / TOKENIZER_FILE).is_file():
            p.error(f"--encoder-dir: {encoder_dir} lacks {MODEL_FILE} or {TOKENIZER_FILE}")
    model_dirs = args.model_dir or ([] if args.encoder_dir else [ROOT / "router" / "model"])
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_dir in model_dirs:
            reports.append(report_for(model_dir, args.threads, args.repeats))
            print_report(reports[-1], str(model_dir))
        for index, encoder_dir in enumerate(args.encoder_dir):
            wrapped = wrap_encoder(encoder_dir, args.max_length, Path(tmp) / f"encoder{index}")
            reports.append(report_for(wrapped, args.threads, args.repeats) | {"encoder_dir": str(encoder_dir)})
            print_report(reports[-1], f"{encoder_dir} (max_length {args.max_length}, zero head)")
    if args.json:
        Path(args.json).write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1) + "\n")


if __name__ == "__main__":
    main()
