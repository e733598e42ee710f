"""Per-source routing quality of a scorer beside three baselines, on the group-held-out validation rows.

Every labelled source gets its own APGR, CPT(50%) and AUROC, because pooled numbers reward a model for telling
sources apart (their base rates differ) rather than for ranking prompts within one. The unlabelled sources get
the checks they allow: the Spearman correlation of score with MATH level, and the share of Arena-Hard prompts
sent strong at the mixture's 30%-strong threshold (the threshold ``strong_share: 0.3`` would give).

Baselines, trained and evaluated on the same split: random (analytic), prompt length in characters, and
TF-IDF (word 1-2 grams) + logistic regression fitted on the training part's labelled rows.

:func:`source_intervals` puts a bootstrap interval around each source's APGR and AUROC, so that a difference
between two models can be told from the noise of a few hundred rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from training.data import EXTRA_SOURCES, LABELLED, MIXTURE, Row
from training.metrics import auroc, bootstrap_interval, routing_curve, summarize

Scorer = Callable[[list[str]], Sequence[float]]


def mixture_threshold(rows: list[Row], scores: np.ndarray, share: float) -> float:
    """The score above which ``share`` of the MIXTURE-weighted rows lie."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.source] = counts.get(r.source, 0) + 1
    weights = np.array([MIXTURE.get(r.source, 0.0) / counts[r.source] for r in rows])
    order = np.argsort(scores, kind="stable")
    cumulative = np.cumsum(weights[order]) / weights.sum()
    return float(scores[order][min(int(np.searchsorted(cumulative, 1.0 - share)), len(rows) - 1)])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return np.asarray(sums[inverse] / counts[inverse])


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (ties averaged), numpy only so evaluation runs on the base dependencies."""
    x, y = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x) * np.dot(y, y)))
    return float(np.dot(x, y) / denominator) if denominator else float("nan")


def per_source(rows: list[Row], scores: Sequence[float]) -> dict[str, Any]:
    """Metrics per source for one scorer's scores of ``rows`` (validation rows, typically)."""
    values = np.asarray(scores, dtype=np.float64)
    source = np.array([r.source for r in rows])
    out: dict[str, Any] = {}
    for name in LABELLED:
        index = np.nonzero(source == name)[0]
        if len(index) > 1:
            weak = [rows[i].weak for i in index]
            strong = [rows[i].strong for i in index]
            out[name] = {"n": len(index), **summarize(values[index].tolist(), weak, strong)}  # type: ignore[arg-type]
    math_rows = np.nonzero(source == "math")[0]
    if len(math_rows) > 1:
        levels = [float(rows[i].level or 0) for i in math_rows]  # every MATH row has a level
        out["math"] = {"n": len(math_rows), "level_spearman": round(spearman(levels, values[math_rows]), 4)}
    arena = np.nonzero(source == "arena")[0]
    if len(arena) and len(set(source)) > 1:
        threshold = mixture_threshold(rows, values, 0.3)
        out["arena"] = {"n": len(arena), "strong_at_30pct": round(float(np.mean(values[arena] >= threshold)), 4)}
        chat = np.nonzero(source == "chat")[0]
        if len(chat):
            out["chat"]["strong_at_30pct"] = round(float(np.mean(values[chat] >= threshold)), 4)
    for name in EXTRA_SOURCES:
        index = np.nonzero(source == name)[0]
        labels = [int((rows[i].target or 0.0) >= 0.5) for i in index]
        if 0 < sum(labels) < len(labels):  # AUROC of "strong needed" (target >= 0.5) within the source
            out[name] = {"n": len(index), "auroc": round(auroc(values[index].tolist(), labels), 4)}
    return out


#: Sources whose rows are resampled by their ``group`` (whole MMLU subjects, as the split and the folds draw them);
#: the others are split by prompt hash, so their rows are resampled one by one.
GROUPED = ("mmlu",)


def source_intervals(
    rows: list[Row], scores: Sequence[float], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, dict[str, list[float]]]:
    """Bootstrap intervals of each labelled source's APGR and AUROC: ``{source: {"apgr": [lo, hi], "auroc": ...}}``."""
    values = np.asarray(scores, dtype=np.float64)
    source = np.array([r.source for r in rows])
    out: dict[str, dict[str, list[float]]] = {}
    for name in LABELLED:
        index = np.nonzero(source == name)[0]
        if len(index) < 2:
            continue
        s = values[index]
        weak = np.array([rows[i].weak for i in index], dtype=np.float64)
        strong = np.array([rows[i].strong for i in index], dtype=np.float64)
        labels = (strong > weak).astype(int)
        groups = [rows[i].group for i in index] if name in GROUPED else None
        kw: dict[str, Any] = {"groups": groups, "resamples": resamples, "level": level, "seed": seed}
        apgr = bootstrap_interval(lambda j: routing_curve(s[j], weak[j], strong[j]).apgr, len(index), **kw)
        area = bootstrap_interval(lambda j: auroc(s[j], labels[j]), len(index), **kw)
        out[name] = {"apgr": [round(x, 4) for x in apgr], "auroc": [round(x, 4) for x in area]}
    return out


def interval_table(metrics: dict[str, Any], intervals: dict[str, dict[str, list[float]]]) -> str:
    """One scorer's APGR and AUROC per labelled source, each with its interval."""
    lines = [f"{'':12}{'n':>6}{'APGR':>8}{'interval':>18}{'AUROC':>8}{'interval':>18}"]
    for name, bounds in intervals.items():
        m = metrics[name]
        apgr, area = bounds["apgr"], bounds["auroc"]
        lines.append(
            f"{name:12}{m['n']:>6}{m['apgr']:>8.3f}{f'[{apgr[0]:.3f}, {apgr[1]:.3f}]':>18}"
            f"{m['auroc']:>8.3f}{f'[{area[0]:.3f}, {area[1]:.3f}]':>18}"
        )
    return "\n".join(lines)


def length_scores(prompts: list[str]) -> list[float]:
    """The prompt-length baseline: longer prompts go to the strong model first."""
    return [float(len(p)) for p in prompts]


def tfidf_scorer(train_rows: list[Row]) -> Scorer:
    """Fit TF-IDF + logistic regression on the labelled training rows (strong needed = strong beat weak)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    labelled = [r for r in train_rows if r.weak is not None and r.strong is not None]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50000, sublinear_tf=True)
    x = vectorizer.fit_transform([r.prompt for r in labelled])
    y = [int(r.strong > r.weak) for r in labelled]  # type: ignore[operator]
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    return lambda prompts: model.predict_proba(vectorizer.transform(prompts))[:, 1].tolist()


def table(results: dict[str, dict[str, Any]]) -> str:
    """One text table: a row per scorer, APGR per labelled source, then the MATH and Arena-Hard checks, then the
    AUROC of the extra sources where any scorer has them."""
    extras = [name for name in EXTRA_SOURCES if any(name in metrics for metrics in results.values())]
    short = {"doc_qa": "docs auc", "multilingual": "langs auc"}
    columns = [*LABELLED, "math ρ", "arena@30%", "chat@30%", *(short[name] for name in extras)]
    lines = [f"{'':10}" + "".join(f"{c:>11}" for c in columns)]
    for name, metrics in results.items():
        cells = []
        for source in LABELLED:
            cells.append(f"{metrics[source]['apgr']:>11.3f}" if source in metrics else f"{'-':>11}")
        cells.append(f"{metrics['math']['level_spearman']:>11.3f}" if "math" in metrics else f"{'-':>11}")
        arena = metrics.get("arena", {}).get("strong_at_30pct")
        cells.append(f"{arena:>11.3f}" if arena is not None else f"{'-':>11}")
        chat = metrics.get("chat", {}).get("strong_at_30pct")
        cells.append(f"{chat:>11.3f}" if chat is not None else f"{'-':>11}")
        for extra in extras:
            cells.append(f"{metrics[extra]['auroc']:>11.3f}" if extra in metrics else f"{'-':>11}")
        lines.append(f"{name[:10]:10}" + "".join(cells))
    return "\n".join(lines)
