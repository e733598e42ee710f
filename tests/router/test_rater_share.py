"""``router.rater_share``: no single rater may give more than a share of the rows a router learns from."""

from __future__ import annotations

import math
import random

import pytest

from router.rater_share import cap_share, check_share, kept_counts


@pytest.mark.parametrize(("counts", "unattributed", "share", "kept"), [
    ({"a": 400, "b": 50}, 0, 0.5, {"a": 50, "b": 50}),  # two raters at a half: the largest comes down to the next
    ({"a": 400, "b": 50}, 0, 1.0, {"a": 400, "b": 50}),  # 1: no cap
    ({"a": 400, "b": 50, "c": 50}, 0, 0.5, {"a": 100, "b": 50, "c": 50}),
    ({"a": 400, "b": 300, "c": 10}, 0, 0.4, {"a": 20, "b": 20, "c": 10}),  # both large raters come down
    ({"a": 400}, 0, 0.5, {"a": 0}),  # a lone rater can never be at most half of its own rows
    ({"a": 400}, 100, 0.5, {"a": 100}),  # unattributed rows count in the total but are never cut
    ({"a": 30, "b": 30, "c": 30}, 0, 0.34, {"a": 30, "b": 30, "c": 30}),  # already under the share
])
def test_the_largest_raters_come_down_to_the_share_and_no_further(counts: dict[str, int], unattributed: int,
                                                                   share: float, kept: dict[str, int]) -> None:
    got = kept_counts(counts, unattributed, share)
    assert got == kept
    total = sum(got.values()) + unattributed
    assert all(n <= share * total + 1e-9 for n in got.values())


def test_the_rows_kept_are_the_same_whatever_their_order() -> None:
    raters = ["a"] * 400 + ["b"] * 50 + [None] * 10
    keys = [f"fb-{i}" for i in range(len(raters))]
    kept = {keys[i] for i in cap_share(raters, keys, 0.5)}
    order = list(range(len(raters)))
    random.Random(3).shuffle(order)
    shuffled = [keys[i] for i in order]
    again = {shuffled[i] for i in cap_share([raters[i] for i in order], shuffled, 0.5)}
    assert kept == again
    from_a = [k for k in kept if int(k[3:]) < 400]
    assert len(from_a) == 60 and len(kept) == 120  # a: 60 of 120 (b 50 and 10 unattributed)


def test_indices_come_back_in_their_original_order() -> None:
    raters = ["a", "b", "a", "a", "b", "a"]
    kept = cap_share(raters, [str(i) for i in range(6)], 0.5)
    assert kept == sorted(kept) and [raters[i] for i in kept].count("a") == 2


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan, math.inf, -math.inf])
def test_a_share_outside_zero_to_one_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="above 0 and at most 1"):
        check_share(bad)
