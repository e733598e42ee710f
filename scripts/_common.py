"""Helpers shared by the router scripts (training, evaluation, benchmark).

Nothing in ``router/`` or ``proxy/`` imports this module: it exists so that the three scripts agree on how
data is read, how prompts are truncated and how routing quality is measured, without each carrying its own
copy that could drift apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["weak_ok", "strong_needed"]
STRONG_LABEL = "strong_needed"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read one JSON object per non-empty line; the line number is in the error so bad files are easy to fix."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
    return rows


def sha256_file(path: str | Path) -> str:
    """Hash a file in chunks, because model and data files are recorded by content, not by name."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_fraction(text: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) from the text, so splits do not depend on file order."""
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:12], 16) / float(1 << 48)


def head_tail_ids(ids: Sequence[int], max_length: int, head_fraction: float, cls_id: int, sep_id: int) -> list[int]:
    """Truncate token ids (without special tokens) to fit ``max_length`` with [CLS]/[SEP], keeping head and tail.

    The question of a long prompt is often at its end (a pasted document followed by "summarise this"), and
    the task framing at its start, so both ends are kept. The runtime does exactly this, so a prompt is seen
    the same way in training and in serving.
    """
    budget = max_length - 2
    if len(ids) > budget:
        head = round(head_fraction * budget)
        tail = budget - head
        ids = list(ids[:head]) + (list(ids[len(ids) - tail :]) if tail > 0 else [])
    return [cls_id, *ids, sep_id]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence in the batch (dynamic padding): padding to max_length wastes CPU."""
    width = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return input_ids, mask


class OnnxScorer:
    """Score prompts with an exported model directory using only onnxruntime and ``tokenizers``.

    The training script needs this before the runtime package may exist (to measure int8/fp32 agreement and
    the score quantiles it writes into router.json), and it follows the same contract as the runtime.
    """

    def __init__(self, model_dir: str | Path, onnx_name: str = "model.onnx", threads: int = 2) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        meta = json.loads((model_dir / "router.json").read_text())
        self.max_length = int(meta["max_length"])
        self.head_fraction = float(meta["head_fraction"])
        self.pad_id = int(meta["pad_token_id"])
        self.strong_index = list(meta["labels"]).index(meta["strong_label"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        cls_id = self.tokenizer.token_to_id("[CLS]")
        sep_id = self.tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError(f"{model_dir / 'tokenizer.json'}: no [CLS]/[SEP] tokens")
        self.cls_id, self.sep_id = cls_id, sep_id
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / onnx_name), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids with head+tail truncation and special tokens, as the runtime builds them."""
        encs = self.tokenizer.encode_batch(list(prompts), add_special_tokens=False)
        return [head_tail_ids(e.ids, self.max_length, self.head_fraction, self.cls_id, self.sep_id) for e in encs]

    def run_ids(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Run the session on already-encoded sequences and return p(strong) per row."""
        input_ids, mask = pad_batch(seqs, self.pad_id)
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        logits: np.ndarray = np.asarray(self.session.run(["logits"], feeds)[0], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        strong: np.ndarray = probs[:, self.strong_index]
        return strong

    def score(self, prompts: Sequence[str], batch_size: int = 1) -> list[float]:
        """Score prompts, one sequence per run unless ``batch_size`` says otherwise.

        One at a time is the default because the runtime does the same: a dynamically quantised model picks
        one activation scale per tensor, so in a padded batch a row's score moves with its neighbours. The
        quantiles written to router.json must be the scores the proxy will compute. Larger batches are
        sorted by length to keep padding small, then put back in input order.
        """
        seqs = self.encode(prompts)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = np.empty(len(seqs), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.run_ids([seqs[i] for i in idx])
        return out.tolist()


def load_scorer(model_dir: str | Path | None, threads: int = 2) -> Any:
    """Prefer the shipped runtime (``router.Router``) so scripts measure what users run; fall back to OnnxScorer.

    The fallback keeps evaluation usable for a freshly trained directory even if the runtime package cannot
    be imported (e.g. while it is being developed).
    """
    try:
        from router import Router
    except ImportError:
        pass
    else:
        return Router.load(model_dir, threads=threads)
    if model_dir is None:
        model_dir = Path(__file__).resolve().parent.parent / "router" / "model"
    return OnnxScorer(model_dir, threads=threads)


# --------------------------------------------------------------------------------------------------------------
# Routing metrics (RouteLLM's definitions, computed exactly from the ranking rather than at a few thresholds)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingCurve:
    """Piecewise-linear PGR-versus-strong-share curve of one scorer on one data set.

    Points sit at score-tie boundaries; between two points the curve is linear, which is the expected value
    when ties are broken at random. So the curve, the APGR and the CPT values need no threshold grid.
    """

    share: np.ndarray  # fraction of prompts sent to the strong model, 0..1
    pgr: np.ndarray  # performance gap recovered at that share
    perf: np.ndarray  # mean score of the routed answers
    weak_perf: float
    strong_perf: float

    @property
    def apgr(self) -> float:
        """Area under PGR(share) on [0, 1]; a random router scores 0.5 in expectation."""
        return float(np.sum(np.diff(self.share) * (self.pgr[1:] + self.pgr[:-1]) / 2.0))

    def cpt(self, target: float) -> float:
        """Smallest strong share whose PGR reaches ``target`` (linear interpolation between points)."""
        hit = np.nonzero(self.pgr >= target)[0]
        if len(hit) == 0:
            return float("nan")
        j = int(hit[0])
        if j == 0:
            return float(self.share[0])
        x0, x1, y0, y1 = self.share[j - 1], self.share[j], self.pgr[j - 1], self.pgr[j]
        return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x1)


def routing_curve(scores: Iterable[float], weak: Iterable[float], strong: Iterable[float]) -> RoutingCurve:
    """Build the curve: routing the k highest-scored prompts to strong gains sum(strong-weak) over those k."""
    s = np.asarray(list(scores), dtype=np.float64)
    w = np.asarray(list(weak), dtype=np.float64)
    g = np.asarray(list(strong), dtype=np.float64)
    n = len(s)
    order = np.argsort(-s, kind="stable")
    gain = np.cumsum((g - w)[order])
    s_sorted = s[order]
    # keep only the last index of each tie block: a threshold cannot split equal scores
    ends = np.nonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))[0]
    k = np.concatenate([[0], ends + 1])
    gains = np.concatenate([[0.0], gain[ends]])
    weak_perf, strong_perf = float(w.mean()), float(g.mean())
    perf = weak_perf + gains / n
    gap = strong_perf - weak_perf
    pgr = (perf - weak_perf) / gap if gap != 0 else np.zeros_like(perf)
    return RoutingCurve(share=k / n, pgr=pgr, perf=perf, weak_perf=weak_perf, strong_perf=strong_perf)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Rank AUROC (Mann-Whitney with average ranks for ties); NaN when only one class is present."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def summarize(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]) -> dict[str, float]:
    """The headline numbers for one scorer: APGR, CPT(50%), CPT(80%), AUROC."""
    curve = routing_curve(scores, weak, strong)
    labels = [int(b > a) for a, b in zip(weak, strong, strict=True)]
    return {
        "apgr": round(curve.apgr, 4),
        "cpt50": round(curve.cpt(0.5), 4),
        "cpt80": round(curve.cpt(0.8), 4),
        "auroc": round(auroc(scores, labels), 4),
    }


def random_baseline() -> dict[str, float]:
    """A random router's expected curve is PGR = share, so APGR 0.5, CPT(x) = x and AUROC 0.5 analytically."""
    return {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8, "auroc": 0.5}
