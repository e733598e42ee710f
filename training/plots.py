"""Pictures of a router's evaluation: deferral curves and score histograms, one file per source.

A deferral curve (RouteLLM's picture of a router) plots the mean quality of the answers used against the share of
prompts sent to the strong model, as the threshold sweeps from "everything weak" to "everything strong"; a random
router is the straight line between the two ends, and a useful one bows above it. The curve is
:func:`training.metrics.routing_curve`, the same one APGR integrates, so the pictures and the tables agree.

The score histograms show where a source's prompts fall, split by what the labels say they needed (for sources
with labels), with the shipped router's default cut point drawn in.

matplotlib with the Agg backend (no display, nothing fetched); ``scripts/evaluate_router.py --plot DIR``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data import LABELLED, Row
from training.metrics import routing_curve

#: Scorer name → line style, so the router stands out and the baselines are told apart in print too.
STYLES = {"router": {"color": "#1f77b4", "linewidth": 2.2}, "tfidf_lr": {"color": "#ff7f0e", "linestyle": "--"},
          "length": {"color": "#2ca02c", "linestyle": "-."}}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the environment says
    import matplotlib.pyplot as plt

    return plt


def _rows_of(rows: Sequence[Row], source: str) -> np.ndarray:
    return np.array([i for i, r in enumerate(rows) if r.source == source], dtype=np.int64)


def deferral_curve(ax: Any, rows: Sequence[Row], scores: Mapping[str, Sequence[float]], source: str) -> None:
    """One source's curves on ``ax``: quality against the strong share for each scorer, and the random line."""
    index = _rows_of(rows, source)
    weak = [rows[i].weak for i in index]
    strong = [rows[i].strong for i in index]
    curve = None
    for name, values in scores.items():
        picked = np.asarray(values, dtype=np.float64)[index]
        curve = routing_curve(picked, weak, strong)  # type: ignore[arg-type]
        ax.plot(curve.share * 100, curve.perf, label=f"{name} (APGR {curve.apgr:.3f})",
                **STYLES.get(name, {"color": "#9467bd", "linestyle": ":"}))
    assert curve is not None
    ax.plot([0, 100], [curve.weak_perf, curve.strong_perf], color="#7f7f7f", linestyle=":",
            label="random (APGR 0.500)")
    ax.axhline(curve.strong_perf, color="#d62728", linewidth=0.8, alpha=0.6)
    ax.axhline(curve.weak_perf, color="#8c564b", linewidth=0.8, alpha=0.6)
    ax.set_xlabel("requests sent to the strong model (%)")
    ax.set_ylabel("mean answer quality")
    ax.set_title(f"{source}: deferral curve ({len(index)} prompts)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def score_histogram(ax: Any, rows: Sequence[Row], scores: Sequence[float], source: str,
                    cut: float | None) -> None:
    """One source's router scores; labelled sources split by whether the strong model answered better."""
    index = _rows_of(rows, source)
    values = np.asarray(scores, dtype=np.float64)[index]
    bins = np.linspace(0.0, 1.0, 41)
    if source in LABELLED:
        gain = np.array([(rows[i].strong or 0.0) - (rows[i].weak or 0.0) for i in index])
        ax.hist(values[gain > 0], bins=bins, alpha=0.6, color="#d62728", label="strong answered better")
        ax.hist(values[gain <= 0], bins=bins, alpha=0.6, color="#1f77b4", label="weak was as good")
    else:
        ax.hist(values, bins=bins, alpha=0.8, color="#1f77b4", label="all prompts")
    if cut is not None:
        ax.axvline(cut, color="black", linestyle="--", linewidth=1.2, label=f"default cut {cut:.3f}")
    ax.set_xlabel("router score")
    ax.set_ylabel("prompts")
    ax.set_title(f"{source}: router scores ({len(index)} prompts)")
    ax.legend(fontsize=8)


def write_plots(directory: Path, rows: Sequence[Row], scores: Mapping[str, Sequence[float]], *,
                cut: float | None) -> list[Path]:
    """``deferral_<source>.png`` for every labelled source and ``scores_<source>.png`` for every source present
    in ``rows``; ``scores['router']`` is the histogram's scorer. Returns the files written."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    present = list(dict.fromkeys(r.source for r in rows))
    for source in present:
        if source in LABELLED and len(_rows_of(rows, source)) > 1:
            fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=90)
            deferral_curve(ax, rows, scores, source)
            written.append(_save(fig, directory / f"deferral_{source}.png", plt))
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
        score_histogram(ax, rows, scores["router"], source, cut)
        written.append(_save(fig, directory / f"scores_{source}.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
