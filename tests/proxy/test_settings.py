"""Configuration is validated at start-up, and errors name the key at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.settings import ConfigError, load_settings, settings_from_dict
from tests.conftest import ROOT, base_config


def test_shipped_config_loads() -> None:
    s = load_settings(ROOT / "config.yaml")
    assert s.models.weak.model == "gemini/gemini-1.5-flash"
    assert s.models.strong.model == "gemini/gemini-1.5-pro"
    assert "auto" in s.aliases and s.server.host == "127.0.0.1"


@pytest.mark.parametrize(("change", "needle"), [
    ({"server": {"prot": 1}}, "unknown key server.prot"),
    ({"server": {"port": "eighty"}}, "server.port: expected an integer"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"server": {"limit_in_flight": 0}}, "server.limit_in_flight"),
    ({"router": {"threshold": 1.5}}, "router.threshold"),
    ({"router": {"strong_share": -0.1}}, "router.strong_share"),
    ({"router": {"fail_open_tier": "medium"}}, "router.fail_open_tier: must be one of weak, strong"),
    ({"router": {"threads": 0}}, "router.threads"),
    ({"upstream": {"fallback": "sideways"}}, "upstream.fallback"),
    ({"upstream": {"retries": True}}, "upstream.retries: expected an integer"),
    ({"aliases": {"gemini-1.5-pro": {}}}, "aliases.gemini-1.5-pro"),
    ({"aliases": {"auto": {"strong_share": 2}}}, "aliases.auto.strong_share"),
    ({"server": {"api_keys": "secret"}}, "server.api_keys: expected a list"),
    ({"documents": {"selection": "random"}}, "documents.selection"),
    ({"bogus": {}}, "unknown key bogus"),
    ({"documents": {"limit_pages": 0}}, "documents.limit_pages"),
    ({"documents": {"timeout_extract": 0}}, "documents.timeout_extract"),
    ({"server": {"timeout_body": 0}}, "server.timeout_body"),
    ({"server": {"timeout_header": -1}}, "server.timeout_header"),
    ({"server": {"timeout_keep_alive": 0}}, "server.timeout_keep_alive"),
    ({"server": {"limit_in_flight_per_key": 0}}, "server.limit_in_flight_per_key"),
    ({"server": {"limit_bodies_arriving": 0}}, "server.limit_bodies_arriving"),
    ({"server": {"limit_bodies_arriving_per_key": "many"}}, "server.limit_bodies_arriving_per_key: expected"),
    ({"server": {"limit_json_depth": 0}}, "server.limit_json_depth"),
    ({"documents": {"limit_documents_per_request": 0}}, "documents.limit_documents_per_request"),
    ({"documents": {"limit_inline_per_request": -2}}, "documents.limit_inline_per_request"),
    ({"documents": {"limit_request_chars": 0}}, "documents.limit_request_chars"),
    ({"documents": {"limit_storage_bytes": 0}}, "documents.limit_storage_bytes"),
    ({"storage": {"url": "mysql://db/x"}}, "storage.url: must be sqlite:///DIRECTORY"),
    ({"storage": {"url": "sqlite:///"}}, "storage.url: must be"),
    ({"storage": {"url": "postgresql://"}}, "storage.url: must be"),
    ({"storage": {"url": 5}}, "storage.url: expected a string"),
    ({"storage": {"limit_connections": 0}}, "storage.limit_connections"),
    ({"storage": {"timeout_connect": 0}}, "storage.timeout_connect"),
    ({"storage": {"pool": 3}}, "unknown key storage.pool"),
    ({"storage": {"url": "postgresql://u:pw@db/x"}, "feedback": {"limit_store_bytes": 1000}},
     "feedback.limit_store_bytes: caps the SQLite file only"),
    ({"server": {"redis_url": "http://cache:6379"}}, "server.redis_url: must be redis://"),
    ({"server": {"redis_failure": "maybe"}}, "server.redis_failure: must be one of open, closed"),
    ({"server": {"timeout_redis": 0}}, "server.timeout_redis"),
])
def test_bad_values_are_rejected_with_the_key_name(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    cfg = base_config(tmp_path)
    for section, values in change.items():
        if isinstance(cfg.get(section), dict) and section != "aliases":
            cfg[section].update(values)
        else:
            cfg[section] = values
    with pytest.raises(ConfigError) as err:
        settings_from_dict(cfg)
    assert needle in str(err.value)


def test_missing_model_name_is_reported(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    del cfg["models"]["weak"]["model"]
    with pytest.raises(ConfigError, match="missing key models.weak.model"):
        settings_from_dict(cfg)


def test_unreadable_or_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(scalar)


def test_api_key_from_environment_is_resolved_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = base_config(tmp_path)
    cfg["models"]["weak"]["api_key"] = "os.environ/MY_WEAK_KEY"
    s = settings_from_dict(cfg)
    monkeypatch.delenv("MY_WEAK_KEY", raising=False)
    assert s.models.weak.resolved_api_key() is None
    monkeypatch.setenv("MY_WEAK_KEY", "abc")
    assert s.models.weak.resolved_api_key() == "abc"


def test_proxy_keys_merge_config_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from_dict(base_config(tmp_path, server={"api_keys": ["k1"]}))
    monkeypatch.setenv("ROUTE_LLM_API_KEYS", " k2, k1 ,,k3")
    assert s.all_api_keys() == ("k1", "k2", "k3")


def test_database_and_redis_urls_come_from_the_environment_first(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from_dict(base_config(tmp_path, storage={"url": "os.environ/MY_DB"}))
    monkeypatch.delenv("ROUTE_LLM_DATABASE_URL", raising=False)
    monkeypatch.delenv("ROUTE_LLM_REDIS_URL", raising=False)
    monkeypatch.delenv("MY_DB", raising=False)
    assert s.storage_url() == f"sqlite:///{tmp_path / 'files'}"  # unset reference: the SQLite default
    monkeypatch.setenv("MY_DB", "postgresql://a@db/x")
    assert s.storage_url() == "postgresql://a@db/x"
    monkeypatch.setenv("ROUTE_LLM_DATABASE_URL", "postgresql://b@db/y")
    assert s.storage_url() == "postgresql://b@db/y"
    assert s.server.resolved_redis_url() is None
    monkeypatch.setenv("ROUTE_LLM_REDIS_URL", "redis://cache:6379/0")
    assert s.server.resolved_redis_url() == "redis://cache:6379/0"


def test_a_bad_url_from_the_environment_is_refused_without_its_password(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTE_LLM_DATABASE_URL", "mysql://user:hunter2@db/x")
    with pytest.raises(ConfigError) as err:
        settings_from_dict(base_config(tmp_path))
    assert "storage.url" in str(err.value) and "hunter2" not in str(err.value) and "***" in str(err.value)


def test_a_sqlite_url_names_the_directory_of_todays_layout(tmp_path: Path) -> None:
    s = settings_from_dict(base_config(tmp_path, storage={"url": f"sqlite:///{tmp_path / 'elsewhere'}"}))
    assert s.storage_dir() == str(tmp_path / "elsewhere")
    assert s.feedback_dir() == tmp_path / "elsewhere"


def test_old_two_tier_spellings_are_rewritten_once_at_load(tmp_path: Path) -> None:
    # Readers see one spelling: thresholds or shares (which wins decided here), tier names, down/up.
    s = settings_from_dict(base_config(tmp_path, router={"threshold": 0.4, "strong_share": 0.2,
                                                         "fail_open_tier": "weak"},
                                       upstream={"fallback": "strong_to_weak"},
                                       aliases={"cheap": {"strong_share": 0.1}}))
    assert (s.router.threshold, s.router.strong_share, s.router.thresholds, s.router.shares) == \
        (None, None, (0.4,), None)  # a fixed threshold wins over a share, as it always did
    cheap = s.aliases["cheap"]
    assert (cheap.strong_share, cheap.thresholds, cheap.shares) == (None, None, (0.9, 0.1))
    assert not s.aliases["auto"].is_set()  # an alias without a point of its own keeps the router's
    assert s.router.fail_open_tier == s.models.cheapest.name == "weak"  # the mapping form names its tiers so
    assert s.upstream.fallback == "down"
    assert settings_from_dict(base_config(tmp_path, upstream={"fallback": "weak_to_strong"})).upstream.fallback == "up"
    listed = base_config(tmp_path, router={"fail_open_tier": "strong"})
    listed["models"] = [listed["models"]["weak"], listed["models"]["strong"]]
    assert settings_from_dict(listed).router.fail_open_tier == "gemini-1.5-pro"  # the list form: the model's name
    default = settings_from_dict({**base_config(tmp_path), "router": {}}).router
    assert default.shares == (0.7, 0.3) and default.thresholds is None


def test_a_storage_url_is_parsed_in_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.settings import parse_storage_url

    assert parse_storage_url("sqlite:///rel/dir").directory == Path("rel/dir")
    assert parse_storage_url("sqlite:////abs/dir").directory == Path("/abs/dir")
    assert parse_storage_url("postgres://u@db/x").kind == "postgresql"
    for bad in ("sqlite:///", "sqlite://dir", "postgresql:///nohost", "mysql://db/x", ""):
        with pytest.raises(ValueError, match="must be sqlite:///DIRECTORY"):
            parse_storage_url(bad)
    monkeypatch.setenv("ROUTE_LLM_DATABASE_URL", "postgresql://u@db/x")
    s = settings_from_dict(base_config(tmp_path))
    assert (s.storage_location().kind, s.storage_dir()) == ("postgresql", str(tmp_path / "files"))
