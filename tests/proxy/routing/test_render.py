"""One rendering of a routing decision for /v1/route, `route-llm route`, the headers and the access log."""

from __future__ import annotations

from proxy.routing.decider import Decision
from proxy.routing.render import cuts_header, cuts_log_value, decision_headers, decision_view
from router.policy import Tier

WEAK, MID, TOP = Tier(0, "weak"), Tier(1, "mid"), Tier(2, "top")


def test_a_two_tier_decision_reports_its_one_threshold_everywhere() -> None:
    d = Decision(tier=WEAK, score=0.123456789, cuts=(0.5,), seconds=0.01, turn_score=0.2)
    view = decision_view(d, model="flash")
    assert view == {"tier": "weak", "tier_index": 0, "model": "flash", "score": 0.123456789, "turn_score": 0.2,
                    "threshold": 0.5, "thresholds": [0.5], "router_error": False}
    assert decision_headers(d, tier=WEAK, model="flash") == {
        "x-route-llm-tier": "weak", "x-route-llm-tier-index": "0", "x-route-llm-model": "flash",
        "x-route-llm-score": "0.1235", "x-route-llm-threshold": "0.5000"}
    assert cuts_log_value((0.5,)) == 0.5


def test_a_fallback_a_failed_router_and_several_cuts_show_in_the_headers() -> None:
    d = Decision(tier=MID, score=None, cuts=(0.3, 0.7), seconds=0.0, failed=True)
    h = decision_headers(d, tier=TOP, model="pro")
    assert (h["x-route-llm-tier"], h["x-route-llm-tier-index"], h["x-route-llm-model"]) == ("top", "2", "pro")
    assert h["x-route-llm-fallback"] == "mid->top" and h["x-route-llm-router-error"] == "1"
    assert (h["x-route-llm-score"], h["x-route-llm-threshold"]) == ("none", "0.3000,0.7000")
    assert decision_view(d, model="mid-model")["threshold"] is None  # no single threshold with three tiers
    assert cuts_header((0.3, 0.7)) == "0.3000,0.7000" and cuts_log_value((0.3, 0.7)) == [0.3, 0.7]


def test_a_pinned_model_has_no_threshold() -> None:
    h = decision_headers(Decision(tier=TOP, score=None, cuts=None, seconds=0.0), tier=TOP, model="pro")
    assert h["x-route-llm-threshold"] == "none" and "x-route-llm-fallback" not in h
