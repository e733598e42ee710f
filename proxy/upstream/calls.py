"""Calling the upstream models through LiteLLM: retries, fallback along the tier list, deadlines.

LiteLLM's own retry machinery is switched off (``num_retries=0``): this module owns the policy so that
retries, the fallback and the total deadline are one loop that the metrics and headers can describe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import httpx
import litellm
from litellm import exceptions as llm_errors
from litellm.llms.base_llm.chat.transformation import BaseLLMException

from proxy import tracing
from proxy.errors import BadRequest, ProxyError, RateLimited, UpstreamError, UpstreamNotConfigured
from proxy.settings import Fallback, ModelSettings, Settings, tier_key
from proxy.upstream import catalog, lean
from proxy.upstream.breaker import Breakers
from proxy.upstream.params import for_model
from proxy.upstream.pricing import register_model
from router.policy import Tier

log = logging.getLogger("route_llm")


def fallback_order(tier: Tier, tiers: Sequence[Tier], fallback: Fallback) -> list[Tier]:
    """The tiers to try for a request routed to ``tier``, in order: the tier itself, then the fallback walk.

    ``down`` walks towards cheaper tiers and ``up`` towards dearer ones, each to the end of the list; ``both``
    takes the nearest tier first, the cheaper one on a tie, so a failing middle tier is replaced by its
    neighbours before the ends. (The two-tier names strong_to_weak and weak_to_strong were rewritten to ``down``
    and ``up`` when the settings loaded.)
    """
    mode = fallback
    below = [tiers[i] for i in range(tier.index - 1, -1, -1)]
    above = [tiers[i] for i in range(tier.index + 1, len(tiers))]
    if mode == "down":
        rest = below
    elif mode == "up":
        rest = above
    elif mode == "both":
        rest = [t for pair in zip_longest(below, above) for t in pair if t is not None]
    else:
        rest = []
    return [tier, *rest]


@dataclass
class Attempts:
    """What happened on the way to an answer: reported in headers, logs and metrics."""

    requested_tier: Tier
    served_tier: Tier | None = None
    dropped: list[str] = field(default_factory=list)  # parameters the serving model does not take (upstream.params)
    retries: int = 0
    fallback: bool = False
    errors: list[tuple[Tier, str]] = field(default_factory=list)  # (tier tried, reason from a closed set: _classify)
    breaker_open: list[Tier] = field(default_factory=list)  # tiers skipped because their breaker was open


@dataclass(frozen=True)
class Served:
    """What the upstream served, returned as a value: the tier and configured model that answered (after any
    retries and fallback), the answer (for a stream: its first chunk, and the rest in ``rest``) and the attempts
    that led there. The caller reads the served model from here rather than deriving it again."""

    tier: Tier
    model: str
    attempts: Attempts
    answer: Any
    rest: AsyncIterator[Any] | None = None


@dataclass
class _Failure:
    reason: str  # rate_limited | timeout | connection | unavailable | server_error | bad_response | bad_request | ...
    retryable: bool
    status: int
    message: str
    retry_after: float | None = None
    local: bool = False  # LiteLLM failed in its own code, with no transport error behind it (_built_nothing)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    raw = headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _built_nothing(exc: BaseException) -> bool:
    """LiteLLM reports its own failures to build a request (a content part or tool call it cannot convert,
    text that is not valid UTF-8) as APIConnectionError, and also its failures to read an answer of an
    unexpected shape. With no transport error behind it, a retry on the same model repeats the failure, and
    the client is told 400: in the first case, by far the common one, nothing was sent."""
    cause = exc.__cause__ or exc.__context__
    if cause is None:
        return False
    while cause is not None:
        if isinstance(cause, (httpx.TransportError, OSError)) or type(cause).__module__.startswith("aiohttp"):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


def _unreadable_answer(exc: BaseException) -> bool:
    """The upstream answered with a success status but a body that is not its API's answer (a gateway's HTML page,
    JSON cut short, bytes that are not text).

    LiteLLM's provider code reports a body it cannot convert as its own provider error with status 422, which it
    sets itself, raised while handling the decode error, and maps that to BadRequestError: the client would be
    blamed. An error status the upstream really sent always has httpx's HTTPStatusError behind it (the handler's
    ``raise_for_status``), so a 422 without one is LiteLLM's, never the upstream's.
    """
    seen: BaseException | None = exc
    provider_422 = False
    while seen is not None:
        if isinstance(seen, httpx.HTTPStatusError):
            return False
        if isinstance(seen, BaseLLMException) and seen.status_code == 422:
            provider_422 = True
        seen = seen.__cause__ or seen.__context__
    return provider_422


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# LiteLLM's wrapping, possibly nested: "litellm.MidStreamFallbackError: litellm.APIConnectionError: ",
# "GeminiException BadRequestError - ", "Vertex_ai_betaException - ".
_LITELLM_PREFIX = re.compile(r"(?:litellm\.\w+:\s*|\w+Exception(?:\s+\w+Error)?\s*-\s*)")


def provider_message(exc: BaseException) -> str | None:
    """The upstream's own error message (``stand-in injected 503 (UNAVAILABLE)``), when its JSON error body is
    in the exception; None when the text is LiteLLM's or the transport's.

    LiteLLM prefixes its class names and the provider's exception name, wraps the provider's JSON error
    body as a string (sometimes as a bytes repr), and appends a traceback with server paths to some
    messages.
    """
    text = str(getattr(exc, "message", "") or exc).split("\nTraceback (most recent call last)", 1)[0].strip()
    while match := _LITELLM_PREFIX.match(text):
        text = text[match.end():]
    if len(text) > 2 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        text = text[2:-1]
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        status = error.get("status")
        return error["message"] + (f" ({status})" if isinstance(status, str) and status != "UNKNOWN" else "")
    return None


def _litellm_text(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).split("\nTraceback (most recent call last)", 1)[0].strip()
    while match := _LITELLM_PREFIX.match(text):
        text = text[match.end():]
    return text


# What a client may not see in a message: addresses (with their ports), URLs, object reprs, LiteLLM's name.
_INTERNAL = re.compile(r"https?://\S+|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?|\blocalhost(?::\d+)?|"
                       r"<[^<>]*\bat 0x[0-9a-fA-F]+>|\[[^\]]*\('[^']*', \d+\)\]|\blitellm\.\w+[:.]?|\bLiteLLM\b",
                       re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` without hosts, ports, URLs, reprs or LiteLLM's names: they are the proxy's insides."""
    return re.sub(r"\s{2,}", " ", _INTERNAL.sub("", text)).strip(" :;,-")


def client_message(exc: BaseException, limit: int = 500, *, generic: str | None = None) -> str:
    """An upstream error's text as clients may see it.

    The upstream's own message when it sent one; else ``generic`` (a fixed text for the kind of failure: the
    transport's text names hosts, ports and TLS objects, and a client can do nothing with it); else, for
    LiteLLM's own complaints about the request (the client needs those), LiteLLM's text, scrubbed.
    """
    own = provider_message(exc)
    if own is not None:
        text = scrub(own)
    elif generic is not None:
        text = generic
    else:
        text = scrub(_litellm_text(exc))
    return text[:limit] or "no details given"


#: What the client is told for a failure whose text is not the upstream's own (see client_message).
GENERIC = {
    "timeout": "the upstream did not answer in time",
    "rate_limited": "the upstream is limiting this proxy's requests",
    "connection": "the upstream could not be reached",
    "unavailable": "the upstream is unavailable",
    "server_error": "the upstream failed with a server error",
    "auth": "the upstream refused this proxy's credentials",
    "not_found": "the upstream does not serve this model",
    "error": "the upstream call failed",
    "stream_broken": "the upstream's stream broke off",
    "bad_response": "the upstream answered with a body that is not a valid response",
}


class StreamCut(Exception):
    """The upstream's stream ended without its last event: cut mid-event, or past an event that was not JSON.

    LiteLLM reads either as a normal end and makes up a final chunk with ``finish_reason: "stop"``, so the
    client would take a partial answer for a whole one. A stream is complete only when the upstream itself
    said why it finished: :func:`proxy.upstream.lean.note_finishes` has LiteLLM's Gemini reader note that.
    Streams of other providers' readers are not checked.
    """


class CheckedStream:
    """LiteLLM's stream, raising :class:`StreamCut` instead of passing on a finish the upstream never sent."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __aiter__(self) -> CheckedStream:
        return self

    async def __anext__(self) -> Any:
        return self.checked(await self.inner.__anext__())

    def checked(self, chunk: Any) -> Any:
        choices = getattr(chunk, "choices", None) or []
        if any(getattr(c, "finish_reason", None) for c in choices):
            reader = getattr(self.inner, "completion_stream", None)
            if getattr(reader, "upstream_finished", None) is False:
                raise StreamCut("the upstream's stream ended before its last event")
        return chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


def _classify(exc: BaseException) -> _Failure:
    if isinstance(exc, StreamCut):
        return _Failure("stream_broken", True, 502, str(exc))
    f = _classify_kind(exc)
    # A request the upstream (or LiteLLM, building it) refused: its text is about the request. Anything else is
    # told in the upstream's own words, or a fixed text: never the transport's (hosts, ports, TLS objects).
    generic = GENERIC.get(f.reason, GENERIC["error"])
    if f.reason == "bad_response":  # the decoder's complaint is LiteLLM's internals, whatever it says
        f.message = generic
    elif f.status == 400:
        f.message = client_message(exc)
    else:
        f.message = client_message(exc, generic=generic)
        if f.reason == "auth" and f.message != generic:
            f.message = f"{generic}: {f.message}"
    return f


def _classify_kind(exc: BaseException) -> _Failure:
    msg = ""  # the client's text is chosen by _classify
    if isinstance(exc, (llm_errors.Timeout, asyncio.TimeoutError, httpx.TimeoutException)):
        return _Failure("timeout", True, 504, msg)
    if isinstance(exc, llm_errors.RateLimitError):
        return _Failure("rate_limited", True, 429, msg, _retry_after(exc))
    if _unreadable_answer(exc):
        # The upstream's fault, perhaps a passing one (a proxy's error page): retried, then the next tier.
        return _Failure("bad_response", True, 502, msg)
    if isinstance(exc, llm_errors.APIConnectionError) and _built_nothing(exc):
        # A request too deep for LiteLLM's recursive conversion fails the same on every model: no fallback.
        return _Failure("bad_request", False, 400, msg, local=not _caused_by(exc, RecursionError))
    if getattr(exc, "status_code", None) in (401, 403):
        # LiteLLM reports Gemini's 403 (key refused, API not enabled) as a BadRequestError: it is the proxy's
        # credentials that failed, not the client's request, so it is a 502 and the other tier is tried.
        return _Failure("auth", False, 502, msg)
    if isinstance(exc, (llm_errors.APIConnectionError, httpx.TransportError, ConnectionError)):
        return _Failure("connection", True, 502, msg)
    if isinstance(exc, llm_errors.ServiceUnavailableError):
        return _Failure("unavailable", True, 503, msg, _retry_after(exc))
    if isinstance(exc, llm_errors.ContextWindowExceededError):
        return _Failure("context_window", False, 400, msg)
    if isinstance(exc, llm_errors.BadRequestError):
        return _Failure("bad_request", False, 400, msg)
    if isinstance(exc, (llm_errors.AuthenticationError, llm_errors.PermissionDeniedError)):
        return _Failure("auth", False, 502, msg)
    if isinstance(exc, llm_errors.NotFoundError) or getattr(exc, "status_code", None) == 404:
        # On a chat call the path names the model, so a 404 is Google's "models/X is not found for API version
        # v1beta": a retired model or a typo in the config. The proxy's fault, never the client's; the next tier
        # may still serve.
        return _Failure("model_not_served", False, 502, msg)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 500:
        return _Failure("server_error", True, 502, msg)
    return _Failure("error", False, 502, msg)


def not_served_message(settings: Settings, tier: Tier, provider_says: str, current: str | None) -> str:
    """What a client and the log are told when the provider refuses a tier's model: which tier, which model, the
    config key to change (the fix is the operator's, in the config file) and, when known, a current model."""
    m = settings.models.model(tier)
    instead = f"it serves {current} of the same family" if current else "`route-llm check` names a current model"
    return (f"the provider does not serve {m.model}, the model of the {tier.name} tier (config key "
            f"{tier_key(settings, tier)}.model); {instead}. Provider: {provider_says}")


def _to_proxy_error(f: _Failure, model: str) -> ProxyError:
    text = f"upstream {model} failed ({f.reason}): {f.message}"
    if f.status == 400:
        return BadRequest(text, code=f"upstream_{f.reason}")
    if f.status == 429:
        headers = {"retry-after": str(max(1, round(f.retry_after or 1)))}
        return RateLimited(text, code="upstream_rate_limited", headers=headers)
    return UpstreamError(text, reason=f.reason, status_code=f.status)


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.up = settings.upstream
        self.tiers = settings.models.tiers
        self._missing_keys: dict[Tier, list[str]] = {}
        self.breakers = Breakers.from_env(settings.upstream.breaker, self.tiers)
        self._suggested: dict[Tier, asyncio.Future[str | None]] = {}
        for tier in self.tiers:
            m = settings.models.model(tier)
            register_model(m)
            if m.resolved_api_key() is None:
                check = litellm.validate_environment(model=m.model, api_base=m.api_base)
                if not check.get("keys_in_environment", True):
                    # The configured variable first; LiteLLM's list may name the same one again.
                    names = [m.api_key_env_name(), *(check.get("missing_keys") or [])]
                    self._missing_keys[tier] = list(dict.fromkeys(n for n in names if n))

    def missing_keys(self, tier: Tier) -> list[str]:
        return self._missing_keys.get(tier, [])

    def _kwargs(self, m: ModelSettings, timeout: float) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": m.model, "timeout": timeout, "num_retries": 0}
        if m.api_base:
            kw["api_base"] = m.api_base
        key = m.resolved_api_key()
        if key:
            kw["api_key"] = key
        return kw

    def _order(self, tier: Tier) -> list[Tier]:
        tiers = fallback_order(tier, self.tiers, self.up.fallback)
        return [t for t in tiers if not self.missing_keys(t)] or [tier]

    async def _suggest(self, tier: Tier, remaining: float) -> str | None:
        """A current model for a tier the provider refused: asked once per tier and process, shared by the requests
        that meet the refusal meanwhile (shielded: one request's cancellation does not cancel the others' answer)."""
        if tier not in self._suggested:
            timeout = max(0.1, min(self.up.timeout_check, remaining))
            self._suggested[tier] = asyncio.ensure_future(
                asyncio.to_thread(catalog.suggestion, self.settings, tier, timeout=timeout))
        return await asyncio.shield(self._suggested[tier])

    def _check_configured(self, tier: Tier) -> None:
        missing = self.missing_keys(tier)
        if missing:
            m = self.settings.models.model(tier)
            raise UpstreamNotConfigured(
                f"cannot call {m.name}: the upstream API key is not set (set {' or '.join(missing)} "
                "in the proxy's environment, or models.*.api_key in its config)")

    async def _attempts(self, tier: Tier, attempts: Attempts, call: Any) -> tuple[Tier, str, Any]:
        """Run ``call(model_settings, timeout)`` with retries per tier, then the fallback tier; the tier and model
        that answered, and the answer. ``attempts`` is the journal, kept up to date also when every try fails."""
        deadline = time.monotonic() + self.up.timeout_total
        last: _Failure | None = None
        last_model = self.settings.models.model(tier).name
        not_served: list[str] = []  # the tiers whose model the provider refused, for the final message
        self._check_configured(tier)
        order = self._order(tier)
        for i, t in enumerate(order):
            m = self.settings.models.model(t)
            if self.breakers is not None and not self.breakers.allow(t):
                attempts.breaker_open.append(t)
                continue
            if i > 0:
                attempts.fallback = True
                if last is not None:  # past an open breaker: said once, when it opened
                    log.warning("falling back from %s to %s after: %s", last_model, m.name, last.reason)
            for n in range(self.up.retries + 1):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                traced = tracing.attempt(m, t.name, number=n, fallback=i > 0)
                try:
                    # LiteLLM gets the model's fixed timeout: it caches one HTTP client per timeout value, so
                    # passing the shrinking ``remaining`` opened a new client and connection on every call.
                    # The overall deadline is enforced here instead.
                    result = await asyncio.wait_for(call(m, m.timeout), min(m.timeout, remaining))
                except asyncio.CancelledError:
                    traced.end("cancelled")
                    raise
                except Exception as exc:  # classified below; unknown errors are not retried
                    last, last_model = _classify(exc), m.name
                    traced.end(last.reason, getattr(exc, "status_code", None))
                    attempts.errors.append((t, last.reason))
                    if last.reason == "model_not_served":
                        current = await self._suggest(t, deadline - time.monotonic())
                        last = dataclasses.replace(last, message=not_served_message(self.settings, t, last.message,
                                                                                    current))
                        not_served.append(f"{t.name} ({tier_key(self.settings, t)}.model: {m.model})")
                    # A 400 is the request's fault, not the provider's: it says nothing about the tier's health.
                    if self.breakers is not None and last.status != 400 and self.breakers.failed(t):
                        break  # this failure opened the breaker (or a concurrent one did): no more retries here
                    if not last.retryable:
                        # The request itself is wrong: another model won't help. A local failure may also be an
                        # answer LiteLLM could not read, so the other tier is still tried (free if nothing was sent).
                        if last.status == 400 and not last.local:
                            raise _to_proxy_error(last, m.name) from exc
                        break
                    if n < self.up.retries:
                        attempts.retries += 1
                        pause = min(self.up.backoff_max, self.up.backoff_base * (2 ** n) * (0.5 + random.random()))
                        if last.retry_after is not None:
                            pause = min(self.up.backoff_max, last.retry_after)
                        await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                    continue
                if self.breakers is not None:
                    self.breakers.succeeded(t)
                traced.end("ok", 200)
                attempts.served_tier = t
                return t, m.name, result
        if last is None and self.breakers is not None and len(attempts.breaker_open) == len(order):
            raise self._all_open(attempts.breaker_open)
        if last is None:
            last = _Failure("timeout", False, 504, f"no attempt finished within {self.up.timeout_total:g}s")
        if len(not_served) > 1 or (not_served and last.reason != "model_not_served"):
            last = dataclasses.replace(last, message=f"{last.message} (the provider does not serve the model of "
                                                     f"tier {', '.join(not_served)})")
        raise _to_proxy_error(last, last_model)

    def _all_open(self, tiers: list[Tier]) -> UpstreamError:
        """Every tier this request could use has an open breaker: 503 at once, with the time until the first trial."""
        assert self.breakers is not None
        wait = max(1, math.ceil(self.breakers.retry_after(tiers)))
        names = ", ".join(t.name for t in tiers)
        return UpstreamError(f"the upstream is failing: the circuit breaker of every tier this request may use is "
                             f"open ({names}) after repeated failures; retry in {wait}s", reason="breaker_open",
                             status_code=503, headers={"retry-after": str(wait)})

    async def complete(self, tier: Tier, messages: list[dict[str, Any]], params: dict[str, Any],
                       attempts: Attempts | None = None) -> Served:
        """One answer from ``tier`` (or a fallback). Pass ``attempts`` to keep the journal of a call that fails
        (its errors reach the metrics); an answered call returns it in :class:`Served` either way."""
        journal = attempts if attempts is not None else Attempts(requested_tier=tier)

        async def call(m: ModelSettings, timeout: float) -> Any:
            forwarded, journal.dropped = for_model(params, m.model)
            return await lean.acompletion(messages=messages, **forwarded, **self._kwargs(m, timeout))

        served, model, answer = await self._attempts(tier, journal, call)
        return Served(served, model, journal, answer)

    async def stream(self, tier: Tier, messages: list[dict[str, Any]], params: dict[str, Any],
                     attempts: Attempts | None = None) -> Served:
        """Open a stream and read its first chunk inside the retry loop.

        Failing before the first chunk is the same as failing a plain call (retry, fall back, right
        status code); after it the status line has gone out, so the caller reports errors in-band. The
        first chunk (None: the stream was empty) is :attr:`Served.answer`, the open stream :attr:`Served.rest`.
        """
        journal = attempts if attempts is not None else Attempts(requested_tier=tier)

        async def call(m: ModelSettings, timeout: float) -> tuple[Any, AsyncIterator[Any]]:
            forwarded, journal.dropped = for_model(params, m.model)
            response = CheckedStream(await lean.acompletion(messages=messages, stream=True, **forwarded,
                                                            **self._kwargs(m, timeout)))
            try:
                first = await response.__anext__()
            except StopAsyncIteration:
                first = None
            except BaseException:
                await response.aclose()  # a failed attempt must not leave its connection open
                raise
            return first, response

        served, model, (first, rest) = await self._attempts(tier, journal, call)
        return Served(served, model, journal, first, rest)

    async def warm_up(self) -> None:
        """Exercise LiteLLM's code path once with a local mock answer (no network), so the first real
        request doesn't pay for its lazy imports and set-up."""
        m = self.settings.models.weak
        await lean.acompletion(model=m.model, messages=[{"role": "user", "content": "warm-up"}],
                                  mock_response="ok")
