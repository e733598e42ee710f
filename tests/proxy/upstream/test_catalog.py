"""Today's models, told plainly: `route-llm check` against the provider's model list, the start-up check, and a
provider's "model not found" on a call, with the stand-in answering as Google does for a retired model."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from proxy import cli
from proxy.settings import settings_from_dict
from proxy.upstream.catalog import (
    CatalogError,
    ServedModel,
    list_gemini_models,
    models_url,
    nearest,
    start_check_thread,
    warn_at_start,
)
from tests.conftest import base_config, wait_until
from tests.helpers import point_at_standin as _on_standin
from tests.helpers import serve_on_free_port as _serve
from tests.helpers import wait_for_workers as _wait_for_workers
from proxy.demo.standin import SERVED_MODELS
from tests.standin import StandInServer, free_port

MSG = [{"role": "user", "content": "hi"}]
PRO_MESSAGE = "models/gemini-1.5-pro is not found for API version v1beta"


def _config(tmp: Path, cfg: dict[str, Any] | None = None) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg or base_config(tmp)), encoding="utf-8")
    return path


def _check(*args: str) -> Result:
    return CliRunner().invoke(cli.main, ["check", *args], catch_exceptions=False)


# --- the provider's list ------------------------------------------------------------------------------------

def test_the_model_list_is_read_across_every_page(standin: StandInServer) -> None:
    standin.state.retired = {"gemini-1.5-pro"}
    listed = list_gemini_models(standin.base_url, "test-upstream-key", timeout=5)
    # The stand-in pages by 3: 8 models take three pages, and none is lost or repeated.
    assert [m.name for m in listed] == [n for n in SERVED_MODELS if n != "gemini-1.5-pro"]
    assert {m.name for m in listed if not m.chats} == {"text-embedding-004"}


def test_the_standin_is_told_which_models_are_retired_through_its_control_endpoint(standin: StandInServer) -> None:
    r = httpx.post(f"{standin.base_url}/_control", json={"retired": ["gemini-2.5-pro"]}, timeout=30)
    assert r.status_code == 200
    listed = {m.name for m in list_gemini_models(standin.base_url, "k", timeout=5)}
    assert "gemini-2.5-pro" not in listed and "gemini-2.5-flash" in listed


@pytest.mark.parametrize("base", ["not a url", "http://[::1", "ftp://127.0.0.1:1"])
def test_an_api_base_that_is_not_a_url_is_a_check_error_not_a_crash(base: str) -> None:
    with pytest.raises(CatalogError, match="cannot reach"):
        list_gemini_models(base, "k", timeout=2)


def test_a_listing_without_a_key_is_refused_and_says_so_without_the_url(standin: StandInServer) -> None:
    with pytest.raises(CatalogError, match=r"answered 403 to the model list: Method doesn't allow unregistered"):
        list_gemini_models(standin.base_url, "", timeout=5)


@pytest.mark.parametrize(("base", "url"), [
    ("https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/v1beta/models"),
    ("http://127.0.0.1:9/", "http://127.0.0.1:9/v1beta/models"),
    ("http://gw.example/v1beta", "http://gw.example/v1beta/models"),
])
def test_models_url_joins_the_api_base_as_litellm_does(base: str, url: str) -> None:
    assert models_url(base) == url


_TODAY = [ServedModel(n, ("generateContent",)) for n in (
    "gemini-2.0-flash-001", "gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro",
    "gemini-3-pro-preview", "gemini-2.5-flash-preview-09-2025")] + [ServedModel("gemini-9-pro", ("embedContent",))]


@pytest.mark.parametrize(("retired", "current"), [
    ("gemini-1.5-flash", "gemini-2.5-flash"),  # newest stable of the family, not the newer preview
    ("gemini-1.5-flash-002", "gemini-2.5-flash"),  # a pinned version is the same family
    ("gemini-1.5-pro-latest", "gemini-2.5-pro"),  # the preview 3-pro loses to a stable pro; 9-pro only embeds
    ("gemini-2.0-flash-lite", "gemini-2.5-flash-lite"),
    ("gemini-1.5-flash-8b", "gemini-2.5-flash"),  # no 8b any more: the nearest flash
    ("gemini-pro", "gemini-2.5-pro"),  # an old name without a version: by name similarity
])
def test_nearest_is_the_newest_served_model_of_the_same_family(retired: str, current: str) -> None:
    assert nearest(retired, _TODAY) == current


def test_nearest_is_none_when_nothing_alike_is_served() -> None:
    assert nearest("gemini-1.5-pro", [ServedModel("text-embedding-004", ("embedContent",))]) is None
    assert nearest("gemini-1.5-pro", [ServedModel("gemini-2.5-flash", ("generateContent",))]) is None


# --- route-llm check ----------------------------------------------------------------------------------------

def test_check_names_the_retired_tier_its_config_key_and_a_current_model(tmp_path: Path,
                                                                        standin: StandInServer) -> None:
    standin.state.retired = {"gemini-1.5-pro"}
    result = _check("--config", str(_config(tmp_path)))
    assert result.exit_code == cli.EXIT_NOT_SERVED
    weak, strong = result.stdout.splitlines()
    assert weak == "models.weak.model = gemini/gemini-1.5-flash (tier weak): served"
    assert strong == ("models.strong.model = gemini/gemini-1.5-pro (tier strong): NOT SERVED by the provider; "
                      "nearest current model of the same family: gemini/gemini-2.5-pro")
    assert "change models.strong.model in" in result.stderr and "config.current-gemini.yaml" in result.stderr
    assert "test-upstream-key" not in result.output


def test_check_passes_when_every_tier_is_served_and_speaks_json(tmp_path: Path, standin: StandInServer) -> None:
    result = _check("--config", str(_config(tmp_path)), "--json")
    assert result.exit_code == cli.EXIT_OK
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["tier"], r["key"], r["status"], r["nearest"]) for r in rows] == [
        ("weak", "models.weak.model", "served", None), ("strong", "models.strong.model", "served", None)]


def test_check_names_list_form_keys_and_says_cannot_check_for_other_providers(tmp_path: Path,
                                                                             standin: StandInServer) -> None:
    standin.state.retired = {"gemini-1.5-flash"}
    cfg = base_config(tmp_path)
    cfg["models"] = [
        {"name": "cheap", "model": "gemini/gemini-1.5-flash"},
        {"name": "mid", "model": "openai/gpt-4o-mini", "api_key": "sk-unused"},
        {"name": "top", "model": "gemini/gemini-1.5-pro", "api_base": standin.base_url, "api_key": "literal-key"},
    ]
    cfg["router"] = {"shares": [0.4, 0.3, 0.3]}
    cfg["aliases"] = {"auto": {}}
    result = _check("--config", str(_config(tmp_path, cfg)))
    assert result.exit_code == cli.EXIT_NOT_SERVED
    cheap, mid, top = result.stdout.splitlines()
    assert cheap.startswith("models[0].model = gemini/gemini-1.5-flash (tier cheap): NOT SERVED")
    assert cheap.endswith("gemini/gemini-2.5-flash")
    assert mid.startswith("models[1].model = openai/gpt-4o-mini (tier mid): cannot check")
    assert top == "models[2].model = gemini/gemini-1.5-pro (tier top): served"
    # Two endpoints (GEMINI_API_BASE, and the top tier's api_base with its own key), each asked once.
    listed = [r for r in standin.state.listings if r == "literal-key"]
    assert len(listed) == 3 and len(standin.state.listings) == 6  # three pages each


def test_check_exits_7_naming_the_host_when_the_provider_cannot_be_reached(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    port = free_port()  # nothing listens there
    for tier in ("weak", "strong"):
        cfg["models"][tier]["api_base"] = f"http://127.0.0.1:{port}"
    result = _check("--config", str(_config(tmp_path, cfg)), "--timeout", "2")
    assert result.exit_code == cli.EXIT_UNCHECKED
    assert f"cannot reach 127.0.0.1:{port}: ConnectError" in result.stdout


def test_check_without_a_key_says_which_variable_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    cfg = base_config(tmp_path)
    result = _check("--config", str(_config(tmp_path, cfg)))
    assert result.exit_code == cli.EXIT_UNCHECKED
    assert "no API key to ask with (set GEMINI_API_KEY, or models.weak.api_key)" in result.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "soon"], "--timeout"),
    (["--config", "/nonexistent/route-llm.yaml"], "cannot read config"),
])
def test_check_rejects_bad_arguments_with_a_usage_error(args: list[str], says: str) -> None:
    result = _check(*args)
    assert result.exit_code == cli.EXIT_CONFIG
    assert says in result.output


# --- the start-up check -------------------------------------------------------------------------------------

def test_the_start_up_check_warns_naming_the_key_and_never_raises(tmp_path: Path, standin: StandInServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    standin.state.retired = {"gemini-1.5-flash"}
    with caplog.at_level(logging.WARNING, logger="route_llm"):
        warn_at_start(settings_from_dict(base_config(tmp_path)))
    [line] = [r.getMessage() for r in caplog.records]
    assert "models.weak.model = gemini/gemini-1.5-flash (tier weak): NOT SERVED" in line
    assert "gemini/gemini-2.5-flash" in line


def test_the_start_up_check_says_once_that_the_provider_could_not_be_asked(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    cfg = base_config(tmp_path, upstream={"timeout_check": 1})
    for tier in ("weak", "strong"):
        cfg["models"][tier]["api_base"] = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="route_llm"):
        warn_at_start(settings_from_dict(cfg))
    [line] = [r.getMessage() for r in caplog.records]
    assert "could not ask the provider" in line and "cannot reach 127.0.0.1" in line


def test_the_start_up_check_can_be_switched_off(tmp_path: Path) -> None:
    settings = settings_from_dict(base_config(tmp_path, upstream={"check_models_at_start": False}))
    assert start_check_thread(settings) is None


@pytest.mark.parametrize(("upstream", "says"), [
    ({"check_models_at_start": "yes"}, "upstream.check_models_at_start: expected true or false"),
    ({"timeout_check": 0}, "upstream.timeout_check: must be positive"),
    ({"timeout_check": "fast"}, "upstream.timeout_check: expected a number"),
])
def test_bad_check_settings_are_refused_naming_the_key(tmp_path: Path, upstream: dict[str, Any], says: str) -> None:
    from proxy.settings import ConfigError

    with pytest.raises(ConfigError, match=says):
        settings_from_dict(base_config(tmp_path, upstream=upstream))


def test_serve_warns_once_per_server_about_a_retired_model_and_serves_around_it(tmp_path: Path,
                                                                              standin: StandInServer) -> None:
    """Two workers, one warning (the supervisor checks, not each worker); the retired tier's calls get Google's
    404, which counts against its breaker, shared by both workers: the provider sees the retired model twice,
    however many requests there are and whichever worker takes them."""
    standin.state.retired = {"gemini-1.5-pro"}
    config = _config(tmp_path, base_config(tmp_path, upstream={"warmup": False, "retries": 0,
                                                               "breaker": {"failures": 2, "cooldown": 600}}))
    _on_standin(config, standin)
    proc, port, log = _serve(tmp_path, config, workers=2)
    try:
        _wait_for_workers(proc, log, 2)
        wait_until(lambda: "NOT SERVED" in log.read_text(errors="replace"), "the start-up warning", timeout=60,
                   processes=[proc], log=log)
        served = []
        for i in range(8):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:  # any worker
                r = http.post("/v1/chat/completions", json={"model": "gemini-1.5-pro",
                                                           "messages": [{"role": "user", "content": f"q{i}"}]})
            assert r.status_code == 200, r.text
            served.append((r.headers["x-route-llm-tier"], r.headers.get("x-route-llm-breaker")))
        assert standin.state.models_called().count("gemini-1.5-pro") == 2
        assert {tier for tier, _ in served} == {"weak"}
        assert [b for _, b in served][2:] == ["open:strong"] * 6
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text) for s in f.samples}
        assert samples[("route_llm_breaker_transitions_total", (("tier", "strong"), ("to", "open")))] == 1
        assert samples[("route_llm_breaker_state", (("tier", "strong"),))] == 1
        assert samples[("route_llm_upstream_errors_total", (("reason", "model_not_served"),
                                                            ("routed_model", "gemini-1.5-pro")))] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    warnings = [line for line in log.read_text(errors="replace").splitlines() if "NOT SERVED" in line]
    assert len(warnings) == 1 and "models.strong.model" in warnings[0] and "gemini/gemini-2.5-pro" in warnings[0]


# --- "model not found" on a call ----------------------------------------------------------------------------

def _upstream_error(err: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    assert err.value.status_code == 502
    error: dict[str, Any] = err.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("upstream_error", "model_not_served")
    for internal in ("127.0.0.1", "litellm", "Exception", "Traceback", "test-upstream-key"):
        assert internal not in error["message"]
    return error


@pytest.mark.parametrize("stream", [False, True])
def test_a_retired_model_is_a_502_naming_the_tier_and_its_config_key(make_proxy: Any, standin: StandInServer,
                                                                    stream: bool) -> None:
    proxy = make_proxy(upstream={"fallback": "none"})
    standin.state.retired = {"gemini-1.5-pro"}
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="gemini-1.5-pro", messages=MSG, stream=stream)
    message = _upstream_error(err)["message"]
    assert ("the provider does not serve gemini/gemini-1.5-pro, the model of the strong tier (config key "
            "models.strong.model); it serves gemini/gemini-2.5-pro of the same family") in message
    assert PRO_MESSAGE in message
    assert standin.state.models_called() == ["gemini-1.5-pro"]  # not retried: it will not come back
    assert proxy.client().chat.completions.create(model="gemini-1.5-flash", messages=MSG).model == "gemini-1.5-flash"


def test_a_retired_model_whose_family_cannot_be_looked_up_points_to_route_llm_check(
        make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"fallback": "none"})
    standin.state.retired = {"gemini-1.5-pro"}
    standin.state.served = ["gemini-1.5-flash"]  # nothing of the pro family left
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="gemini-1.5-pro", messages=MSG)
    assert "(config key models.strong.model); `route-llm check` names a current model" in _upstream_error(err)[
        "message"]


def test_a_retired_model_falls_back_to_the_next_tier(proxy: Any, standin: StandInServer) -> None:
    standin.state.retired = {"gemini-1.5-pro"}
    raw = proxy.client().chat.completions.with_raw_response.create(model="auto-quality", messages=MSG)
    assert raw.parse().model == "gemini-1.5-flash"
    assert raw.headers["x-route-llm-fallback"] == "strong->weak"
    assert standin.state.models_called() == ["gemini-1.5-pro", "gemini-1.5-flash"]


def test_every_tier_retired_names_each_tier_and_key(proxy: Any, standin: StandInServer) -> None:
    standin.state.retired = {"gemini-1.5-pro", "gemini-1.5-flash"}
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="auto-quality", messages=MSG)
    message = _upstream_error(err)["message"]
    assert "the model of the weak tier (config key models.weak.model); it serves gemini/gemini-2.5-flash" in message
    assert "strong (models.strong.model: gemini/gemini-1.5-pro)" in message
    assert "weak (models.weak.model: gemini/gemini-1.5-flash)" in message


def test_the_standin_answers_a_retired_model_as_google_does(standin: StandInServer) -> None:
    standin.state.retired = {"gemini-1.5-pro"}
    r = httpx.post(f"{standin.base_url}/v1beta/models/gemini-1.5-pro:generateContent",
                   json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=30)
    assert r.status_code == 404
    error = r.json()["error"]
    assert (error["code"], error["status"]) == (404, "NOT_FOUND") and error["message"].startswith(PRO_MESSAGE)
    assert os.environ["GEMINI_API_BASE"] == standin.base_url  # the proxies under test reach this stand-in
