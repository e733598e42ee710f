"""The project's own evaluation sets (``tests/router/data``): document questions and prompts in eleven languages.

Both are external test sets: hand-written for the project, never trained on, and labelled in a different way from
the benchmark sources (a lookup against an analysis of an attached document; an everyday request against a hard
one, outside English). Each is reported as one AUROC, plus one per slice (document kind, language), beside the
prompt-length baseline: the sets are written so that length alone scores 0.45 to 0.60, and a model that does no
better than that has learnt length, not routing.

The intervals are bootstrap percentiles over the sets' ``group`` field (the imagined document, or the language
and topic), because rows about one document are not independent of each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import auroc, bootstrap_interval

#: The two sets and the field that slices each.
SETS = {"documents": "kind", "languages": "language"}

#: The repository's copy, beside the tests that hold the floors (absent from a wheel: pass a directory).
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "tests" / "router" / "data"


@dataclass(frozen=True)
class EvalRow:
    """One labelled prompt of an evaluation set: label 1 means the strong model is needed."""

    id: str
    prompt: str
    label: int
    slice: str  # the document kind or the language
    group: str  # the imagined document, or language and topic


def load(directory: Path, name: str) -> list[EvalRow]:
    """Read ``<directory>/<name>.jsonl``; a row without the set's fields raises ``KeyError`` naming it."""
    field = SETS[name]
    rows = []
    with (directory / f"{name}.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.append(EvalRow(r["id"], r["prompt"], int(r["label"]), r[field], r["group"]))
    return rows


def report(rows: list[EvalRow], scores: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUROC of ``scores`` on the whole set (with a group bootstrap interval) and on each slice."""
    values = np.asarray(scores, dtype=np.float64)
    labels = np.array([r.label for r in rows])
    groups = [r.group for r in rows]

    def on(index: np.ndarray) -> float:
        return auroc(values[index], labels[index])

    out: dict[str, Any] = {
        "n": len(rows),
        "auroc": round(on(np.arange(len(rows))), 4),
        "interval": [
            round(x, 4) for x in bootstrap_interval(on, len(rows), groups=groups, resamples=resamples, seed=seed)
        ],
    }
    slices = sorted({r.slice for r in rows})
    out["slices"] = {s: round(on(np.array([i for i, r in enumerate(rows) if r.slice == s])), 4) for s in slices}
    return out


def length_scores(rows: list[EvalRow]) -> list[float]:
    """The length baseline in characters, as :func:`training.evaluate.length_scores` scores the sources."""
    return [float(len(r.prompt)) for r in rows]


def evaluate(
    directory: Path, scorers: dict[str, Callable[[list[str]], Sequence[float]]], *, resamples: int = 1000
) -> dict[str, dict[str, Any]]:
    """Both sets scored by every scorer, then by prompt length: ``{set: {scorer: report}}``."""
    out: dict[str, dict[str, Any]] = {}
    for name in SETS:
        rows = load(directory, name)
        prompts = [r.prompt for r in rows]
        out[name] = {s: report(rows, scorer(prompts), resamples=resamples) for s, scorer in scorers.items()}
        out[name]["length"] = report(rows, length_scores(rows), resamples=resamples)
    return out


def tables(results: dict[str, dict[str, Any]]) -> str:
    """:func:`table` for each set, one after the other."""
    return "\n".join(table(name, by_scorer) for name, by_scorer in results.items())


def table(name: str, results: dict[str, dict[str, Any]]) -> str:
    """One text table per set: a row per scorer, the whole set's AUROC and interval, then each slice's AUROC."""
    slices = list(next(iter(results.values()))["slices"])
    lines = [
        f"{name} (AUROC; 95% interval over groups)",
        f"{'':10}{'all':>8}{'interval':>16}" + "".join(f"{s[:8]:>9}" for s in slices),
    ]
    for scorer, m in results.items():
        lo, hi = m["interval"]
        cells = "".join(f"{m['slices'][s]:>9.3f}" for s in slices)
        lines.append(f"{scorer[:10]:10}{m['auroc']:>8.3f}{f'[{lo:.3f}, {hi:.3f}]':>16}{cells}")
    return "\n".join(lines)
