"""Routing-quality metrics: RouteLLM's APGR and CPT, computed exactly from the ranking; AUROC; bootstrap intervals.

For every threshold, prompts scoring at or above it go to the strong model; performance is the mean score of the
answers actually used. PGR (performance gap recovered) normalises that between always-weak (0) and
always-strong (1); CPT(x) is the smallest strong-call share reaching PGR x; APGR is the area under PGR over the
strong share, 0.5 for a random router.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np


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


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
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


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    groups: Sequence[str] | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(index)`` over resamples of the ``n`` rows' indices.

    With ``groups``, whole groups are drawn with replacement (as many as there are) and every row of a drawn group
    comes along: rows that share an MMLU subject or a document are not independent, and resampling them one by one
    would give an interval that is too narrow. Resamples on which the statistic is undefined (NaN: an AUROC drawn
    with one class only) are left out. Seeded, so a rerun prints the same interval.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        blocks = [np.array([i]) for i in range(n)]
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} rows")
        members: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        blocks = [np.array(v) for v in members.values()]
    values = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(blocks), size=len(blocks))
        values.append(statistic(np.concatenate([blocks[j] for j in drawn])))
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100.0 - tail))
