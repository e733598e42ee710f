"""The ``route-llm`` command line, through click's CliRunner, with ``serve`` patched out.

The commands only parse arguments and call plain functions, so the serve tests assert what ``serve`` is
called with (uvicorn's own CLI tests do the same) and the others run the shipped router for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from proxy import cli
from proxy.settings import Settings
from router import Router
from tests.conftest import base_config

PROMPTS = [
    "hi",
    "what is 2 + 2?",
    "translate 'good morning' into French",
    "Prove that there are infinitely many primes, then generalise the argument to primes of the form 4k+3.",
    "Write a thread-safe LRU cache in Rust with generics, explain its memory ordering, and benchmark it.",
    "thanks!",
    "Design a distributed consensus protocol tolerant to Byzantine faults and analyse its message complexity.",
    "what colour is the sky",
    "Derive the Black-Scholes PDE from first principles and solve it for a European call.",
    "tell me a joke",
]


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)), encoding="utf-8")
    return path


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, dict[str, Any]]]:
    """Replace the plain ``serve`` function; record what the command would have served."""
    calls: list[tuple[Settings, dict[str, Any]]] = []
    monkeypatch.setattr(cli, "serve", lambda settings, **kw: calls.append((settings, kw)))
    monkeypatch.setattr(cli, "ignore_early_hangup", lambda: None)  # the test process keeps its own SIGHUP action
    monkeypatch.delenv("ROUTE_LLM_API_KEYS", raising=False)
    return calls


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.main, list(args), input=input, env=env, catch_exceptions=False)


def test_serve_refuses_a_public_host_without_keys(config_file: Path, served: list[Any]) -> None:
    result = run("serve", "--config", str(config_file), "--host", "0.0.0.0")
    assert result.exit_code == cli.EXIT_CONFIG != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr and "--allow-unauthenticated" in result.stderr
    assert served == []


@pytest.mark.parametrize(("flags", "env"), [
    (["--allow-unauthenticated"], None),
    ([], {"ROUTE_LLM_API_KEYS": "sk-proxy-a, sk-proxy-b"}),
])
def test_serve_binds_a_public_host_when_allowed_or_keyed(config_file: Path, served: list[Any], flags: list[str],
                                                         env: dict[str, str] | None) -> None:
    result = run("serve", "--config", str(config_file), "--host", "0.0.0.0", "--port", "9123", *flags, env=env)
    assert result.exit_code == 0, result.output
    [(settings, kw)] = served
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9123)
    assert kw["workers"] == 1 and kw["config_path"] == str(config_file)


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_serve_refuses_a_port_outside_1_to_65535(config_file: Path, served: list[Any], port: str) -> None:
    # The flag overrides server.port after the config is validated, so click has to check it.
    result = CliRunner().invoke(cli.main, ["serve", "--config", str(config_file), "--port", port])
    assert result.exit_code == cli.EXIT_CONFIG and "--port" in result.stderr
    assert served == []


def test_serve_on_loopback_needs_no_keys(config_file: Path, served: list[Any]) -> None:
    assert run("serve", "--config", str(config_file)).exit_code == 0
    assert served[0][0].server.host == "127.0.0.1"


def test_bad_config_key_exits_2_naming_the_key(tmp_path: Path, served: list[Any]) -> None:
    cfg = base_config(tmp_path, upstream={"retires": 3})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = run("serve", "--config", str(path))
    assert result.exit_code == 2
    assert "upstream.retires" in result.stderr
    missing = run("serve", "--config", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "nope.yaml" in missing.stderr
    assert served == []


def test_route_prints_the_decision_as_json(config_file: Path, router: Router) -> None:
    text = PROMPTS[3]
    result = run("route", "--config", str(config_file), text)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"score", "tier", "model", "threshold"} <= set(out)
    assert out["threshold"] == 0.5  # router.threshold in the test config
    assert out["score"] == pytest.approx(router.score([text])[0], abs=1e-5)
    assert out["tier"] == ("strong" if out["score"] >= out["threshold"] else "weak")
    assert out["model"] == {"weak": "gemini-1.5-flash", "strong": "gemini-1.5-pro"}[out["tier"]]
    pinned = json.loads(run("route", "--config", str(config_file), "--model", "router-bert-0", text).stdout)
    assert (pinned["threshold"], pinned["tier"]) == (0.0, "strong")


def test_route_uses_the_thresholds_the_proxy_would(tmp_path: Path, router: Router) -> None:
    # An alias's own strong_share wins over a fixed router.threshold, as in the proxy (proxy.routing.decider).
    from router.policy import threshold_for_strong_share

    cfg = base_config(tmp_path)
    cfg["aliases"]["auto-share"] = {"strong_share": 0.9}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = json.loads(run("route", "--config", str(path), "--model", "auto-share", "hi").stdout)
    assert out["threshold"] == round(threshold_for_strong_share(router.meta.quantiles, 0.9), 6) != 0.5
    pinned = json.loads(run("route", "--config", str(path), "--model", "gemini-1.5-pro", "hi").stdout)
    assert (pinned["tier"], pinned["threshold"]) == ("strong", None)


@pytest.mark.parametrize("model", ["router-bert-abc", "router-bert-5", "no-such-alias"])
def test_route_rejects_an_unknown_model_name_with_exit_4(config_file: Path, model: str) -> None:
    result = CliRunner().invoke(cli.main, ["route", "--config", str(config_file), "--model", model, "hi"])
    assert result.exit_code == cli.EXIT_INPUT and result.exception is not None
    assert model in result.stderr and "Traceback" not in result.stderr


def test_score_round_trips_jsonl_in_order(router: Router) -> None:
    lines = "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS)
    result = run("score", "--batch-size", "3", input=lines)
    assert result.exit_code == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(PROMPTS)
    assert [o["score"] for o in out] == pytest.approx(router.score(PROMPTS), abs=1e-6)


@pytest.mark.parametrize("bad", ["{not json", '{"text": "no prompt key"}', '{"prompt": 5}', "", "[1]"])
def test_score_stops_at_a_malformed_line_naming_it(bad: str) -> None:
    lines = f'{{"prompt": "a"}}\n{{"prompt": "b"}}\n{bad}\n{{"prompt": "d"}}\n'
    result = run("score", input=lines)
    assert result.exit_code == cli.EXIT_INPUT != 0
    assert "line 3" in result.stderr
    assert len(result.stdout.splitlines()) == 2  # the good prefix is still written, in order


def test_model_dir_without_a_model_names_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    for args in (["score", "--model-dir", str(empty)], ["calibrate", "--prompts", __file__, "--strong-share", "0.3",
                                                        "--model-dir", str(empty)]):
        result = run(*args, input='{"prompt": "x"}\n')
        assert result.exit_code == cli.EXIT_MODEL != 0
        assert str(empty) in result.stderr and "cannot load the router model" in result.stderr
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_calibrate_threshold_sends_the_asked_share_to_strong(tmp_path: Path, router: Router) -> None:
    prompts = [f"{p} (variant {i})" for i in range(4) for p in PROMPTS]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    result = run("calibrate", "--prompts", str(path), "--strong-share", "0.3")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["prompts"] == len(prompts) and out["strong_share"] == 0.3
    scores = router.score(prompts)
    share = sum(s >= out["threshold"] for s in scores) / len(scores)
    assert share == pytest.approx(0.3, abs=0.1)
    assert "threshold:" in result.stderr  # how to use it


def test_calibrate_rejects_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n', encoding="utf-8")
    result = run("calibrate", "--prompts", str(path), "--strong-share", "0.3")
    assert result.exit_code == cli.EXIT_INPUT and "line 2" in result.stderr
    assert run("calibrate", "--prompts", str(path), "--strong-share", "1.5").exit_code == 2
