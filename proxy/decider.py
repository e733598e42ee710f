"""From a requested model name and a prompt to a routing decision.

Two jobs that belong to the proxy rather than to ``router/``: mapping the names clients send (aliases,
``router-bert-<threshold>``, concrete models) to an operating point, and running the classifier off the
event loop with micro-batching, so that concurrent requests share one ONNX run instead of queueing for
the thread pool one by one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from proxy.errors import ModelNotFound
from proxy.settings import AliasSettings, Settings, Tier
from router import Router
from router.policy import decide, threshold_for_strong_share

log = logging.getLogger("route_llm")

RouteLLM_PREFIX = "router-bert-"


@dataclass(frozen=True)
class Target:
    """What a requested model name means: routed at ``threshold``, or pinned to ``tier``."""

    requested: str  # the bounded label used in metrics: the alias, "router-bert", or the model name
    threshold: float | None = None
    tier: Tier | None = None

    @property
    def routed(self) -> bool:
        return self.tier is None


@dataclass(frozen=True)
class Decision:
    tier: Tier
    score: float | None  # None when the classifier failed and the fail-open tier was used
    threshold: float | None
    seconds: float
    failed: bool = False


class Decider:
    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        quantiles = router.meta.quantiles
        self.default_threshold = self._threshold(
            AliasSettings(settings.router.threshold, settings.router.strong_share), quantiles)
        self.alias_thresholds = {
            name: (self._threshold(a, quantiles) if (a.threshold is not None or a.strong_share is not None)
                   else self.default_threshold)
            for name, a in settings.aliases.items()
        }
        self.models = {settings.models.weak.name: "weak", settings.models.strong.name: "strong"}
        self._batcher = _MicroBatcher(router, window=settings.router.batch_window_ms / 1000.0,
                                      limit=settings.router.limit_batch)

    @staticmethod
    def _threshold(a: AliasSettings, quantiles: Sequence[tuple[float, float]]) -> float:
        if a.threshold is not None:
            return a.threshold
        assert a.strong_share is not None
        return threshold_for_strong_share(quantiles, a.strong_share)

    def model_names(self) -> list[str]:
        return [*self.alias_thresholds, *self.models]

    def resolve(self, name: object) -> Target:
        if not isinstance(name, str) or not name:
            raise ModelNotFound("`model` must be a non-empty string naming one of: "
                                + ", ".join(self.model_names()), param="model")
        if name in self.alias_thresholds:
            return Target(name, threshold=self.alias_thresholds[name])
        if name in self.models:
            return Target(name, tier=self.models[name])  # type: ignore[arg-type]
        if name.startswith(RouteLLM_PREFIX):
            raw = name[len(RouteLLM_PREFIX):]
            try:
                threshold = float(raw)
            except ValueError:
                threshold = math.nan
            if not 0.0 <= threshold <= 1.0:  # also rejects nan
                raise ModelNotFound(f"model {name!r}: the threshold in router-bert-<threshold> must be a number "
                                    "between 0 and 1, e.g. router-bert-0.5", param="model")
            return Target("router-bert", threshold=threshold)
        raise ModelNotFound(f"The model {name!r} does not exist. Valid models: {', '.join(self.model_names())}, "
                            "or router-bert-<threshold>", param="model")

    async def decide(self, target: Target, text: str) -> Decision:
        if target.tier is not None:
            return Decision(target.tier, None, None, 0.0)
        assert target.threshold is not None
        start = time.perf_counter()
        try:
            score = await self._batcher.score(text)
        except Exception:
            log.exception("router inference failed; sending the request to the %s tier",
                          self.settings.router.fail_open_tier)
            return Decision(self.settings.router.fail_open_tier, None, target.threshold,
                            time.perf_counter() - start, failed=True)
        return Decision(decide(score, target.threshold), score, target.threshold, time.perf_counter() - start)

    async def score_many(self, texts: list[str]) -> list[float]:
        return await run_in_threadpool(self.router.score, texts)


class _MicroBatcher:
    """Runs the classifier off the event loop, one ONNX run for all prompts waiting at that moment.

    A single worker task drains the queue: when a prompt arrives and nothing is running it is scored at
    once (no added wait), and prompts that arrive while a run is in progress form the next batch. So
    sequential traffic pays nothing and concurrent traffic needs fewer ONNX runs than requests.
    ``window`` optionally holds the first prompt of a batch a little longer to gather more of them.
    """

    def __init__(self, router: Router, *, window: float, limit: int) -> None:
        self.router = router
        self.window = window
        self.limit = limit
        self._pending: list[tuple[str, asyncio.Future[float]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def score(self, text: str) -> float:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        self._pending.append((text, fut))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            if self.window > 0 and len(self._pending) < self.limit:
                await asyncio.sleep(self.window)
            batch, self._pending = self._pending[: self.limit], self._pending[self.limit:]
            texts = [t for t, _ in batch]
            try:
                scores = await run_in_threadpool(self.router.score, texts)
            except Exception as exc:
                if len(batch) == 1:  # its waiter applies the fail-open tier
                    _settle(batch[0][1], exc=exc)
                    continue
                # One bad prompt must not fail the others that happened to share its run: retry one by one.
                for text, fut in batch:
                    try:
                        _settle(fut, value=(await run_in_threadpool(self.router.score, [text]))[0])
                    except Exception as one:
                        _settle(fut, exc=one)
                continue
            for (_, fut), value in zip(batch, scores):
                _settle(fut, value=value)


def _settle(fut: asyncio.Future[float], *, value: float = 0.0, exc: BaseException | None = None) -> None:
    if fut.done():  # the waiter went away (client disconnected)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
