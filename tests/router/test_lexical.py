"""The word term of a format-2 head (router.lexical): tokenisation, hashing, validation, loading and scoring."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from router import ModelLoadError, Router, lexical
from router.head import Head
from router.lexical import SCAN_LIMIT, Lexical, counts, grams, tfidf
from tests.helpers import BITS, build_format2_dir, make_head, make_lexical, with_word_term


def test_grams_are_lowercased_words_digit_runs_symbols_and_adjacent_pairs() -> None:
    assert grams("Prove x^2 >= 0, in 2024!") == [
        "prove", "x", "^", "2", ">", "=", "0", ",", "in", "2024", "!",
        "prove x", "x ^", "^ 2", "2 >", "> =", "= 0", "0 ,", ", in", "in 2024", "2024 !",
    ]  # fmt: skip
    assert grams("") == []
    assert grams("   \n\t ") == []


def test_long_prompts_keep_only_both_ends() -> None:
    middle = "zebra " * 5000
    text = "a" * SCAN_LIMIT + middle + "b" * SCAN_LIMIT
    assert "zebra" not in grams(text)
    assert grams("start " + middle + " end")[0] == "start" and "end" in grams("start " + middle + " end")


def test_buckets_are_crc32_of_the_gram_and_counts_are_sublinear() -> None:
    index, values = counts("hi hi hi", 20)
    mask = (1 << 20) - 1
    expected = sorted({zlib.crc32(b"hi") & mask: 1 + math.log(3), zlib.crc32(b"hi hi") & mask: 1 + math.log(2)}.items())
    assert index.tolist() == [k for k, _ in expected]
    assert values.tolist() == pytest.approx([v for _, v in expected])


def test_tfidf_rows_are_unit_length_and_empty_prompts_score_zero() -> None:
    idf = np.full(1 << BITS, 2.0)
    _, values = tfidf("the quick brown fox", idf)
    assert float(np.dot(values, values)) == pytest.approx(1.0)
    assert make_lexical().logits(["", "  ", "\ud800"]).shape == (3,)
    assert make_lexical().logits(["", "  "]).tolist() == [0.0, 0.0]


def test_word_term_is_the_dot_product_of_the_weights_and_the_tfidf_row() -> None:
    term = make_lexical()
    text = "Derive the Black-Scholes PDE step by step"
    index, values = tfidf(text, term.idf)
    assert term.logits([text])[0] == pytest.approx(float(np.dot(values, term.weight[index])))
    assert term.logits([text, "hello"])[1] == pytest.approx(term.logits(["hello"])[0])


@pytest.mark.parametrize(
    ("idf", "weight", "message"),
    [
        (np.ones(48), np.ones(48), "power-of-two"),
        (np.ones(64), np.ones(32), "power-of-two"),
        (np.ones((8, 8)), np.ones((8, 8)), "power-of-two"),
        (np.ones(1), np.ones(1), "power-of-two"),
        (np.zeros(64), np.ones(64), "positive"),
        (np.ones(64), np.full(64, np.inf), "finite"),
    ],
)
def test_invalid_word_terms_are_rejected(idf: np.ndarray, weight: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Lexical(idf=idf, weight=weight)


def test_head_with_word_term_round_trips_and_needs_the_texts(tmp_path: Path) -> None:
    dense = make_head(5)
    head = Head(mean=dense._mean, scale=dense._scale, layers=dense._layers, lexical=make_lexical())  # noqa: SLF001
    head.save(tmp_path / "h.npz")
    loaded = Head.load(tmp_path / "h.npz")
    x = np.random.default_rng(3).normal(size=(2, 5))
    texts = ["write a haiku about rain", "prove that there are infinitely many primes"]
    assert loaded.logits(x, texts) == pytest.approx(head.logits(x, texts), rel=1e-5, abs=1e-5)
    assert loaded.logits(x, texts) - dense.logits(x) == pytest.approx(make_lexical().logits(texts), rel=1e-4)
    with pytest.raises(ValueError, match="pass the prompt texts"):
        loaded.logits(x)
    with pytest.raises(ValueError, match="pass the prompt texts"):
        loaded.logits(x, texts[:1])


def test_head_file_with_half_a_word_term_is_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "h.npz", input_mean=np.zeros(2), input_scale=np.ones(2), w0=np.zeros((2, 1)),
             b0=np.zeros(1), lex_idf=np.ones(64))  # fmt: skip
    with pytest.raises(ValueError, match="come together"):
        Head.load(tmp_path / "h.npz")


def test_router_scores_with_the_word_term(tmp_path: Path) -> None:
    plain = Router.load(build_format2_dir(tmp_path / "plain"))
    worded = Router.load(with_word_term(build_format2_dir(tmp_path / "worded")))
    text = "w1 w2 w3"
    inputs = worded.classifier.head_inputs([text])
    head = Head.load(tmp_path / "worded" / "head.npz")
    z = float(head.logits(inputs, [text])[0])
    assert worded.score([text])[0] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-9)
    assert worded.score([text]) != plain.score([text])


@pytest.mark.parametrize("scheme", ["words12-md5", "", 3, ["words12-crc32"]])
def test_unknown_word_scheme_raises_model_load_error(tmp_path: Path, scheme: object) -> None:
    directory = with_word_term(build_format2_dir(tmp_path / "m"), scheme=scheme)
    with pytest.raises(ModelLoadError, match="'lexical' must be"):
        Router.load(directory)


def test_word_term_and_router_json_must_agree(tmp_path: Path) -> None:
    directory = with_word_term(build_format2_dir(tmp_path / "m"))
    meta = json.loads((directory / "router.json").read_text())
    del meta["lexical"]
    (directory / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="has a word term"):
        Router.load(directory)
    plain = build_format2_dir(tmp_path / "p")
    meta = json.loads((plain / "router.json").read_text()) | {"lexical": lexical.SCHEME}
    (plain / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="has no word term"):
        Router.load(plain)
