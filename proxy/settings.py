"""Configuration: the only place that reads ``config.yaml``.

The YAML is turned into frozen, typed dataclasses. Unknown keys and ill-typed values stop start-up with the
dotted name of the key at fault (``models.weak.timeout: expected a number, got 'soon'``), because a typo in
a proxy's config otherwise surfaces as a silent default in production.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import yaml

from proxy.client_addr import parse_networks
from router.policy import Tier, check_cuts, check_shares

# down: towards cheaper tiers; up: towards dearer ones; both: nearest first, the cheaper on a tie.
# strong_to_weak and weak_to_strong are the two-tier names of down and up, still accepted and rewritten to them at load.
Fallback = Literal["none", "down", "up", "both", "strong_to_weak", "weak_to_strong"]
Context = Literal["last_user", "conversation"]
Selection = Literal["all", "bm25"]
FailureMode = Literal["open", "closed"]
StorageKind = Literal["sqlite", "postgresql"]
SQLITE_PREFIX = "sqlite:///"
LIMITS_DB_ENV = "ROUTE_LLM_LIMITS_DB"  # set by `serve --workers N`: the file the workers count requests in
BREAKER_DB_ENV = "ROUTE_LLM_BREAKER_DB"  # set by `serve --workers N`: the file the workers share breakers in
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")

#: The strong share a two-tier config gets when it sets no operating point (the shipped default).
DEFAULT_STRONG_SHARE = 0.3

ENV_PREFIX = "os.environ/"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or wrong; the message names the key."""


@dataclass(frozen=True)
class StorageLocation:
    """A storage URL, parsed once (:func:`parse_storage_url`): which backend, and for SQLite its directory."""

    kind: StorageKind
    url: str
    directory: Path | None = None  # the SQLite store's directory (files.db, blobs/, feedback.db); None on Postgres


def parse_storage_url(url: str) -> StorageLocation:
    """The one reader of storage URLs: ``sqlite:///relative/dir``, ``sqlite:////absolute/dir`` or
    ``postgresql://...`` (``postgres://`` too); anything else is a ValueError saying what is accepted."""
    if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
        return StorageLocation("sqlite", url, Path(url[len(SQLITE_PREFIX):]))
    if url.startswith(_POSTGRES_PREFIXES) and urlsplit(url).hostname:
        return StorageLocation("postgresql", url)
    raise ValueError("must be sqlite:///DIRECTORY (the directory that holds files.db, blobs/ and feedback.db) or "
                     "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")


def check_redis_url(url: str) -> str:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    raise ValueError("must be redis://[:PASSWORD@]HOST:PORT/DB, rediss://... (TLS) or unix:///PATH")


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


@dataclass(frozen=True)
class ModelSettings:
    """One upstream model, as LiteLLM is asked to call it."""

    name: str  # what clients may send as `model` to bypass routing, and what responses report
    model: str  # LiteLLM's model string, e.g. gemini/gemini-1.5-flash
    api_base: str | None = None
    api_key: str | None = None  # a literal, or os.environ/NAME (resolved per call, never logged)
    timeout: float = 60.0  # seconds per upstream attempt
    # USD per million tokens; None falls back to LiteLLM's price map where it knows the model.
    input_cost_per_million: float | None = None
    output_cost_per_million: float | None = None

    def resolved_api_key(self) -> str | None:
        if self.api_key is None:
            return None
        if self.api_key.startswith(ENV_PREFIX):
            return os.environ.get(self.api_key[len(ENV_PREFIX):]) or None
        return self.api_key

    def api_key_env_name(self) -> str | None:
        if self.api_key is not None and self.api_key.startswith(ENV_PREFIX):
            return self.api_key[len(ENV_PREFIX):]
        return None


@dataclass(frozen=True)
class ModelsSettings:
    """The tiers, cheapest first, and the upstream model behind each.

    Two spellings load to this: a list of model entries (tier names are the entries' ``name``) and the older
    ``weak:``/``strong:`` mapping (two tiers named ``weak`` and ``strong``, so dashboards and clients reading
    ``x-route-llm-tier`` see what they always saw).
    """

    entries: tuple[ModelSettings, ...]
    tiers: tuple[Tier, ...]

    @classmethod
    def of_list(cls, entries: typing.Sequence[ModelSettings], names: typing.Sequence[str] | None = None
                ) -> ModelsSettings:
        names = [m.name for m in entries] if names is None else list(names)
        return cls(tuple(entries), tuple(Tier(i, n) for i, n in enumerate(names)))

    def model(self, tier: Tier) -> ModelSettings:
        return self.entries[tier.index]

    @property
    def cheapest(self) -> Tier:
        return self.tiers[0]

    @property
    def top(self) -> Tier:
        return self.tiers[-1]

    @property
    def weak(self) -> ModelSettings:
        """The cheapest tier's model (the two-tier form's ``weak``)."""
        return self.entries[0]

    @property
    def strong(self) -> ModelSettings:
        """The most expensive tier's model (the two-tier form's ``strong``)."""
        return self.entries[-1]

    def tier_named(self, name: str) -> Tier | None:
        """A tier by its name; ``weak`` and ``strong`` also name the two ends of any list."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        return {"weak": self.cheapest, "strong": self.top}.get(name)

    def key(self, tier: Tier) -> str:
        """How a tier is spelled in the config file, for error messages: ``models.weak`` or ``models[i]``."""
        two = [t.name for t in self.tiers] == ["weak", "strong"]
        return f"models.{tier.name}" if two else f"models[{tier.index}]"

    def check(self) -> None:
        names = [m.name for m in self.entries]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"models: the name {name!r} is used by two tiers; each tier needs its own name")
            if name.startswith("router-"):
                raise ConfigError(f"models: the name {name!r} clashes with the router-bert-<threshold> form")
        for tier, m in zip(self.tiers, self.entries):
            if m.timeout <= 0:
                raise ConfigError(f"{self.key(tier)}.timeout: must be positive")
            for price in ("input_cost_per_million", "output_cost_per_million"):
                v = getattr(m, price)
                if v is not None and v < 0:
                    raise ConfigError(f"{self.key(tier)}.{price}: must not be negative, got {v}")


_Point = typing.TypeVar("_Point", bound="OperatingPoint")


@dataclass(frozen=True)
class OperatingPoint:
    """Where the cut points between tiers sit: fixed thresholds or target shares (via the model's quantile
    table). ``threshold``/``strong_share`` are the two-tier spellings of ``thresholds``/``shares``; fixed
    thresholds win over shares, as ``threshold`` always won over ``strong_share``."""

    threshold: float | None = None
    strong_share: float | None = None
    thresholds: tuple[float, ...] | None = None  # one per cut: len(models) - 1, non-decreasing
    shares: tuple[float, ...] | None = None  # one per tier, cheapest first, adding up to 1

    def is_set(self) -> bool:
        return any(v is not None for v in (self.threshold, self.strong_share, self.thresholds, self.shares))

    def check(self, key: str, tiers: int) -> None:
        """Check the point (the router's or an alias's) against the number of tiers, naming the key."""
        for name in ("threshold", "strong_share"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{key}.{name}: must be between 0 and 1, got {v}")
            if v is not None and tiers != 2:
                plural = "thresholds" if name == "threshold" else "shares"
                raise ConfigError(f"{key}.{name}: applies to two tiers; with {tiers} tiers set {key}.{plural} "
                                  f"({'one per cut' if plural == 'thresholds' else 'one per tier'})")
        if self.threshold is not None and self.thresholds is not None:
            raise ConfigError(f"{key}: set threshold or thresholds, not both")
        if self.strong_share is not None and self.shares is not None:
            raise ConfigError(f"{key}: set strong_share or shares, not both")
        try:
            if self.thresholds is not None:
                check_cuts(self.thresholds, tiers)
            if self.shares is not None:
                check_shares(self.shares, tiers)
        except ValueError as exc:
            raise ConfigError(f"{key}.{exc}") from None

    def one_rule(self: _Point, *, default: bool) -> _Point:
        """The point in its one spelling, which rule wins decided here, once, at load: fixed thresholds win over
        shares (as ``threshold`` always won over ``strong_share``), the two-tier ``threshold``/``strong_share``
        become ``thresholds``/``shares``, and with ``default`` an unset point is the default strong share. After
        load, readers (the decider, the info gauge) see ``thresholds`` or ``shares`` and nothing else."""
        thresholds = self.thresholds if self.thresholds is not None else \
            (self.threshold,) if self.threshold is not None else None
        shares = self.shares if self.shares is not None else \
            (1.0 - self.strong_share, self.strong_share) if self.strong_share is not None else None
        if thresholds is None and shares is None and default:
            shares = (1.0 - DEFAULT_STRONG_SHARE, DEFAULT_STRONG_SHARE)
        return dataclasses.replace(self, threshold=None, strong_share=None, thresholds=thresholds,
                                   shares=None if thresholds is not None else shares)


@dataclass(frozen=True)
class BudgetSteerSettings:
    """Budget-aware routing: from ``start`` (a share of a key's budget spent) the key's routed requests move
    linearly toward the cheapest tier, reaching it when the budget is spent (``router.budget.steer_fraction``).
    ``start: 1`` turns steering off (a key then routes as usual until its budget is gone)."""

    start: float = 0.5


@dataclass(frozen=True)
class RouterSettings(OperatingPoint):
    model_dir: str | None = None  # None: the model shipped inside the package
    threads: int = 1  # onnxruntime intra-op threads per worker
    fail_open_tier: str = "strong"  # a tier name, or weak/strong for the cheapest/most expensive tier
    context: Context = "last_user"  # what the router scores: the last user turn, or every user turn
    context_decay: float = 0.9  # conversation mode: a user turn k turns back counts as ranking decay**k as high
    limit_context_turns: int = 4  # conversation mode: the most recent user turns that count
    batch_window_ms: float = 0.0  # extra wait to gather concurrent prompts into one ONNX run
    limit_batch: int = 32
    budget_steer: BudgetSteerSettings = field(default_factory=BudgetSteerSettings)

    def check_router(self, models: ModelsSettings) -> None:
        tiers = len(models.tiers)
        self.check("router", tiers)
        if not self.is_set() and tiers != 2:
            raise ConfigError(f"router: with {tiers} tiers set router.shares (one per tier, e.g. "
                              f"{[round(1 / tiers, 2)] * tiers}) or router.thresholds (one per cut)")
        if models.tier_named(self.fail_open_tier) is None:
            raise ConfigError(f"router.fail_open_tier: must be one of weak, strong (the cheapest and the most "
                              f"expensive tier) or a tier name ({', '.join(t.name for t in models.tiers)}); got "
                              f"{self.fail_open_tier!r}")
        if not 0.0 < self.context_decay <= 1.0:
            raise ConfigError(f"router.context_decay: must be in (0, 1], got {self.context_decay}")
        if self.limit_context_turns < 1:
            raise ConfigError(f"router.limit_context_turns: must be at least 1, got {self.limit_context_turns}")
        if self.threads < 1:
            raise ConfigError("router.threads: must be at least 1")
        if self.limit_batch < 1 or self.batch_window_ms < 0:
            raise ConfigError("router.limit_batch must be >= 1 and router.batch_window_ms >= 0")
        steer = self.budget_steer.start
        if not 0.0 <= steer <= 1.0:
            raise ConfigError(f"router.budget_steer.start: must be between 0 and 1 (a share of the budget spent), "
                              f"got {steer}")


@dataclass(frozen=True)
class AliasSettings(OperatingPoint):
    """A routed model name clients may send; each may carry its own operating point."""


BudgetPeriod = Literal["day", "month", "rolling"]
WhenExhausted = Literal["refuse", "cheapest"]
KEY_ENV = "ROUTE_LLM_API_KEYS"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_WINDOW = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_WINDOW_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
LIMIT_WINDOW_SECONDS = 366 * 86400.0  # a rolling window longer than a year is a typo


@dataclass(frozen=True)
class BudgetSettings:
    """A key's spend cap in USD per period: a UTC calendar ``day`` or ``month``, or a ``rolling`` ``window``."""

    usd: float
    period: BudgetPeriod = "month"
    window: str | None = None  # rolling only: "24h", "30m", "7d", "3600s" or seconds as a bare number

    def window_seconds(self) -> float:
        """The rolling window in seconds (settings checked the spelling); 0 for calendar periods."""
        return parse_window(self.window) if self.window is not None else 0.0


@dataclass(frozen=True)
class ApiKeySettings:
    """A proxy key and the name metrics, records, logs and the admin endpoints know it by (never the key)."""

    name: str
    key: str
    budget: BudgetSettings | None = None
    when_exhausted: WhenExhausted = "refuse"  # budget spent: 429 budget_exceeded, or serve from the cheapest tier


def parse_window(text: str) -> float:
    """Seconds in a window spelled ``24h``, ``30m``, ``7d``, ``90s`` or ``3600``; ValueError otherwise."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a duration such as 24h, 30m, 7d or 3600s, got {text!r}")
    return float(match.group(1)) * _WINDOW_UNITS[match.group(2)]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    # Plain strings (named config-1, config-2, ... by position) or {name, key, budget, when_exhausted} mappings.
    api_keys: tuple[ApiKeySettings, ...] = ()
    admin_keys: tuple[str, ...] = ()  # for /admin/*; also env ROUTE_LLM_ADMIN_KEYS; proxy keys are not admin keys
    open_metrics: bool = True  # /metrics without a proxy key
    limit_body_bytes: int | None = 20_000_000
    limit_messages: int | None = 1000
    limit_content_chars: int | None = 2_000_000
    limit_in_flight: int | None = 512  # requests whose body has arrived, being handled
    limit_in_flight_per_key: int | None = 128  # one key's share of limit_in_flight
    limit_bodies_arriving: int | None = 256  # requests still sending their body (a separate, smaller budget)
    limit_bodies_arriving_per_key: int | None = 32
    limit_json_depth: int | None = 64  # nesting of objects and arrays in a JSON body
    limit_json_values: int | None = 100_000  # objects, arrays and their items in a JSON body, counted unparsed
    limit_tools: int | None = 512  # tools (or functions) of one request
    limit_schema_bytes: int | None = 1_000_000  # tools + response_format schemas of one request, as JSON
    limit_header_bytes: int = 32_768  # request line and headers of one request
    limit_header_count: int = 100  # headers of one request
    limit_header_bytes_total: int = 16_777_216  # unfinished request heads of all connections of one process
    send_buffer_bytes: int | None = 262_144  # kernel send buffer of each client connection; None: the kernel's
    limit_requests_per_minute: int | None = None  # per proxy key (without keys: per client address)
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For names the client (proxy.edge.client_addr)
    timeout_header: float = 10.0  # from connection (or the end of the last response) to complete headers
    timeout_body: float = 30.0  # from complete headers to the last byte of the body
    timeout_keep_alive: float = 5.0  # an idle connection between requests
    timeout_shutdown: float = 30.0
    log_prompts: bool = False
    # Requests-per-minute counted in Redis, shared by every worker and replica (also ROUTE_LLM_REDIS_URL).
    redis_url: str | None = None
    redis_failure: FailureMode = "open"  # Redis unreachable: let requests through (open) or refuse them (closed)
    timeout_redis: float = 0.25  # seconds per Redis call before it counts as unreachable

    def resolved_redis_url(self) -> str | None:
        """``ROUTE_LLM_REDIS_URL`` wins over the file (a Kubernetes Secret sets it); ``os.environ/NAME`` works."""
        return os.environ.get("ROUTE_LLM_REDIS_URL") or _env_reference(self.redis_url)

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"server.port: {self.port} is not a TCP port")
        for key in ("limit_body_bytes", "limit_messages", "limit_content_chars", "limit_in_flight",
                    "limit_in_flight_per_key", "limit_bodies_arriving", "limit_bodies_arriving_per_key",
                    "limit_json_depth", "limit_requests_per_minute", "limit_tools", "limit_schema_bytes",
                    "limit_json_values"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"server.{key}: must be at least 1 (or null for unlimited)")
        url = self.resolved_redis_url()
        if url is not None:
            try:
                check_redis_url(url)
            except ValueError as exc:
                raise ConfigError(f"server.redis_url: {exc}; got {redact(url)!r}") from None
        if self.timeout_redis <= 0:
            raise ConfigError("storage.limit_connections must be >= 1, storage.timeout_connect and "
                              "server.timeout_redis positive (seconds)")
        if self.timeout_shutdown < 0:
            raise ConfigError("documents.timeout_extract must be positive and server.timeout_shutdown >= 0")
        for key in ("timeout_header", "timeout_body", "timeout_keep_alive"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"server.{key}: must be positive (seconds)")
        _check_header_limits(self)
        v = self.send_buffer_bytes
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 4096):
            raise ConfigError(f"server.send_buffer_bytes: must be an integer of at least 4096 (or null for the "
                              f"kernel's own sizing), got {v!r}")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"server.trusted_proxies: {exc}") from None


@dataclass(frozen=True)
class BreakerSettings:
    """A circuit breaker per tier (``proxy.upstream.breaker``): after ``failures`` upstream failures in a row the
    tier is skipped for ``cooldown`` seconds, then one trial request is let through."""

    failures: int | None = 5  # consecutive failed attempts that open a tier's breaker; None: no breaker
    cooldown: float = 30.0  # seconds a tier is skipped before one trial request is let through

    def check(self) -> None:
        if self.failures is not None and self.failures < 1:
            raise ConfigError(f"upstream.breaker.failures: must be at least 1 (or null for no breaker), got "
                              f"{self.failures}")
        if self.cooldown <= 0:
            raise ConfigError(f"upstream.breaker.cooldown: must be positive (seconds), got {self.cooldown}")


@dataclass(frozen=True)
class UpstreamSettings:
    retries: int = 2  # extra attempts on the same model before falling back
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    timeout_total: float = 120.0  # deadline across all attempts and the fallback
    fallback: Fallback = "both"
    warmup: bool = True  # one local LiteLLM call before /health/ready says yes
    check_models_at_start: bool = True  # `serve` asks the provider once whether it serves the tiers' models
    timeout_check: float = 3.0  # seconds for that question (and `route-llm check`'s default)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)

    def check(self) -> None:
        if self.retries < 0 or self.timeout_total <= 0:
            raise ConfigError("upstream.retries must be >= 0 and upstream.timeout_total > 0")
        if self.timeout_check <= 0:
            raise ConfigError(f"upstream.timeout_check: must be positive (seconds), got {self.timeout_check}")
        self.breaker.check()


@dataclass(frozen=True)
class DocumentsSettings:
    storage_dir: str = "./route-llm-files"
    limit_bytes: int = 25_000_000
    limit_pages: int = 1000
    limit_chars: int = 3_000_000
    limit_decompressed_bytes: int = 200_000_000
    timeout_extract: float = 30.0
    budget_chars: int | None = 60_000  # document text sent upstream per request; None = everything
    limit_documents_per_request: int | None = 20  # distinct documents (repeats of one count once)
    limit_inline_per_request: int | None = 4  # distinct inline file_data PDFs, each extracted per request
    limit_request_chars: int | None = 6_000_000  # page text of all of a request's documents, before selection
    limit_storage_bytes: int | None = 1_000_000_000  # stored file bytes per proxy key
    selection: Selection = "bm25"

    def check(self) -> None:
        for key in ("limit_bytes", "limit_pages", "limit_chars", "limit_decompressed_bytes", "budget_chars",
                    "limit_documents_per_request", "limit_inline_per_request", "limit_request_chars",
                    "limit_storage_bytes"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"documents.{key}: must be at least 1")
        if self.timeout_extract <= 0:
            raise ConfigError("documents.timeout_extract must be positive and server.timeout_shutdown >= 0")


@dataclass(frozen=True)
class FeedbackSettings:
    """Decision records (one per chat request) and the ratings clients send for them."""

    enabled: bool = True
    storage_dir: str | None = None  # None: next to the files, documents.storage_dir
    store_prompts: bool = False  # keep the routed text (needed to retrain on feedback); else only its hash
    retention_days: float = 30.0  # records older than this are deleted and can no longer be rated
    limit_records: int | None = 1_000_000  # newest records kept (and as many ratings)
    limit_store_bytes: int | None = None  # size cap of the SQLite file; past it, new records are dropped

    def check(self) -> None:
        if self.retention_days <= 0:
            raise ConfigError("feedback.retention_days: must be positive (days)")
        for key in ("limit_records", "limit_store_bytes"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"feedback.{key}: must be at least 1 (or null for unlimited)")


@dataclass(frozen=True)
class StorageSettings:
    """Where files, their text and the decision records live (``proxy.state.database``)."""

    url: str | None = None  # sqlite:///DIR or postgresql://...; env ROUTE_LLM_DATABASE_URL wins; None: SQLite
    limit_connections: int = 10  # Postgres connections per worker process
    timeout_connect: float = 10.0  # seconds to reach the database at start-up and per pooled connection

    def check(self) -> None:
        if self.limit_connections < 1 or self.timeout_connect <= 0:
            raise ConfigError("storage.limit_connections must be >= 1, storage.timeout_connect and "
                              "server.timeout_redis positive (seconds)")


@dataclass(frozen=True)
class ResponsesSettings:
    """Stored responses of ``POST /v1/responses`` (``proxy.state.responses``): what ``previous_response_id``,
    ``GET``/``DELETE /v1/responses/{id}`` and ``/input_items`` read."""

    # None: on when proxy keys are configured, off without them (every keyless client would share one store).
    store: bool | None = None
    retention_days: float | None = 30.0  # a stored response is gone (404) this long after it was created
    limit_per_key: int | None = 10_000  # stored responses per proxy key; more: 400 response_quota_exceeded

    def enabled(self, has_keys: bool) -> bool:
        return has_keys if self.store is None else self.store

    def check(self) -> None:
        if self.retention_days is not None and self.retention_days <= 0:
            raise ConfigError(f"responses.retention_days: must be positive (days), or null to keep responses until "
                              f"they are deleted; got {self.retention_days}")
        if self.limit_per_key is not None and self.limit_per_key < 1:
            raise ConfigError(f"responses.limit_per_key: must be at least 1 (or null for unlimited); got "
                              f"{self.limit_per_key}")


def _env_reference(value: str | None) -> str | None:
    if value is not None and value.startswith(ENV_PREFIX):
        return os.environ.get(value[len(ENV_PREFIX):]) or None
    return value


@dataclass(frozen=True)
class Settings:
    models: ModelsSettings
    router: RouterSettings = field(default_factory=RouterSettings)
    aliases: dict[str, AliasSettings] = field(default_factory=lambda: {"auto": AliasSettings()})
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    documents: DocumentsSettings = field(default_factory=DocumentsSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    responses: ResponsesSettings = field(default_factory=ResponsesSettings)
    source: str = "<defaults>"

    def with_overrides(self, **server: Any) -> Settings:
        """Settings with some server fields replaced (CLI flags win over the file)."""
        changes = {k: v for k, v in server.items() if v is not None}
        return dataclasses.replace(self, server=dataclasses.replace(self.server, **changes))

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from config plus ``ROUTE_LLM_API_KEYS`` (comma-separated), read at start-up."""
        return tuple(k.key for k in self.named_keys())

    def named_keys(self) -> tuple[ApiKeySettings, ...]:
        """The config's keys, then ``ROUTE_LLM_API_KEYS``'s named by position (key-1, key-2, ...); a key the
        config already has is not repeated (the config's name and budget win)."""
        env = list(dict.fromkeys(k.strip() for k in os.environ.get(KEY_ENV, "").split(",") if k.strip()))
        known = {k.key for k in self.server.api_keys}
        extra = [ApiKeySettings(name=f"key-{i}", key=k) for i, k in enumerate(env, start=1) if k not in known]
        keys = (*self.server.api_keys, *extra)
        _check_unique_names(keys)
        return keys

    def all_admin_keys(self) -> tuple[str, ...]:
        """Admin keys from config plus ``ROUTE_LLM_ADMIN_KEYS`` (comma-separated)."""
        env = [k.strip() for k in os.environ.get("ROUTE_LLM_ADMIN_KEYS", "").split(",") if k.strip()]
        return tuple(dict.fromkeys([*self.server.admin_keys, *env]))

    def feedback_dir(self) -> Path:
        """Where decision records live on SQLite: ``feedback.storage_dir``, else beside the uploaded files."""
        return Path(self.feedback.storage_dir or self.storage_dir())

    def storage_url(self) -> str:
        """``ROUTE_LLM_DATABASE_URL``, else ``storage.url``, else SQLite in ``documents.storage_dir``."""
        return (os.environ.get("ROUTE_LLM_DATABASE_URL") or _env_reference(self.storage.url)
                or SQLITE_PREFIX + self.documents.storage_dir)

    def storage_location(self) -> StorageLocation:
        """Where the store is, parsed from :meth:`storage_url` (validated at load, so it parses)."""
        return parse_storage_url(self.storage_url())

    def storage_dir(self) -> str:
        """The SQLite store's directory (files.db, blobs/, feedback.db), from a sqlite:/// URL or the default."""
        directory = self.storage_location().directory
        return str(directory) if directory is not None else self.documents.storage_dir


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check and convert one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is tuple and args and args[0] is ApiKeySettings:
        return _api_keys(value, key)
    if origin is tuple:
        if args and args[0] is float:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{key}: expected a list of numbers, got {value!r}")
            return tuple(_convert(float, v, f"{key}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return tuple(value)
    if tp is ModelsSettings:
        return _models(value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping")
        return {str(k): _convert(args[1], v if v is not None else {}, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if value is None:
        raise ConfigError(f"{key}: must not be null")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover - a bug in this module


def _models(value: Any, key: str) -> ModelsSettings:
    """The tier list from either spelling: a list of entries, cheapest first, or the weak:/strong: mapping."""
    if isinstance(value, dict):
        if set(value) != {"weak", "strong"}:
            unknown = sorted(set(value) - {"weak", "strong"})
            if unknown:
                raise ConfigError(f"unknown key {key}.{unknown[0]} (the mapping form has weak and strong; for "
                                  "more tiers give models as a list, cheapest first)")
            missing = "weak" if "weak" not in value else "strong"
            raise ConfigError(f"missing key {key}.{missing}")
        entries = [_build(ModelSettings, value[t], f"{key}.{t}") for t in ("weak", "strong")]
        return ModelsSettings.of_list(entries, ["weak", "strong"])
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of models, cheapest first (or the weak:/strong: mapping), "
                          f"got {type(value).__name__}")
    if len(value) < 2:
        raise ConfigError(f"{key}: at least two tiers are needed (a list of models, cheapest first), got "
                          f"{len(value)}")
    return ModelsSettings.of_list([_build(ModelSettings, v, f"{key}[{i}]") for i, v in enumerate(value)])


def _api_keys(value: Any, key: str) -> tuple[ApiKeySettings, ...]:
    """``server.api_keys``: plain strings (named ``config-<n>`` by position, 1-based) or mappings with a name."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of keys (strings, or mappings with name and key)")
    keys: list[ApiKeySettings] = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(entry, str):
            keys.append(ApiKeySettings(name=f"config-{i + 1}", key=entry))
            continue
        k: ApiKeySettings = _build(ApiKeySettings, entry, where)
        _check_key(k, where)
        keys.append(k)
    for i, k in enumerate(keys):
        if not k.key:
            raise ConfigError(f"{key}[{i}]: the key must not be empty")
        if any(k.key == other.key for other in keys[:i]):
            raise ConfigError(f"{key}[{i}]: the same key is listed twice; give each client its own key")
    try:
        _check_unique_names(keys)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return tuple(keys)


def _check_key(k: ApiKeySettings, where: str) -> None:
    """A named key's own checks: a name fit for a metric label and a header, and a budget that can be kept."""
    if not _KEY_NAME.fullmatch(k.name):
        raise ConfigError(f"{where}.name: 1 to 64 letters, digits, '.', '_', ':' or '-' (it is a metric label), "
                          f"got {k.name!r}")
    if k.name == k.key:
        raise ConfigError(f"{where}.name: must differ from the key (the name is shown in metrics and logs)")
    b = k.budget
    if b is None:
        if k.when_exhausted != "refuse":
            raise ConfigError(f"{where}.when_exhausted: applies to a key with a budget; set {where}.budget")
        return
    if not math.isfinite(b.usd) or b.usd < 0:
        raise ConfigError(f"{where}.budget.usd: must be a finite amount of USD, 0 or more; got {b.usd}")
    if b.period == "rolling":
        if b.window is None:
            raise ConfigError(f"{where}.budget.window: a rolling budget needs a window, e.g. 24h, 30m or 7d")
        try:
            seconds = parse_window(b.window)
        except ValueError as exc:
            raise ConfigError(f"{where}.budget.window: {exc}") from None
        if not 60.0 <= seconds <= LIMIT_WINDOW_SECONDS:
            raise ConfigError(f"{where}.budget.window: must be between 1m and 366d, got {b.window!r}")
    elif b.window is not None:
        raise ConfigError(f"{where}.budget.window: applies to period: rolling only (period is {b.period})")


def _check_unique_names(keys: typing.Sequence[ApiKeySettings]) -> None:
    seen: set[str] = set()
    for k in keys:
        if k.name in seen:
            raise ConfigError(f"the key name {k.name!r} is used twice (plain keys are named config-<n>, keys from "
                              f"{KEY_ENV} key-<n>); each key needs its own name")
        seen.add(k.name)


def _build(cls: Any, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (allowed: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key {key}")
    return cls(**kwargs)


def _validate(s: Settings) -> None:
    """Each section checks its own fields (``check`` beside the dataclass); here only what spans sections."""
    s.router.check_router(s.models)
    s.named_keys()  # names clashing with the environment's keys (key-<n>) stop the start here
    if not s.aliases:
        raise ConfigError("aliases: at least one routed alias (e.g. auto) is needed")
    s.models.check()
    names = [m.name for m in s.models.entries]
    for alias, a in s.aliases.items():
        a.check(f"aliases.{alias}", len(s.models.tiers))
        if alias in names or alias.startswith("router-"):
            raise ConfigError(f"aliases.{alias}: clashes with a model name or the router-bert-<threshold> form")
    s.upstream.check()
    s.server.check()
    s.documents.check()
    s.feedback.check()
    s.storage.check()
    s.responses.check()
    url = s.storage_url()
    try:
        kind = parse_storage_url(url).kind
    except ValueError as exc:
        raise ConfigError(f"storage.url: {exc}; got {redact(url)!r}") from None
    if kind == "postgresql" and s.feedback.limit_store_bytes is not None:
        raise ConfigError("feedback.limit_store_bytes: caps the SQLite file only; with a postgresql:// "
                          "storage.url, size the database instead (set it to null)")


_TWO_TIER_FALLBACK = {"strong_to_weak": "down", "weak_to_strong": "up"}


def _normalise(s: Settings) -> Settings:
    """The old two-tier spellings, rewritten once at load so that no reader decodes them: the operating points
    (:meth:`OperatingPoint.one_rule`), ``fail_open_tier: weak|strong`` (the tier's own name) and the fallback
    modes ``strong_to_weak``/``weak_to_strong`` (``down``/``up``). The ``weak:``/``strong:`` models mapping is
    already a tier list (:func:`_models`)."""
    fail_open = s.models.tier_named(s.router.fail_open_tier)
    assert fail_open is not None  # checked
    fallback = typing.cast(Fallback, _TWO_TIER_FALLBACK.get(s.upstream.fallback, s.upstream.fallback))
    return dataclasses.replace(
        s, router=dataclasses.replace(s.router.one_rule(default=True), fail_open_tier=fail_open.name),
        aliases={name: a.one_rule(default=False) for name, a in s.aliases.items()},
        upstream=dataclasses.replace(s.upstream, fallback=fallback))


def _check_header_limits(server: ServerSettings) -> None:
    """The head limits have no "unlimited": they are what bounds the memory of a client no one has
    authenticated yet."""
    for key, least in (("limit_header_bytes", 1024), ("limit_header_count", 1),
                       ("limit_header_bytes_total", server.limit_header_bytes)):
        v = getattr(server, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise ConfigError(f"server.{key}: must be an integer of at least {least}, got {v!r}")


def tier_key(s: Settings, tier: Tier) -> str:
    """How a tier is spelled in the config file, for error messages: ``models.weak`` or ``models[i]``."""
    return s.models.key(tier)


def settings_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Settings:
    settings: Settings = _build(Settings, data, "")
    settings = dataclasses.replace(settings, source=source)
    _validate(settings)
    return _normalise(settings)


# Inside the package, so that a wheel install has it too (in the source tree, a link to ../config.yaml).
DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate a config file; ``None`` reads ``ROUTE_LLM_CONFIG`` or the bundled default."""
    if path is None:
        path = os.environ.get("ROUTE_LLM_CONFIG") or _default_config_path()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from exc
    return settings_from_dict(data or {}, source=str(p))


def _default_config_path() -> Path:
    # The working directory's config.yaml first (how operators run it), then the bundled default.
    for candidate in (Path.cwd() / "config.yaml", DEFAULT_CONFIG):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no config file given and none found (pass --config PATH); the bundled default "
                      f"{DEFAULT_CONFIG} is missing from this installation")
