"""Format-2 model directories: a sentence encoder + a numpy routing head over [embedding, prompt features]."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from router import Classifier, InferenceError, ModelLoadError, Router
from router.features import FEATURES, SCAN_LIMIT, compute
from router.head import Head, gelu
from tests.helpers import HIDDEN, NAMES, build_format2_dir, make_head
from tests.router.conftest import words

# ruff: noqa: SLF001 (the tests rebuild a classifier from a loaded one's parts)


@pytest.fixture
def format2_dir(tmp_path: Path) -> Path:
    return build_format2_dir(tmp_path / "model2")


def reference_score(directory: Path, text: str) -> float:
    """The score computed by hand from the parts: mean-pool, normalise, append features, run the head."""
    loaded = Router.load(directory)
    ids = loaded.classifier.token_ids([text])[0]
    table = numpy_helper.to_array(onnx.load(str(directory / "model.onnx")).graph.initializer[0])
    vector = table[ids].astype(np.float64).mean(axis=0)
    vector /= np.linalg.norm(vector)
    row = np.concatenate([vector, compute([text], NAMES)[0]])
    with np.load(directory / "head.npz") as arrays:
        x = (row - arrays["input_mean"]) / arrays["input_scale"]
        x = gelu(x @ arrays["w0"] + arrays["b0"]) @ arrays["w1"] + arrays["b1"]
    return 1.0 / (1.0 + math.exp(-float(x[0])))


def test_format2_score_equals_the_hand_computed_pipeline(format2_dir: Path) -> None:
    texts = [words(3, 5), words(40, 30) + " 12 apples and 7 pears", "A. w1\nB. w2\nC. w3"]
    scores = Router.load(format2_dir).score(texts)
    assert scores == pytest.approx([reference_score(format2_dir, t) for t in texts], abs=1e-6)
    assert len(set(scores)) == 3


def test_format2_features_change_the_score(format2_dir: Path) -> None:
    loaded = Router.load(format2_dir)
    # same tokens (digits are unknown words here), different number count
    assert loaded.score(["w1 w2 w3"]) != loaded.score(["w1 w2 w3 1 2 3 4 5 6"])


def test_format2_batch_scores_equal_one_by_one(format2_dir: Path) -> None:
    loaded = Router.load(format2_dir)
    texts = [words(i * 5, 1 + i % 20) for i in range(30)]
    assert loaded.score(texts) == pytest.approx([loaded.score([t])[0] for t in texts], abs=1e-12)


def test_format2_lone_surrogates_and_empty_prompts_are_scored(format2_dir: Path) -> None:
    scores = Router.load(format2_dir).score(["", "w1 \ud800 w2", "   "])
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_format2_head_inputs_have_embedding_then_features(format2_dir: Path) -> None:
    rows = Router.load(format2_dir).classifier.head_inputs([words(0, 4), "12 34"])
    assert rows.shape == (2, HIDDEN + len(NAMES))
    assert np.linalg.norm(rows[0, :HIDDEN]) == pytest.approx(1.0)
    assert rows[1, HIDDEN:].tolist() == pytest.approx(compute(["12 34"], NAMES)[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": ["log_chars", "no_such_feature"]}, "unknown feature 'no_such_feature'"),
        ({"features": "log_chars"}, "'features' must be a list"),
        ({"head": "../head.npz"}, "'head' must be a file name"),
        ({"head": ""}, "'head' must be a file name"),
    ],
)
def test_bad_format2_metadata_raises_model_load_error(
    format2_dir: Path, change: dict[str, object], message: str
) -> None:
    meta = json.loads((format2_dir / "router.json").read_text()) | change
    (format2_dir / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=message):
        Router.load(format2_dir)


def test_missing_head_file_raises_model_load_error(format2_dir: Path) -> None:
    (format2_dir / "head.npz").unlink()
    with pytest.raises(ModelLoadError, match="routing head file not found"):
        Router.load(format2_dir)


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_corrupt_head_file_raises_model_load_error(format2_dir: Path, content: bytes) -> None:
    (format2_dir / "head.npz").write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a valid routing head"):
        Router.load(format2_dir)


def test_head_of_the_wrong_width_raises_model_load_error(format2_dir: Path) -> None:
    make_head(HIDDEN + len(NAMES) + 1).save(format2_dir / "head.npz")
    with pytest.raises(ModelLoadError, match="head takes 8 inputs"):
        Router.load(format2_dir)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input_mean": np.zeros(2), "input_scale": np.ones(2), "w0": np.zeros((2, 1))}, "missing array 'b0'"),
        (
            {"input_mean": np.zeros(2), "input_scale": np.zeros(2), "w0": np.zeros((2, 1)), "b0": np.zeros(1)},
            "positive",
        ),
        (
            {"input_mean": np.zeros(2), "input_scale": np.ones(2), "w0": np.zeros((3, 1)), "b0": np.zeros(1)},
            "do not take",
        ),
        (
            {"input_mean": np.zeros(2), "input_scale": np.ones(2), "w0": np.zeros((2, 2)), "b0": np.zeros(2)},
            "one output",
        ),
        (
            {"input_mean": np.zeros(2), "input_scale": np.ones(2), "w0": np.full((2, 1), np.nan), "b0": np.zeros(1)},
            "non-finite",
        ),
    ],
)
def test_invalid_head_arrays_are_rejected(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "head.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        Head.load(path)


def test_head_save_and_load_round_trip(tmp_path: Path) -> None:
    head = make_head(5)
    head.save(tmp_path / "h.npz")
    x = np.random.default_rng(3).normal(size=(4, 5))
    assert Head.load(tmp_path / "h.npz").logits(x) == pytest.approx(head.logits(x), rel=1e-5, abs=1e-5)


def test_non_finite_head_output_raises_inference_error(format2_dir: Path) -> None:
    huge = Head(
        mean=np.zeros(HIDDEN + len(NAMES)),
        scale=np.full(HIDDEN + len(NAMES), 1e-300),
        layers=[(np.full((HIDDEN + len(NAMES), 1), 1e300), np.zeros(1))],
    )
    parts = Router.load(format2_dir).classifier
    broken = Classifier(session=parts._session, tokenizer=parts._tokenizer, meta=parts.meta, head=huge)
    with pytest.raises(InferenceError, match="non-finite"):
        broken.score([words(1, 3)])


def test_format1_model_rejects_a_head(model_dir: Path) -> None:
    parts = Router.load(model_dir).classifier
    with pytest.raises(ValueError, match="only a format-2 model"):
        Classifier(session=parts._session, tokenizer=parts._tokenizer, meta=parts.meta, head=make_head(3))


def test_headless_format2_classifier_refuses_to_score(format2_dir: Path) -> None:
    parts = Router.load(format2_dir).classifier
    bare = Classifier(session=parts._session, tokenizer=parts._tokenizer, meta=parts.meta)
    assert bare.head_inputs([words(1, 2)]).shape == (1, HIDDEN + len(NAMES))
    with pytest.raises(InferenceError, match="without a routing head"):
        bare.score([words(1, 2)])


def test_every_feature_is_finite_on_odd_text() -> None:
    texts = [
        "",
        "\x00\x01",
        "🤖" * 50,
        "1" * 100_000,
        "A. a\nB. b\n",
        "```python\ndef f():\n    return 1\n```",
        "$x^2$",
    ]
    rows = compute(texts, list(FEATURES))
    assert all(math.isfinite(v) for row in rows for v in row)
    assert rows[4][list(FEATURES).index("choices")] == 1.0


def test_long_text_features_scan_only_the_ends_but_count_every_character() -> None:
    middle = "7 " * (3 * SCAN_LIMIT)
    text = "a " * SCAN_LIMIT + middle + "b " * SCAN_LIMIT
    (row,) = compute([text], ["log_chars", "log_numbers"])
    assert row[0] == pytest.approx(math.log1p(len(text)))
    assert row[1] == pytest.approx(0.0)  # the numbers sit only in the unscanned middle
