"""scripts/train_doc_head.py's pieces: the class weighting, the leave-one-source-out folds that choose the penalty and
the weighting, the later document rows it reads, and its refusals of bad options (before any data is read)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.training import SCRIPTS
from training.data import VAL_SALT, hash_fraction


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_doc_head_script", SCRIPTS / "train_doc_head.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _module()


def test_source_weighting_gives_every_source_and_label_the_same_total_weight() -> None:
    origin = np.array(["a"] * 6 + ["b"] * 3 + ["b"])
    y = np.array([0] * 6 + [1] * 3 + [0])
    assert script.cell_weights(origin, y, "none") is None
    w = script.cell_weights(origin, y, "source")
    totals = {(o, label): w[(origin == o) & (y == label)].sum() for o, label in {("a", 0), ("b", 1), ("b", 0)}}
    assert np.allclose(list(totals.values()), len(y) / 3) and np.isclose(w.sum(), len(y))


def test_out_of_source_scores_each_source_with_a_head_that_never_saw_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    origin = np.array(["a"] * 20 + ["b"] * 20 + ["c"] * 20)
    y = np.tile([0, 1], 30)
    x = rng.normal(size=(60, 4)) + y[:, None]
    seen: list[set[str]] = []
    real_fit = script.fit

    def recording_fit(xs: np.ndarray, ys: np.ndarray, os: np.ndarray, c: float, weighting: str) -> Any:
        seen.append(set(os.tolist()))
        return real_fit(xs, ys, os, c, weighting)

    monkeypatch.setattr(script, "fit", recording_fit)
    logits = script.out_of_source(x, y, origin, 1.0, "source")
    assert sorted(map(sorted, seen)) == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert logits[y == 1].mean() > logits[y == 0].mean()  # the signal is shared by the sources here


def test_the_later_document_rows_are_read_when_present_less_their_validation_groups(tmp_path: Path) -> None:
    assert script.more_rows(tmp_path) == []
    rows = [{"prompt": f"Who is {g}?", "target": 0.1, "source": "fairytaleqa", "group": f"fairytaleqa:{g}"}
            for g in range(50)]
    (tmp_path / script.MORE_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    kept = script.more_rows(tmp_path)
    held = [r for r in rows if hash_fraction(r["group"], VAL_SALT) < 0.2]
    assert held and len(kept) == len(rows) - len(held)
    assert not {r["group"] for r in kept} & {r["group"] for r in held}


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--c", "0"], "--c values must be positive"), (["--weighting", "log"], "invalid choice: 'log'"),
     (["--c", "nan"], "--c values must be positive")],
)
def test_bad_options_are_refused_before_any_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    (tmp_path / "doc_qa.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(SystemExit):
        script.main(["--data-dir", str(tmp_path / "none"), "--extra-dir", str(tmp_path), "--out", str(tmp_path),
                     *options])
    assert message in capsys.readouterr().err


def test_an_extra_directory_without_document_rows_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        script.main(["--data-dir", str(tmp_path), "--extra-dir", str(tmp_path), "--out", str(tmp_path)])
    assert "has no doc_qa.jsonl" in capsys.readouterr().err
