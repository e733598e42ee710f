"""The embedding cache of training runs: per prompt, so a run with one more source embeds only that source."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from router import Router
from router.classifier import encoder_sha256
from tests.router.conftest import SHIPPED_MODEL_DIR
from training import encoder


class CountingClassifier:
    """The shipped classifier, counting the prompts it is asked to embed."""

    def __init__(self) -> None:
        self.inner = Router.load(SHIPPED_MODEL_DIR, threads=1).classifier
        self.meta = self.inner.meta
        self.embedded: list[str] = []

    def head_inputs(self, prompts: list[str]) -> Any:
        self.embedded.extend(prompts)
        return self.inner.head_inputs(prompts)


def test_a_second_run_with_more_prompts_embeds_only_the_new_ones(tmp_path: Path) -> None:
    clf = CountingClassifier()
    first = ["what is the capital of Peru?", "prove that there are infinitely many primes", "hello"]
    a = encoder.cached_inputs(clf, first, tmp_path, SHIPPED_MODEL_DIR)  # type: ignore[arg-type]
    assert clf.embedded == first
    more = ["bonjour", *first, "bonjour"]  # a new prompt, twice
    b = encoder.cached_inputs(clf, more, tmp_path, SHIPPED_MODEL_DIR)  # type: ignore[arg-type]
    assert clf.embedded == [*first, "bonjour"]
    np.testing.assert_array_equal(b[1:4], a)
    np.testing.assert_array_equal(b[0], b[4])
    np.testing.assert_allclose(b, clf.inner.head_inputs(more), atol=1e-6)


def test_a_whole_list_file_of_the_earlier_layout_is_read_and_seeds_the_store(tmp_path: Path) -> None:
    clf = CountingClassifier()
    prompts = ["alpha", "beta"]
    settings: list[Any] = [clf.meta.max_length, clf.meta.head_fraction, list(clf.meta.features)]
    if clf.meta.text_prefix:
        settings.append(clf.meta.text_prefix)
    digest = hashlib.sha256(encoder_sha256(SHIPPED_MODEL_DIR))  # model.onnx and embedding.bin
    digest.update(json.dumps(settings).encode())
    for prompt in prompts:
        digest.update(hashlib.sha256(prompt.encode()).digest())
    marked = np.full((2, len(clf.inner.head_inputs(["x"])[0])), 7.0, dtype=np.float32)  # not what the model says
    np.save(tmp_path / f"inputs-{digest.hexdigest()[:16]}.npy", marked)
    clf.embedded.clear()
    np.testing.assert_array_equal(encoder.cached_inputs(clf, prompts, tmp_path, SHIPPED_MODEL_DIR), marked)  # type: ignore[arg-type]
    again = encoder.cached_inputs(clf, ["beta", "gamma"], tmp_path, SHIPPED_MODEL_DIR)  # type: ignore[arg-type]
    assert clf.embedded == ["gamma"]
    np.testing.assert_array_equal(again[0], marked[1])


def test_prompts_whose_hash_ends_in_a_zero_byte_are_found_again(tmp_path: Path) -> None:
    clf = CountingClassifier()
    prompts = [f"prompt {i}" for i in range(2000)]
    ending = [p for p in prompts if hashlib.sha256(p.encode()).digest()[-1] == 0][:2]
    assert ending  # about one prompt in 256
    encoder.cached_inputs(clf, ending, tmp_path, SHIPPED_MODEL_DIR)  # type: ignore[arg-type]
    clf.embedded.clear()
    encoder.cached_inputs(clf, ending, tmp_path, SHIPPED_MODEL_DIR)  # type: ignore[arg-type]
    assert clf.embedded == []
