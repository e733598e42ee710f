"""From a requested model name and a prompt to a routing decision.

Two jobs that belong to the proxy rather than to ``router/``: mapping the names clients send (aliases,
``router-bert-<threshold>``, concrete models) to an operating point, and running the classifier off the
event loop with micro-batching, so that concurrent requests share one ONNX run instead of queueing for
the thread pool one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from proxy.errors import ModelNotFound
from proxy.request import user_texts
from proxy.settings import OperatingPoint, Settings
from router import Router
from router.budget import steer_cuts
from router.policy import Quantiles, Tier, TierPolicy, conversation_score, document_score

log = logging.getLogger("route_llm")

RouteLLM_PREFIX = "router-bert-"

#: Earlier user turns whose scores are remembered, so a conversation's history is not scored again on every
#: follow-up. Scores are deterministic per text (the classifier runs each sequence alone), so a cached score is
#: the score; the cache belongs to one Decider and so to one loaded router model. Entries are keyed by a 16-byte
#: digest of the text, never the text: a turn may be megabytes, and 4,096 of them were gigabytes per worker. An
#: entry costs the same (about 150 bytes) whatever its turn's length, so the cache stays under a megabyte.
LIMIT_SCORE_CACHE = 4096


def _turn_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


#: The interpreter's GIL switch interval while the proxy serves (CPython's default is 5 ms). The router thread
#: gives the GIL up for every ONNX run and needs it back to pool and score the result; when the event loop is
#: busy (many requests in flight) it waits up to one switch interval for that, so with 5 ms neither thread was
#: busy: at 32 in flight one worker ran its event loop at 57% of a core and its router thread at 46%, and
#: served 250 req/s. At 1 ms: 301 req/s, same prompts (docs/performance.md, "Fourth round"). Traffic with a
#: concrete model name has no second thread wanting the GIL, so nothing changes for it.
SWITCH_INTERVAL = 0.001


@contextlib.contextmanager
def short_gil_switch() -> Iterator[None]:
    """Lower the GIL switch interval to :data:`SWITCH_INTERVAL` (never raise it) while serving, then restore it."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@functools.cache
def router_thread() -> ThreadPoolExecutor:
    """The one thread of this process that runs the classifier (tokenizer, ONNX, head), made on first use.

    Not starlette's thread pool: its threads and its 40-token limiter are shared with file uploads, feedback
    writes and reloads, so a burst of those could hold a routing decision back, and its hop costs more CPU
    than a plain executor's. One thread is enough: the micro-batcher runs one batch at a time here (and short
    prompts beside a long one on :func:`express_thread`), and onnxruntime spreads a run over ``router.threads`` threads
    of its own. The ONNX run and the tokenizer release the GIL, so the event loop keeps serving while a prompt
    is scored.
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="route-llm-router")


@functools.cache
def express_thread() -> ThreadPoolExecutor:
    """A second classifier thread, for short prompts while a long text runs on :func:`router_thread`
    (:class:`_MicroBatcher`): a run of the encoder cannot be interrupted, and one over a long text takes tens of
    milliseconds; on this thread a short prompt does not wait for it. Beside short runs it stays idle (two runs at
    once would only share the cores). onnxruntime runs a session from several threads at once."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="route-llm-router-express")


@dataclass(frozen=True)
class Scored:
    """What one run of the classifier says of a text: its score, and the document head's p(analysis) where asked."""

    score: float
    analysis: float | None = None


#: A text waiting for the router: its text, its waiter, and whether it also wants the document head's p(analysis).
_Entry = tuple[str, "asyncio.Future[Scored]", bool]


def _score(router: Router, texts: Sequence[str], analysis: bool) -> list[Scored]:
    if not analysis:
        return [Scored(score) for score in router.score(texts)]
    scores, analyses = router.score_both(texts)
    return [Scored(score, None if analyses is None else analyses[i]) for i, score in enumerate(scores)]


async def _score_off_loop(router: Router, texts: Sequence[str], lane: ThreadPoolExecutor | None = None, *,
                          analysis: bool = False) -> list[Scored]:
    """Score ``texts`` on ``lane`` (the router thread); ``analysis``: with the document head's p(analysis) too,
    from the same encoder run."""
    return await asyncio.get_running_loop().run_in_executor(lane or router_thread(),
                                                            functools.partial(_score, router, texts, analysis))


@dataclass(frozen=True)
class Target:
    """What a requested model name means: routed by ``policy``, or pinned to ``tier``."""

    requested: str  # the bounded label used in metrics: the alias, "router-bert", or the model name
    policy: TierPolicy | None = None
    tier: Tier | None = None

    @property
    def routed(self) -> bool:
        return self.tier is None


@dataclass(frozen=True)
class Decision:
    tier: Tier
    score: float | None  # the score the cuts were applied to; None when pinned or the classifier failed
    cuts: tuple[float, ...] | None
    seconds: float
    failed: bool = False
    turn_score: float | None = None  # the last user turn's own score (differs from score in conversation mode)

    @property
    def threshold(self) -> float | None:
        """The one cut of a two-tier decision (the value ``threshold`` always meant), else None."""
        return self.cuts[0] if self.cuts is not None and len(self.cuts) == 1 else None


def policy_for(point: OperatingPoint, quantiles: Quantiles) -> TierPolicy:
    """The cut points of a loaded operating point: its fixed thresholds, or its shares through the model's
    quantile table. Which of the two applies was decided once, at load (``OperatingPoint.one_rule``)."""
    if point.thresholds is not None:
        return TierPolicy(point.thresholds)
    assert point.shares is not None, "an operating point that was not loaded through proxy.settings"
    return TierPolicy.from_shares(quantiles, point.shares)


class Decider:
    """Names → targets (``resolve``), scores → tiers (``choose``), and the scoring itself (``decide``)."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.tiers = settings.models.tiers
        quantiles = router.meta.quantiles
        self.default_policy = policy_for(settings.router, quantiles)
        self.alias_policies = {
            name: policy_for(a, quantiles) if a.is_set() else self.default_policy
            for name, a in settings.aliases.items()
        }
        self.models = {m.name: tier for m, tier in zip(settings.models.entries, self.tiers)}
        fail_open = settings.models.tier_named(settings.router.fail_open_tier)
        assert fail_open is not None  # settings checked it
        self.fail_open = fail_open
        self.conversation = settings.router.context == "conversation"
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._batcher = _MicroBatcher(router, window=settings.router.batch_window_ms / 1000.0,
                                      limit=settings.router.limit_batch, tokens=router.meta.max_length)

    def model_names(self) -> list[str]:
        return [*self.alias_policies, *self.models]

    def resolve(self, name: object) -> Target:
        if not isinstance(name, str) or not name:
            raise ModelNotFound("`model` must be a non-empty string naming one of: "
                                + ", ".join(self.model_names()), param="model")
        if name in self.alias_policies:
            return Target(name, policy=self.alias_policies[name])
        if name in self.models:
            return Target(name, tier=self.models[name])
        if name.startswith(RouteLLM_PREFIX):
            raw = name[len(RouteLLM_PREFIX):]
            try:
                threshold = float(raw)
            except ValueError:
                threshold = math.nan
            if not 0.0 <= threshold <= 1.0:  # also rejects nan
                raise ModelNotFound(f"model {name!r}: the threshold in router-bert-<threshold> must be a number "
                                    "between 0 and 1, e.g. router-bert-0.5", param="model")
            return Target("router-bert", policy=TierPolicy.two_way(threshold, len(self.tiers)))
        raise ModelNotFound(f"The model {name!r} does not exist. Valid models: {', '.join(self.model_names())}, "
                            "or router-bert-<threshold>", param="model")

    def texts(self, messages: list[dict[str, Any]]) -> list[str]:
        """What the router scores for a chat: the last user turn, or (conversation mode) the recent ones."""
        limit = self.settings.router.limit_context_turns if self.conversation else 1
        return user_texts(messages, limit)

    def choose(self, policy: TierPolicy, scores: Sequence[float]) -> tuple[Tier, float]:
        """The pure decision: user-turn scores (oldest first; the last is the current turn) → tier and the score
        the cuts saw. Shared by the proxy, ``/v1/route`` and ``route-llm route``."""
        if len(scores) == 1:
            return self.tiers[policy.tier_index(scores[0])], scores[0]
        score = conversation_score(scores, self.settings.router.context_decay, self.router.meta.quantiles)
        return self.tiers[policy.tier_index(score)], score

    def steered(self, policy: TierPolicy, fraction: float) -> TierPolicy:
        """``policy`` moved ``fraction`` of the way toward the cheapest tier (a key's budget draining:
        ``router.budget.steer_cuts``); fraction 0 is the policy itself."""
        if fraction <= 0.0:
            return policy
        return TierPolicy(steer_cuts(policy.cuts, fraction, self.router.meta.quantiles))

    async def decide(self, target: Target, texts: Sequence[str], *, steer: float = 0.0,
                     document: bool = False, party: str = "") -> Decision:
        """The decision for ``target``; ``steer`` (0 to 1) moves a routed target's cuts toward the cheapest tier.
        ``document``: the request carries a document, so a model with a document head decides by that head
        (lookup vs analysis at its own calibrated cut, :func:`router.policy.document_score`). ``party``: who
        asks (the guard's fairness key); parties waiting for the router take turns."""
        if target.tier is not None:
            return Decision(target.tier, None, None, 0.0)
        assert target.policy is not None
        if steer > 0.0:
            target = Target(target.requested, policy=self.steered(target.policy, steer))
            assert target.policy is not None
        start = time.perf_counter()
        head = self.router.doc_head if document else None
        try:
            # With a document, the document head's p(analysis) of the last text comes from the same encoder run.
            scores, analysis = await self._scores(texts, party, analysis=head is not None)
        except Exception:
            log.exception("router inference failed; sending the request to the %s tier", self.fail_open.name)
            return Decision(self.fail_open, None, target.policy.cuts, time.perf_counter() - start, failed=True)
        tier, score = self.choose(target.policy, scores)
        if head is not None:
            assert analysis is not None  # a router with a document head gives it (Router.score_both)
            score = document_score(analysis, head.cut_probability, target.policy.cuts[0])
            tier = self.tiers[target.policy.tier_index(score)]
        return Decision(tier, score, target.policy.cuts, time.perf_counter() - start, turn_score=scores[-1])

    async def _scores(self, texts: Sequence[str], party: str = "", *,
                      analysis: bool = False) -> tuple[list[float], float | None]:
        """Scores for ``texts`` in one batched run: the last text always fresh (so a single-turn request is
        scored exactly as before), earlier turns from the cache where a previous request scored them; and with
        ``analysis``, the document head's p(analysis) of the last text (else None)."""
        earlier = list(texts[:-1])
        keys = {t: _turn_key(t) for t in earlier} if self.conversation else {}
        known = {t: self._cache[keys[t]] for t in earlier if t in keys and keys[t] in self._cache}
        missing = list(dict.fromkeys(t for t in earlier if t not in known))
        fresh = await self._batcher.score_many([*missing, texts[-1]], party, analysis_of_last=analysis)
        for text, value in zip([*missing, texts[-1]], fresh):
            known[text] = value.score
            if self.conversation:
                self._remember(keys.get(text) or _turn_key(text), value.score)
        return [*(known[t] for t in earlier), fresh[-1].score], fresh[-1].analysis

    def _remember(self, key: bytes, value: float) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        if len(self._cache) > LIMIT_SCORE_CACHE:
            self._cache.popitem(last=False)

    async def score_many(self, texts: list[str]) -> list[float]:
        return [s.score for s in await _score_off_loop(self.router, texts)]


class _MicroBatcher:
    """Runs the classifier off the event loop, one call of a router thread for the prompts waiting then.

    A single worker task drains the queue: when a prompt arrives and nothing is running it is scored at
    once (no added wait), and prompts that arrive while a run is in progress form the next batch. So
    sequential traffic pays nothing and concurrent traffic makes fewer hops to the router thread than requests.
    ``window`` optionally holds the first prompt of a batch a little longer to gather more of them.

    A batch is bounded by cost, not only by count: the encoder reads each text alone, up to ``max_length``
    tokens, and a text that long costs a full run (tens of milliseconds). A batch holds texts worth at most
    ``tokens`` (``max_length``) tokens, counting a character as a token (never fewer tokens than characters,
    as CJK text has) and any text as at most ``max_length``; so a long text runs alone. Parties (the guard's
    fairness key) take turns: each batch starts with the party after the one that started the previous batch,
    taking their oldest texts one by one. And while a long text runs on the router thread, short texts (at most
    half of ``max_length`` characters, a batch of them at most as much) run on the express thread
    (:func:`express_thread`): one party's queue of long conversation turns then costs another party's short
    prompt nothing but its own run.
    """

    def __init__(self, router: Router, *, window: float, limit: int, tokens: int) -> None:
        self.router = router
        self.window = window
        self.limit = limit
        self.tokens = tokens
        self._pending: OrderedDict[str, deque[_Entry]] = OrderedDict()
        self._worker: asyncio.Task[None] | None = None
        self._arrived: asyncio.Event | None = None  # set when texts arrive while the worker waits on a run

    async def score_many(self, texts: Sequence[str], party: str = "", *,
                         analysis_of_last: bool = False) -> list[Scored]:
        """Queue all of one request's texts at once, in order, under ``party`` (``analysis_of_last``: the last
        one's run also gives the document head's p(analysis))."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Scored]] = [loop.create_future() for _ in texts]
        wants = [analysis_of_last and i == len(texts) - 1 for i in range(len(texts))]
        self._pending.setdefault(party, deque()).extend(zip(texts, futures, wants))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        elif self._arrived is not None:
            self._arrived.set()
        return list(await asyncio.gather(*futures))

    def _cost(self, text: str) -> int:
        return max(1, min(len(text), self.tokens))

    def _waiting(self) -> int:
        return sum(len(queue) for queue in self._pending.values())

    def _next_batch(self, budget: int, *, short: bool = False) -> list[_Entry]:
        """Texts from the waiting parties in turn, oldest first per party, within ``limit`` and ``budget``
        (``short``: only texts that cost at most ``budget`` each, and only then); the party that led goes to
        the back of the order."""
        for party in list(self._pending):  # texts whose request went away (its waiter cancelled) are not scored
            queue = self._pending[party]
            while queue and queue[0][1].done():
                queue.popleft()
            if not queue:
                del self._pending[party]
        batch: list[_Entry] = []
        spent = 0
        leader = next(iter(self._pending), None)
        led = False
        while self._pending and len(batch) < self.limit:
            took = False
            for party in list(self._pending):
                queue = self._pending[party]
                cost = self._cost(queue[0][0])
                if (batch or short) and spent + cost > budget:
                    continue
                batch.append(queue.popleft())
                spent += cost
                took = True
                led = led or party == leader
                if not queue:
                    del self._pending[party]
                if len(batch) >= self.limit:
                    break
            if not took:
                break
        if led and leader is not None and leader in self._pending:
            self._pending.move_to_end(leader)
        return batch

    async def _drain(self) -> None:
        """Keep the router thread busy with fair batches, and the express thread with short ones."""
        arrived = self._arrived = asyncio.Event()
        running: dict[ThreadPoolExecutor, asyncio.Task[None]] = {}
        main, express = router_thread(), express_thread()
        main_cost = 0  # the longest text of the batch running on the router thread (its cost)
        try:
            while self._pending or running:
                arrived.clear()
                if main not in running and self._pending:
                    if self.window > 0 and self._waiting() < self.limit:
                        await asyncio.sleep(self.window)
                    batch = self._next_batch(self.tokens)
                    if batch:
                        running[main] = asyncio.create_task(self._run(batch, main))
                        main_cost = max(self._cost(text) for text, _, _ in batch)
                # The express thread only beside a long run: two short runs at once would just share the cores
                # (each onnxruntime run spreads over router.threads threads) and cost CPU, not latency.
                if express not in running and self._pending and main_cost > self.tokens // 2:
                    batch = self._next_batch(self.tokens // 2, short=True)
                    if batch:
                        running[express] = asyncio.create_task(self._run(batch, express))
                if not running:
                    continue
                wake = asyncio.create_task(arrived.wait())
                await asyncio.wait([*running.values(), wake], return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                for lane, task in list(running.items()):
                    if task.done():
                        del running[lane]
        finally:
            if self._arrived is arrived:
                self._arrived = None

    async def _run(self, batch: list[_Entry], lane: ThreadPoolExecutor) -> None:
        texts = [t for t, _, _ in batch]
        analysis = any(wants for _, _, wants in batch)  # the document head too, for the texts that asked
        try:
            scores = await _score_off_loop(self.router, texts, lane, analysis=analysis)
        except Exception as exc:
            if len(batch) == 1:  # its waiter applies the fail-open tier
                _settle(batch[0][1], exc=exc)
                return
            # One bad prompt must not fail the others that happened to share its run: retry one by one.
            for text, fut, wants in batch:
                try:
                    _settle(fut, value=(await _score_off_loop(self.router, [text], lane, analysis=wants))[0])
                except Exception as one:
                    _settle(fut, exc=one)
            return
        for (_, fut, _), value in zip(batch, scores):
            _settle(fut, value=value)


def _settle(fut: asyncio.Future[Scored], *, value: Scored | None = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the waiter went away (client disconnected)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert value is not None
        fut.set_result(value)
