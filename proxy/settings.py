"""Configuration: the only place that reads ``config.yaml``.

The YAML is turned into frozen, typed dataclasses. Unknown keys and ill-typed values stop start-up with the
dotted name of the key at fault (``models.weak.timeout: expected a number, got 'soon'``), because a typo in
a proxy's config otherwise surfaces as a silent default in production.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

Tier = Literal["weak", "strong"]
Fallback = Literal["none", "strong_to_weak", "weak_to_strong", "both"]
Selection = Literal["all", "bm25"]

ENV_PREFIX = "os.environ/"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or wrong; the message names the key."""


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
    weak: ModelSettings
    strong: ModelSettings

    def by_tier(self, tier: Tier) -> ModelSettings:
        return self.weak if tier == "weak" else self.strong


@dataclass(frozen=True)
class RouterSettings:
    model_dir: str | None = None  # None: the model shipped inside the package
    threads: int = 1  # onnxruntime intra-op threads per worker
    threshold: float | None = None  # a fixed threshold wins over strong_share
    strong_share: float | None = 0.3  # target share of strong-model calls, via the model's quantile table
    fail_open_tier: Tier = "strong"  # where a request goes when the classifier itself fails
    batch_window_ms: float = 0.0  # extra wait to gather concurrent prompts into one ONNX run
    limit_batch: int = 32


@dataclass(frozen=True)
class AliasSettings:
    """A routed model name clients may send; each may carry its own operating point."""

    threshold: float | None = None
    strong_share: float | None = None


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    open_metrics: bool = True  # /metrics without a proxy key
    limit_body_bytes: int | None = 20_000_000
    limit_messages: int | None = 1000
    limit_content_chars: int | None = 2_000_000
    limit_in_flight: int | None = 512  # requests whose body has arrived, being handled
    limit_in_flight_per_key: int | None = 128  # one key's share of limit_in_flight
    limit_bodies_arriving: int | None = 256  # requests still sending their body (a separate, smaller budget)
    limit_bodies_arriving_per_key: int | None = 32
    limit_json_depth: int | None = 64  # nesting of objects and arrays in a JSON body
    limit_requests_per_minute: int | None = None  # per proxy key
    timeout_header: float = 10.0  # from connection (or the end of the last response) to complete headers
    timeout_body: float = 30.0  # from complete headers to the last byte of the body
    timeout_keep_alive: float = 5.0  # an idle connection between requests
    timeout_shutdown: float = 30.0
    log_prompts: bool = False


@dataclass(frozen=True)
class UpstreamSettings:
    retries: int = 2  # extra attempts on the same model before falling back
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    timeout_total: float = 120.0  # deadline across all attempts and the fallback
    fallback: Fallback = "both"
    warmup: bool = True  # one local LiteLLM call before /health/ready says yes


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


@dataclass(frozen=True)
class Settings:
    models: ModelsSettings
    router: RouterSettings = field(default_factory=RouterSettings)
    aliases: dict[str, AliasSettings] = field(default_factory=lambda: {"auto": AliasSettings()})
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    documents: DocumentsSettings = field(default_factory=DocumentsSettings)
    source: str = "<defaults>"

    def with_overrides(self, **server: Any) -> Settings:
        """Settings with some server fields replaced (CLI flags win over the file)."""
        changes = {k: v for k, v in server.items() if v is not None}
        return dataclasses.replace(self, server=dataclasses.replace(self.server, **changes))

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from config plus ``ROUTE_LLM_API_KEYS`` (comma-separated), read at start-up."""
        env = [k.strip() for k in os.environ.get("ROUTE_LLM_API_KEYS", "").split(",") if k.strip()]
        return tuple(dict.fromkeys([*self.server.api_keys, *env]))


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
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return tuple(value)
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
    def share_ok(v: float | None, key: str) -> None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key}: must be between 0 and 1, got {v}")

    share_ok(s.router.threshold, "router.threshold")
    share_ok(s.router.strong_share, "router.strong_share")
    if s.router.threshold is None and s.router.strong_share is None:
        raise ConfigError("router: set threshold or strong_share")
    if s.router.threads < 1:
        raise ConfigError("router.threads: must be at least 1")
    if s.router.limit_batch < 1 or s.router.batch_window_ms < 0:
        raise ConfigError("router.limit_batch must be >= 1 and router.batch_window_ms >= 0")
    if not s.aliases:
        raise ConfigError("aliases: at least one routed alias (e.g. auto) is needed")
    names = {s.models.weak.name, s.models.strong.name}
    if len(names) != 2:
        raise ConfigError("models: weak.name and strong.name must differ")
    for alias, a in s.aliases.items():
        share_ok(a.threshold, f"aliases.{alias}.threshold")
        share_ok(a.strong_share, f"aliases.{alias}.strong_share")
        if alias in names or alias.startswith("router-"):
            raise ConfigError(f"aliases.{alias}: clashes with a model name or the router-bert-<threshold> form")
    for tier in ("weak", "strong"):
        m = s.models.by_tier(tier)
        if m.timeout <= 0:
            raise ConfigError(f"models.{tier}.timeout: must be positive")
    if s.upstream.retries < 0 or s.upstream.timeout_total <= 0:
        raise ConfigError("upstream.retries must be >= 0 and upstream.timeout_total > 0")
    if not 0 < s.server.port < 65536:
        raise ConfigError(f"server.port: {s.server.port} is not a TCP port")
    for key in ("limit_body_bytes", "limit_messages", "limit_content_chars", "limit_in_flight",
                "limit_in_flight_per_key", "limit_bodies_arriving", "limit_bodies_arriving_per_key",
                "limit_json_depth", "limit_requests_per_minute"):
        v = getattr(s.server, key)
        if v is not None and v < 1:
            raise ConfigError(f"server.{key}: must be at least 1 (or null for unlimited)")
    d = s.documents
    for key in ("limit_bytes", "limit_pages", "limit_chars", "limit_decompressed_bytes", "budget_chars",
                "limit_documents_per_request", "limit_inline_per_request", "limit_request_chars",
                "limit_storage_bytes"):
        v = getattr(d, key)
        if v is not None and v < 1:
            raise ConfigError(f"documents.{key}: must be at least 1")
    if d.timeout_extract <= 0 or s.server.timeout_shutdown < 0:
        raise ConfigError("documents.timeout_extract must be positive and server.timeout_shutdown >= 0")
    for key in ("timeout_header", "timeout_body", "timeout_keep_alive"):
        if getattr(s.server, key) <= 0:
            raise ConfigError(f"server.{key}: must be positive (seconds)")


def settings_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Settings:
    settings: Settings = _build(Settings, data, "")
    settings = dataclasses.replace(settings, source=source)
    _validate(settings)
    return settings


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
