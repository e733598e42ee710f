"""Any number of tiers: the list form of ``models``, cut points from shares or thresholds, fallback along the
list, and everything that reports a tier (headers, metrics, /v1/models, /v1/route, cost), end to end through
the official SDK, the real server, LiteLLM's Gemini provider and the stand-in.

Expected tiers are derived at test time from the shipped router's own scores and quantile table, so these tests
hold for any router model that ships.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from proxy.settings import ConfigError, load_settings, settings_from_dict
from proxy.upstream.calls import fallback_order
from router import Router
from router.policy import Tier, TierPolicy
from tests.conftest import ROOT, RunningProxy, start_proxy, stop_proxy
from tests.standin import Fault, StandInServer

EXAMPLE = ROOT / "deploy" / "config.three-tiers.yaml"
NAMES = ["gemini-1.5-flash-8b", "gemini-1.5-flash", "gemini-1.5-pro"]
THIRDS = [1 / 3, 1 / 3, 1 / 3]

# A mixed prompt set drawn the way the router's quantile table is (README: each source weighted equally): 10
# prompts each from the MMLU/GSM8K training set, the math set and the Arena-Hard set, under 1200 characters.
PROMPTS = [json.loads(line)["prompt"] for line in (ROOT / "tests" / "proxy" / "data" / "mixed_prompts.jsonl")
           .read_text(encoding="utf-8").splitlines()]


def three_tier_config(tmp: Path, **router: Any) -> dict[str, Any]:
    """The shipped example, with test deadlines, files under ``tmp`` and the router keys given."""
    cfg: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for entry in cfg["models"]:
        entry["timeout"] = 5
    cfg["router"] = {"shares": THIRDS, **router}
    cfg["upstream"] = {"retries": 1, "backoff_base": 0.01, "backoff_max": 0.05, "timeout_total": 10,
                       "fallback": "both"}
    cfg["documents"] = {"storage_dir": str(tmp / "files"), "timeout_extract": 10}
    return cfg


@pytest.fixture(scope="module")
def tiers3(router: Router, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    running = start_proxy(settings_from_dict(three_tier_config(tmp_path_factory.mktemp("tiers3"))), router)
    yield running
    stop_proxy(running)


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_shipped_three_tier_example_loads_as_three_tiers_cheapest_first() -> None:
    s = load_settings(EXAMPLE)
    assert [t.name for t in s.models.tiers] == NAMES
    assert [t.index for t in s.models.tiers] == [0, 1, 2]
    assert [m.model for m in s.models.entries] == [f"gemini/{n}" for n in NAMES]


def test_each_of_three_tiers_gets_traffic_at_shares_of_a_third(tiers3: RunningProxy, standin: StandInServer,
                                                                router: Router) -> None:
    policy = TierPolicy.from_shares(router.meta.quantiles, THIRDS)
    expected = [NAMES[policy.tier_index(s)] for s in router.score(PROMPTS)]
    before = {n: _sample("route_llm_requests_total", {"requested_model": "auto", "routed_model": n, "tier": n,
                                                       "status": "ok"}) for n in NAMES}
    client = tiers3.client()
    served = []
    for prompt, want in zip(PROMPTS, expected):
        raw = client.chat.completions.with_raw_response.create(model="auto",
                                                                messages=[{"role": "user", "content": prompt}])
        assert raw.parse().model == want
        assert raw.headers["x-route-llm-tier"] == want
        assert raw.headers["x-route-llm-tier-index"] == str(NAMES.index(want))
        assert raw.headers["x-route-llm-threshold"] == ",".join(f"{c:.4f}" for c in policy.cuts)
        served.append(want)
    assert standin.state.models_called() == expected
    assert set(served) == set(NAMES), f"a tier got no traffic: {Counter(served)}"
    for name, count in Counter(served).items():
        labels = {"requested_model": "auto", "routed_model": name, "tier": name, "status": "ok"}
        assert _sample("route_llm_requests_total", labels) - before[name] == count


def test_models_endpoint_lists_aliases_then_every_tier(tiers3: RunningProxy) -> None:
    ids = [m.id for m in tiers3.client().models.list().data]
    assert ids == ["auto", "auto-cheap", "auto-quality", *NAMES]
    for name in NAMES:
        assert tiers3.client().models.retrieve(name).owned_by == "gemini"


def test_pinning_a_middle_tier_by_name_bypasses_routing(tiers3: RunningProxy, standin: StandInServer) -> None:
    raw = tiers3.client().chat.completions.with_raw_response.create(
        model="gemini-1.5-flash", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-route-llm-tier"] == "gemini-1.5-flash"
    assert raw.headers["x-route-llm-score"] == "none"
    assert standin.state.models_called() == ["gemini-1.5-flash"]


def test_router_bert_threshold_splits_between_the_two_ends(tiers3: RunningProxy, standin: StandInServer) -> None:
    client = tiers3.client()
    low = client.chat.completions.create(model="router-bert-0.0", messages=[{"role": "user", "content": "hi"}])
    high = client.chat.completions.create(model="router-bert-1", messages=[{"role": "user", "content": "hi"}])
    assert (low.model, high.model) == ("gemini-1.5-pro", "gemini-1.5-flash-8b")


def test_route_endpoint_names_the_tier_and_all_cut_points(tiers3: RunningProxy, router: Router) -> None:
    body = tiers3.http().post("/v1/route", json={"model": "auto", "prompt": PROMPTS[-1]}).json()
    policy = TierPolicy.from_shares(router.meta.quantiles, THIRDS)
    score = router.score([PROMPTS[-1]])[0]
    assert body["tier"] == NAMES[policy.tier_index(score)] == body["model"]
    assert body["tier_index"] == policy.tier_index(score)
    assert body["thresholds"] == pytest.approx(list(policy.cuts))
    assert body["threshold"] is None  # one threshold means two tiers


@pytest.mark.parametrize(("fallback", "pinned", "failing", "served"), [
    ("down", "gemini-1.5-flash", ["gemini-1.5-flash"], "gemini-1.5-flash-8b"),
    ("up", "gemini-1.5-flash", ["gemini-1.5-flash"], "gemini-1.5-pro"),
    ("both", "gemini-1.5-flash", ["gemini-1.5-flash"], "gemini-1.5-flash-8b"),  # nearest, cheaper on a tie
    ("both", "gemini-1.5-flash-8b", ["gemini-1.5-flash-8b", "gemini-1.5-flash"], "gemini-1.5-pro"),  # walks on
    ("strong_to_weak", "gemini-1.5-pro", ["gemini-1.5-pro"], "gemini-1.5-flash"),  # the old name of down
])
def test_fallback_walks_the_tier_list(router: Router, tmp_path: Path, standin: StandInServer, fallback: str,
                                      pinned: str, failing: list[str], served: str) -> None:
    cfg = three_tier_config(tmp_path)
    cfg["upstream"].update(fallback=fallback, retries=0)
    running = start_proxy(settings_from_dict(cfg), router)
    try:
        standin.state.faults.extend(Fault("status", status=503, model=m) for m in failing)
        before = _sample("route_llm_fallbacks_total", {"from_tier": pinned, "to_tier": served})
        raw = running.client().chat.completions.with_raw_response.create(
            model=pinned, messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().model == served
        assert raw.headers["x-route-llm-tier"] == served
        assert raw.headers["x-route-llm-fallback"] == f"{pinned}->{served}"
        assert standin.state.models_called() == [*failing, served]
        assert _sample("route_llm_fallbacks_total", {"from_tier": pinned, "to_tier": served}) - before == 1
    finally:
        stop_proxy(running)


def test_fallback_none_and_up_from_the_top_stop_at_the_routed_tier() -> None:
    tiers = tuple(Tier(i, n) for i, n in enumerate(NAMES))
    assert fallback_order(tiers[1], tiers, "none") == [tiers[1]]
    assert fallback_order(tiers[2], tiers, "up") == [tiers[2]]
    assert fallback_order(tiers[0], tiers, "down") == [tiers[0]]
    assert fallback_order(tiers[2], tiers, "both") == [tiers[2], tiers[1], tiers[0]]


def test_cost_and_savings_are_counted_against_the_most_expensive_tier(tiers3: RunningProxy,
                                                                      standin: StandInServer) -> None:
    cost0 = _sample("route_llm_cost_usd_total", {"routed_model": "gemini-1.5-flash-8b"})
    saved0 = _sample("route_llm_savings_usd_total", {})
    out = tiers3.client().chat.completions.create(model="gemini-1.5-flash-8b",
                                                   messages=[{"role": "user", "content": "hello there"}])
    assert out.usage is not None
    p, c = out.usage.prompt_tokens, out.usage.completion_tokens
    cost = (p * 0.0375 + c * 0.15) / 1e6
    assert _sample("route_llm_cost_usd_total", {"routed_model": "gemini-1.5-flash-8b"}) - cost0 == pytest.approx(cost)
    assert _sample("route_llm_savings_usd_total", {}) - saved0 == pytest.approx((p * 1.25 + c * 5.0) / 1e6 - cost)


def test_tier_info_gauge_lists_the_tiers_in_order(tiers3: RunningProxy) -> None:
    for i, name in enumerate(NAMES):
        assert _sample("route_llm_tier_info", {"tier": name, "index": str(i), "routed_model": name}) == 1.0


# --- the two-tier form and its operating points keep their meaning ------------------------------------------

def test_weak_strong_mapping_is_two_tiers_named_weak_and_strong(tmp_path: Path) -> None:
    from tests.conftest import base_config

    s = settings_from_dict(base_config(tmp_path))
    assert [t.name for t in s.models.tiers] == ["weak", "strong"]
    assert (s.models.weak.name, s.models.strong.name) == ("gemini-1.5-flash", "gemini-1.5-pro")


def test_list_of_two_is_the_mapping_form_with_the_models_names(tmp_path: Path, router: Router) -> None:
    from proxy.routing.decider import Decider
    from tests.conftest import base_config

    cfg = base_config(tmp_path)
    cfg["models"] = [cfg["models"]["weak"], cfg["models"]["strong"]]
    cfg["router"] = {"strong_share": 0.25}
    decider = Decider(settings_from_dict(cfg), router)
    two = TierPolicy.from_shares(router.meta.quantiles, [0.75, 0.25])
    from router.policy import threshold_for_strong_share
    assert decider.default_policy.cuts == (threshold_for_strong_share(router.meta.quantiles, 0.25),) == two.cuts
    assert [t.name for t in decider.tiers] == ["gemini-1.5-flash", "gemini-1.5-pro"]


def test_two_tiers_with_no_operating_point_keep_the_default_strong_share(tmp_path: Path, router: Router) -> None:
    from proxy.routing.decider import Decider
    from proxy.settings import DEFAULT_STRONG_SHARE
    from router.policy import threshold_for_strong_share
    from tests.conftest import base_config

    cfg = base_config(tmp_path)
    cfg["router"] = {}
    decider = Decider(settings_from_dict(cfg), router)
    assert decider.default_policy.cuts == (threshold_for_strong_share(router.meta.quantiles, DEFAULT_STRONG_SHARE),)


def test_alias_thresholds_win_over_router_shares(tmp_path: Path, router: Router) -> None:
    from proxy.routing.decider import Decider

    cfg = three_tier_config(tmp_path)
    cfg["aliases"] = {"auto": {}, "fixed": {"thresholds": [0.2, 0.9]}}
    decider = Decider(settings_from_dict(cfg), router)
    assert decider.resolve("fixed").policy == TierPolicy((0.2, 0.9))
    assert decider.resolve("auto").policy == decider.default_policy


# --- bad values name the key ---------------------------------------------------------------------------------

def _bad(tmp: Path, change: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(three_tier_config(tmp))
    change(cfg)
    return cfg


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(models="gemini"), r"models: expected a list of models"),
    (lambda c: c.update(models=c["models"][:1]), r"models: at least two tiers"),
    (lambda c: c["models"][1].update(name="gemini-1.5-flash-8b"), r"the name 'gemini-1.5-flash-8b' is used by two"),
    (lambda c: c["models"][2].pop("model"), r"missing key models\[2\]\.model"),
    (lambda c: c["models"][0].update(colour="red"), r"unknown key models\[0\]\.colour"),
    (lambda c: c["models"][1].update(timeout=0), r"models\[1\]\.timeout: must be positive"),
    (lambda c: c["models"][1].update(input_cost_per_million=-1), r"models\[1\]\.input_cost_per_million"),
    (lambda c: c["router"].update(shares=[0.5, 0.5]), r"router\.shares must have one fraction per tier \(3\)"),
    (lambda c: c["router"].update(shares=[0.5, 0.3, 0.3]), r"router\.shares must add up to 1"),
    (lambda c: c["router"].update(shares=[1.2, -0.1, -0.1]), r"router\.shares\[0\] must be between 0 and 1"),
    (lambda c: c["router"].update(shares=0.3), r"router\.shares: expected a list of numbers"),
    (lambda c: c["router"].update(shares=["a", 0.5, 0.5]), r"router\.shares\[0\]: expected a number"),
    (lambda c: c["router"].update(thresholds=[0.8, 0.2]), r"router\.thresholds must not decrease"),
    (lambda c: c["router"].update(thresholds=[0.5]), r"router\.thresholds must have one value per cut.* \(2\)"),
    (lambda c: c["router"].update(thresholds=[0.5, 1.5]), r"router\.thresholds\[1\] must be between 0 and 1"),
    (lambda c: c["router"].update(shares=None, threshold=0.5), r"router\.threshold: applies to two tiers.*thresholds"),
    (lambda c: c["router"].update(shares=None, strong_share=0.3), r"router\.strong_share: applies to two tiers"),
    (lambda c: c["router"].update(shares=None), r"router: with 3 tiers set router\.shares"),
    (lambda c: c["router"].update(fail_open_tier="medium"), r"router\.fail_open_tier: must be one of weak, strong"),
    (lambda c: c["aliases"].update(x={"shares": [1.0]}), r"aliases\.x\.shares must have one fraction per tier"),
    (lambda c: c["aliases"].update(x={"threshold": 0.5}), r"aliases\.x\.threshold: applies to two tiers"),
    (lambda c: c["upstream"].update(fallback="sideways"), r"upstream\.fallback: must be one of none, down, up"),
])
def test_bad_tier_settings_fail_naming_the_key(tmp_path: Path, change: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(_bad(tmp_path, change))


def test_both_spellings_of_one_operating_point_are_refused(tmp_path: Path) -> None:
    from tests.conftest import base_config

    cfg = base_config(tmp_path, router={"threshold": 0.5, "thresholds": [0.5]})
    with pytest.raises(ConfigError, match="router: set threshold or thresholds, not both"):
        settings_from_dict(cfg)
    cfg = base_config(tmp_path, router={"threshold": None, "strong_share": 0.3, "shares": [0.7, 0.3]})
    with pytest.raises(ConfigError, match="router: set strong_share or shares, not both"):
        settings_from_dict(cfg)


def test_mapping_form_with_a_third_key_points_to_the_list_form(tmp_path: Path) -> None:
    from tests.conftest import base_config

    cfg = base_config(tmp_path)
    cfg["models"]["medium"] = cfg["models"]["weak"]
    with pytest.raises(ConfigError, match=r"unknown key models\.medium .*as a list, cheapest first"):
        settings_from_dict(cfg)


def test_route_command_reports_the_tier_and_cuts_of_the_three_tier_example(router: Router) -> None:
    from click.testing import CliRunner

    from proxy import cli

    prompt = PROMPTS[-1]
    result = CliRunner().invoke(cli.main, ["route", "--config", str(EXAMPLE), prompt])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    policy = TierPolicy.from_shares(router.meta.quantiles, yaml.safe_load(EXAMPLE.read_text())["router"]["shares"])
    index = policy.tier_index(router.score([prompt])[0])
    assert (out["tier"], out["tier_index"], out["model"]) == (NAMES[index], index, NAMES[index])
    assert out["thresholds"] == [round(c, 6) for c in policy.cuts] and out["threshold"] is None
