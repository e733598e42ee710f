"""``route-llm retrain`` fast mode on a tiny format-2 model: numpy only (no scipy, scikit-learn or torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from router import Router
from tests.helpers import format2_model as _format2
from tests.helpers import retrain_data as _data
from tests.helpers import retrain_feedback as _feedback
from tests.helpers import retrain_prompt as _prompt
from tests.router.conftest import build_onnx, build_tokenizer, default_meta
from training.base_rows import RowSet
from training.retrain import MIN_JUDGE_ROWS, RetrainConfig, RetrainError, judge, retrain


def test_a_better_candidate_is_written_as_a_new_loadable_version(tmp_path: Path) -> None:
    current = _format2(tmp_path)
    result = retrain(_data(tmp_path), [_feedback(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1))
    assert result.accepted, result.table
    assert result.path is not None and result.path.parent == tmp_path / "models"
    comparison = result.comparison
    assert comparison["candidate"]["feedback"]["apgr"] > comparison["current"]["feedback"]["apgr"]
    assert "feedback (held out)" in result.table and "base mmlu" in result.table
    new = Router.load(result.path)
    assert new.version == result.version and new.version.startswith("fixture-2+fb")
    assert (result.path / "model.onnx").read_bytes() == (current / "model.onnx").read_bytes()  # encoder kept
    meta = json.loads((result.path / "router.json").read_text())
    assert meta["retrain"]["parent_version"] == "fixture-2" and meta["retrain"]["feedback_rows"] == 200
    assert all(0.0 <= s <= 1.0 for s in new.score(["w1 w2", _prompt(5, True)]))


def test_a_format1_model_cannot_be_retrained_fast(tmp_path: Path) -> None:
    directory = tmp_path / "format1"
    directory.mkdir()
    tokenizer = build_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    onnx.save(build_onnx(tokenizer.get_vocab_size()), str(directory / "model.onnx"))
    (directory / "router.json").write_text(json.dumps(default_meta()))
    with pytest.raises(RetrainError, match="format-1"):
        retrain(_data(tmp_path), [_feedback(tmp_path)], current_dir=directory, out_dir=tmp_path / "models",
                work_dir=tmp_path / "work", config=RetrainConfig())


def test_too_little_feedback_is_refused_saying_how_many_it_needs(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="8 feedback rows: .* at least 10 to train on"):
        retrain(_data(tmp_path), [_feedback(tmp_path, n=8)], current_dir=_format2(tmp_path),
                out_dir=tmp_path / "models", work_dir=tmp_path / "work", config=RetrainConfig())


def _held(n: int, seed: int = 0) -> RowSet:
    """``n`` feedback-like rows, half needing the strong model."""
    needed = np.arange(n) % 2 == 0
    return RowSet(inputs=np.zeros((n, 1)), terms=None, source=np.array(["feedback"] * n), target=np.zeros(n),
                  weight=np.zeros(n), weak=np.where(needed, 0.0, 1.0), strong=np.ones(n), level=np.zeros(n, int))


def _val(n: int) -> RowSet:
    rows = _held(n)
    return RowSet(**{**rows.__dict__, "source": np.array(["mmlu"] * n)})


def _scores(rows: RowSet, quality: float, seed: int) -> np.ndarray:
    """Scores that rank the rows needing the strong model first with the given strength (0: at random)."""
    noise = np.random.default_rng(seed).normal(size=len(rows))
    return quality * (rows.strong > rows.weak) + noise


def _judge(held: RowSet, held_quality: tuple[float, float], val_quality: tuple[float, float],
           **config: object) -> tuple[bool, str, str]:
    val = _val(400)
    accepted, verdict, table, _ = judge(
        held, (_scores(held, held_quality[0], 1), _scores(held, held_quality[1], 2)),
        val, (_scores(val, val_quality[0], 3), _scores(val, val_quality[1], 3)),
        RetrainConfig(bootstrap=200, **config))  # type: ignore[arg-type]
    return accepted, verdict, table


def test_a_candidate_clearly_worse_on_held_out_feedback_is_refused() -> None:
    accepted, verdict, table = _judge(_held(200), (3.0, 0.0), (1.0, 1.0))
    assert not accepted and "worse on the held-out feedback" in verdict and "lies below zero" in verdict
    assert "95% interval" in table and "refuse" in table


def test_a_small_feedback_drop_within_its_noise_is_not_a_refusal() -> None:
    accepted, verdict, _ = _judge(_held(60), (1.0, 0.8), (1.0, 1.0))
    assert accepted, verdict
    assert "not a drop beyond noise" in verdict


def test_a_base_source_falling_beyond_noise_and_tolerance_refuses() -> None:
    accepted, verdict, _ = _judge(_held(200), (1.0, 1.0), (3.0, 0.0))
    assert not accepted and "base validation source mmlu fell" in verdict and "not noise" in verdict


def test_a_base_source_falling_less_than_the_tolerance_passes() -> None:
    accepted, verdict, _ = _judge(_held(200), (1.0, 1.0), (3.0, 0.0), tolerance=1.0)
    assert accepted, verdict


def test_too_few_held_out_rows_refuse_unless_accepted() -> None:
    few = _held(MIN_JUDGE_ROWS - 1)
    accepted, verdict, table = _judge(few, (0.0, 1.0), (1.0, 1.0))
    assert not accepted and "too few to judge" in verdict and "--accept" in verdict and "too few" in table
    accepted, verdict, _ = _judge(few, (0.0, 1.0), (1.0, 1.0), accept=True)
    assert accepted and verdict.startswith("taken with --accept")
    # --accept does not override a base source's real drop
    accepted, verdict, _ = _judge(few, (0.0, 1.0), (3.0, 0.0), accept=True)
    assert not accepted and "mmlu" in verdict


def test_held_out_rows_of_one_outcome_cannot_judge() -> None:
    rows = _held(100)
    one_kind = RowSet(**{**rows.__dict__, "weak": np.ones(100)})  # nobody needed the strong model
    accepted, verdict, _ = _judge(one_kind, (1.0, 1.0), (1.0, 1.0))
    assert not accepted and "(0 where the strong model was needed)" in verdict


def test_a_head_with_a_word_term_keeps_it_through_retraining(tmp_path: Path) -> None:
    from router.head import Head
    from tests.helpers import with_word_term

    current = with_word_term(_format2(tmp_path))
    result = retrain(_data(tmp_path), [_feedback(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1))
    assert result.accepted, result.table
    assert result.path is not None
    before, after = Head.load(current / "head.npz"), Head.load(result.path / "head.npz")
    assert before.lexical is not None and after.lexical is not None
    assert after.lexical.weight.tolist() == before.lexical.weight.tolist()  # the word term is frozen
    assert json.loads((result.path / "router.json").read_text())["lexical"] == "words12-crc32"
    assert Router.load(result.path).score(["w1 w2"])[0] != Router.load(current).score(["w1 w2"])[0]


def test_words_refit_moves_the_word_term_where_feedback_has_words(tmp_path: Path) -> None:
    import numpy as np

    from router.head import Head
    from router.lexical import tfidf
    from tests.helpers import with_word_term

    current = with_word_term(_format2(tmp_path))
    result = retrain(_data(tmp_path), [_feedback(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1, words="refit"))
    assert result.accepted and result.path is not None, result.table
    before, after = Head.load(current / "head.npz"), Head.load(result.path / "head.npz")
    assert before.lexical is not None and after.lexical is not None
    assert after.lexical.idf.tolist() == before.lexical.idf.tolist()  # the vocabulary statistics stay
    hard_word = tfidf("w9", before.lexical.idf)[0]  # "w9" marks the prompts that need the strong model
    assert np.all(after.lexical.weight[hard_word] > before.lexical.weight[hard_word])  # pushed towards "strong"


def _model_with_base_rows(tmp: Path) -> Path:
    """The fixture model with base rows exported from the fixture data, as the training pipeline would."""
    from training import base_rows, data, encoder

    current = _format2(tmp)
    rows = data.load(_data(tmp))
    data.assign_split(rows)
    clf = Router.load(current).classifier
    train = [r for r in rows if not r.val]
    val = [r for r in rows if r.val]

    def embed(part: list[data.Row]) -> np.ndarray:
        return encoder.cached_inputs(clf, [r.prompt for r in part], tmp / "cache", current)

    base_rows.export(current, train, val, data.TargetConfig(), embed(train), embed(val), len(clf.meta.features))
    return current


def test_without_data_dir_the_base_rows_beside_the_model_are_used(tmp_path: Path) -> None:
    current = _model_with_base_rows(tmp_path)
    result = retrain(None, [_feedback(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1))
    assert result.accepted and result.path is not None, result.table
    assert "base_rows.npz (shipped with the model" in result.explanation
    assert "base mmlu" in result.table and "at least 10 to train on" in result.explanation
    # the new model carries the rows on, so it can be retrained without data too
    again = retrain(None, [_feedback(tmp_path)], current_dir=result.path, out_dir=tmp_path / "models",
                    work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1, holdout_seed=1))
    assert again.table.count("base mmlu") == 1


def test_a_model_without_base_rows_needs_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="no base_rows.npz.*--data-dir"):
        retrain(None, [_feedback(tmp_path)], current_dir=_format2(tmp_path), out_dir=tmp_path / "models",
                work_dir=tmp_path / "work", config=RetrainConfig())


def test_full_mode_without_a_data_dir_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="--full .* pass --data-dir"):
        retrain(None, [_feedback(tmp_path)], current_dir=_format2(tmp_path), out_dir=tmp_path / "models",
                work_dir=tmp_path / "work", config=RetrainConfig(full=True))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_a_held_out_apgr_that_is_not_a_number_refuses() -> None:
    """An Infinity score makes every APGR NaN; NaN compares False with everything, so it used to pass."""
    rows = _held(200)
    weak = rows.weak.copy()
    weak[1] = np.inf
    accepted, verdict, table = _judge(RowSet(**{**rows.__dict__, "weak": weak}), (1.0, 1.0), (1.0, 1.0))
    assert not accepted and "feedback (held out)" in verdict and "not a finite number" in verdict
    assert "refuse" in table


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_a_base_source_apgr_that_is_not_a_number_refuses() -> None:
    rows = _val(400)
    strong = rows.strong.copy()
    strong[0] = np.inf
    val = RowSet(**{**rows.__dict__, "strong": strong})
    held = _held(200)
    accepted, verdict, _, _ = judge(held, (_scores(held, 1.0, 1), _scores(held, 1.0, 2)),
                                    val, (_scores(val, 1.0, 3), _scores(val, 1.0, 3)), RetrainConfig(bootstrap=50))
    assert not accepted and "base mmlu" in verdict and "not a finite number" in verdict


def _cli(*args: str) -> object:
    from click.testing import CliRunner

    from proxy.cli import main

    return CliRunner().invoke(main, ["retrain", *args])


def test_the_command_explains_the_rule_and_prints_its_table_once(tmp_path: Path) -> None:
    current = _model_with_base_rows(tmp_path)
    result = _cli("--feedback", str(_feedback(tmp_path)), "--model-dir", str(current), "--out-dir",
                  str(tmp_path / "models"), "--work-dir", str(tmp_path / "work"), "--tolerance", "1", "--threads", "1")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    output = result.output  # type: ignore[attr-defined]
    assert output.count("feedback (held out)") == 1
    assert "rule: refused if" in output and "95% bootstrap interval" in output and "wrote" in output


@pytest.mark.parametrize(("args", "message"), [
    (["--holdout-seed", "-1"], "--holdout-seed"),
    (["--tolerance", "2"], "--tolerance"),
    (["--threads", "0"], "--threads"),
    (["--base-per-source", "-5"], "--base-per-source"),
    (["--words", "all"], "--words"),
    (["--data-dir", "/nonexistent/data"], "--data-dir"),
])
def test_bad_option_values_exit_2_naming_the_option(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli("--feedback", str(_feedback(tmp_path)), *args)
    assert result.exit_code == 2 and message in result.output  # type: ignore[attr-defined]


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "p", "weak_score": 2, "strong_score": 1}', "weak_score must be between 0 and 1"),
    ('{"prompt": "p", "weak_score": 0, "strong_score": NaN}', "strong_score must be between 0 and 1, not nan"),
    ('{"prompt": "p", "weak_score": Infinity, "strong_score": 1}', "weak_score must be between 0 and 1, not inf"),
    ('{"prompt": "p", "weak_score": 0, "strong_score": -Infinity}', "strong_score must be between 0 and 1"),
    ('{"prompt": "p", "weak_score": 0, "strong_score": -0.5}', "strong_score must be between 0 and 1"),
    ('{"prompt": "p", "weak_score": true, "strong_score": 1}', "weak_score must be a number between 0 and 1, not true"),
    ('{"prompt": "p", "weak_score": 0, "strong_score": "1"}', "strong_score must be a number"),
    ('{"prompt": "p", "weak_score": null, "strong_score": 1}', "weak_score must be a number"),
    ('[1, 2]', "not a feedback row"),
    ('{"prompt": "", "weak_score": 0, "strong_score": 1}', "non-empty string"),
    ('{"text": "p"}', "not a feedback row"),
    ("not json", "not valid JSON"),
])
def test_a_bad_feedback_file_exits_4_naming_the_line(tmp_path: Path, line: str, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    result = _cli("--feedback", str(bad), "--model-dir", str(_format2(tmp_path)))
    assert result.exit_code == 4 and message in result.output and "bad.jsonl:1" in result.output  # type: ignore


def test_a_bad_row_after_good_ones_is_named_by_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "p", "weak_score": 0, "strong_score": 1})
    bad.write_text(f"{good}\n\n{good}\n" + '{"prompt": "p", "weak_score": NaN, "strong_score": 1}\n')
    result = _cli("--feedback", str(bad), "--model-dir", str(_format2(tmp_path)))
    assert result.exit_code == 4 and "bad.jsonl:4: weak_score" in result.output  # type: ignore[attr-defined]


def test_retrain_needs_no_scipy_sklearn_or_torch(tmp_path: Path) -> None:
    """The head refit and its evaluation run on the base dependencies: those imports fail here and it still works."""
    import subprocess
    import sys

    current = _model_with_base_rows(tmp_path)
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("scipy", "sklearn", "torch", "transformers"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from proxy.cli import main
main(["retrain", "--feedback", {str(_feedback(tmp_path))!r}, "--model-dir", {str(current)!r}, "--out-dir",
      {str(tmp_path / "models")!r}, "--work-dir", {str(tmp_path / "work")!r}, "--tolerance", "1", "--threads", "1"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote" in done.stderr


def test_an_unchanged_head_keeps_its_quantile_table_and_a_raised_one_moves_it_up() -> None:
    from training.retrain import carry_quantiles

    rng = np.random.default_rng(0)
    n = 300
    rows = RowSet(inputs=np.zeros((n, 1)), terms=None, source=np.array(["mmlu", "gsm8k", "arc"] * 100),
                  target=np.zeros(n), weight=np.zeros(n), weak=np.zeros(n), strong=np.ones(n),
                  level=np.zeros(n, int))
    current = rng.uniform(0.1, 0.9, n)
    table = [[0.0, 0.1], [0.3, 0.35], [0.5, 0.5], [0.7, 0.62], [1.0, 0.9]]
    assert carry_quantiles(table, rows, current, current) == table
    raised = carry_quantiles(table, rows, current, np.clip(current + 0.05, 0, 1))
    assert [level for level, _ in raised] == [0.0, 0.3, 0.5, 0.7, 1.0]
    assert all(new > old for (_, new), (_, old) in zip(raised[1:-1], table[1:-1], strict=True))
    assert [v for _, v in raised] == sorted(v for _, v in raised)  # still a table: non-decreasing


def test_the_interval_brackets_the_change_and_collapses_for_identical_scorers() -> None:
    from training.retrain import change_interval

    rows = _held(80)
    current, candidate = _scores(rows, 0.5, 1), _scores(rows, 1.5, 2)
    change, low, high = change_interval(rows.weak, rows.strong, current, candidate, rounds=300, seed=0)
    assert low <= change <= high and high - low > 0.01
    assert change_interval(rows.weak, rows.strong, current, current, rounds=300, seed=0) == (0.0, 0.0, 0.0)


def _two_raters(tmp: Path, heavy: int = 400, light: int = 50) -> Path:
    """Exported rows: ``heavy`` from one key, ``light`` from another (the rows of tests.helpers.retrain_feedback)."""
    rows = [json.loads(line) for line in _feedback(tmp, n=heavy + light).read_text().splitlines()]
    path = tmp / "two-raters.jsonl"
    with path.open("w") as out:
        for i, row in enumerate(rows):
            rater, name = ("a" * 32, "heavy-app") if i < heavy else ("b" * 32, "light-app")
            out.write(json.dumps({**row, "rater": rater, "rater_name": name, "feedback_id": f"fb-{i}"}) + "\n")
    return path


def test_max_key_share_keeps_one_key_to_at_most_its_share_of_the_feedback(tmp_path: Path) -> None:
    current = _model_with_base_rows(tmp_path)
    result = retrain(None, [_two_raters(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1, max_key_share=0.5))
    assert result.feedback_raters == {"a" * 32: 50, "b" * 32: 50}  # at most half from the key that gave 400
    assert "100 feedback rows" in result.explanation
    assert "350 rows of the largest raters left out (--max-key-share 0.5" in result.explanation
    assert "heavy-app" in result.explanation  # the operator is told which key was cut


def test_the_default_caps_one_key_at_half_and_one_lifts_the_cap(tmp_path: Path) -> None:
    assert RetrainConfig().max_key_share == 0.5
    current = _model_with_base_rows(tmp_path)
    result = retrain(None, [_two_raters(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1, max_key_share=1.0))
    assert result.feedback_raters == {"a" * 32: 400, "b" * 32: 50}


def test_rows_that_name_no_rater_are_kept_and_counted_apart(tmp_path: Path) -> None:
    """Older exports, hand-made rows and a proxy without keys name no rater: no key can be capped there."""
    current = _model_with_base_rows(tmp_path)
    result = retrain(None, [_feedback(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1))
    assert result.feedback_raters == {"": 200}
    assert "200 rows name no rater" in result.explanation


def test_a_lone_rater_under_the_default_cap_is_refused_saying_how_to_lift_it(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match=r"one key gave every rated row.*--max-key-share 1"):
        retrain(None, [_two_raters(tmp_path, 60, 0)], current_dir=_model_with_base_rows(tmp_path),
                out_dir=tmp_path / "models", work_dir=tmp_path / "work", config=RetrainConfig(threads=1))


@pytest.mark.parametrize("bad", ["0", "1.5", "nan", "inf", "-1", "half", ""])
def test_a_bad_max_key_share_exits_2_naming_the_option(tmp_path: Path, bad: str) -> None:
    result = _cli("--feedback", str(_feedback(tmp_path)), "--max-key-share", bad)
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2 and "Invalid value for '--max-key-share'" in output  # type: ignore[attr-defined]


@pytest.mark.parametrize(("rater", "message"), [(7, "rater must be a string"), ("", "rater must be a string")])
def test_a_bad_rater_field_exits_4_naming_the_line(tmp_path: Path, rater: object, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "weak_score": 0, "strong_score": 1, "rater": rater}) + "\n")
    result = _cli("--feedback", str(bad), "--model-dir", str(_format2(tmp_path)))
    assert result.exit_code == 4 and message in result.output and "bad.jsonl:1" in result.output  # type: ignore


def test_the_command_caps_one_key_at_half_by_default(tmp_path: Path) -> None:
    result = _cli("--feedback", str(_two_raters(tmp_path, 60, 0)), "--model-dir", str(_format2(tmp_path)))
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 4 and "one key gave every rated row" in output and "--max-key-share 1" in output
