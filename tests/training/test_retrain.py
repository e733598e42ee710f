"""``route-llm retrain`` fast mode on a tiny format-2 model: no torch, but the train extra's scipy."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

pytest.importorskip("scipy")  # training.evaluate's per-source table; CI without the train extra skips these

from router import Router  # noqa: E402
from tests.router.conftest import build_onnx, build_tokenizer, default_meta  # noqa: E402
from tests.router.test_format2 import build_format2_dir  # noqa: E402
from training.retrain import RetrainConfig, RetrainError, compare, retrain  # noqa: E402


def _format2(tmp: Path) -> Path:
    return build_format2_dir(tmp / "current")


def _prompt(i: int, hard: bool) -> str:
    return " ".join(f"w{(i * 7 + k) % 400 + 20}" for k in range(6)) + (" w9 w9" if hard else " w3")


def _data(tmp: Path) -> Path:
    """MMLU-like subjects and GSM8K-like rows; "strong needed" iff the prompt has w9."""
    directory = tmp / "data"
    directory.mkdir()
    rows = []
    for i in range(400):
        hard = i % 3 == 0
        benchmark, category = ("mmlu", f"subject{i % 20}") if i < 300 else ("gsm8k", "gsm8k")
        rows.append({"prompt": _prompt(i, hard), "weak_score": 0.0 if hard else 1.0, "strong_score": 1.0,
                     "benchmark": benchmark, "category": category})
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def _feedback(tmp: Path, n: int = 200) -> Path:
    path = tmp / "feedback.jsonl"
    rows = [{"prompt": _prompt(1000 + i, i % 2 == 0) + f" w{i % 13 + 1}", "weak_score": 0.0 if i % 2 == 0 else 1.0,
             "strong_score": 1.0} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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


def test_too_little_feedback_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RetrainError, match="at least 10"):
        retrain(_data(tmp_path), [_feedback(tmp_path, n=12)], current_dir=_format2(tmp_path),
                out_dir=tmp_path / "models", work_dir=tmp_path / "work", config=RetrainConfig())


def _side(feedback: float, mmlu: float) -> dict[str, object]:
    return {"feedback": {"n": 50, "apgr": feedback}, "base": {"mmlu": {"n": 100, "apgr": mmlu}}}


@pytest.mark.parametrize(("candidate", "accepted", "why"), [
    (_side(0.70, 0.595), True, "better on the held-out feedback"),
    (_side(0.60, 0.70), False, "not better on the held-out feedback"),
    (_side(0.70, 0.58), False, "base validation source mmlu fell 0.020"),
])
def test_the_candidate_must_gain_on_feedback_and_lose_at_most_the_tolerance(
        candidate: dict[str, object], accepted: bool, why: str) -> None:
    ok, verdict, table = compare(_side(0.60, 0.60), candidate, 0.01)  # type: ignore[arg-type]
    assert ok is accepted and why in verdict and "may fall <= 0.010" in table


def test_a_head_with_a_word_term_keeps_it_through_retraining(tmp_path: Path) -> None:
    from router.head import Head
    from tests.router.test_lexical import with_word_term

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
    from tests.router.test_lexical import with_word_term

    current = with_word_term(_format2(tmp_path))
    result = retrain(_data(tmp_path), [_feedback(tmp_path)], current_dir=current, out_dir=tmp_path / "models",
                     work_dir=tmp_path / "work", config=RetrainConfig(tolerance=1.0, threads=1, words="refit"))
    assert result.accepted and result.path is not None, result.table
    before, after = Head.load(current / "head.npz"), Head.load(result.path / "head.npz")
    assert before.lexical is not None and after.lexical is not None
    assert after.lexical.idf.tolist() == before.lexical.idf.tolist()  # the vocabulary statistics stay
    hard_word = tfidf("w9", before.lexical.idf)[0]  # "w9" marks the prompts that need the strong model
    assert np.all(after.lexical.weight[hard_word] > before.lexical.weight[hard_word])  # pushed towards "strong"
