"""Per-key spend budgets (``proxy.routing.budget``, ``proxy.state.spend``, ``router.budget``), over real sockets with
the official OpenAI SDK against the Gemini stand-in: a draining budget steers a key's requests to the cheaper tier,
a spent one is a 429 ``budget_exceeded`` the SDK does not retry (or the cheapest tier, if the key says so), the
spend survives a restart and is shared by replicas on one Postgres, and admins see and reset it."""

from __future__ import annotations

import calendar
import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import REGISTRY

from proxy import cli
from proxy.routing.budget import (
    BudgetStatus,
    apply_budget,
    calendar_reset,
    period_start,
    readable_since,
    rolling_reset,
    status_of,
)
from proxy.routing.decider import Target
from proxy.settings import ApiKeySettings, BudgetSettings, ConfigError, settings_from_dict
from router import Router
from router.budget import steer_cuts, steer_fraction
from router.policy import NEVER_STRONG, Tier, TierPolicy
from tests.conftest import LOOPBACK_TLS, RunningProxy, base_config
from tests.services import Services, fresh_schema
from tests.standin import StandInServer

ADMIN = "admin-secret"
PROMPT = "Write a short poem about autumn."  # scores ~0.56 with the shipped model: strong at threshold 0.5
# Prices that make the stand-in's answers (about 6 prompt and 11 answer tokens) cost ~$0.0017 on the strong tier
# and ~$0.0005 on the weak one, so a $0.01 budget lasts a handful of requests.
PRICES = {"weak": 30.0, "strong": 100.0}
KEYS = [
    {"name": "team-a", "key": "sk-team-a", "budget": {"usd": 0.01, "period": "day"}},
    {"name": "team-b", "key": "sk-team-b"},
    {"name": "team-c", "key": "sk-team-c", "budget": {"usd": 0.0001, "period": "month"},
     "when_exhausted": "cheapest"},
    {"name": "team-d", "key": "sk-team-d", "budget": {"usd": 0.0001, "period": "rolling", "window": "1h"}},
]


def budget_config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    cfg = base_config(tmp, server={"api_keys": KEYS, "admin_keys": [ADMIN], **sections.pop("server", {})},
                      router={"budget_steer": {"start": 0.5}}, **sections)
    for tier, price in PRICES.items():
        cfg["models"][tier].update(input_cost_per_million=price, output_cost_per_million=price)
    return cfg


def _requests(status: str, requested: str = "auto") -> float:
    return REGISTRY.get_sample_value("route_llm_requests_total", {"requested_model": requested, "routed_model": "none",
                                                                  "tier": "none", "status": status}) or 0.0


def _admin(base_url: str, key: str | None = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, headers={"authorization": f"Bearer {key}"} if key else {},
                        verify=LOOPBACK_TLS)


def _spend(base_url: str) -> dict[str, dict[str, Any]]:
    with _admin(base_url) as http:
        r = http.get("/admin/spend")
    assert r.status_code == 200, r.text
    return {row["key"]: row for row in r.json()["data"]}


def _ask(base_url: str, key: str, prompt: str = PROMPT) -> Any:
    """One chat call through the SDK with its default retries (2): a refused call must not be retried."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, timeout=60,
                           http_client=openai.DefaultHttpxClient(verify=LOOPBACK_TLS))
    return client.chat.completions.with_raw_response.create(model="auto",
                                                            messages=[{"role": "user", "content": prompt}])


def drain(base_url: str, key: str, *, spent: Callable[[], float], limit: int = 60) -> tuple[list[str], Any]:
    """Ask until the key's budget refuses; the tier of each answer, and the refusal. Each call waits until the
    spend store shows the previous answer's charge (it is written just after the answer), so the sequence does not
    depend on timing."""
    tiers: list[str] = []
    for _ in range(limit):
        before = spent()
        try:
            raw = _ask(base_url, key)
        except openai.RateLimitError as exc:
            return tiers, exc
        raw.parse()
        tiers.append(raw.headers["x-route-llm-tier"])
        spent_now, limit_usd, remaining = (float(v) for v in raw.headers["x-route-llm-budget"].split("/"))
        assert math.isclose(spent_now + remaining, limit_usd) or remaining == 0.0
        _wait(lambda: spent() > before, "the answer's charge in the spend store")
    pytest.fail(f"the budget never ran out in {limit} requests: {tiers}")


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.02)


def check_refusal(exc: openai.RateLimitError) -> None:
    """A 429 budget_exceeded in OpenAI's shape, with Retry-After at the next UTC midnight and x-should-retry."""
    assert exc.status_code == 429
    assert exc.code == "budget_exceeded" and exc.type == "rate_limit_error"
    headers = exc.response.headers
    assert headers["x-should-retry"] == "false"
    reset = dt.datetime.fromisoformat(headers["x-route-llm-budget-reset"])
    tomorrow = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)
    assert reset == dt.datetime.combine(tomorrow, dt.time(), dt.timezone.utc)
    assert 1 <= int(headers["retry-after"]) <= 86400
    spent, limit, remaining = (float(v) for v in headers["x-route-llm-budget"].split("/"))
    assert limit == 0.01 and spent >= limit and remaining == 0.0


# --- configuration ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("keys", "needle"), [
    ([{"name": "a", "key": "k", "budget": {"usd": -1}}], "server.api_keys[0].budget.usd: must be a finite amount"),
    ([{"name": "a", "key": "k", "budget": {"usd": float("nan")}}], "server.api_keys[0].budget.usd"),
    ([{"name": "a", "key": "k", "budget": {"usd": float("inf")}}], "server.api_keys[0].budget.usd"),
    ([{"name": "a", "key": "k", "budget": {"usd": "ten"}}], "server.api_keys[0].budget.usd: expected a number"),
    ([{"name": "a", "key": "k", "budget": {"usd": 1, "period": "week"}}],
     "server.api_keys[0].budget.period: must be one of day, month, rolling"),
    ([{"name": "a", "key": "k", "budget": {"usd": 1, "period": "rolling"}}], "a rolling budget needs a window"),
    ([{"name": "a", "key": "k", "budget": {"usd": 1, "period": "rolling", "window": "soon"}}],
     "budget.window: expected a duration such as 24h"),
    ([{"name": "a", "key": "k", "budget": {"usd": 1, "period": "rolling", "window": "5s"}}],
     "budget.window: must be between 1m and 366d"),
    ([{"name": "a", "key": "k", "budget": {"usd": 1, "period": "day", "window": "24h"}}],
     "applies to period: rolling only"),
    ([{"name": "a", "key": "k", "budget": {"usd": 1, "every": "day"}}], "unknown key server.api_keys[0].budget.every"),
    ([{"name": "a", "key": "k", "when_exhausted": "cheapest"}], "when_exhausted: applies to a key with a budget"),
    ([{"name": "a", "key": "k", "budget": {"usd": 1}, "when_exhausted": "ignore"}],
     "when_exhausted: must be one of refuse, cheapest"),
    ([{"name": "a", "key": "k1"}, {"name": "a", "key": "k2"}], "the key name 'a' is used twice"),
    ([{"name": "a", "key": "k1"}, {"name": "b", "key": "k1"}], "server.api_keys[1]: the same key is listed twice"),
    (["k1", "k1"], "server.api_keys[1]: the same key is listed twice"),
    (["k1", {"name": "config-1", "key": "k2"}], "the key name 'config-1' is used twice"),
    ([{"name": "sk-1", "key": "sk-1"}], "name: must differ from the key"),
    ([{"name": "team a", "key": "k"}], "server.api_keys[0].name: 1 to 64 letters"),
    ([{"key": "k"}], "missing key server.api_keys[0].name"),
    ([{"name": "a"}], "missing key server.api_keys[0].key"),
    ([{"name": "a", "key": ""}], "server.api_keys[0]: the key must not be empty"),
    ([42], "server.api_keys[0]: expected a mapping"),
])
def test_bad_key_and_budget_configs_name_the_key_at_fault(tmp_path: Path, keys: list[Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(base_config(tmp_path, server={"api_keys": keys}))
    assert needle in str(info.value)


@pytest.mark.parametrize("start", [-0.1, 1.5, float("nan"), "half"])
def test_a_bad_budget_steer_start_is_refused(tmp_path: Path, start: Any) -> None:
    with pytest.raises(ConfigError, match="router.budget_steer.start"):
        settings_from_dict(base_config(tmp_path, router={"budget_steer": {"start": start}}))


def test_plain_config_keys_and_environment_keys_are_named_by_position(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTE_LLM_API_KEYS", "e1, plain ,e2")
    s = settings_from_dict(base_config(tmp_path, server={"api_keys": ["plain", {"name": "t", "key": "named"}]}))
    assert [(k.name, k.key) for k in s.named_keys()] == [("config-1", "plain"), ("t", "named"), ("key-1", "e1"),
                                                         ("key-3", "e2")]
    assert s.all_api_keys() == ("plain", "named", "e1", "e2")


def test_an_environment_key_whose_position_name_is_taken_stops_the_start(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTE_LLM_API_KEYS", "e1")
    with pytest.raises(ConfigError, match="the key name 'key-1' is used twice"):
        settings_from_dict(base_config(tmp_path, server={"api_keys": [{"name": "key-1", "key": "k"}]}))


def test_the_shipped_config_documents_budget_steer() -> None:
    from tests.conftest import ROOT

    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    assert "budget_steer:" in text and "when_exhausted" in text


def test_the_stand_in_models_are_priced_by_the_config_not_the_local_price_map(tmp_path: Path) -> None:
    """The shipped config prices its tiers itself (LiteLLM's bundled map may lack gemini-1.5-*, and other tests
    register prices in this process, so the map is not asked here), and a budget over an unpriced tier is warned
    about at start-up."""
    from proxy.routing.budget import make_budgets
    from proxy.settings import load_settings
    from proxy.state.spend import open_spend_store
    from proxy.upstream.pricing import price_of
    from tests.conftest import ROOT

    for m in load_settings(ROOT / "config.yaml").models.entries:
        assert price_of(m).per_input_token > 0 and price_of(m).per_output_token > 0
    settings = settings_from_dict(budget_config(tmp_path))
    budgets = make_budgets(settings, open_spend_store(settings), unpriced=["gemini-1.5-pro"])
    assert budgets is not None
    try:
        with pytest.MonkeyPatch.context() as mp:
            seen: list[str] = []
            mp.setattr("proxy.routing.budget.log.warning", lambda msg, *args: seen.append(msg % args))
            make_budgets(settings, budgets.store, unpriced=["gemini-1.5-pro"])
        assert seen and "no price known for gemini-1.5-pro" in seen[0]
    finally:
        budgets.close()


# --- the pure parts --------------------------------------------------------------------------------------------
def test_steering_starts_at_start_and_is_full_when_the_budget_is_spent() -> None:
    assert steer_fraction(0.2, 0.5) == 0.0
    assert steer_fraction(0.5, 0.5) == 0.0
    assert steer_fraction(0.75, 0.5) == pytest.approx(0.5)
    assert steer_fraction(1.0, 0.5) == 1.0
    assert steer_fraction(0.99, 1.0) == 0.0 and steer_fraction(1.0, 1.0) == 1.0
    with pytest.raises(ValueError):
        steer_fraction(0.5, 2.0)


def test_steered_cuts_send_a_linearly_smaller_share_above_each_cut(router: Router) -> None:
    quantiles = router.meta.quantiles
    cuts = TierPolicy.from_shares(quantiles, (0.5, 0.3, 0.2)).cuts
    assert steer_cuts(cuts, 0.0, quantiles) == cuts
    assert steer_cuts(cuts, 1.0, quantiles) == (NEVER_STRONG, NEVER_STRONG)
    half = steer_cuts(cuts, 0.5, quantiles)
    # Half the traffic that reached each dearer tier still does: the shares above the cuts were 0.5 and 0.2.
    assert half == pytest.approx(TierPolicy.from_shares(quantiles, (0.75, 0.15, 0.1)).cuts, abs=1e-9)
    previous = cuts
    for f in (0.1, 0.3, 0.6, 0.9, 0.99):
        steered = steer_cuts(cuts, f, quantiles)
        assert all(a >= b for a, b in zip(steered, previous))
        previous = steered


def test_calendar_periods_reset_at_the_next_utc_midnight_and_month() -> None:
    day, month = BudgetSettings(1.0, "day"), BudgetSettings(1.0, "month")
    now = calendar.timegm((2026, 12, 31, 15, 30, 0))
    assert period_start(day, now) == calendar.timegm((2026, 12, 31, 0, 0, 0))
    assert calendar_reset(day, now) == calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert period_start(month, now) == calendar.timegm((2026, 12, 1, 0, 0, 0))
    assert calendar_reset(month, now) == calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert calendar_reset(month, calendar.timegm((2026, 2, 3, 0, 0, 0))) == calendar.timegm((2026, 3, 1, 0, 0, 0))


def test_a_rolling_budget_is_free_again_when_enough_spend_leaves_the_window() -> None:
    budget = BudgetSettings(1.0, "rolling", "1h")  # buckets of 60 s
    now = 1_000_000.0
    buckets = [(int(now) - 3000, 0.5), (int(now) - 1200, 0.4), (int(now) - 60, 0.3)]
    assert readable_since(budget, now) <= now - 3600
    key = ApiKeySettings("r", "k", budget)
    status = status_of(key, buckets, now)
    assert status.exhausted and status.spent == pytest.approx(1.2)
    # Without the oldest bucket (0.5) the key has 0.7 < 1.0: free once that bucket's end leaves the window.
    assert rolling_reset(budget, buckets, now) == buckets[0][0] + 60 + 3600 == status.reset_at


def test_a_spent_budget_refuses_or_pins_the_cheapest_tier_and_a_pinned_model_is_not_steered() -> None:
    cheapest = Tier(0, "weak")
    routed = Target("auto", policy=TierPolicy((0.5,)))
    pinned = Target("gemini-1.5-pro", tier=Tier(1, "strong"))
    half = BudgetStatus("a", BudgetSettings(1.0, "day"), 0.75, 0.0)
    assert apply_budget(half, routed, cheapest, 0.5).steer == pytest.approx(0.5)
    assert apply_budget(half, pinned, cheapest, 0.5).target == pinned
    gone = BudgetStatus("a", BudgetSettings(1.0, "day"), 1.0, 0.0, when_exhausted="cheapest")
    assert apply_budget(gone, pinned, cheapest, 0.5).target.tier == cheapest
    assert apply_budget(None, routed, cheapest, 0.5).target == routed


# --- one proxy (SQLite) ----------------------------------------------------------------------------------------
@pytest.fixture()
def budget_proxy(make_proxy: Callable[..., RunningProxy], tmp_path: Path) -> RunningProxy:
    cfg = budget_config(tmp_path)
    return make_proxy(server=cfg["server"], router=cfg["router"], models=cfg["models"])


def test_a_draining_budget_steers_to_the_cheap_tier_then_refuses_without_sdk_retries(
        budget_proxy: RunningProxy, standin: StandInServer) -> None:
    base = budget_proxy.base_url
    route = httpx.post(base + "/v1/route", json={"prompt": PROMPT}, headers={"authorization": "Bearer sk-team-a"},
                       timeout=30).json()
    assert route["tier"] == "strong" and route["budget"]["action"] == "none"
    assert route["budget"]["limit_usd"] == 0.01 and route["budget"]["spent_usd"] == 0.0
    refused_before = _requests("budget_exceeded")
    tiers, refusal = drain(base, "sk-team-a", spent=lambda: _spend(base)["team-a"]["spent_usd"])
    # Strong while the budget is fresh; the cheap tier for the same prompt before the money is gone; then refused.
    assert tiers[0] == "strong" and "weak" in tiers, tiers
    assert tiers.index("weak") > 0 and tiers[tiers.index("weak"):] == ["weak"] * (len(tiers) - tiers.index("weak"))
    check_refusal(refusal)
    calls = len(standin.state.requests)
    # The SDK (max_retries 2) did not retry: the proxy saw one refused request, and no upstream call was made.
    assert _requests("budget_exceeded") == refused_before + 1
    with pytest.raises(openai.RateLimitError):
        _ask(base, "sk-team-a")
    assert _requests("budget_exceeded") == refused_before + 2 and len(standin.state.requests) == calls
    # The dry run says the same; the spend is in the metric under the key's name, never its secret.
    route = httpx.post(base + "/v1/route", json={"prompt": PROMPT}, headers={"authorization": "Bearer sk-team-a"},
                       timeout=30).json()
    assert route["budget"]["action"] == "refuse" and route["budget"]["exhausted"] is True
    spent = _spend(base)["team-a"]["spent_usd"]
    assert REGISTRY.get_sample_value("route_llm_budget_spent_usd", {"key": "team-a"}) == pytest.approx(spent)
    metrics_text = httpx.get(base + "/metrics", timeout=30).text
    assert 'route_llm_budget_spent_usd{key="team-a"}' in metrics_text and "sk-team-a" not in metrics_text


def test_another_key_is_unaffected_by_a_spent_budget(budget_proxy: RunningProxy, standin: StandInServer) -> None:
    base = budget_proxy.base_url
    drain(base, "sk-team-a", spent=lambda: _spend(base)["team-a"]["spent_usd"])
    raw = _ask(base, "sk-team-b")
    raw.parse()
    assert raw.headers["x-route-llm-tier"] == "strong"
    assert "x-route-llm-budget" not in raw.headers and "x-route-llm-budget-steer" not in raw.headers
    _wait(lambda: _spend(base)["team-b"]["spent_usd"] > 0, "team-b's spend counted (per UTC day, no budget)")
    assert _spend(base)["team-b"]["limit_usd"] is None


def test_when_exhausted_cheapest_serves_from_the_cheapest_tier(budget_proxy: RunningProxy,
                                                                standin: StandInServer) -> None:
    base = budget_proxy.base_url
    first = _ask(base, "sk-team-c")
    first.parse()
    assert first.headers["x-route-llm-tier"] == "strong"  # $0.0001 is not spent before the first answer
    _wait(lambda: _spend(base)["team-c"]["exhausted"], "team-c's budget spent")
    for model in ("auto", "gemini-1.5-pro"):  # routed or asked for by name: the cheapest tier answers
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-team-c", max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(model=model,
                                                               messages=[{"role": "user", "content": PROMPT}])
        assert raw.parse().choices[0].message.content
        assert raw.headers["x-route-llm-tier"] == "weak"
        assert raw.headers["x-route-llm-budget-steer"] == "1.0000"
        assert standin.state.requests[-1].model.endswith("gemini-1.5-flash")


def test_a_spent_rolling_budget_is_refused_until_its_oldest_spend_leaves_the_window(
        budget_proxy: RunningProxy, standin: StandInServer) -> None:
    import time

    base = budget_proxy.base_url
    _ask(base, "sk-team-d").parse()
    asked = time.time()
    _wait(lambda: _spend(base)["team-d"]["exhausted"], "team-d's budget spent")
    with pytest.raises(openai.RateLimitError) as info:
        _ask(base, "sk-team-d")
    headers = info.value.response.headers
    assert info.value.code == "budget_exceeded" and headers["x-should-retry"] == "false"
    reset = dt.datetime.fromisoformat(headers["x-route-llm-budget-reset"]).timestamp()
    # The charge's bucket (a minute of the hour) leaves the window an hour after the bucket ends.
    assert asked + 3600 - 120 <= reset <= asked + 3600 + 120
    assert 3600 - 180 <= int(headers["retry-after"]) <= 3600 + 120
    assert _spend(base)["team-d"]["period"] == "rolling" and _spend(base)["team-d"]["window"] == "1h"


def test_streams_and_the_responses_api_are_charged_and_refused_alike(budget_proxy: RunningProxy,
                                                                     standin: StandInServer) -> None:
    base = budget_proxy.base_url
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-team-a", max_retries=0, timeout=60)
    with client.chat.completions.with_streaming_response.create(
            model="auto", messages=[{"role": "user", "content": PROMPT}], stream=True) as stream:
        assert stream.headers["x-route-llm-budget"] == "0.000000/0.010000/0.010000"
        assert "".join(stream.iter_lines())
    _wait(lambda: _spend(base)["team-a"]["spent_usd"] > 0, "the stream's charge")
    after_stream = _spend(base)["team-a"]["spent_usd"]
    answer = client.responses.with_raw_response.create(model="auto", input=PROMPT)
    answer.parse()
    assert answer.headers["x-route-llm-budget"].startswith(f"{after_stream:.6f}/")
    _wait(lambda: _spend(base)["team-a"]["spent_usd"] > after_stream, "the Responses call's charge")
    drain(base, "sk-team-a", spent=lambda: _spend(base)["team-a"]["spent_usd"])
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="auto", input=PROMPT)
    assert info.value.code == "budget_exceeded"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": PROMPT}], stream=True)


def test_an_unreadable_spend_store_is_a_503_to_retry_not_a_free_pass(budget_proxy: RunningProxy,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     standin: StandInServer) -> None:
    import sqlite3

    budgets = budget_proxy.server.lifespan.state["services"].budgets  # type: ignore[attr-defined]

    def broken(name: str, since: int) -> list[tuple[int, float]]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(budgets.store, "buckets", broken)
    calls = len(standin.state.requests)
    client = openai.OpenAI(base_url=budget_proxy.base_url + "/v1", api_key="sk-team-a", max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": PROMPT}])
    assert info.value.status_code == 503 and info.value.code == "storage_unavailable"
    assert info.value.response.headers["retry-after"] == "1"
    assert len(standin.state.requests) == calls  # nothing was sent upstream on an unknown budget
    _ask(budget_proxy.base_url, "sk-team-b").parse()  # a key without a budget reads nothing and is served


def test_admin_spend_needs_an_admin_key_and_reset_frees_the_key(budget_proxy: RunningProxy,
                                                                 standin: StandInServer) -> None:
    base = budget_proxy.base_url
    drain(base, "sk-team-a", spent=lambda: _spend(base)["team-a"]["spent_usd"])
    for key in (None, "sk-team-a", "wrong"):
        with _admin(base, key) as http:
            assert http.get("/admin/spend").status_code == 401
            assert http.post("/admin/spend/reset", json={"key": "team-a"}).status_code == 401
    with _admin(base) as http:
        listing = http.get("/admin/spend")
        assert [row["key"] for row in listing.json()["data"]] == ["team-a", "team-b", "team-c", "team-d"]
        assert "sk-team" not in listing.text
        for body, status, code in (({"key": "nobody"}, 404, "key_not_found"), ({"key": ""}, 400, None),
                                   ({}, 400, None), ([1], 400, None), ({"key": "x" * 10_000}, 404, "key_not_found")):
            r = http.post("/admin/spend/reset", json=body)
            assert r.status_code == status and r.json()["error"]["code"] == code, r.text
        r = http.post("/admin/spend/reset", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        r = http.post("/admin/spend/reset", json={"key": "team-a"})
        assert r.status_code == 200 and r.json()["spent_usd"] == 0.0 and r.json()["exhausted"] is False
    raw = _ask(base, "sk-team-a")
    raw.parse()
    assert raw.headers["x-route-llm-tier"] == "strong"
    assert REGISTRY.get_sample_value("route_llm_budget_spent_usd", {"key": "team-a"}) is not None


def test_admin_spend_is_off_without_admin_keys(make_proxy: Callable[..., RunningProxy]) -> None:
    proxy = make_proxy(server={"api_keys": ["k"]})
    with _admin(proxy.base_url, "k") as http:
        r = http.get("/admin/spend")
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


# --- real servers: a restart (SQLite) and two replicas (Postgres) ---------------------------------------------
def _write(tmp: Path, cfg: dict[str, Any]) -> Path:
    import os

    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=os.environ["GEMINI_API_BASE"], api_key="test-upstream-key")
    cfg["upstream"]["warmup"] = False
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_a_restart_loses_no_spend(tmp_path: Path, standin: StandInServer) -> None:
    from tests.helpers import Shared, start_replicas

    config = _write(tmp_path, budget_config(tmp_path))
    shared = Shared("", "", config)
    first, = start_replicas(shared, tmp_path, ["first"])
    try:
        tiers, refusal = drain(first.base_url, "sk-team-a", spent=lambda: _spend(first.base_url)["team-a"]["spent_usd"])
        check_refusal(refusal)
        spent = _spend(first.base_url)["team-a"]["spent_usd"]
    finally:
        first.stop()
    assert first.proc.returncode == 0
    again, = start_replicas(shared, tmp_path, ["again"])
    try:
        assert _spend(again.base_url)["team-a"]["spent_usd"] == pytest.approx(spent)
        with pytest.raises(openai.RateLimitError) as info:
            _ask(again.base_url, "sk-team-a")
        check_refusal(info.value)
        metrics_text = httpx.get(again.base_url + "/metrics", timeout=30).text
        assert f'route_llm_budget_spent_usd{{key="team-a"}} {spent!r}' in metrics_text or \
            'route_llm_budget_spent_usd{key="team-a"}' in metrics_text
    finally:
        again.stop()


def test_two_replicas_on_one_postgres_share_a_budget(tmp_path: Path, services: Services,
                                                     standin: StandInServer) -> None:
    from tests.helpers import Shared, start_replicas

    url = fresh_schema(services.need("postgresql"))
    config = _write(tmp_path, budget_config(tmp_path, storage={"url": url}))
    a, b = start_replicas(Shared(url, "", config), tmp_path, ["a", "b"])
    try:
        replicas = [a, b]
        turn = [0]

        def spent_on_both() -> float:
            values = [_spend(r.base_url)["team-a"]["spent_usd"] for r in replicas]
            return min(values)  # both must see the charge before the next request

        # Alternate replicas: a budget each replica counted alone would last twice as long.
        tiers: list[str] = []
        refusal = None
        for _ in range(60):
            replica = replicas[turn[0] % 2]
            turn[0] += 1
            before = spent_on_both()
            try:
                raw = _ask(replica.base_url, "sk-team-a")
            except openai.RateLimitError as exc:
                refusal = exc
                break
            raw.parse()
            tiers.append(raw.headers["x-route-llm-tier"])
            _wait(lambda: spent_on_both() > before, "the charge seen by both replicas")
        assert refusal is not None, tiers
        check_refusal(refusal)
        assert tiers[0] == "strong" and "weak" in tiers, tiers
        assert math.isclose(_spend(a.base_url)["team-a"]["spent_usd"], _spend(b.base_url)["team-a"]["spent_usd"])
        for replica in replicas:  # refused on both
            with pytest.raises(openai.RateLimitError):
                _ask(replica.base_url, "sk-team-a")
        with _admin(b.base_url) as http:
            assert http.post("/admin/spend/reset", json={"key": "team-a"}).status_code == 200
        assert _spend(a.base_url)["team-a"]["spent_usd"] == 0.0  # a reset through one is seen by the other
        _ask(a.base_url, "sk-team-a").parse()
    finally:
        for replica in (a, b):
            replica.stop()


# --- the CLI ---------------------------------------------------------------------------------------------------
def test_spend_command_shows_and_resets_spend(tmp_path: Path, budget_proxy: RunningProxy,
                                              standin: StandInServer) -> None:
    base = budget_proxy.base_url
    _ask(base, "sk-team-a").parse()
    _wait(lambda: _spend(base)["team-a"]["spent_usd"] > 0, "team-a's charge")
    config = tmp_path / "cli-config.yaml"
    config.write_text(yaml.safe_dump(budget_config(tmp_path)), encoding="utf-8")
    runner = CliRunner()
    shown = runner.invoke(cli.main, ["spend", "--config", str(config), "--json"])
    assert shown.exit_code == 0, shown.output
    rows = {row["key"]: row for row in map(json.loads, shown.output.splitlines())}
    assert rows["team-a"]["spent_usd"] == pytest.approx(_spend(base)["team-a"]["spent_usd"])
    table = runner.invoke(cli.main, ["spend", "--config", str(config)])
    assert table.exit_code == 0 and "team-a" in table.output and "sk-team" not in table.output
    unknown = runner.invoke(cli.main, ["spend", "--config", str(config), "--reset", "nobody"])
    assert unknown.exit_code != 0 and "no proxy key is named 'nobody'" in unknown.output
    reset = runner.invoke(cli.main, ["spend", "--config", str(config), "--reset", "team-a"])
    assert reset.exit_code == 0, reset.output
    assert _spend(base)["team-a"]["spent_usd"] == 0.0


def test_spend_command_without_keys_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path)), encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["spend", "--config", str(config)])
    assert result.exit_code != 0 and "no proxy keys" in result.output
