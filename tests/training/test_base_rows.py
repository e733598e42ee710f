"""``base_rows.npz``: what a head refit needs without the data, its fidelity, licences and the shipped file."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import numpy as np
import pytest

from router.head import Head
from router.lexical import Lexical
from tests.helpers import build_format2_dir, with_word_term
from training import base_rows, data
from training.base_rows import BaseRowsError, RowSet, Terms, head_logits
from training.metrics import routing_curve
from training.pipeline import sigmoid

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "router" / "model"


def test_stored_word_counts_give_the_runtime_word_term_exactly() -> None:
    texts = ["Prove that sqrt 2 is irrational; prove it twice", "", "hi hi hi hi", "x" * 5000 + " y y"]
    rng = np.random.default_rng(0)
    words = Lexical(idf=rng.uniform(1, 3, 1 << 12), weight=rng.normal(size=1 << 12))
    terms = Terms.of(texts, 12)
    assert terms.dot(terms.tfidf(words.idf), words.weight) == pytest.approx(words.logits(texts), abs=1e-12)
    picked = terms.take(np.array([2, 0]))
    assert picked.dot(picked.tfidf(words.idf), words.weight) == pytest.approx(words.logits([texts[2], texts[0]]))
    with pytest.raises(BaseRowsError, match="2\\*\\*12 buckets"):
        terms.tfidf(np.ones(1 << 10))


def _rows(n: int, source: str, *, seed: int, width: int) -> tuple[list[data.Row], np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = [data.Row(f"{source} zebraquux {i} about w{i % 17} and w{i % 5}", source, "g", f"{source}{i}",
                     float(i % 2), 1.0) for i in range(n)]
    return rows, rng.normal(size=(n, width)) * 0.2


def _model_with_rows(tmp: Path) -> Path:
    """A fixture format-2 model with a word term and base rows of three sources, one of them chat."""
    model = with_word_term(build_format2_dir(tmp / "model"))
    width = Head.load(model / "head.npz").input_size
    train, x_train = _rows(30, "mmlu", seed=1, width=width)
    chat, x_chat = _rows(10, "chat", seed=2, width=width)
    val, x_val = _rows(20, "gsm8k", seed=3, width=width)
    base_rows.export(model, train + chat, val, data.TargetConfig(), np.concatenate([x_train, x_chat]), x_val, 3)
    return model


def test_written_rows_load_back_close_to_the_originals_and_leave_chat_out(tmp_path: Path) -> None:
    model = _model_with_rows(tmp_path)
    loaded = base_rows.load(model)
    assert sorted(set(loaded.train.source.tolist())) == ["mmlu"]  # chat (CC BY-NC 4.0) is not written
    assert len(loaded.train) == 30 and len(loaded.val) == 20
    assert set(loaded.meta["licences"]) == {"mmlu", "gsm8k"} and "chat" in loaded.meta["left_out"]
    head = Head.load(model / "head.npz")
    width = head.input_size
    _, x_val = _rows(20, "gsm8k", seed=3, width=width)
    texts = [f"gsm8k zebraquux {i} about w{i % 17} and w{i % 5}" for i in range(20)]
    # int8 embeddings: the scores move by far less than any routing decision cares about
    assert sigmoid(head_logits(head, loaded.val)) == pytest.approx(sigmoid(head.logits(x_val, texts)), abs=5e-3)
    assert loaded.val.weak.tolist() == [float(i % 2) for i in range(20)]
    assert np.all(loaded.train.weight > 0)


def test_no_prompt_text_is_stored(tmp_path: Path) -> None:
    model = _model_with_rows(tmp_path)
    with np.load(model / base_rows.FILE, allow_pickle=False) as arrays:
        strings = [str(x) for name in arrays.files if arrays[name].dtype.kind == "U" for x in arrays[name].ravel()]
    assert strings and not any("zebraquux" in s for s in strings)


def test_rows_made_with_another_encoder_are_refused(tmp_path: Path) -> None:
    model = _model_with_rows(tmp_path)
    (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(BaseRowsError, match="another encoder.*--data-dir"):
        base_rows.load(model)


def test_a_model_without_rows_says_to_pass_data_dir(tmp_path: Path) -> None:
    with pytest.raises(BaseRowsError, match="no base_rows.npz.*--data-dir"):
        base_rows.load(build_format2_dir(tmp_path / "bare"))


def test_a_corrupt_file_is_refused_naming_it(tmp_path: Path) -> None:
    model = _model_with_rows(tmp_path)
    (model / base_rows.FILE).write_bytes(b"not a zip")
    with pytest.raises(BaseRowsError, match="not a readable base-rows file"):
        base_rows.load(model)


def test_a_source_without_a_recorded_licence_is_not_written(tmp_path: Path) -> None:
    model = build_format2_dir(tmp_path / "model")
    width = Head.load(model / "head.npz").input_size
    rows, x = _rows(5, "mystery", seed=0, width=width)
    with pytest.raises(BaseRowsError, match="no licence recorded.*mystery"):
        base_rows.write(model / base_rows.FILE, RowSet.from_rows(rows, x, None), RowSet.from_rows(rows, x, None),
                        model_dir=model, n_features=3)


def test_the_package_ships_the_file() -> None:
    line = re.search(r"^router = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert line is not None
    globs = json.loads(f"[{line.group(1)}]")
    assert any(fnmatch.fnmatch(f"model/{base_rows.FILE}", g) for g in globs)
    assert (SHIPPED / base_rows.FILE).stat().st_size <= 20_000_000


def test_the_shipped_rows_reproduce_the_shipped_validation_figures() -> None:
    """The stored validation rows, scored by the shipped head, give router.json's per-source APGR: the rows are the
    ones the head was validated on. The tolerance is the machine's, not the file's: int8 storage moves these
    figures by 0.001 at most, but the stored embeddings are those of the machine that exported the file, and int8
    ONNX kernels differ between CPUs (winogrande 0.564 here against 0.571 on the machine that trained the head)."""
    rows = base_rows.load(SHIPPED)
    meta = json.loads((SHIPPED / "router.json").read_text())
    assert meta["base_rows"]["encoder_sha256"] == rows.meta["encoder_sha256"]
    head = Head.load(SHIPPED / "head.npz")
    scores = sigmoid(head_logits(head, rows.val))
    for source, figures in meta["validation"]["router"].items():
        index = np.nonzero(rows.val.source == source)[0]
        if source == "chat" or "apgr" not in figures:  # chat's rows do not ship; the rest have no pair outcome
            assert source == "chat" or source in ("math", "arena", *data.EXTRA_SOURCES)
            continue
        assert len(index) == figures["n"]
        apgr = routing_curve(scores[index], rows.val.weak[index], rows.val.strong[index]).apgr
        assert apgr == pytest.approx(figures["apgr"], abs=0.01), source


def test_a_refit_of_the_shipped_head_without_feedback_keeps_its_scores() -> None:
    from training.retrain import RetrainConfig, fit_from

    rows = base_rows.load(SHIPPED)
    head = Head.load(SHIPPED / "head.npz")
    target = sigmoid(head_logits(head, rows.train))
    groups = np.array([data.INTERCEPT_GROUP.get(s, data.N_GROUPS - 1) for s in rows.train.source])
    refit = fit_from(SHIPPED / "head.npz", rows.train.inputs, target, rows.train.weight, groups,
                     RetrainConfig(steps=50), rows.train.terms)
    before, after = sigmoid(head_logits(head, rows.val)), sigmoid(head_logits(refit, rows.val))
    assert np.abs(after - before).max() < 0.01


def test_the_pipeline_export_writes_the_rows_beside_the_model(tmp_path: Path) -> None:
    """scripts/train_router.py's export (training.pipeline.train) writes base_rows.npz for the encoder it used."""
    pytest.importorskip("sklearn")  # the joint head fit and the TF-IDF baseline (the dev and train extras)
    from tests.helpers import retrain_data as _data
    from training.head import JointConfig
    from training.pipeline import train

    encoder_dir = build_format2_dir(tmp_path / "encoder")
    out = tmp_path / "model"
    meta = train(_data(tmp_path), out, tmp_path / "work", targets=data.TargetConfig(), head=JointConfig(bits=10),
                 encoder_dir=encoder_dir, threads=1)
    rows = base_rows.load(out)
    assert meta["base_rows"]["rows"] == {"train": len(rows.train), "val": len(rows.val)}
    assert len(rows.train) + len(rows.val) == 400 and rows.train.terms is not None and rows.train.terms.bits == 10
    head = Head.load(out / "head.npz")
    written = json.loads((out / "router.json").read_text())
    for source in ("mmlu", "gsm8k"):  # the stored rows give the validation figures the export wrote
        index = np.nonzero(rows.val.source == source)[0]
        apgr = routing_curve(sigmoid(head_logits(head, rows.val))[index], rows.val.weak[index],
                             rows.val.strong[index]).apgr
        assert apgr == pytest.approx(written["validation"]["router"][source]["apgr"], abs=0.01)
