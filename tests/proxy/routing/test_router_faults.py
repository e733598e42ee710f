"""The classifier failing at run time: requests go to the configured fail-open tier, counted and visible."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from proxy.routing.decider import Decider, Target
from proxy.settings import settings_from_dict
from router import InferenceError, Router
from router.policy import TierPolicy
from tests.conftest import RunningProxy, base_config, start_proxy, stop_proxy
from tests.standin import StandInServer

MSG = [{"role": "user", "content": "Prove Fermat's little theorem."}]


class FlakyRouter:
    """The shipped router, made to fail on demand: always (``fail``), or on prompts containing POISON."""

    def __init__(self, real: Router, delay: float = 0.0) -> None:
        self.real = real
        self.fail = False
        self.delay = delay
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # meta, version, path: the real model's
        return getattr(self.real, name)

    def score(self, texts: Sequence[str]) -> list[float]:
        with self._lock:
            self.calls.append(list(texts))
        time.sleep(self.delay)
        if self.fail or any("POISON" in t for t in texts):
            raise InferenceError("injected: onnxruntime failed")
        return self.real.score(texts)


def _failures() -> float:
    return REGISTRY.get_sample_value("route_llm_router_failures_total") or 0.0


@pytest.fixture()
def flaky(router: Router, tmp_path: Path) -> Iterator[tuple[FlakyRouter, Any]]:
    started: list[RunningProxy] = []
    broken = FlakyRouter(router)

    def make(fail_open_tier: str) -> RunningProxy:
        cfg = base_config(tmp_path, router={"threshold": 0.5, "fail_open_tier": fail_open_tier})
        running = start_proxy(settings_from_dict(cfg), cast(Router, broken))
        started.append(running)
        return running

    yield broken, make
    for running in started:
        stop_proxy(running)


@pytest.mark.parametrize(("tier", "model"), [("strong", "gemini-1.5-pro"), ("weak", "gemini-1.5-flash")])
def test_inference_error_routes_to_fail_open_tier_counted_and_shown(
        flaky: tuple[FlakyRouter, Any], standin: StandInServer, tier: str, model: str) -> None:
    broken, make = flaky
    proxy = make(tier)
    broken.fail = True  # after start-up: the lifespan's warm-up scoring succeeded
    before = _failures()
    raw = proxy.client().chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert raw.parse().model == model
    assert raw.headers["x-route-llm-router-error"] == "1"
    assert raw.headers["x-route-llm-tier"] == tier
    assert raw.headers["x-route-llm-score"] == "none"
    s = proxy.client().chat.completions.with_raw_response.create(model="auto", messages=MSG, stream=True)
    assert s.headers["x-route-llm-router-error"] == "1" and s.headers["x-route-llm-tier"] == tier
    chunks = list(s.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert _failures() - before == 2
    assert standin.state.models_called() == [model, model]
    # The dry run reports the same decision.
    decision = proxy.http().post("/v1/route", json={"model": "auto", "messages": MSG}).json()
    assert (decision["tier"], decision["score"], decision["router_error"]) == (tier, None, True)
    # A pinned model never asks the router; once it recovers, routing is normal again.
    pinned = proxy.client().chat.completions.with_raw_response.create(model="gemini-1.5-flash", messages=MSG)
    assert "x-route-llm-router-error" not in pinned.headers
    broken.fail = False
    ok = proxy.client().chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert "x-route-llm-router-error" not in ok.headers and ok.headers["x-route-llm-score"] != "none"
    assert _failures() - before == 2


def test_one_failing_prompt_does_not_fail_its_batch_neighbours(router: Router) -> None:
    """Concurrent prompts share one classifier call; a prompt that breaks it must only fail itself."""
    broken = FlakyRouter(router, delay=0.2)
    decider = Decider(settings_from_dict(base_config(Path("/nonexistent"))), cast(Router, broken))
    target = Target("auto", policy=TierPolicy((0.5,)))

    async def go() -> list[Any]:
        first = asyncio.create_task(decider.decide(target, ["occupies the classifier"]))
        await asyncio.sleep(0.05)  # the next two queue up while the first runs, and form one batch
        rest = [asyncio.create_task(decider.decide(target, [t])) for t in ("POISON prompt", "an innocent prompt")]
        return await asyncio.gather(first, *rest)

    first, poisoned, innocent = asyncio.run(go())
    assert ["POISON prompt", "an innocent prompt"] in broken.calls  # they really were batched together
    assert not first.failed and first.score is not None
    assert poisoned.failed and poisoned.score is None
    assert not innocent.failed and innocent.score == pytest.approx(router.score(["an innocent prompt"])[0])


@pytest.mark.parametrize("prompt", ["\ud800", "half a pair: \udfff!"])
def test_prompt_the_tokenizer_cannot_encode_is_a_400_not_a_router_failure(proxy: RunningProxy, prompt: str) -> None:
    """Lone surrogates are valid JSON escapes but not text: client input must not trigger the fail-open path."""
    before = _failures()
    body = json.dumps({"model": "auto", "prompt": prompt})  # ensure_ascii: "\\ud800", as a client sends it
    r = proxy.http().post("/v1/route", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt" and r.json()["error"]["code"] == "invalid_unicode"
    assert _failures() == before


def test_a_serving_proxy_shortens_the_gil_switch_interval_and_gives_it_back(router: Router, tmp_path: Path) -> None:
    # decider.SWITCH_INTERVAL: after each ONNX run the router thread needs the GIL back from a busy event loop;
    # CPython's 5 ms default left both threads half idle at 32 in flight.
    import sys

    from proxy.routing.decider import SWITCH_INTERVAL

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        running = start_proxy(settings_from_dict(base_config(tmp_path)), router)
        try:
            deadline = time.monotonic() + 10
            while sys.getswitchinterval() != SWITCH_INTERVAL and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sys.getswitchinterval() == SWITCH_INTERVAL
            with running.client() as client:
                assert client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
        finally:
            stop_proxy(running)
        deadline = time.monotonic() + 10
        while sys.getswitchinterval() != 0.005 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sys.getswitchinterval() == 0.005  # restored at shutdown
        # never raised: a process that already runs a shorter interval keeps it
        from proxy.routing.decider import short_gil_switch

        sys.setswitchinterval(0.0002)
        with short_gil_switch():
            assert sys.getswitchinterval() == pytest.approx(0.0002, abs=2e-6)
    finally:
        sys.setswitchinterval(before)
