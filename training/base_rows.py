"""The base rows a head refit needs, without their texts: ``base_rows.npz`` beside a model's ``head.npz``.

``route-llm retrain`` keeps a model's base behaviour by fitting the feedback together with the rows the head was
trained on (their targets are the current model's own scores) and by judging the candidate on the base validation
rows. The encoder is frozen during a head refit, so a row is fully described by what the head reads:

* its head inputs: the encoder's embedding as int8 with one scale per dimension (the embeddings are
  L2-normalised, so every dimension has its own small range) and the prompt features in float32;
* its hashed word n-gram counts (:mod:`router.lexical`, the head's bucket count) when the head has a word term;
  the TF-IDF weighting is applied at refit time from the head's own ``idf``, exactly as the runtime does;
* its source, and for training rows the label target and loss weight of the fit that made the head; for
  validation rows the weak/strong outcomes (or MATH level) the per-source APGR table needs.

No prompt text is stored. The training pipeline (:func:`training.pipeline.train`, and the fine-tuning export)
writes this file beside every model directory it exports, so a new encoder gets a new file; the file records the
SHA-256 of the ``model.onnx`` it was computed with, and retraining refuses a file whose encoder differs.

Sources whose licence does not allow redistributing derived rows are left out (:data:`EXCLUDED`): the judged
chat instructions are CC BY-NC 4.0. A refit keeps the chat behaviour anyway through its pull towards the current
head's weights (``RetrainConfig.proximity``); the licences of what ships are in the file's metadata and in the
model's router.json (``base_rows``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router import lexical
from router.classifier import MODEL_FILE, encoder_sha256
from router.head import Head
from training import data

FILE = "base_rows.npz"
FORMAT = 1

#: What each shipped source's rows are derived from, and its licence (README: "Data").
LICENCES = {
    "mmlu": "MMLU questions (MIT); weak/strong outcomes from RouteLLM's evaluation data (Apache-2.0)",
    "gsm8k": "GSM8K problems (MIT); weak/strong outcomes from RouteLLM's evaluation data (Apache-2.0)",
    "arc": "ARC-Challenge via RouterBench (CC BY-SA 4.0; RouterBench outcomes MIT)",
    "mbpp": "MBPP via RouterBench (CC BY 4.0; RouterBench outcomes MIT)",
    "winogrande": "WinoGrande via RouterBench (CC BY; RouterBench outcomes MIT)",
    "math": "MATH problems, level only (MIT)",
    "arena": "Arena-Hard prompts (Apache-2.0)",
    "doc_qa": "document questions built by scripts/data/build_router_extra.py (TAT-QA CC BY 4.0, ConditionalQA "
    "BSD-2-Clause with gov.uk pages under the Open Government Licence v3.0, SQuALITY CC BY 4.0, QMSum MIT, XQuAD "
    "CC BY-SA 4.0, AGIEval MIT; each row's source, commit and licence in docs/router-data.md)",
    "multilingual": "prompts in many languages built by scripts/data/build_router_extra.py (XQuAD and xSID CC BY-SA "
    "4.0, "
    "XPersona MIT, Chatbot_data MIT, mHumanEval Apache-2.0, AGIEval MIT; see docs/router-data.md)",
    "feedback": "a deployment's own exported ratings (training --extra files): the operator's own data",
}
#: Sources never written to the file, and why.
EXCLUDED = {
    "chat": "AlpacaEval instructions are CC BY-NC 4.0 (non-commercial): derived rows are not redistributed in an "
    "Apache-2.0 package; a refit keeps chat behaviour through its pull towards the current head's weights",
}


class BaseRowsError(ValueError):
    """A base-rows file that is missing, malformed or made for another encoder; the message says which."""


@dataclass(frozen=True)
class Terms:
    """Hashed word n-gram counts of some rows, compressed by row: row i's buckets are ``index[ptr[i]:ptr[i+1]]``."""

    ptr: np.ndarray  # int64, rows + 1
    index: np.ndarray  # int64 bucket numbers, sorted within a row
    count: np.ndarray  # int64 occurrences of the bucket's n-grams in the row
    bits: int

    @classmethod
    def of(cls, texts: list[str], bits: int) -> Terms:
        """The counts of ``texts`` in the word term's scheme (:func:`router.lexical.counts`)."""
        ptr, index, count = [0], [], []
        for text in texts:
            i, sublinear = lexical.counts(text, bits)
            index.append(i)
            count.append(np.rint(np.exp(sublinear - 1.0)).astype(np.int64))  # counts() gives 1 + log(count)
            ptr.append(ptr[-1] + len(i))
        return cls(
            ptr=np.array(ptr, np.int64),
            index=np.concatenate(index) if index else np.zeros(0, np.int64),
            count=np.concatenate(count) if count else np.zeros(0, np.int64),
            bits=bits,
        )

    def __len__(self) -> int:
        return len(self.ptr) - 1

    def take(self, rows: np.ndarray) -> Terms:
        """The counts of the given rows, in that order."""
        starts, ends = self.ptr[rows], self.ptr[rows + 1]
        pieces = [np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist())]
        at = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        return Terms(ptr=np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64), index=self.index[at],
                     count=self.count[at], bits=self.bits)

    def row_of(self) -> np.ndarray:
        """The row number of every stored entry."""
        return np.repeat(np.arange(len(self)), np.diff(self.ptr))

    def tfidf(self, idf: np.ndarray) -> np.ndarray:
        """Every entry's L2-normalised TF-IDF value under ``idf``, as :func:`router.lexical.tfidf` computes it."""
        if idf.shape[0] != 1 << self.bits:
            raise BaseRowsError(f"the word vectors have 2**{self.bits} buckets, the head's word term "
                                f"{idf.shape[0]}: re-export the base rows for this head")
        values = (1.0 + np.log(self.count)) * idf[self.index]
        norm = np.sqrt(np.bincount(self.row_of(), weights=values * values, minlength=len(self)))
        per_entry = norm[self.row_of()]
        return np.asarray(np.where(per_entry > 0, values / np.where(per_entry > 0, per_entry, 1.0), values))

    def dot(self, values: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Each row's ``sum(values * weight[bucket])``: the word term's logit for ``values`` from :meth:`tfidf`."""
        return np.bincount(self.row_of(), weights=values * weight[self.index], minlength=len(self))

    def rdot(self, values: np.ndarray, per_row: np.ndarray) -> np.ndarray:
        """The transpose product: every bucket's ``sum over rows of values * per_row`` (a gradient)."""
        return np.bincount(self.index, weights=values * per_row[self.row_of()], minlength=1 << self.bits)


@dataclass(frozen=True)
class RowSet:
    """Rows as the head sees them; label fields a row lacks are NaN (outcomes) or 0 (level)."""

    inputs: np.ndarray  # float64 (rows, embedding + features)
    terms: Terms | None
    source: np.ndarray  # str
    target: np.ndarray  # training: the label target of the fit that made the head
    weight: np.ndarray  # training: that fit's loss weight
    weak: np.ndarray
    strong: np.ndarray
    level: np.ndarray  # MATH level 1..5, 0 for other rows

    def __len__(self) -> int:
        return len(self.source)

    @classmethod
    def from_rows(cls, rows: list[data.Row], inputs: np.ndarray, bits: int | None,
                  target: np.ndarray | None = None, weight: np.ndarray | None = None) -> RowSet:
        """From training rows with text (a data directory), their head inputs and, if the head has a word term, its
        bucket count ``bits``."""
        n = len(rows)
        return cls(
            inputs=np.asarray(inputs, np.float64),
            terms=Terms.of([r.prompt for r in rows], bits) if bits is not None else None,
            source=np.array([r.source for r in rows], dtype=str),
            target=np.zeros(n) if target is None else np.asarray(target, np.float64),
            weight=np.zeros(n) if weight is None else np.asarray(weight, np.float64),
            weak=np.array([np.nan if r.weak is None else r.weak for r in rows], np.float64),
            strong=np.array([np.nan if r.strong is None else r.strong for r in rows], np.float64),
            level=np.array([r.level or 0 for r in rows], np.int64),
        )

    def as_rows(self) -> list[data.Row]:
        """Text-less :class:`training.data.Row` values, for :func:`training.evaluate.per_source`."""
        return [data.Row("", str(s), "", "", None if np.isnan(w) else float(w), None if np.isnan(g) else float(g),
                         level=int(lv) or None)
                for s, w, g, lv in zip(self.source, self.weak, self.strong, self.level)]

    def take(self, rows: np.ndarray) -> RowSet:
        return RowSet(self.inputs[rows], None if self.terms is None else self.terms.take(rows), self.source[rows],
                      self.target[rows], self.weight[rows], self.weak[rows], self.strong[rows], self.level[rows])


def head_logits(head: Head, rows: RowSet) -> np.ndarray:
    """The head's logit for every row, its word term computed from the stored counts instead of the texts."""
    logits = head.dense_logits(rows.inputs)
    if head.lexical is not None:
        if rows.terms is None:
            raise BaseRowsError("the head has a word term but the base rows carry no word vectors")
        logits = logits + rows.terms.dot(rows.terms.tfidf(head.lexical.idf), head.lexical.weight)
    return np.asarray(logits)


@dataclass(frozen=True)
class BaseRows:
    train: RowSet
    val: RowSet
    meta: dict[str, Any]


def encoder_digest(model_dir: Path) -> str:
    """SHA-256 of the model directory's encoder files, which the stored embeddings were computed with."""
    return encoder_sha256(model_dir).hex()


def _quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and one float32 scale per column (symmetric, round to nearest)."""
    scale = np.abs(x).max(axis=0) / 127.0 if len(x) else np.zeros(x.shape[1])
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(x / scale), -127, 127).astype(np.int8), scale


def write(path: Path, train: RowSet, val: RowSet, *, model_dir: Path, n_features: int,
          extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the base rows of ``model_dir``'s head (sources in :data:`EXCLUDED` left out); return the summary
    that belongs in router.json (``base_rows``)."""
    keep_train = ~np.isin(train.source, list(EXCLUDED))
    keep_val = ~np.isin(val.source, list(EXCLUDED))
    train, val = train.take(np.nonzero(keep_train)[0]), val.take(np.nonzero(keep_val)[0])
    sources = sorted(set(train.source.tolist()) | set(val.source.tolist()))
    unknown = [s for s in sources if s not in LICENCES]
    if unknown:
        raise BaseRowsError(f"no licence recorded for source(s) {unknown}: add them to training.base_rows.LICENCES "
                            "or EXCLUDED before shipping their rows")
    width = train.inputs.shape[1] - n_features
    both = np.concatenate([train.inputs, val.inputs])
    q, scale = _quantise(both[:, :width])
    terms = [t for t in (train.terms, val.terms) if t is not None]
    summary: dict[str, Any] = {
        "file": FILE,
        "format": FORMAT,
        "encoder_sha256": encoder_digest(model_dir),
        "rows": {"train": int(len(train)), "val": int(len(val))},
        "per_source": {s: {"train": int((train.source == s).sum()), "val": int((val.source == s).sum())}
                       for s in sources},
        "encoding": "embedding int8 with one scale per dimension; features float32; hashed word n-gram counts "
                    f"({'2**' + str(terms[0].bits) + ' buckets' if terms else 'none: the head has no word term'}); "
                    "no prompt text",
        "licences": {s: LICENCES[s] for s in sources},
        "left_out": {s: why for s, why in EXCLUDED.items()},
        **(extra_meta or {}),
    }
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(summary)), "embedding_scale": scale}
    n_train = len(train)
    for name, part, rows in (("train", train, slice(0, n_train)), ("val", val, slice(n_train, None))):
        arrays[f"{name}_embedding"] = q[rows]
        arrays[f"{name}_features"] = part.inputs[:, width:].astype(np.float32)
        arrays[f"{name}_source"] = np.array([sources.index(s) for s in part.source], np.uint8)
        if part.terms is not None:
            arrays[f"{name}_terms_ptr"] = part.terms.ptr.astype(np.int64)
            arrays[f"{name}_terms_index"] = part.terms.index.astype(np.uint16 if part.terms.bits <= 16 else np.uint32)
            arrays[f"{name}_terms_count"] = np.minimum(part.terms.count, 65535).astype(np.uint16)
    arrays["sources"] = np.array(sources)
    arrays["train_target"] = train.target.astype(np.float32)
    arrays["train_weight"] = train.weight.astype(np.float32)
    arrays["val_weak"] = val.weak.astype(np.float32)
    arrays["val_strong"] = val.strong.astype(np.float32)
    arrays["val_level"] = val.level.astype(np.int8)
    if terms:
        arrays["terms_bits"] = np.array(terms[0].bits)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
    return summary


def export(model_dir: Path, train_rows: list[data.Row], val_rows: list[data.Row], targets: data.TargetConfig,
           train_inputs: np.ndarray, val_inputs: np.ndarray, n_features: int) -> dict[str, Any]:
    """Write the base rows of a model directory the training pipeline is exporting: its head's training rows (with
    that fit's label targets and weights) and validation rows, and their head inputs under its encoder."""
    head = Head.load(model_dir / "head.npz")
    bits = head.lexical.bits if head.lexical is not None else None
    target, weight = data.targets(train_rows, targets)
    return write(model_dir / FILE, RowSet.from_rows(train_rows, train_inputs, bits, target, weight),
                 RowSet.from_rows(val_rows, val_inputs, bits), model_dir=model_dir, n_features=n_features)


def load(model_dir: Path) -> BaseRows:
    """Read ``model_dir``'s base rows, checking they were computed with its encoder."""
    path = model_dir / FILE
    if not path.is_file():
        raise BaseRowsError(f"{model_dir} has no {FILE} (a model exported before retraining needed one, or a "
                            "retrain --full output): pass --data-dir with the base training data")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: np.asarray(f[name]) for name in f.files}
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FORMAT:
            raise BaseRowsError(f"{path}: format {meta.get('format')!r}, this version reads format {FORMAT}")
        sources = arrays["sources"].astype(str)
        scale = arrays["embedding_scale"].astype(np.float64)
        bits = int(arrays["terms_bits"]) if "terms_bits" in arrays else None
        parts = {}
        for name in ("train", "val"):
            inputs = np.concatenate([arrays[f"{name}_embedding"].astype(np.float64) * scale,
                                     arrays[f"{name}_features"].astype(np.float64)], axis=1)
            n = len(inputs)
            terms = None
            if bits is not None:
                terms = Terms(ptr=arrays[f"{name}_terms_ptr"].astype(np.int64),
                              index=arrays[f"{name}_terms_index"].astype(np.int64),
                              count=arrays[f"{name}_terms_count"].astype(np.int64), bits=bits)
                if len(terms) != n:
                    raise BaseRowsError(f"{path}: {name} word vectors for {len(terms)} rows, inputs for {n}")
            nan = np.full(n, np.nan)
            parts[name] = RowSet(
                inputs=inputs, terms=terms, source=sources[arrays[f"{name}_source"]],
                target=arrays["train_target"].astype(np.float64) if name == "train" else np.zeros(n),
                weight=arrays["train_weight"].astype(np.float64) if name == "train" else np.zeros(n),
                weak=arrays["val_weak"].astype(np.float64) if name == "val" else nan,
                strong=arrays["val_strong"].astype(np.float64) if name == "val" else nan,
                level=arrays["val_level"].astype(np.int64) if name == "val" else np.zeros(n, np.int64),
            )
    except (KeyError, ValueError, IndexError, OSError) as exc:
        if isinstance(exc, BaseRowsError):
            raise
        raise BaseRowsError(f"{path}: not a readable base-rows file ({exc})") from None
    if meta.get("encoder_sha256") != encoder_digest(model_dir):
        raise BaseRowsError(f"{path} was computed with another encoder than {model_dir / MODEL_FILE}: re-export it "
                            "with the training pipeline, or pass --data-dir to embed the base data afresh")
    return BaseRows(parts["train"], parts["val"], meta)
