"""Conversation-aware routing (``router.context: conversation``): earlier user turns weigh in, so a terse
follow-up in a hard conversation keeps its tier. Expectations come from the shipped router's scores at test time.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy.request import user_texts
from proxy.routing.decider import Decider
from proxy.settings import ConfigError, settings_from_dict
from router import Router
from router.policy import conversation_score
from tests.conftest import base_config, start_proxy, stop_proxy
from tests.standin import StandInServer

HARD = [
    "Implement a thread-safe LRU cache in Rust with O(1) get and put, and explain the memory-ordering choices.",
    "Prove that for every prime p > 3, p^2 - 1 is divisible by 24, then characterise all n with 24 | n^2 - 1.",
    "Design a distributed rate limiter for 10 million requests per second across regions; discuss consistency, "
    "failure modes and clock skew.",
]
FOLLOW_UPS = ["now add TTL expiry", "ok", "and shorter?", "thanks", "continue"]


def _pick(router: Router) -> tuple[str, str, float, float]:
    """The hardest first turn and the tersest-scoring follow-up under the shipped model, with their scores."""
    hard_scores = router.score(HARD)
    follow_scores = router.score(FOLLOW_UPS)
    h = max(range(len(HARD)), key=lambda i: hard_scores[i])
    f = min(range(len(FOLLOW_UPS)), key=lambda i: follow_scores[i])
    return HARD[h], FOLLOW_UPS[f], hard_scores[h], follow_scores[f]


def _conversation(first: str, follow: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": first},
            {"role": "assistant", "content": "Here it is: ..."}, {"role": "user", "content": follow}]


LINEAR = [(0.0, 0.0), (1.0, 1.0)]  # a quantile table on which a score is its own rank
SQUEEZED = [(0.0, 0.6), (0.5, 0.7), (1.0, 0.8)]  # scores crowded into a narrow band, as a real model's may be


def test_conversation_score_is_a_decayed_maximum_never_below_the_last_turn() -> None:
    assert conversation_score([0.9, 0.2], 0.8, LINEAR) == pytest.approx(0.72)
    assert conversation_score([0.9, 0.1, 0.2], 0.5, LINEAR) == pytest.approx(0.225)  # two turns back: 0.9 * 0.25
    assert conversation_score([0.1, 0.6], 0.8, LINEAR) == 0.6
    assert conversation_score([0.4], 0.1, LINEAR) == 0.4
    assert conversation_score([0.3, 0.4], 1.0, LINEAR) == 0.4
    with pytest.raises(ValueError, match="decay"):
        conversation_score([0.4, 0.5], 0.0, LINEAR)
    with pytest.raises(ValueError, match="at least one"):
        conversation_score([], 0.8, LINEAR)


def test_conversation_decay_works_on_ranks_not_raw_scores() -> None:
    # 0.8 is the top of the band (rank 1.0); one turn back at decay 0.8 it ranks 0.8, i.e. score 0.76, not 0.64.
    assert conversation_score([0.8, 0.6], 0.8, SQUEEZED) == pytest.approx(0.76)


def test_user_texts_keeps_the_last_user_turns_oldest_first() -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
            {"role": "tool", "content": "t"}, {"role": "user", "content": "d"}]
    assert user_texts(msgs, 4) == ["a", "b\nc", "d"]
    assert user_texts(msgs, 2) == ["b\nc", "d"]
    assert user_texts([{"role": "system", "content": "s"}], 4) == [""]


@pytest.fixture()
def split_proxies(router: Router, tmp_path: Path) -> Any:
    """A conversation-mode and a last-user-mode proxy, with a threshold between the follow-up's own score and
    the conversation's score, so the two modes must route the follow-up differently."""
    first, follow, s_first, s_follow = _pick(router)
    decay = 0.8
    combined = conversation_score([s_first, s_follow], decay, router.meta.quantiles)
    assert combined > s_follow, "the shipped model scores the terse follow-up above the hard first turn"
    threshold = (combined + s_follow) / 2
    started = []
    for context in ("conversation", "last_user"):
        cfg = base_config(tmp_path / context, router={"threshold": threshold, "context": context,
                                                      "context_decay": decay})
        started.append(start_proxy(settings_from_dict(cfg), router))
    yield started[0], started[1], first, follow, combined, s_follow
    for running in started:
        stop_proxy(running)


def test_follow_up_in_a_hard_conversation_keeps_the_strong_tier(split_proxies: Any, standin: StandInServer) -> None:
    conv, last, first, follow, combined, s_follow = split_proxies
    messages = _conversation(first, follow)
    raw = conv.client().chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert raw.headers["x-route-llm-tier"] == "strong" and raw.parse().model == "gemini-1.5-pro"
    assert float(raw.headers["x-route-llm-score"]) == pytest.approx(combined, abs=1e-4)
    raw = last.client().chat.completions.with_raw_response.create(model="auto", messages=messages)
    assert raw.headers["x-route-llm-tier"] == "weak"
    assert float(raw.headers["x-route-llm-score"]) == pytest.approx(s_follow, abs=1e-4)


def test_single_turn_requests_route_the_same_in_both_modes(split_proxies: Any, standin: StandInServer) -> None:
    conv, last, first, follow, _, _ = split_proxies
    for text in (first, follow):
        a = conv.client().chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}])
        b = last.client().chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}])
        assert a.headers["x-route-llm-score"] == b.headers["x-route-llm-score"]
        assert a.headers["x-route-llm-tier"] == b.headers["x-route-llm-tier"]


def test_route_endpoint_reports_the_turn_and_the_conversation_score(split_proxies: Any) -> None:
    conv, _, first, follow, combined, s_follow = split_proxies
    body = conv.http().post("/v1/route", json={"model": "auto", "messages": _conversation(first, follow)}).json()
    assert body["tier"] == "strong"
    assert body["score"] == pytest.approx(combined, abs=1e-9)
    assert body["turn_score"] == pytest.approx(s_follow, abs=1e-9)


class _CountingRouter:
    """The shipped router, recording which texts each scoring call received."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self.meta = router.meta
        self.calls: list[list[str]] = []
        self.threads: list[str] = []

    def score(self, texts: Sequence[str]) -> list[float]:
        self.calls.append(list(texts))
        self.threads.append(threading.current_thread().name)
        return self._router.score(texts)


def _conversation_decider(router: Router, tmp_path: Path) -> tuple[_CountingRouter, Decider, Any]:
    """A decider in conversation mode over a counting copy of the shipped router, and its ``auto`` target."""
    counting = _CountingRouter(router)
    decider = Decider(settings_from_dict(base_config(tmp_path, router={"context": "conversation"})),
                      counting)  # type: ignore[arg-type]
    return counting, decider, decider.resolve("auto")


def test_earlier_turns_are_scored_once_in_one_batch_then_cached(router: Router, tmp_path: Path) -> None:
    counting, decider, target = _conversation_decider(router, tmp_path)
    turns = ["first question", "second", "third", "fourth"]

    async def run() -> tuple[Any, Any]:
        return await decider.decide(target, turns), await decider.decide(target, [*turns[:3], "a new last turn"])

    cold, warm = asyncio.run(run())
    assert counting.calls == [turns, ["a new last turn"]]  # one batch, then only the new turn
    scores = router.score([*turns, "a new last turn"])
    q, decay = router.meta.quantiles, decider.settings.router.context_decay
    assert cold.score == pytest.approx(conversation_score(scores[:4], decay, q))
    assert warm.score == pytest.approx(conversation_score([*scores[:3], scores[4]], decay, q))


@pytest.mark.parametrize(("router_keys", "message"), [
    ({"context": "everything"}, r"router\.context: must be one of last_user, conversation"),
    ({"context_decay": 0}, r"router\.context_decay: must be in \(0, 1\]"),
    ({"context_decay": 1.5}, r"router\.context_decay: must be in \(0, 1\]"),
    ({"context_decay": "slow"}, r"router\.context_decay: expected a number"),
    ({"limit_context_turns": 0}, r"router\.limit_context_turns: must be at least 1"),
])
def test_bad_context_settings_fail_naming_the_key(tmp_path: Path, router_keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(base_config(tmp_path, router=router_keys))


def test_the_turn_cache_holds_no_text_so_big_turns_cost_no_more_than_small_ones(router: Router,
                                                                                 tmp_path: Path) -> None:
    from proxy.routing.decider import LIMIT_SCORE_CACHE

    counting, decider, target = _conversation_decider(router, tmp_path)
    turns = [f"turn {i} " + "x" * 480_000 for i in range(4)]  # 4 × 480 kB, as the attack sent

    async def run() -> None:
        await decider.decide(target, turns)
        await decider.decide(target, [*turns[:3], "a new last turn"])

    asyncio.run(run())
    assert counting.calls[-1] == ["a new last turn"]  # still cached
    assert sum(map(len, counting.calls)) == 5  # each long turn scored once (one run each: they are long)
    held = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in decider._cache.items())
    assert held <= len(decider._cache) * 200  # a fixed size per entry, whatever the turn's length
    assert LIMIT_SCORE_CACHE * 200 <= 2 * 1024 * 1024  # so the whole cache stays within 2 MB


def test_a_party_with_many_long_turns_queued_does_not_hold_back_anothers_prompt(router: Router,
                                                                                 tmp_path: Path) -> None:
    # Every text of max_length tokens and more costs a full encoder run. One party's 6 long turns (3 requests in
    # conversation mode) used to go into one run of the router thread together with another party's short
    # prompt, which waited for all of them. Now a run holds at most max_length tokens' worth of text (a long
    # text alone), the parties waiting take turns, and a short prompt runs beside a long run (express thread).
    counting, decider, target = _conversation_decider(router, tmp_path)
    long_turns = [[f"request {r} turn {i} " + "lorem ipsum dolor sit amet " * 2_000 for i in range(2)]
                  for r in range(3)]
    prompt = "What is the capital of France?"

    async def run() -> Any:
        many = [asyncio.create_task(decider.decide(target, turns, party="a")) for turns in long_turns]
        other = asyncio.create_task(decider.decide(target, [prompt], party="b"))
        await asyncio.gather(*many)
        return await other

    decision = asyncio.run(run())
    assert len(counting.calls) == 7 and all(len(call) == 1 for call in counting.calls)
    assert [prompt] in counting.calls[:2]  # beside the first long run, not after the queue
    assert counting.threads[counting.calls.index([prompt])].startswith("route-llm-router-express")
    assert decision.score == pytest.approx(router.score([prompt])[0], abs=1e-12)  # scored as alone
    # Short prompts still share a run.
    counting.calls.clear()

    async def short() -> None:
        await asyncio.gather(*(decider.decide(target, [f"hi {i}"], party=str(i)) for i in range(4)))

    asyncio.run(short())
    assert counting.calls == [["hi 0", "hi 1", "hi 2", "hi 3"]]


def test_short_prompts_never_take_the_express_thread_beside_a_short_run(router: Router, tmp_path: Path) -> None:
    # The express thread is for a short prompt stuck behind a long run. Beside a run of short prompts it would
    # only make two onnxruntime runs share the two cores: more CPU per request (measured: 12.5 -> 10.2 ms of
    # server CPU per routed request, 112 -> 136 req/s at 32 in flight, once it was kept for long runs only).
    counting = _CountingRouter(router)
    decider = Decider(settings_from_dict(base_config(tmp_path)), counting)  # type: ignore[arg-type]
    target = decider.resolve("auto")
    prompts = [f"What is the capital of country {i}?" for i in range(8)]

    async def run() -> None:
        await asyncio.gather(*(decider.decide(target, [p], party=str(i)) for i, p in enumerate(prompts)))

    asyncio.run(run())
    assert sorted(text for call in counting.calls for text in call) == sorted(prompts)
    assert len(counting.calls) > 1  # the budget split them into several runs
    assert not any(thread.startswith("route-llm-router-express") for thread in counting.threads), counting.threads


def test_texts_of_a_request_that_went_away_are_not_scored(router: Router, tmp_path: Path) -> None:
    counting = _CountingRouter(router)
    decider = Decider(settings_from_dict(base_config(tmp_path)), counting)  # type: ignore[arg-type]
    target = decider.resolve("auto")
    running, gone = "a long question " * 40, "another long question " * 40

    async def run() -> None:
        first = asyncio.create_task(decider.decide(target, [running], party="a"))
        left = asyncio.create_task(decider.decide(target, [gone], party="b"))
        await asyncio.sleep(0.001)  # the first runs; the second waits (too long for the express thread)
        left.cancel()
        await first
        await asyncio.gather(left, return_exceptions=True)
        await decider.decide(target, ["and then"], party="c")  # the router still serves

    asyncio.run(run())
    assert counting.calls == [[running], ["and then"]]
