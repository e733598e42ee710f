"""Turn a router score into a tier: the decision policy.

The classifier answers "how likely is the strong model needed?"; this module answers "so which model?".
Keeping the two apart lets the proxy change thresholds (per request, per config, per traffic sample) without
touching inference, and lets calibration reuse the same quantile arithmetic the runtime uses.

The rule, used everywhere: a request goes to the strong model iff ``score >= threshold``. Threshold 0.0
therefore sends everything to the strong model, and :data:`NEVER_STRONG` (the smallest float above 1.0)
sends nothing there, because no probability can reach it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Tier = Literal["weak", "strong"]

#: A threshold no score in [0, 1] can reach; what a strong share of 0 maps to. Using the next float above 1.0
#: (rather than, say, 1.0 with a strict ">" rule) keeps one comparison rule for every threshold.
NEVER_STRONG: float = math.nextafter(1.0, math.inf)

#: Quantile levels stored in router.json and produced by calibration: 0.00, 0.01, ..., 1.00.
QUANTILE_LEVELS: tuple[float, ...] = tuple(i / 100 for i in range(101))

Quantiles = tuple[tuple[float, float], ...]


def _check_real(name: str, value: float) -> float:
    """Reject non-numbers and NaN early: NaN compares false with everything and would silently pick 'weak'."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def check_strong_share(share: float) -> float:
    """Validate a target share of strong-model calls (a fraction in [0, 1]) and return it as a float."""
    share = _check_real("strong_share", share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"strong_share must be between 0 and 1 (a fraction of requests), got {share}")
    return share


def check_threshold(threshold: float) -> float:
    """Validate a threshold: in [0, 1], or exactly NEVER_STRONG (what a strong share of 0 produces)."""
    threshold = _check_real("threshold", threshold)
    if not (0.0 <= threshold <= 1.0 or threshold == NEVER_STRONG):
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    return threshold


def check_quantiles(quantiles: Iterable[Sequence[float]]) -> Quantiles:
    """Validate a score-quantile table and return it as a tuple of ``(level, score)`` float pairs.

    The table must start at level 0 and end at level 1 with strictly increasing levels and non-decreasing
    scores in [0, 1]; anything else would make the share → threshold mapping ambiguous or non-monotonic.
    """
    pairs: list[tuple[float, float]] = []
    for index, pair in enumerate(quantiles):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"quantiles[{index}] must be a [level, score] pair, got {pair!r}")
        level = _check_real(f"quantiles[{index}] level", pair[0])
        score = _check_real(f"quantiles[{index}] score", pair[1])
        if not (0.0 <= level <= 1.0 and 0.0 <= score <= 1.0):
            raise ValueError(f"quantiles[{index}] must hold values in [0, 1], got {list(pair)!r}")
        if pairs and level <= pairs[-1][0]:
            raise ValueError(f"quantile levels must increase strictly; quantiles[{index}] level is {level}")
        if pairs and score < pairs[-1][1]:
            raise ValueError(f"quantile scores must not decrease; quantiles[{index}] score is {score}")
        pairs.append((level, score))
    if len(pairs) < 2 or pairs[0][0] != 0.0 or pairs[-1][0] != 1.0:
        raise ValueError("quantiles must have at least two points, from level 0.0 to level 1.0")
    return tuple(pairs)


def threshold_for_strong_share(quantiles: Iterable[Sequence[float]], share: float) -> float:
    """Return the threshold that sends about ``share`` of the reference traffic to the strong model.

    A share X is the score at quantile level 1 - X, linearly interpolated between table points. The ends are
    fixed rather than read from the table, because the reference sample's extremes need not bound live
    traffic: share 1 → 0.0 (every score passes), share 0 → NEVER_STRONG (no score passes).
    """
    table = check_quantiles(quantiles)
    share = check_strong_share(share)
    if share == 1.0:
        return 0.0
    if share == 0.0:
        return NEVER_STRONG
    levels = [level for level, _ in table]
    scores = [score for _, score in table]
    return float(np.interp(1.0 - share, levels, scores))


def decide(score: float, threshold: float) -> Tier:
    """Return "strong" iff ``score >= threshold``, else "weak" (see the module docstring for why ">=")."""
    score = _check_real("score", score)
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be between 0 and 1, got {score}")
    return "strong" if score >= check_threshold(threshold) else "weak"


def quantiles_from_scores(scores: Iterable[float]) -> list[tuple[float, float]]:
    """Summarise scores as 101 ``(level, score)`` points, the table format router.json carries.

    Linear interpolation between order statistics (numpy's default) keeps the table monotonic and makes
    :func:`threshold_for_strong_share` on it reproduce the sample's own shares closely.
    """
    values = np.asarray([_check_real("score", s) for s in scores], dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot compute quantiles of an empty list of scores")
    if values.min() < 0.0 or values.max() > 1.0:
        raise ValueError("scores must be between 0 and 1")
    points = np.quantile(values, QUANTILE_LEVELS)
    # np.maximum.accumulate removes float noise that could make neighbouring points decrease by 1 ulp.
    points = np.clip(np.maximum.accumulate(points), 0.0, 1.0)
    return [(level, float(value)) for level, value in zip(QUANTILE_LEVELS, points)]


@dataclass(frozen=True)
class Policy:
    """A validated threshold, so a bad value fails when configuration is read rather than per request."""

    threshold: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))

    @classmethod
    def from_strong_share(cls, quantiles: Iterable[Sequence[float]], share: float) -> Policy:
        """Build the policy that targets ``share`` strong-model calls on the quantile table's traffic."""
        return cls(threshold_for_strong_share(quantiles, share))

    def decide(self, score: float) -> Tier:
        """Return the tier for ``score`` under this policy's threshold."""
        return decide(score, self.threshold)
