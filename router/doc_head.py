"""The document-question head: lookup vs analysis, for requests that carry a document.

The general head ranks prompts by "does this need the strong model" across benchmarks and everyday chat; a question
about an attached document is another kind of prompt ("What is the company's name?" vs "Judge which risk most
threatens margins"), and the general head, fitted mostly on other sources, orders those poorly (own documents set
AUROC 0.686). This head is one logistic model over the same embedding the general head reads, fitted on document
questions only (``scripts/train_doc_head.py``), with its own calibrated cut: the proxy uses it, through
:func:`router.policy.document_score`, only when the request carries a document.

``doc_head.npz`` holds ``weight`` (hidden,), ``bias`` (scalar), ``cut`` (the logit at which a question counts as an
analysis) and ``meta`` (a JSON string: how it was fitted and measured).

A prompt scored without its document (``route-llm score``, a chat whose client pasted nothing) can still be a
question about one. An optional **gate** recognises those: a second logistic model over the same embedding, document
questions against every other training source, with a probability ``gate_cut`` above which :meth:`Router.score`
reads the prompt as a document question and places the head's p(analysis) on the general scale at ``general_cut``
(``scripts/train_doc_gate.py`` fits it; arrays ``gate_weight``, ``gate_bias``, ``gate_cut``, ``general_cut``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FILE = "doc_head.npz"


@dataclass(frozen=True)
class Gate:
    """Which prompts are questions about a document, and where the head's cut sits on the general score scale."""

    weight: np.ndarray  # float64 (hidden,)
    bias: float
    cut: float  # probability at or above which a prompt is read as a document question
    general_cut: float  # the general score the document head's cut is placed at

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """p(question about a document) for each row of L2-normalised embeddings."""
        logits = embeddings[:, : self.weight.size] @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -700.0, 700.0)))


GATE_ARRAYS = ("gate_weight", "gate_bias", "gate_cut", "general_cut")


@dataclass(frozen=True)
class DocHead:
    weight: np.ndarray  # float64 (hidden,)
    bias: float
    cut: float  # logit
    meta: dict[str, Any]
    gate: Gate | None = None

    @property
    def cut_probability(self) -> float:
        """The cut as a probability: a document question at or above it is an analysis."""
        return 1.0 / (1.0 + math.exp(-self.cut))

    @classmethod
    def load(cls, path: Path) -> DocHead:
        """Read and check a doc_head.npz; raises ValueError naming what is wrong."""
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("weight", "bias", "cut", "meta") if k not in f.files]
            if missing:
                raise ValueError(f"missing array(s) {missing}")
            weight = np.asarray(f["weight"], dtype=np.float64)
            bias, cut = float(f["bias"]), float(f["cut"])
            meta = json.loads(str(f["meta"]))
            present = [k for k in GATE_ARRAYS if k in f.files]
            if present and len(present) != len(GATE_ARRAYS):
                raise ValueError(f"a gate needs all of {list(GATE_ARRAYS)}, got {present}")
            gate = Gate(weight=np.asarray(f["gate_weight"], dtype=np.float64), bias=float(f["gate_bias"]),
                        cut=float(f["gate_cut"]), general_cut=float(f["general_cut"])) if present else None
        if weight.ndim != 1 or not weight.size or not np.all(np.isfinite(weight)):
            raise ValueError(f"'weight' must be a finite vector, got shape {weight.shape}")
        if not (math.isfinite(bias) and math.isfinite(cut)):
            raise ValueError("'bias' and 'cut' must be finite")
        if not isinstance(meta, dict):
            raise ValueError("'meta' must be a JSON object")
        if gate is not None:
            if gate.weight.shape != weight.shape or not np.all(np.isfinite(gate.weight)):
                raise ValueError(f"'gate_weight' must be a finite vector like 'weight', got shape {gate.weight.shape}")
            if not math.isfinite(gate.bias):
                raise ValueError("'gate_bias' must be finite")
            if not (0.0 < gate.cut < 1.0 and 0.0 < gate.general_cut < 1.0):
                raise ValueError("'gate_cut' and 'general_cut' must be probabilities strictly between 0 and 1")
        return cls(weight=weight, bias=bias, cut=cut, meta=meta, gate=gate)

    def save(self, path: Path) -> None:
        gate = {} if self.gate is None else {
            "gate_weight": self.gate.weight, "gate_bias": np.array(self.gate.bias),
            "gate_cut": np.array(self.gate.cut), "general_cut": np.array(self.gate.general_cut)}
        np.savez(path, weight=self.weight, bias=np.array(self.bias), cut=np.array(self.cut),
                 meta=np.array(json.dumps(self.meta)), **gate)

    def probabilities(self, embeddings: np.ndarray) -> list[float]:
        """p(analysis) for each row of L2-normalised embeddings (the encoder's, as the general head reads them)."""
        if embeddings.ndim != 2 or embeddings.shape[1] < self.weight.size:
            raise ValueError(f"embeddings of shape {embeddings.shape} for a head over {self.weight.size} dimensions")
        logits = embeddings[:, : self.weight.size] @ self.weight + self.bias
        return [1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, float(z))))) for z in logits]
