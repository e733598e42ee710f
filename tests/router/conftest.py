"""Fixtures that build a tiny but real model directory (ONNX graph + tokenizer + router.json) on disk.

The fixture model is a masked mean of a fixed random embedding, so its output depends on every real token
and on nothing under the padding mask; that makes padding, ordering and truncation bugs visible while the
test suite stays independent of the trained model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import router

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = [f"w{i}" for i in range(500)]
SHIPPED_MODEL_DIR = Path(router.__file__).parent / "model"

MakeModelDir = Callable[..., Path]
Specials = Literal["bert", "template", "none"]


def build_onnx(vocab_size: int, *, token_type_ids: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Logits = mean over unmasked positions of E[input_ids] (+ sum of token_type_ids, which must be 0)."""
    embedding = np.random.default_rng(seed).normal(size=(vocab_size, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["vectors"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask_3d"]),
        helper.make_node("Mul", ["vectors", "mask_3d"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_f", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["total", "count"], ["mean" if token_type_ids else "logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    if token_type_ids:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "seq"]))
        nodes += [
            helper.make_node("Cast", ["token_type_ids"], ["types_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["types_f", "axis1"], ["type_total"], keepdims=1),
            helper.make_node("Add", ["mean", "type_total"], ["logits"]),
        ]
    graph = helper.make_graph(
        nodes,
        "fixture_router",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(embedding, "embedding"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_tokenizer(*, specials: Specials = "bert") -> Tokenizer:
    """A WordLevel tokenizer over w0..w499 with BERT's [CLS]/[SEP], or <s>/</s> added by a template, or none."""
    names = SPECIALS if specials == "bert" else ["[PAD]", "[UNK]", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(names + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if specials == "template":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
        )
    # Saved settings the runtime must switch off: it truncates and pads by itself.
    tokenizer.enable_truncation(max_length=5)
    tokenizer.enable_padding(length=40)
    return tokenizer


def default_meta() -> dict[str, Any]:
    """router.json content, including informational keys the runtime has to ignore."""
    return {
        "format": 1,
        "labels": ["weak_ok", "strong_needed"],
        "strong_label": "strong_needed",
        "max_length": 16,
        "truncation": "head_tail",
        "head_fraction": 0.5,
        "pad_token_id": 0,
        "quantiles": [[i / 100, i / 100] for i in range(101)],
        "version": "fixture-1",
        "metrics": {"auroc": 0.5},
        "created": "2026-01-01T00:00:00Z",
    }


@pytest.fixture
def make_model_dir(tmp_path: Path) -> MakeModelDir:
    """Return a factory writing a fixture model directory; keyword options vary one aspect at a time."""
    counter = iter(range(1000))

    def make(*, token_type_ids: bool = False, specials: Specials = "bert", **meta_changes: Any) -> Path:
        directory = tmp_path / f"model{next(counter)}"
        directory.mkdir()
        tokenizer = build_tokenizer(specials=specials)
        tokenizer.save(str(directory / "tokenizer.json"))
        onnx.save(build_onnx(tokenizer.get_vocab_size(), token_type_ids=token_type_ids), str(directory / "model.onnx"))
        meta = default_meta() | meta_changes
        (directory / "router.json").write_text(json.dumps(meta), encoding="utf-8")
        return directory

    return make


@pytest.fixture
def model_dir(make_model_dir: MakeModelDir) -> Path:
    """A valid fixture model directory."""
    return make_model_dir()


@pytest.fixture
def fixture_router(model_dir: Path) -> router.Router:
    """The fixture model, loaded through the public entry point."""
    return router.Router.load(model_dir)


def words(start: int, count: int) -> str:
    """Space-separated vocabulary words w{start}..; each becomes exactly one token."""
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))
