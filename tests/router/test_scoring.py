"""Bulk JSONL scoring and calibration (router.scoring)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from router import CalibrationResult, Router, ScoreInputError, calibrate, score_jsonl
from router.policy import TierPolicy, threshold_for_strong_share
from tests.router.conftest import words


def jsonl(prompts: list[str]) -> list[str]:
    return [json.dumps({"prompt": p}) + "\n" for p in prompts]


def test_score_jsonl_round_trip_matches_router_scores_in_order(fixture_router: Router) -> None:
    prompts = [words(i * 11, (i * 13) % 50) for i in range(150)] + ["", "这个 🤖"]
    out = io.StringIO()
    count = score_jsonl(fixture_router, jsonl(prompts), out, batch_size=7)
    lines = out.getvalue().splitlines()
    assert count == len(prompts) == len(lines)
    scores = [json.loads(line)["score"] for line in lines]
    assert all(set(json.loads(line)) == {"score"} for line in lines)
    assert scores == pytest.approx(fixture_router.score(prompts), abs=1e-5)


def test_score_jsonl_ignores_extra_keys_and_accepts_crlf(fixture_router: Router) -> None:
    out = io.StringIO()
    assert score_jsonl(fixture_router, ['{"prompt": "w1", "id": 7}\r\n', '{"prompt": "w2"}'], out) == 2
    assert len(out.getvalue().splitlines()) == 2


def test_score_jsonl_of_empty_input_writes_nothing(fixture_router: Router) -> None:
    out = io.StringIO()
    assert score_jsonl(fixture_router, [], out) == 0
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json}\n", "not valid JSON"),
        ("[1, 2]\n", "expected a JSON object, got list"),
        ('"just a string"\n', "expected a JSON object, got str"),
        ('{"text": "x"}\n', 'missing "prompt" key'),
        ('{"prompt": 5}\n', '"prompt" must be a string, got int'),
        ('{"prompt": null}\n', '"prompt" must be a string, got NoneType'),
        ("\n", "blank line"),
        ("   \n", "blank line"),
    ],
)
def test_malformed_line_raises_with_line_number_after_writing_earlier_scores(
    fixture_router: Router, bad_line: str, message: str
) -> None:
    lines = jsonl([words(i, 3) for i in range(4)]) + [bad_line] + jsonl(["w1"])
    out = io.StringIO()
    with pytest.raises(ScoreInputError, match=f"^line 5: {message}") as info:
        score_jsonl(fixture_router, lines, out, batch_size=3)
    assert info.value.line_number == 5
    assert len(out.getvalue().splitlines()) == 4  # every line before the bad one, nothing after


def test_score_jsonl_rejects_bad_batch_size(fixture_router: Router) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        score_jsonl(fixture_router, [], io.StringIO(), batch_size=0)


def test_calibrate_threshold_hits_the_requested_share_on_the_sample(fixture_router: Router) -> None:
    prompts = [words(i * 17, 1 + i % 30) for i in range(400)]
    result = calibrate(fixture_router, jsonl(prompts), 0.25, batch_size=50)
    assert isinstance(result, CalibrationResult)
    assert result.n == 400
    assert len(result.quantiles) == 101
    assert result.threshold == threshold_for_strong_share(result.quantiles, 0.25)
    cut = TierPolicy((result.threshold,))
    share = sum(cut.tier_index(s) == 1 for s in fixture_router.score(prompts)) / 400
    assert share == pytest.approx(0.25, abs=0.03)


def test_calibrate_rejects_invalid_share_before_reading(fixture_router: Router) -> None:
    def unread_lines() -> Iterator[str]:
        raise AssertionError("input was read")
        yield ""  # makes this a generator, so nothing runs until calibrate iterates it

    with pytest.raises(ValueError, match="strong_share"):
        calibrate(fixture_router, unread_lines(), 1.5)


def test_calibrate_rejects_bad_batch_size(fixture_router: Router) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        calibrate(fixture_router, [], 0.3, batch_size=-1)


def test_calibrate_on_empty_input_raises(fixture_router: Router) -> None:
    with pytest.raises(ScoreInputError, match="no prompts") as info:
        calibrate(fixture_router, [], 0.3)
    assert info.value.line_number is None


def test_calibrate_reports_malformed_lines(fixture_router: Router) -> None:
    with pytest.raises(ScoreInputError, match="^line 2: "):
        calibrate(fixture_router, ['{"prompt": "w1"}', "oops"], 0.3)
