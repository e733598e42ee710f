"""Provider health: a circuit breaker per tier, driven by the stand-in's fault injection.

A tier that keeps failing is skipped after ``upstream.breaker.failures`` failed attempts in a row (requests fall
back without calling it), one trial request goes through after the cool-down, and its success closes the breaker.
The breaker shared by ``--workers 2`` is tested in test_catalog.py, with the retired model that opens it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import REGISTRY

from proxy.settings import BreakerSettings, ConfigError, settings_from_dict
from proxy.upstream.breaker import Breakers
from router.policy import Tier
from tests.conftest import ROOT, RunningProxy, base_config, wait_until
from tests.standin import Fault, StandInServer

MSG = [{"role": "user", "content": "hi"}]
PRO = "gemini-1.5-pro"


def _transitions(tier: str, to: str) -> float:
    return REGISTRY.get_sample_value("route_llm_breaker_transitions_total", {"tier": tier, "to": to}) or 0.0


def _state(tier: str) -> float | None:
    return REGISTRY.get_sample_value("route_llm_breaker_state", {"tier": tier})


def _ask_pro(proxy: RunningProxy) -> Any:
    return proxy.client().chat.completions.with_raw_response.create(model=PRO, messages=MSG)


def _fail_pro(standin: StandInServer, n: int = 1000) -> None:
    """The strong tier's model fails every call (until the queue is cleared: the provider recovers)."""
    standin.state.faults.extend([Fault("status", status=503, model=PRO)] * n)


def test_a_failing_tier_opens_its_breaker_is_skipped_then_closes_when_it_recovers(make_proxy: Any,
                                                                                 standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "breaker": {"failures": 3, "cooldown": 0.5}})
    opened, trials, closed = _transitions("strong", "open"), _transitions("strong", "half_open"), _transitions(
        "strong", "closed")
    _fail_pro(standin)
    for _ in range(3):  # each one fails on the strong tier once and is served by the weak one
        raw = _ask_pro(proxy)
        assert (raw.headers["x-route-llm-tier"], raw.headers["x-route-llm-fallback"]) == ("weak", "strong->weak")
        assert "x-route-llm-breaker" not in raw.headers
    assert standin.state.models_called().count(PRO) == 3
    assert _transitions("strong", "open") == opened + 1 and _state("strong") == 1

    calls = len(standin.state.requests)
    raw = _ask_pro(proxy)  # open: straight to the weak tier, the strong one is not called
    assert raw.headers["x-route-llm-breaker"] == "open:strong" and raw.headers["x-route-llm-tier"] == "weak"
    assert raw.parse().model == "gemini-1.5-flash"
    assert standin.state.models_called()[calls:] == ["gemini-1.5-flash"]

    # After the cool-down one trial reaches the strong tier; it fails, so the breaker opens again.
    wait_until(lambda: _ask_pro(proxy) is not None and standin.state.models_called().count(PRO) == 4,
               "a trial request on the strong tier after the cool-down", timeout=60)
    assert _transitions("strong", "half_open") == trials + 1
    assert _transitions("strong", "open") == opened + 2 and _state("strong") == 1

    standin.state.faults.clear()  # the provider recovers: the next trial succeeds and closes the breaker
    wait_until(lambda: _ask_pro(proxy).headers["x-route-llm-tier"] == "strong", "the strong tier serving again",
               timeout=60)
    assert _transitions("strong", "closed") == closed + 1 and _state("strong") == 0
    raw = _ask_pro(proxy)
    assert raw.headers["x-route-llm-tier"] == "strong" and "x-route-llm-breaker" not in raw.headers


def test_every_breaker_open_is_a_503_with_retry_after_at_once(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "breaker": {"failures": 1, "cooldown": 30}})
    standin.state.fault_rate = 1.0
    with pytest.raises(openai.APIStatusError) as first:
        proxy.client().chat.completions.create(model=PRO, messages=MSG)
    assert first.value.status_code == 503 and first.value.response.json()["error"]["code"] == "unavailable"
    assert standin.state.models_called() == [PRO, "gemini-1.5-flash"]  # one failure each opened both breakers

    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="auto", messages=MSG)
    assert err.value.status_code == 503
    assert len(standin.state.requests) == 2  # nothing more went upstream
    error = err.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("upstream_error", "breaker_open")
    assert "circuit breaker" in error["message"] and "127.0.0.1" not in error["message"]
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 30
    assert set(err.value.response.headers["x-route-llm-breaker"].split(",")) == {"open:strong", "open:weak"}
    with proxy.http() as http:  # the server keeps serving what needs no upstream
        assert http.post("/v1/route", json={"prompt": "hi"}).status_code == 200


def test_a_request_the_upstream_rejects_as_malformed_does_not_count(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "fallback": "none", "breaker": {"failures": 1}})
    standin.state.faults.append(Fault("status", status=400, model=PRO))
    with pytest.raises(openai.BadRequestError):
        proxy.client().chat.completions.create(model=PRO, messages=MSG)
    raw = _ask_pro(proxy)
    assert raw.headers["x-route-llm-tier"] == "strong" and "x-route-llm-breaker" not in raw.headers
    assert standin.state.models_called() == [PRO, PRO]


def test_breaker_off_keeps_calling_a_failing_tier(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "breaker": {"failures": None}})
    _fail_pro(standin, 4)
    for _ in range(4):
        assert "x-route-llm-breaker" not in _ask_pro(proxy).headers
    assert standin.state.models_called().count(PRO) == 4


def test_only_one_trial_goes_through_a_cooled_down_breaker() -> None:
    now = [1000.0]
    tier = Tier(1, "strong")
    breakers = Breakers(BreakerSettings(failures=2, cooldown=10), [Tier(0, "weak"), tier], clock=lambda: now[0])
    assert breakers.failed(tier) is False and breakers.allow(tier)  # one failure: still closed
    assert breakers.failed(tier) is True and not breakers.allow(tier)  # the second opens it
    assert breakers.retry_after([tier]) == 10
    now[0] += 10
    assert [breakers.allow(tier) for _ in range(3)] == [True, False, False]  # the trial, then the others skip
    breakers.succeeded(tier)
    assert breakers.row(tier).state == "closed" and breakers.allow(tier)
    assert breakers.row(Tier(0, "weak")).state == "closed"


_OTHER_WORKER = """
import sys
import subprocess
import sys
from pathlib import Path
from proxy.settings import BreakerSettings
from proxy.upstream.breaker import Breakers
from router.policy import Tier
tiers = [Tier(0, "weak"), Tier(1, "strong")]
breakers = Breakers(BreakerSettings(failures=2, cooldown=600), tiers, Path(sys.argv[1]))
print(breakers.row(tiers[1]).state, breakers.allow(tiers[1]), breakers.allow(tiers[0]))
breakers.failed(tiers[0])
"""


def test_workers_share_the_breakers_through_the_servers_file(tmp_path: Path) -> None:
    """What `serve --workers N` does (ROUTE_LLM_BREAKER_DB): a breaker opened by one process is open in another, and
    a failure counted there counts here."""
    path = tmp_path / "breaker.db"
    weak, strong = Tier(0, "weak"), Tier(1, "strong")
    here = Breakers(BreakerSettings(failures=2, cooldown=600), [weak, strong], path)
    here.failed(strong)
    here.failed(strong)
    other = subprocess.run([sys.executable, "-c", _OTHER_WORKER, str(path)], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
    assert other.returncode == 0, other.stderr
    assert other.stdout.split() == ["open", "False", "True"]
    assert here.row(weak).failures == 1
    here.close()


def test_a_shared_state_that_cannot_be_opened_leaves_the_worker_its_own(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTE_LLM_BREAKER_DB", str(tmp_path / "removed" / "breaker.db"))
    tier = Tier(0, "weak")
    breakers = Breakers.from_env(BreakerSettings(failures=1), [tier, Tier(1, "strong")])
    assert breakers is not None and breakers.failed(tier) and not breakers.allow(tier)


@pytest.mark.parametrize(("breaker", "says"), [
    ({"failures": 0}, "upstream.breaker.failures: must be at least 1"),
    ({"failures": "many"}, "upstream.breaker.failures: expected an integer"),
    ({"cooldown": 0}, "upstream.breaker.cooldown: must be positive"),
    ({"cooldown": -5}, "upstream.breaker.cooldown: must be positive"),
    ({"cool_down": 5}, "unknown key upstream.breaker.cool_down"),
])
def test_bad_breaker_settings_are_refused_naming_the_key(tmp_path: Path, breaker: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        settings_from_dict(base_config(tmp_path, upstream={"breaker": breaker}))
