"""Bootstrap intervals (training.metrics.bootstrap_interval): what crossval_router.py and the evaluation sets print
beside each figure, so that "not worse than v3 beyond its interval" can be judged."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from training.metrics import auroc, bootstrap_interval


def _scores(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A noisy scorer: label 1 rows score higher on average (AUROC about 0.76)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    return rng.normal(size=n) + labels, labels


def _auroc_of(scores: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda index: auroc(scores[index], labels[index])


def test_interval_covers_the_point_estimate_and_is_not_degenerate() -> None:
    scores, labels = _scores(400)
    point = auroc(scores, labels)
    lo, hi = bootstrap_interval(_auroc_of(scores, labels), 400, seed=3)
    assert lo < point < hi
    assert 0.02 < hi - lo < 0.2


def test_interval_shrinks_as_rows_grow() -> None:
    small = bootstrap_interval(_auroc_of(*_scores(100)), 100, seed=0)
    large = bootstrap_interval(_auroc_of(*_scores(1600)), 1600, seed=0)
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])  # about 1/sqrt(16) in theory


def test_interval_is_deterministic_for_a_seed_and_moves_with_it() -> None:
    statistic = _auroc_of(*_scores(200))
    assert bootstrap_interval(statistic, 200, seed=7) == bootstrap_interval(statistic, 200, seed=7)
    assert bootstrap_interval(statistic, 200, seed=7) != bootstrap_interval(statistic, 200, seed=8)


def test_group_resampling_keeps_groups_whole_and_widens_for_correlated_rows() -> None:
    # 20 groups of 20 identical rows: really 20 observations, which the group bootstrap sees and the row one not
    rng = np.random.default_rng(0)
    per_group = rng.normal(size=20)
    values = np.repeat(per_group, 20)
    groups = [f"g{i}" for i in range(20) for _ in range(20)]
    seen: list[np.ndarray] = []

    def mean(index: np.ndarray) -> float:
        seen.append(index)
        return float(values[index].mean())

    by_group = bootstrap_interval(mean, 400, groups=groups, resamples=300, seed=0)
    by_row = bootstrap_interval(lambda index: float(values[index].mean()), 400, resamples=300, seed=0)
    assert all(len(index) % 20 == 0 for index in seen)
    assert (by_group[1] - by_group[0]) > 2 * (by_row[1] - by_row[0])


def test_undefined_resamples_are_left_out_and_all_undefined_gives_nan() -> None:
    labels = np.array([0] * 9 + [1])
    scores = np.arange(10.0)
    lo, hi = bootstrap_interval(_auroc_of(scores, labels), 10, seed=0)
    assert lo == hi == 1.0  # the one positive always outranks; draws without it are skipped
    assert np.isnan(bootstrap_interval(lambda index: float("nan"), 5)).all()


def test_groups_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="groups has 2 entries for 3 rows"):
        bootstrap_interval(lambda index: 0.0, 3, groups=["a", "b"])
