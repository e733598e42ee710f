"""The joint head (embedding + features + word term) fitted by training.head.fit_joint, read back by the runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")  # the train extra; CI without it skips these

from router.head import Head  # noqa: E402
from training.head import JointConfig, document_frequency_idf, fit_joint, word_matrix  # noqa: E402

EASY = ["write a haiku about {}", "translate {} into spanish", "say hello to {}", "a short poem on {}"]
HARD = [
    "prove the theorem about {} rigorously",
    "derive the equation of {} step by step",
    "design a distributed system for {}",
    "prove that {} is irrational",
]
TOPICS = [f"topic{i}" for i in range(40)]


def _rows() -> tuple[list[str], np.ndarray]:
    texts, target = [], []
    for i, topic in enumerate(TOPICS):
        texts += [EASY[i % 4].format(topic), HARD[i % 4].format(topic)]
        target += [0.1, 0.9]
    return texts, np.array(target)


def test_word_matrix_rows_are_what_the_runtime_scores() -> None:
    texts, _ = _rows()
    idf = document_frequency_idf(texts, 10)
    matrix = word_matrix(texts + [""], idf)
    weight = np.random.default_rng(0).normal(size=len(idf))
    from router.lexical import Lexical

    runtime = Lexical(idf=idf, weight=weight).logits(texts + [""])
    assert matrix @ weight == pytest.approx(runtime, abs=1e-9)
    assert matrix.shape == (len(texts) + 1, 1024)


def test_fit_joint_learns_from_words_and_round_trips(tmp_path: Path) -> None:
    texts, target = _rows()
    # the dense inputs carry no signal: only the words separate easy from hard
    inputs = np.random.default_rng(1).normal(size=(len(texts), 6))
    weight = np.ones(len(texts))
    groups = np.zeros(len(texts), dtype=int)
    head = fit_joint(inputs, texts, target, weight, groups, JointConfig(bits=12, c=10.0))
    assert head.lexical is not None and head.lexical.bits == 12
    held_easy = ["write a haiku about the sea", "say hello to my aunt"]
    held_hard = ["prove the theorem about primes rigorously", "design a distributed system for payments"]
    x = np.zeros((4, 6))
    logits = head.logits(x, held_easy + held_hard)
    assert max(logits[:2]) < min(logits[2:])
    head.save(tmp_path / "head.npz")
    again = Head.load(tmp_path / "head.npz").logits(x, held_easy + held_hard)
    assert again == pytest.approx(logits, rel=1e-4, abs=1e-4)


def test_fit_joint_ignores_rows_without_weight() -> None:
    texts, target = _rows()
    inputs = np.zeros((len(texts), 3))
    weight = np.ones(len(texts))
    weight[::2] = 0.0  # drop every easy row: nothing is left to contrast with
    groups = np.zeros(len(texts), dtype=int)
    head = fit_joint(inputs, texts, target, weight, groups, JointConfig(bits=10))
    assert head.lexical is not None
    # idf was computed from the kept (hard) rows only: "haiku" appears in none of them
    from router.lexical import counts

    (bucket,), _ = counts("haiku", 10)
    assert head.lexical.idf[bucket] == pytest.approx(np.log((1 + 40) / 1) + 1)
