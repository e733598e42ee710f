"""The shipped router orders everyday requests below clearly hard ones, whatever their lengths.

``sanity_pairs.jsonl`` holds hand-written pairs: an everyday request a small model answers well (a greeting, a
haiku, fixing typos in a pasted note) beside a clearly hard one (a proof, a systems design, non-trivial code,
a multi-step word problem, an expert analysis, a logic puzzle). In more than half of them the hard prompt is
the shorter, so prompt length alone fails the suite. None of these prompts is in the training data. This is
a floor for every shipped model, not the target it was tuned to.

The project's target is 95% of pairs; the shipped model (router v3) orders 71 of the 78 (91%; 72 in an earlier
session, where the near-tie p67 fell the other way; v2 ordered 65), so the floor asserted here is 90%: a model
that falls below it must not ship. Reaching 95% is open work (README).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router import Router

PAIRS = [json.loads(line) for line in (Path(__file__).parent / "sanity_pairs.jsonl").read_text().splitlines()]


def test_the_suite_cannot_be_passed_by_prompt_length() -> None:
    assert len(PAIRS) >= 60
    shorter_hard = sum(len(p["hard"]) < len(p["easy"]) for p in PAIRS)
    assert shorter_hard >= len(PAIRS) / 2


@pytest.fixture(scope="module")
def pair_scores(router: Router) -> list[tuple[float, float]]:
    """Scored by the session's shipped router (tests/conftest.py), not a second load of the same files."""
    easy = router.score([p["easy"] for p in PAIRS])
    hard = router.score([p["hard"] for p in PAIRS])
    return list(zip(easy, hard))


FLOOR = 0.90


def test_shipped_router_orders_at_least_the_floor_of_pairs(pair_scores: list[tuple[float, float]]) -> None:
    wrong = [p["id"] for p, (easy, hard) in zip(PAIRS, pair_scores) if hard <= easy]
    assert len(wrong) <= (1 - FLOOR) * len(PAIRS), f"{len(wrong)} of {len(PAIRS)} pairs ordered wrong: {wrong}"


def test_prompt_length_alone_fails_the_floor() -> None:
    right = sum(len(p["hard"]) > len(p["easy"]) for p in PAIRS)
    assert right < FLOOR * len(PAIRS)
