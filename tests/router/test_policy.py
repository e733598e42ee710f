"""Scores → tiers: thresholds, strong shares and quantile tables (router.policy)."""

from __future__ import annotations

import math

import pytest

from router.policy import (
    NEVER_STRONG,
    QUANTILE_LEVELS,
    Policy,
    TierPolicy,
    check_quantiles,
    decide,
    quantiles_from_scores,
    threshold_for_strong_share,
)

STRONG = 1  # TierPolicy((threshold,)).tier_index: 0 is the cheaper tier, 1 the stronger


def strong(score: float, threshold: float) -> bool:
    return TierPolicy((threshold,)).tier_index(score) == STRONG


LINEAR = [(i / 100, i / 100) for i in range(101)]
SKEWED = [(0.0, 0.0), (0.5, 0.1), (0.9, 0.4), (1.0, 1.0)]


@pytest.mark.parametrize(("share", "expected"), [(0.5, 0.1), (0.1, 0.4), (0.3, 0.25), (0.05, 0.7)])
def test_strong_share_maps_to_interpolated_quantile(share: float, expected: float) -> None:
    assert threshold_for_strong_share(SKEWED, share) == pytest.approx(expected)


def test_strong_share_on_linear_table_is_one_minus_share() -> None:
    assert threshold_for_strong_share(LINEAR, 0.3) == pytest.approx(0.7)


def test_strong_share_one_sends_every_score_to_strong() -> None:
    table = [(0.0, 0.2), (1.0, 0.8)]  # even scores below the reference minimum
    assert threshold_for_strong_share(table, 1.0) == 0.0
    assert strong(0.0, threshold_for_strong_share(table, 1.0))


def test_strong_share_zero_sends_no_score_to_strong() -> None:
    threshold = threshold_for_strong_share(LINEAR, 0.0)
    assert threshold == NEVER_STRONG > 1.0
    assert not strong(1.0, threshold)


def test_threshold_decreases_as_strong_share_grows() -> None:
    thresholds = [threshold_for_strong_share(SKEWED, s / 20) for s in range(21)]
    assert thresholds == sorted(thresholds, reverse=True)


@pytest.mark.parametrize("share", [-0.01, 1.01, math.nan, math.inf, "0.3", None, True])
def test_invalid_strong_share_raises_value_error(share: object) -> None:
    with pytest.raises(ValueError, match="strong_share"):
        threshold_for_strong_share(LINEAR, share)  # type: ignore[arg-type]


def test_a_cut_uses_greater_or_equal() -> None:
    assert strong(0.5, 0.5)
    assert not strong(math.nextafter(0.5, 0.0), 0.5)
    assert strong(0.0, 0.0)
    assert strong(1.0, 1.0)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan, math.inf, "0.5"])
def test_a_policy_rejects_invalid_thresholds(threshold: object) -> None:
    with pytest.raises(ValueError, match="threshold"):
        TierPolicy((threshold,))  # type: ignore[arg-type]


@pytest.mark.parametrize("score", [-0.1, 1.1, math.nan])
def test_a_policy_rejects_invalid_scores(score: float) -> None:
    with pytest.raises(ValueError, match="score"):
        TierPolicy((0.5,)).tier_index(score)


def test_the_old_two_tier_policy_and_decide_still_work_and_warn() -> None:
    # router.Policy and router.decide are the two-tier forms of TierPolicy; they go after a deprecation period.
    with pytest.warns(DeprecationWarning, match=r"router\.decide\(score, threshold\) is deprecated"):
        assert decide(0.5, 0.5) == "strong"
    with pytest.warns(DeprecationWarning, match=r"router\.decide"):
        assert decide(math.nextafter(0.5, 0.0), 0.5) == "weak"
    with pytest.warns(DeprecationWarning, match=r"router\.Policy is deprecated"):
        assert Policy(0.25).decide(0.3) == "strong"
    with pytest.warns(DeprecationWarning, match=r"router\.Policy"):
        assert Policy.from_strong_share(SKEWED, 0.5).threshold == pytest.approx(0.1)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        Policy(2.0)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="score"):
        decide(1.1, 0.5)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([(0.0, 0.1)], "at least two points"),
        ([(0.1, 0.1), (1.0, 0.9)], "from level 0.0 to level 1.0"),
        ([(0.0, 0.1), (0.9, 0.9)], "from level 0.0 to level 1.0"),
        ([(0.0, 0.1), (0.0, 0.2), (1.0, 0.9)], "increase strictly"),
        ([(0.0, 0.5), (1.0, 0.4)], "must not decrease"),
        ([(0.0, -0.5), (1.0, 0.4)], r"in \[0, 1\]"),
        ([(0.0, 0.1, 0.2), (1.0, 0.4)], "pair"),
        (["ab", (1.0, 0.4)], "pair"),
        ([(0.0, math.nan), (1.0, 0.4)], "NaN"),
    ],
)
def test_invalid_quantile_tables_raise_value_error(table: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_quantiles(table)  # type: ignore[arg-type]


def test_quantiles_from_scores_has_101_monotonic_points() -> None:
    table = quantiles_from_scores([i / 999 for i in range(1000)])
    assert [level for level, _ in table] == list(QUANTILE_LEVELS)
    assert len(table) == 101
    assert table[0] == (0.0, 0.0) and table[-1] == (1.0, 1.0)
    assert table[50][1] == pytest.approx(0.5)
    assert check_quantiles(table)  # acceptable as a router.json table


def test_quantiles_round_trip_reproduces_the_requested_share() -> None:
    scores = [((i * 7919) % 1000) / 1000 for i in range(1000)]
    threshold = threshold_for_strong_share(quantiles_from_scores(scores), 0.3)
    share = sum(strong(s, threshold) for s in scores) / len(scores)
    assert share == pytest.approx(0.3, abs=0.002)


def test_quantiles_of_a_single_score_are_constant() -> None:
    assert {value for _, value in quantiles_from_scores([0.42])} == {0.42}


@pytest.mark.parametrize(("scores", "message"), [([], "empty"), ([0.5, math.nan], "NaN"), ([0.5, 1.2], "between")])
def test_quantiles_from_invalid_scores_raise_value_error(scores: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantiles_from_scores(scores)
