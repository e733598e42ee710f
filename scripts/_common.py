"""Helpers shared by the router scripts (training, evaluation, benchmark).

Nothing in ``router/`` or ``proxy/`` imports this module: it exists so that the three scripts agree on how
data is read, how prompts are truncated and how routing quality is measured, without each carrying its own
copy that could drift apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
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


from training.metrics import RoutingCurve, auroc, random_baseline, routing_curve, summarize  # noqa: E402,F401
