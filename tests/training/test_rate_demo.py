"""scripts/rate_demo.py: a simulated user rates a running proxy's answers over HTTP; bad options exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.state.database import RECORDS_FILE, SqliteDatabase
from proxy.state.records import read_feedback
from tests.conftest import RunningProxy
from tests.training import script_main


def test_every_answer_is_rated_from_the_prompt_and_the_tier_that_answered(
        make_proxy: Callable[..., RunningProxy], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running = make_proxy(feedback={"store_prompts": True})
    script_main("rate_demo")(["--base-url", running.base_url, "--count", "12", "--seed", "3"])
    assert "rated 12 answers" in capsys.readouterr().out
    db = SqliteDatabase(tmp_path / "files" / RECORDS_FILE)
    ratings = list(read_feedback(db))
    db.close()
    assert len(ratings) == 12 and all(r.prompt for r in ratings)
    hard_words = ("Prove", "Derive", "Design", "Write a function", "Compare", "Solve")
    for r in ratings:
        hard = r.prompt is not None and r.prompt.startswith(hard_words)
        assert r.rating == ("bad" if hard and r.tier == "weak" else "good"), (r.prompt, r.tier)


def test_the_prompts_are_distinct_and_mix_hard_and_everyday() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("rate_demo", Path(__file__).parents[2] / "scripts" / "rate_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = module.prompts(90, 0)
    assert len({p for p, _ in made}) == 90 and 25 <= sum(h for _, h in made) <= 60
    assert module.prompts(90, 0) == made and module.prompts(90, 1) != made


@pytest.mark.parametrize(("args", "message"), [
    (["--count", "0"], "--count"),
    (["--count", "301"], "--count"),
    (["--count", "many"], "--count"),
    (["--noise", "0.9"], "--noise"),
    (["--noise", "-0.1"], "--noise"),
    (["--base-url", "127.0.0.1:8000"], "--base-url"),
    (["--base-url", "http://127.0.0.1:8000/v1"], "--base-url"),
    (["--wait", "-1"], "--wait"),
    (["--cheapest", ""], "--cheapest"),
])
def test_bad_options_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str], args: list[str],
                                              message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        script_main("rate_demo")(args)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_no_server_is_reported_in_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.demo.standin import free_port

    with pytest.raises(SystemExit) as exited:
        script_main("rate_demo")(["--base-url", f"http://127.0.0.1:{free_port()}", "--wait", "0"])
    assert exited.value.code == 1 and "is route-llm serve running there?" in capsys.readouterr().err
