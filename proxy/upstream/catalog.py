"""Which configured models the provider still serves (``route-llm check``, and once at ``serve`` start-up).

Providers retire models by name: Google answers a retired Gemini model's calls with 404 ``NOT_FOUND``. A config
that names one fails every request routed to that tier, and nothing says which line to change. This module asks
the provider for its model list (Gemini's ``GET /v1beta/models``, paginated, one plain HTTP request per page) and,
for each tier, says served or not served, the config key that names the model, and the nearest current model of
the same family (flash → the newest served flash, pro → the newest pro). Other providers have no such list that
LiteLLM reaches the same way: they are reported as "cannot check", never as failures.

The key goes in the ``x-goog-api-key`` header (which Google accepts as it accepts ``?key=``), so it never appears
in a URL that an error message or a log line might quote.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx

from proxy.settings import ModelSettings, Settings, tier_key
from router.policy import Tier

log = logging.getLogger("route_llm")

GOOGLE_API_BASE = "https://generativelanguage.googleapis.com"
_PAGE_SIZE = 1000  # Google's largest page
_LIMIT_PAGES = 50  # a provider that pages forever must not keep the check running

# served: listed with generateContent; not_served: absent (the fix is a config edit); unknown: a Gemini tier that
# could not be asked (no key, unreachable, key refused); cannot_check: not a Gemini model.
Status = Literal["served", "not_served", "unknown", "cannot_check"]


class CatalogError(Exception):
    """The provider could not be asked, or its answer was not a model list; the message says why (never the key)."""


@dataclass(frozen=True)
class ServedModel:
    name: str  # without Google's "models/" prefix: gemini-2.5-flash
    methods: tuple[str, ...]  # supportedGenerationMethods

    @property
    def chats(self) -> bool:
        return "generateContent" in self.methods


@dataclass(frozen=True)
class TierCheck:
    tier: Tier
    key: str  # the config key naming the model: models.strong.model, models[1].model
    model: str  # LiteLLM's model string as configured
    status: Status
    nearest: str | None = None  # a served model of the same family, as a LiteLLM model string
    note: str = ""  # why the status is unknown or cannot_check


# --- asking the provider ------------------------------------------------------------------------------------

def models_url(api_base: str) -> str:
    """``{api_base}/v1beta/models``, as LiteLLM joins Gemini paths (an api_base already ending in /v1beta kept)."""
    base = api_base.rstrip("/")
    return base + "/models" if base.endswith("/v1beta") else base + "/v1beta/models"


def list_gemini_models(api_base: str, api_key: str, *, timeout: float) -> list[ServedModel]:
    """Every model the Gemini API at ``api_base`` lists for this key, all pages, within ``timeout`` seconds."""
    url = models_url(api_base)
    host = _host(url)
    deadline = time.monotonic() + timeout
    found: list[ServedModel] = []
    token: str | None = None
    with httpx.Client(headers={"x-goog-api-key": api_key}) as http:
        for _ in range(_LIMIT_PAGES):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CatalogError(f"{host} did not list its models within {timeout:g}s")
            params: dict[str, str | int] = {"pageSize": _PAGE_SIZE, **({"pageToken": token} if token else {})}
            try:
                answer = http.get(url, params=params, timeout=remaining)
            except httpx.TimeoutException:
                raise CatalogError(f"{host} did not list its models within {timeout:g}s") from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise CatalogError(f"cannot reach {host}: {type(exc).__name__}") from None
            page = _page(answer, host)
            found.extend(_entries(page, host))
            after = page.get("nextPageToken")
            token = after if isinstance(after, str) and after else None
            if token is None:
                return found
    raise CatalogError(f"{host} listed more than {_LIMIT_PAGES} pages of models")


def _host(url: str) -> str:
    """What messages name: the host and port (no path, no query), or the text as given when it is not a URL."""
    try:
        return urlsplit(url).netloc or url
    except ValueError:
        return url


def _page(answer: httpx.Response, host: str) -> dict[str, object]:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code != 200:
        error = body.get("error") if isinstance(body, dict) else None
        said = error.get("message") if isinstance(error, dict) else None
        reason = f": {str(said)[:300]}" if said else ""
        raise CatalogError(f"{host} answered {answer.status_code} to the model list{reason}")
    if not isinstance(body, dict):
        raise CatalogError(f"{host} answered the model list with something that is not a JSON object")
    return body


def _entries(page: dict[str, object], host: str) -> list[ServedModel]:
    models = page.get("models", [])
    if not isinstance(models, list):
        raise CatalogError(f"{host} answered the model list with 'models' that is not a list")
    out = []
    for entry in models:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            methods = entry.get("supportedGenerationMethods")
            named = tuple(m for m in methods if isinstance(m, str)) if isinstance(methods, list) else ()
            out.append(ServedModel(entry["name"].removeprefix("models/"), named))
    return out


# --- the nearest current model ------------------------------------------------------------------------------

_GEMINI = re.compile(r"^gemini-(?P<version>\d+(?:\.\d+)*)-(?P<rest>[a-z0-9.-]+)$")
_UNSTABLE = ("preview", "exp")


@dataclass(frozen=True)
class _Name:
    version: tuple[int, ...]
    family: str  # flash, pro, flash-lite, flash-8b: the rest without a pinned suffix or a preview tag
    stable: bool


def _parse(name: str) -> _Name | None:
    """``gemini-2.5-flash-lite-preview-06-17`` → version (2, 5), family flash-lite, not stable."""
    match = _GEMINI.match(name)
    if match is None:
        return None
    words: list[str] = []
    stable = True
    for word in match["rest"].split("-"):
        if word in _UNSTABLE:
            stable = False
            break
        if re.fullmatch(r"\d{3}", word) or word == "latest":
            continue
        words.append(word)
    if not words:
        return None
    return _Name(tuple(int(p) for p in match["version"].split(".")), "-".join(words), stable)


def nearest(model: str, served: Iterable[ServedModel]) -> str | None:
    """The served chat model closest to ``model`` (a Gemini id without the ``gemini/`` prefix): the same family
    (flash, pro, flash-lite) first, then the same first word (flash for flash-8b), stable before preview, newest
    version first, and None when the family is gone; a model whose name does not parse (gemini-pro) is matched by
    plain name similarity."""
    chats = [m.name for m in served if m.chats and m.name != model]
    wanted = _parse(model)
    if wanted is not None:
        head = wanted.family.split("-")[0]
        parsed = [(n, p) for n in chats if (p := _parse(n)) is not None]
        for same in (lambda p: p.family == wanted.family, lambda p: p.family.split("-")[0] == head):
            pool = [(n, p) for n, p in parsed if same(p)]
            if pool:
                # newest stable first; among equals the closest family, then the plain alias over a pinned -001
                best = max(pool, key=lambda np: (np[1].stable, np[1].version,
                                                 difflib.SequenceMatcher(None, wanted.family, np[1].family).ratio(),
                                                 -len(np[0])))
                return best[0]
        return None  # another family is not a replacement: pro's answers are not flash's
    close = difflib.get_close_matches(model, chats, n=1, cutoff=0.5)
    return close[0] if close else None


# --- the check ----------------------------------------------------------------------------------------------

def _gemini_id(m: ModelSettings) -> str | None:
    provider, _, name = m.model.partition("/")
    return name if provider == "gemini" and name else None


def _api_key(m: ModelSettings) -> str | None:
    """The key LiteLLM would send: the model's own, else GOOGLE_API_KEY, else GEMINI_API_KEY (LiteLLM's order)."""
    return m.resolved_api_key() or os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY") or None


def _endpoint(m: ModelSettings) -> str:
    return m.api_base or os.environ.get("GEMINI_API_BASE") or GOOGLE_API_BASE


def suggestion(settings: Settings, tier: Tier, *, timeout: float) -> str | None:
    """A current model of the same family for a tier whose model the provider refused (for the error a client
    gets), or None when there is none or the provider cannot be asked."""
    m = settings.models.model(tier)
    name, api_key = _gemini_id(m), _api_key(m)
    if name is None or api_key is None:
        return None
    try:
        near = nearest(name, list_gemini_models(_endpoint(m), api_key, timeout=timeout))
    except Exception as exc:  # a hint for an error message: never a reason for the error to become a 500
        log.info("route-llm check for the %s tier's error message failed: %s", tier.name, exc)
        return None
    return f"gemini/{near}" if near else None


def check_tiers(settings: Settings, *, timeout: float) -> list[TierCheck]:
    """Each tier's model against what its provider serves; one listing per distinct endpoint and key."""
    deadline = time.monotonic() + timeout
    listings: dict[tuple[str, str], list[ServedModel] | CatalogError] = {}
    out = []
    for tier, m in zip(settings.models.tiers, settings.models.entries):
        key = f"{tier_key(settings, tier)}.model"
        name = _gemini_id(m)
        if name is None:
            out.append(TierCheck(tier, key, m.model, "cannot_check",
                                 note="cannot check: only Gemini's model list is asked (gemini/... models)"))
            continue
        api_key = _api_key(m)
        if api_key is None:
            out.append(TierCheck(tier, key, m.model, "unknown", note="no API key to ask with (set GEMINI_API_KEY, "
                                 f"or {tier_key(settings, tier)}.api_key)"))
            continue
        base = _endpoint(m)
        if (base, api_key) not in listings:
            try:
                listings[(base, api_key)] = list_gemini_models(base, api_key,
                                                               timeout=max(0.1, deadline - time.monotonic()))
            except CatalogError as exc:
                listings[(base, api_key)] = exc
        listing = listings[(base, api_key)]
        if isinstance(listing, CatalogError):
            out.append(TierCheck(tier, key, m.model, "unknown", note=str(listing)))
        elif any(s.name == name and s.chats for s in listing):
            out.append(TierCheck(tier, key, m.model, "served"))
        else:
            near = nearest(name, listing)
            out.append(TierCheck(tier, key, m.model, "not_served", nearest=f"gemini/{near}" if near else None))
    return out


def describe(c: TierCheck) -> str:
    """One line for a person: the key and model, then what the provider said and what to change it to."""
    head = f"{c.key} = {c.model} (tier {c.tier.name}): "
    if c.status == "served":
        return head + "served"
    if c.status == "not_served":
        hint = f"; nearest current model of the same family: {c.nearest}" if c.nearest else ""
        return head + "NOT SERVED by the provider" + hint
    return head + c.note


def not_served(checks: Sequence[TierCheck]) -> list[TierCheck]:
    return [c for c in checks if c.status == "not_served"]


def warn_at_start(settings: Settings) -> None:
    """The start-up check: a warning per tier the provider does not serve, never an error (the proxy still starts
    and its other tiers still serve). Quiet when there is nothing to ask with: no Gemini tier, or no key."""
    if not any(_gemini_id(m) and _api_key(m) for m in settings.models.entries):
        return
    try:
        checks = check_tiers(settings, timeout=settings.upstream.timeout_check)
    except Exception as exc:  # a check that breaks must not look like a server that broke
        log.warning("route-llm check at start-up failed: %s: %s", type(exc).__name__, exc)
        return
    for c in not_served(checks):
        log.warning("route-llm check: %s; requests routed to this tier fall back or fail until %s is changed "
                    "(`route-llm check` lists the tiers)", describe(c), c.key)
    # A tier without a key is warned about by every worker already; an unreachable provider is said once.
    asked = [c for c in checks if c.status == "unknown" and not c.note.startswith("no API key")]
    if asked:
        log.warning("route-llm check at start-up: could not ask the provider which models it serves: %s",
                    asked[0].note)


def start_check_thread(settings: Settings) -> threading.Thread | None:
    """Run :func:`warn_at_start` beside the start-up, once per server (the supervisor, not each worker): it never
    delays the start, and a provider that does not answer costs at most ``upstream.timeout_check`` of a thread."""
    if not settings.upstream.check_models_at_start:
        return None
    thread = threading.Thread(target=warn_at_start, args=(settings,), name="route-llm-check", daemon=True)
    thread.start()
    return thread
