"""Vocabulary pruning (training.vocab_prune): exact on the sample, every script still readable, and the shipped
encoder checked against vectors the unpruned encoder computed (stored: once a pruned encoder ships, the unpruned one
is not in CI)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from router.classifier import (
    EMBEDDING_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    encoder_files,
    encoder_sha256,
    load_session,
    load_tokenizer,
)
from tests.router.conftest import SHIPPED_MODEL_DIR
from training import vocab_prune
from training.encoder import ENCODER_FILE, classifier

REFERENCE = Path(__file__).with_name("e5_unpruned_reference.json")
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
# A small Unigram vocabulary: whole words score higher than their letters, so a word is one piece when it is kept.
PIECES = [
    ("▁hello", -2.0), ("▁world", -2.5), ("▁help", -3.0), ("▁low", -3.5), ("▁", -4.0), ("lo", -5.0), ("he", -5.0),
    ("wor", -5.5), ("ld", -5.5), ("h", -6.0), ("e", -6.0), ("l", -6.0), ("o", -6.0), ("w", -6.0), ("r", -6.0),
    ("d", -6.0), ("p", -6.0), ("Ж", -9.0), ("ß", -9.5),
]


def tiny_tokenizer_json() -> dict:
    vocab = [(token, 0.0) for token in SPECIAL] + PIECES + [("<mask>", 0.0)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.add_special_tokens([*SPECIAL, "<mask>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return json.loads(tokenizer.to_str())


def of(data: dict) -> Tokenizer:
    return Tokenizer.from_str(json.dumps(data))


def selection_for(data: dict, sample: list[str]) -> vocab_prune.Selection:
    used = vocab_prune.used_ids(of(data), sample)
    return vocab_prune.select(vocab_prune.unigram_vocab(data), used, vocab_prune.special_ids(data))


def test_sample_text_keeps_its_pieces_and_its_ids_map_one_to_one() -> None:
    data = tiny_tokenizer_json()
    sample = ["hello world", "low"]
    selection = selection_for(data, sample)
    pruned = vocab_prune.prune_tokenizer(data, selection)
    old, new = of(data), of(pruned)
    assert vocab_prune.same_tokens(old, new, selection, sample) == []
    assert new.encode("hello world").tokens == ["<s>", "▁hello", "▁world", "</s>"]
    # specials keep their ids (they come first); <mask> moves to the end of the shorter vocabulary
    assert [new.token_to_id(t) for t in SPECIAL] == [0, 1, 2, 3]
    assert new.token_to_id("<mask>") == new.get_vocab_size() - 1
    assert pruned["model"]["unk_id"] == 3
    assert "▁help" not in {piece for piece, _ in pruned["model"]["vocab"]}


def test_text_outside_the_sample_is_split_finer_but_never_unknown() -> None:
    data = tiny_tokenizer_json()
    selection = selection_for(data, ["hello"])
    new = of(vocab_prune.prune_tokenizer(data, selection))
    tokens = new.encode("help world Жß", add_special_tokens=False).tokens
    assert "<unk>" not in tokens
    assert "▁help" not in tokens and "▁world" not in tokens  # dropped: spelled with kept pieces instead
    assert "".join(tokens).replace("▁", " ").strip() == "help world Жß"
    assert vocab_prune.same_tokens(of(data), new, selection, ["help world"]) == [0]


def test_the_lowest_score_stays_so_unknown_characters_score_as_before() -> None:
    data = tiny_tokenizer_json()
    selection = selection_for(data, ["hello"])
    ids = set(selection.keep.tolist())
    assert SPECIAL.index("<unk>") in ids and len(SPECIAL) + PIECES.index(("ß", -9.5)) in ids
    without = vocab_prune.Selection(keep=np.array(sorted(ids - {len(SPECIAL) + len(PIECES) - 1})),
                                    counts={}, vocabulary=selection.vocabulary)
    with pytest.raises(vocab_prune.PruneError, match="lowest piece score"):
        vocab_prune.prune_tokenizer(data, without)


def test_a_dropped_special_token_or_a_foreign_tokenizer_is_refused() -> None:
    data = tiny_tokenizer_json()
    selection = selection_for(data, ["hello"])
    no_mask = vocab_prune.Selection(keep=selection.keep[:-1], counts={}, vocabulary=selection.vocabulary)
    with pytest.raises(vocab_prune.PruneError, match="<mask>"):
        vocab_prune.prune_tokenizer(data, no_mask)
    wordpiece = {"model": {"type": "WordPiece", "vocab": {"a": 0}}}
    with pytest.raises(vocab_prune.PruneError, match="not a Unigram"):
        vocab_prune.unigram_vocab(wordpiece)
    with pytest.raises(vocab_prune.PruneError, match="outside the vocabulary"):
        vocab_prune.select(vocab_prune.unigram_vocab(data), {10_000}, set())


def test_fill_adds_the_most_frequent_pieces_up_to_the_limit_and_never_drops_one() -> None:
    data = tiny_tokenizer_json()
    selection = selection_for(data, ["hello"])
    n = len(selection.keep)
    help_id, world_id = len(SPECIAL) + 2, len(SPECIAL) + 1
    filled = vocab_prune.fill(selection, {help_id: 5, world_id: 9, 0: 100}, n + 1)
    assert set(filled.keep.tolist()) == set(selection.keep.tolist()) | {world_id}
    assert filled.counts["frequent_in_wider_text"] == 1
    with pytest.raises(vocab_prune.PruneError, match="more than the limit"):
        vocab_prune.fill(selection, {}, n - 1)


def test_fill_by_score_adds_the_most_probable_pieces_and_names_its_reason() -> None:
    data = tiny_tokenizer_json()
    selection = selection_for(data, ["hello"])
    n = len(selection.keep)
    scores = vocab_prune.piece_scores(vocab_prune.unigram_vocab(data))
    filled = vocab_prune.fill(selection, scores, n + 2, reason="highest_unigram_score")
    added = set(filled.keep.tolist()) - set(selection.keep.tolist())
    # "▁world" (-2.5) and "▁help" (-3.0) are the best-scoring pieces "hello" does not use
    assert added == {len(SPECIAL) + 1, len(SPECIAL) + 2}
    assert filled.counts["highest_unigram_score"] == 2 and "frequent_in_wider_text" not in filled.counts


def gather_graph(rows: int) -> onnx.ModelProto:
    """out = concat(emb.word.packed[ids], emb.word.scale[ids]): the two tables the e5 graph gathers by token id."""
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 255, size=(rows, 2, 4), dtype=np.uint8)
    scale = rng.normal(size=(rows, 2, 1)).astype(np.float16)
    nodes = [
        helper.make_node("Gather", ["emb.word.packed", "input_ids"], ["p"]),
        helper.make_node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["emb.word.scale", "input_ids"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["pf", "sf"], ["out"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tables",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 2, 5])],
        [numpy_helper.from_array(packed, "emb.word.packed"), numpy_helper.from_array(scale, "emb.word.scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["out"], {"input_ids": np.array([ids], dtype=np.int64)})[0])


def test_the_graph_keeps_exactly_the_rows_of_the_kept_pieces() -> None:
    selection = vocab_prune.Selection(keep=np.array([0, 1, 2, 3, 7, 11]), counts={}, vocabulary=12)
    full = gather_graph(14)  # the packed table may be longer than the vocabulary (XLM-R's is padded)
    pruned = vocab_prune.prune_graph(full, selection)
    tables = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    assert tables["emb.word.packed"].shape[0] == 6 and tables["emb.word.scale"].shape[0] == 6
    old_ids = [0, 7, 11, 3, 7]
    new_ids = selection.old_to_new()[old_ids].tolist()
    assert new_ids == [0, 4, 5, 3, 4]
    assert np.array_equal(run(full, old_ids), run(pruned, new_ids))


def test_externalized_tables_live_in_their_own_file_and_run_the_same(tmp_path: Path) -> None:
    """The pruned graph with its tables in ``embedding.bin``: a small model.onnx, the same outputs, the encoder's
    digest covering both files, and a directory missing the table file refused with its name."""
    selection = vocab_prune.Selection(keep=np.array([0, 1, 2, 3, 7, 11]), counts={}, vocabulary=12)
    pruned = vocab_prune.prune_graph(gather_graph(14), selection)
    inline = tmp_path / "inline"
    inline.mkdir()
    onnx.save(pruned, str(inline / MODEL_FILE))
    outside = tmp_path / "outside"
    outside.mkdir()
    onnx.save(vocab_prune.externalize(copy.deepcopy(pruned), EMBEDDING_FILE), str(outside / MODEL_FILE))
    stored = onnx.load(str(outside / MODEL_FILE), load_external_data=False)
    tables = [i for i in stored.graph.initializer if i.name in vocab_prune.EMBEDDING_TABLES]
    assert len(tables) == 2 and all(i.data_location == TensorProto.EXTERNAL and not i.raw_data for i in tables)
    assert (outside / EMBEDDING_FILE).stat().st_size == 6 * 2 * 4 + 6 * 2 * 2  # uint8 rows and fp16 scales
    assert [p.name for p in encoder_files(outside)] == [MODEL_FILE, EMBEDDING_FILE]
    assert [p.name for p in encoder_files(inline)] == [MODEL_FILE]
    ids = [0, 4, 5, 3]
    session = ort.InferenceSession(str(outside / MODEL_FILE), providers=["CPUExecutionProvider"])
    got = session.run(["out"], {"input_ids": np.array([ids], dtype=np.int64)})[0]
    assert np.array_equal(got, run(pruned, ids))
    # the digest: model.onnx alone where the tables are inside (old caches stay valid), both files otherwise
    assert encoder_sha256(inline) == hashlib.sha256((inline / MODEL_FILE).read_bytes()).digest()
    before = encoder_sha256(outside)
    table = bytearray((outside / EMBEDDING_FILE).read_bytes())
    table[0] ^= 1
    (outside / EMBEDDING_FILE).write_bytes(bytes(table))
    assert encoder_sha256(outside) != before
    (outside / EMBEDDING_FILE).unlink()
    with pytest.raises(Exception, match=EMBEDDING_FILE):
        load_session(outside / MODEL_FILE)
    with pytest.raises(vocab_prune.PruneError, match="no initializer"):
        vocab_prune.externalize(copy.deepcopy(pruned), EMBEDDING_FILE, tables=("emb.word.packed", "missing"))


def test_a_graph_without_the_embedding_tables_or_with_too_few_rows_is_refused() -> None:
    selection = vocab_prune.Selection(keep=np.array([0, 1]), counts={}, vocabulary=20)
    with pytest.raises(vocab_prune.PruneError, match="rows for 20 pieces"):
        vocab_prune.prune_graph(gather_graph(14), selection)
    small = vocab_prune.Selection(keep=np.array([0, 1]), counts={}, vocabulary=12)
    with pytest.raises(vocab_prune.PruneError, match="no initializer"):
        vocab_prune.prune_graph(gather_graph(14), small, tables=("emb.word.packed", "missing"))


# --- the shipped encoder ------------------------------------------------------------------------------------------


def test_the_shipped_encoder_files_agree_on_the_vocabulary() -> None:
    """Tokenizer, embedding tables and encoder.json name one vocabulary (pruned or not), and a pruning says what it
    kept."""
    info = json.loads((SHIPPED_MODEL_DIR / ENCODER_FILE).read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(SHIPPED_MODEL_DIR / TOKENIZER_FILE)
    assert tokenizer.get_vocab_size() == info["shape"]["vocabulary"]
    model = onnx.load(str(SHIPPED_MODEL_DIR / MODEL_FILE), load_external_data=False)
    rows = {i.name: i.dims[0] for i in model.graph.initializer if i.name in vocab_prune.EMBEDDING_TABLES}
    assert set(rows) == set(vocab_prune.EMBEDDING_TABLES)
    assert all(n >= tokenizer.get_vocab_size() for n in rows.values()), rows
    assert [tokenizer.token_to_id(t) for t in SPECIAL] == [0, 1, 2, 3]
    pruning = info.get("vocabulary_pruning")
    if pruning is not None:
        assert pruning["kept"] == tokenizer.get_vocab_size() < pruning["from"]["vocabulary"]
        assert sum(pruning["kept_by_reason"].values()) == pruning["kept"]
        assert pruning["check"]["sample_max_abs_difference"] == 0.0


@pytest.fixture(scope="module")
def reference() -> list[dict]:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))["rows"]


@pytest.fixture(scope="module")
def shipped_vectors(reference: list[dict]) -> np.ndarray:
    clf = classifier(SHIPPED_MODEL_DIR, [], max_length=128, head_fraction=0.5, threads=1)
    return clf.head_inputs([row["text"] for row in reference])


def test_shipped_encoder_matches_the_unpruned_one_where_the_pieces_were_kept(
    reference: list[dict], shipped_vectors: np.ndarray
) -> None:
    tokenizer = load_tokenizer(SHIPPED_MODEL_DIR / TOKENIZER_FILE)
    same = 0
    for row, vector in zip(reference, shipped_vectors):
        pieces = tokenizer.encode("query: " + row["text"], add_special_tokens=False).tokens
        assert "<unk>" not in pieces, row["text"]
        cosine = float(np.dot(vector, np.array(row["vector"])) / np.linalg.norm(row["vector"]))
        if pieces == row["pieces"]:  # every piece the unpruned tokenizer used is kept: the same vector
            same += 1
            assert cosine >= 0.999, (row["text"], cosine)
        else:  # a dropped piece, spelled with shorter ones: close, not equal (measured 0.97-0.99)
            assert cosine >= 0.95, (row["text"], cosine)
    assert same >= 11  # greetings in Russian, Chinese, Japanese, Korean, Arabic and Hindi among them
