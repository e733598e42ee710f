"""Turn a router score into a tier: the decision policy.

The classifier answers "how likely is the strong model needed?"; this module answers "so which model?".
Keeping the two apart lets the proxy change thresholds (per request, per config, per traffic sample) without
touching inference, and lets calibration reuse the same quantile arithmetic the runtime uses.

The rule, used everywhere: a request goes to the strong model iff ``score >= threshold``. Threshold 0.0
therefore sends everything to the strong model, and :data:`NEVER_STRONG` (the smallest float above 1.0)
sends nothing there, because no probability can reach it.

Any number of tiers: the models form an ordered list, cheapest first, and ``n`` tiers need ``n - 1``
non-decreasing cut points. A score goes to the tier above every cut it reaches (the same ``>=`` rule), so two
tiers with one cut are exactly the threshold rule above. Cuts come from fixed thresholds or from target
shares per tier read off the model's quantile table (:func:`cuts_for_shares`).
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Tier:
    """One rung of the configured model list: its position (0 = cheapest) and the name headers, metrics and
    logs use for it. The proxy's settings, decider, upstream and accounting all pass this one type, so "which
    tier" is never a bare string or index that could mean different things in different modules."""

    index: int
    name: str


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


def decide(score: float, threshold: float) -> Literal["weak", "strong"]:
    """Return "strong" iff ``score >= threshold``, else "weak" (see the module docstring for why ">=").

    Deprecated: the two-tier form of ``TierPolicy((threshold,)).tier_index(score)``, which the proxy uses for any
    number of tiers; it warns and will be removed."""
    warnings.warn(_DEPRECATED.format("router.decide(score, threshold)", "TierPolicy((threshold,)).tier_index(score)"),
                  DeprecationWarning, stacklevel=2)
    return _decide(score, threshold)


_DEPRECATED = "{} is deprecated and will be removed; use {} (router.policy)"


def _decide(score: float, threshold: float) -> Literal["weak", "strong"]:
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
    """A validated threshold, so a bad value fails when configuration is read rather than per request.

    Deprecated (it warns on construction): the two-tier form of :class:`TierPolicy`, which the proxy uses."""

    threshold: float

    def __post_init__(self) -> None:
        warnings.warn(_DEPRECATED.format("router.Policy", "TierPolicy, or TierPolicy.from_shares for a share"),
                      DeprecationWarning, stacklevel=3)  # past the dataclass's generated __init__
        object.__setattr__(self, "threshold", check_threshold(self.threshold))

    @classmethod
    def from_strong_share(cls, quantiles: Iterable[Sequence[float]], share: float) -> Policy:
        """Build the policy that targets ``share`` strong-model calls on the quantile table's traffic."""
        return cls(threshold_for_strong_share(quantiles, share))

    def decide(self, score: float) -> Literal["weak", "strong"]:
        """Return the tier for ``score`` under this policy's threshold."""
        return _decide(score, self.threshold)


def check_shares(shares: Sequence[float], tiers: int) -> tuple[float, ...]:
    """Validate per-tier traffic shares: one per tier, each in [0, 1], summing to 1 (within float noise)."""
    if isinstance(shares, (str, bytes)) or not isinstance(shares, Sequence):
        raise ValueError(f"shares must be a list of {tiers} fractions, got {shares!r}")
    if len(shares) != tiers:
        raise ValueError(f"shares must have one fraction per tier ({tiers}), got {len(shares)}")
    values = tuple(_check_real(f"shares[{i}]", v) for i, v in enumerate(shares))
    for i, v in enumerate(values):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"shares[{i}] must be between 0 and 1, got {v}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"shares must add up to 1, got {sum(values):.6g}")
    return values


def check_cuts(cuts: Sequence[float], tiers: int) -> tuple[float, ...]:
    """Validate cut points: ``tiers - 1`` thresholds, each valid, in non-decreasing order (equal cuts leave
    the tier between them empty, which is allowed: it is how one threshold spans several tiers)."""
    if isinstance(cuts, (str, bytes)) or not isinstance(cuts, Sequence):
        raise ValueError(f"thresholds must be a list of {tiers - 1} numbers, got {cuts!r}")
    if len(cuts) != tiers - 1:
        raise ValueError(f"thresholds must have one value per cut between tiers ({tiers - 1}), got {len(cuts)}")
    values = tuple(_check_real(f"thresholds[{i}]", v) for i, v in enumerate(cuts))
    for i, v in enumerate(values):
        if not (0.0 <= v <= 1.0 or v == NEVER_STRONG):
            raise ValueError(f"thresholds[{i}] must be between 0 and 1, got {v}")
        if i and v < values[i - 1]:
            raise ValueError(f"thresholds must not decrease; thresholds[{i}] is {v}, below {values[i - 1]}")
    return values


def cuts_for_shares(quantiles: Iterable[Sequence[float]], shares: Sequence[float]) -> tuple[float, ...]:
    """Cut points that send about ``shares[i]`` of the reference traffic to tier ``i``.

    The cut below tier ``j`` is the threshold for the share of everything from tier ``j`` up, so each cut is
    :func:`threshold_for_strong_share` of a tail sum and two tiers reproduce ``strong_share`` exactly.
    """
    table = check_quantiles(quantiles)
    values = check_shares(shares, len(shares))
    # The tail sums are clamped: float addition can leave them a few ulps outside [0, 1].
    tails = [min(1.0, max(0.0, math.fsum(values[j:]))) for j in range(1, len(values))]
    return tuple(threshold_for_strong_share(table, tail) for tail in tails)


@dataclass(frozen=True)
class TierPolicy:
    """Validated cut points for an ordered list of tiers; ``tier_index`` is the whole decision."""

    cuts: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "cuts", check_cuts(tuple(self.cuts), len(self.cuts) + 1))

    @property
    def tiers(self) -> int:
        return len(self.cuts) + 1

    @classmethod
    def from_shares(cls, quantiles: Iterable[Sequence[float]], shares: Sequence[float]) -> TierPolicy:
        return cls(cuts_for_shares(quantiles, shares))

    @classmethod
    def two_way(cls, threshold: float, tiers: int) -> TierPolicy:
        """One threshold over any number of tiers: below it the cheapest, at or above it the most expensive.

        This is what RouteLLM's ``router-bert-<threshold>`` names mean with more than two tiers: its
        weak/strong pair are the two ends of the list, and the tiers between receive nothing.
        """
        return cls((check_threshold(threshold),) * (tiers - 1))

    def tier_index(self, score: float) -> int:
        """The number of cuts ``score`` reaches (``score >= cut``): 0 is the cheapest tier."""
        score = _check_real("score", score)
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score must be between 0 and 1, got {score}")
        return bisect_right(self.cuts, score)


@lru_cache(maxsize=8)
def _table_columns(quantiles: tuple[tuple[float, ...], ...]) -> tuple[list[float], list[float]]:
    """A quantile table, validated once, as its level and score columns (a model has one table for its life)."""
    table = check_quantiles(quantiles)
    return [level for level, _ in table], [score for _, score in table]


def conversation_score(scores: Sequence[float], decay: float, quantiles: Iterable[Sequence[float]]) -> float:
    """One score for a conversation from its user turns' scores, oldest first (the last is the current turn).

    Each earlier turn ``k`` turns back counts as if it ranked ``decay**k`` as high in the reference traffic: its
    score is turned into a quantile level through the model's table, the level is scaled by ``decay**k`` and
    turned back into a score; the conversation's score is the maximum of those and the last turn's own score.

    A maximum, because one hard turn makes the thread hard: "now add TTL expiry" after a request for a
    concurrent LRU cache needs the model that wrote the cache. Decaying ranks rather than raw scores keeps
    ``decay`` meaning the same for any router model, whose scores may crowd into a narrow band (a raw 0.8 decay
    moved nothing with the shipped model, whose cut points sit within 0.06 of each other). The last turn enters
    at full weight, so conversation mode can only move a request up a tier, never down.
    """
    if not scores:
        raise ValueError("a conversation needs at least one scored user turn")
    decay = _check_real("decay", decay)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    values = [_check_real("score", v) for v in scores]
    levels, points = _table_columns(tuple(tuple(pair) for pair in quantiles))
    best = values[-1]
    for back, value in enumerate(reversed(values[:-1]), start=1):
        level = float(np.interp(value, points, levels)) * decay ** back
        best = max(best, float(np.interp(level, levels, points)))
    return best


def document_score(probability: float, document_cut: float, policy_cut: float) -> float:
    """A document question's score on the general score scale, from the document head's p(analysis).

    The document head has its own calibrated cut (``document_cut``: at or above it a question is an analysis);
    the request's policy has its own (``policy_cut``: the cut above the weakest tier). The map is piecewise linear
    and increasing, sending [0, document_cut] onto [0, policy_cut] and [document_cut, 1] onto [policy_cut, 1], so a
    lookup lands below the policy's cut and an analysis at or above it whatever ``strong_share`` the operator set,
    and the order of questions is kept for multi-tier cuts. A pure signal, like :func:`conversation_score`. A policy
    cut at 0 or 1 (everything strong, nothing strong) is the operator's to keep: the probability passes unchanged.
    """
    p = _check_real("probability", probability)
    d = _check_real("document_cut", document_cut)
    c = _check_real("policy_cut", policy_cut)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    if not 0.0 < d < 1.0:
        raise ValueError(f"document_cut must be in (0, 1), got {d}")
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"policy_cut must be in [0, 1], got {c}")
    if c in (0.0, 1.0):
        return p
    if p < d:
        return min(p / d * c, math.nextafter(c, 0.0))
    return c + (p - d) / (1.0 - d) * (1.0 - c)
