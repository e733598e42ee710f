"""Cross-validation (training.crossval): every training row is scored by models that never saw its fold, and the
neighbour term reads only other folds' labels; scripts/crossval_router.py refuses bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")  # the train extra; CI without it skips these

from tests.helpers import CROSSVAL_EASY, CROSSVAL_HARD  # noqa: E402
from tests.helpers import benchmark_line as _line  # noqa: E402
from tests.helpers import toy_eval_sets as _own_sets  # noqa: E402
from tests.training import script_main  # noqa: E402
from training import crossval, data  # noqa: E402
from training.head import JointConfig  # noqa: E402


EASY, HARD = CROSSVAL_EASY, CROSSVAL_HARD


def _rows(n: int = 120) -> tuple[list[data.Row], np.ndarray]:
    """Labelled MBPP-like rows in five folds (plus a few validation rows); the 8-d inputs carry the label."""
    rng = np.random.default_rng(0)
    rows, inputs = [], []
    for i in range(n):
        hard = i % 2 == 1
        text = (HARD[i % 3] if hard else EASY[i % 4]).format(f"topic{i}")
        rows.append(
            data.Row(text, "mbpp", "g", text, weak=0.0 if hard else 1.0, strong=1.0, val=i % 10 == 0, fold=i % 5)
        )
        inputs.append(rng.normal(size=8) + (1.5 if hard else -1.5))
    return rows, np.array(inputs)


def test_out_of_fold_scores_never_use_the_rows_own_label() -> None:
    rows, inputs = _rows()
    config = JointConfig(bits=10)
    before = crossval.head_logits(rows, inputs, data.TargetConfig(everyday=0), config)
    assert np.isnan(before[[r.val for r in rows]]).all()
    assert not np.isnan(before[[not r.val for r in rows]]).any()
    # flip the label of every fold-0 training row: fold 0's own scores must not move, the others must
    flipped = [
        data.Row(r.prompt, r.source, r.group, r.key, weak=1.0 - (r.weak or 0.0), strong=1.0, val=r.val, fold=r.fold)
        if r.fold == 0
        else r
        for r in rows
    ]
    after = crossval.head_logits(flipped, inputs, data.TargetConfig(everyday=0), config)
    fold0 = np.array([r.fold == 0 and not r.val for r in rows])
    assert after[fold0] == pytest.approx(before[fold0])
    assert not np.allclose(after[~fold0 & ~np.isnan(before)], before[~fold0 & ~np.isnan(before)])
    # and the head learned the signal: hard rows score above easy ones out of fold
    hard = np.array([r.weak == 0.0 for r in rows])
    scored = ~np.isnan(before)
    assert before[hard & scored].min() > before[~hard & scored].max()


def test_neighbour_mean_weights_the_most_similar_rows() -> None:
    embeddings = np.array([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0], [-1.0, 0.0]])
    values = np.array([0.0, 0.5, -0.5, 9.0])
    # query row 0 against rows 1-3, k=2: rows 1 (similar) and 2 (orthogonal, weight 0) are the two nearest
    got = crossval.neighbour_mean(embeddings, np.array([0]), np.array([1, 2, 3]), values, k=2)
    assert got == pytest.approx([0.5])
    # k larger than the bank is capped, and the opposite row (negative similarity) still counts nothing
    assert crossval.neighbour_mean(embeddings, np.array([0]), np.array([1, 2, 3]), values, k=10) == pytest.approx([0.5])


def test_difficulty_residuals_are_centred_per_source() -> None:
    rows, _ = _rows()
    use = np.array([not r.val for r in rows])
    residual = crossval.difficulty_residuals(rows, data.TargetConfig(soft=0), use)
    assert residual[use].mean() == pytest.approx(0.0, abs=1e-12)
    assert (residual[~use] == 0).all()
    hard = np.array([r.weak == 0.0 for r in rows])
    assert (residual[use & hard] > 0).all() and (residual[use & ~hard] < 0).all()


def test_neighbour_scores_cover_training_and_validation_rows_apart() -> None:
    rows, inputs = _rows()
    embeddings = inputs / np.linalg.norm(inputs, axis=1, keepdims=True)
    train, val = crossval.neighbour_scores(rows, embeddings, data.TargetConfig(soft=0), k=5)
    is_val = np.array([r.val for r in rows])
    assert np.isnan(train[is_val]).all() and not np.isnan(train[~is_val]).any()
    assert np.isnan(val[~is_val]).all() and not np.isnan(val[is_val]).any()
    hard = np.array([r.weak == 0.0 for r in rows])
    assert train[hard & ~is_val].mean() > train[~hard & ~is_val].mean()





def test_the_script_prints_both_tables_for_a_small_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end with the shipped encoder on 100 tiny MMLU/GSM8K rows: the folds, the baselines, the neighbour
    blend on both the training folds and the validation split, and the JSON."""
    import json

    lines = [_line(i, f"subject {s} item {i}", "mmlu", f"s{s}") for s in range(10) for i in range(6)]
    lines += [_line(i, f"word problem {i}", "gsm8k", "gsm8k") for i in range(40)]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = Path(__file__).resolve().parents[2] / "router" / "model"
    out = tmp_path / "cv.json"
    own = _own_sets(tmp_path / "sets")
    script_main("crossval_router")(
        [
            "--eval-sets",
            str(own),
            "--resamples",
            "50",
            "--data-dir",
            str(data_dir),
            "--encoder-dir",
            str(model),
            "--work-dir",
            str(tmp_path / "work"),
            "--knn",
            "3",
            "--knn-beta",
            "0.5",
            "--no-tfidf",
            "--json",
            str(out),
            "--threads",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert "out of fold" in printed and "validation split" in printed
    assert "bootstrap intervals" in printed and "own evaluation sets" in printed
    results = json.loads(out.read_text())
    assert set(results["out_of_fold"]) == {"head", "length", "k3 b0.5"}
    lo, hi = results["intervals"]["gsm8k"]["apgr"]
    assert lo <= results["out_of_fold"]["head"]["gsm8k"]["apgr"] <= hi and lo < hi
    documents = results["eval_sets"]["documents"]
    assert set(documents) == {"head", "length"}
    assert documents["length"]["auroc"] == 1.0  # the toy set's analyses are the longer rows
    assert set(documents["head"]["slices"]) == {"manual", "paper"}
    assert set(results["eval_sets"]["languages"]["head"]["slices"]) == {"de", "ja"}
    assert set(results["validation"]) == {"head", "k3 b0.5"}
    # the hard prompts' words ("prove", "design", "derive") separate them: the folds' heads rank them first
    assert results["out_of_fold"]["head"]["gsm8k"]["apgr"] > 0.6
    assert results["validation"]["head"]["gsm8k"]["n"] + results["out_of_fold"]["head"]["gsm8k"]["n"] == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--knn", "0"], "--knn"),
        (["--knn", "x"], "--knn"),
        (["--knn-beta", "-1"], "--knn-beta"),
        (["--c", "0"], "--c"),
        (["--everyday", "-1"], "--everyday"),
        (["--threads", "0"], "--threads"),
        (["--resamples", "0"], "--resamples"),
        (["--eval-sets", "no-such-dir"], "--eval-sets"),
        (["--encoder-dir", "no-such-dir"], "--encoder-dir"),
        ([], "--data-dir"),  # the data directory holds none of the data files
    ],
)
def test_bad_crossval_options_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        script_main("crossval_router")(["--data-dir", str(tmp_path), *args])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("line", ["{not json", '{"prompt": "hi"}'])
def test_a_malformed_data_file_exits_2_naming_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    (tmp_path / "train.jsonl").write_text(line + "\n")
    with pytest.raises(SystemExit) as stopped:
        script_main("crossval_router")(["--data-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--data-dir" in capsys.readouterr().err
