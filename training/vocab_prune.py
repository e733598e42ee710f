"""Prune a SentencePiece (Unigram) encoder's vocabulary to the pieces real text uses, embedding rows and all.

multilingual-e5-small carries XLM-R's 250,002 pieces. Their word-embedding rows are 70 % of ``model.onnx`` and the
``tokenizers`` library holds the whole Unigram vocabulary in about 290 MB of memory, yet the router's training text
uses a fifth of the pieces. Pruning keeps:

* every piece the tokenizer produces on a text sample (the training prompts, each with the encoder's text prefix,
  exactly as the runtime tokenizes them);
* every single-character piece, so text in any script the vocabulary covered still tokenizes without ``<unk>``
  (into shorter pieces where a longer one was dropped);
* the special tokens (``<s>``, ``<pad>``, ``</s>``, ``<unk>``, ``<mask>``) and the lowest-scoring piece.

Why the result is exact on the sample: Unigram tokenization picks the segmentation with the highest total piece
score (Viterbi over the pieces that match). Dropping pieces only removes candidate segmentations, and the winner on
every sample text uses kept pieces only, so it still wins; ties resolve in the same order because the surviving
pieces keep their relative order. The one score that is not a piece's own is ``<unk>``'s, the lowest piece score
minus 10, so the lowest-scoring piece is kept too. The kept pieces keep their relative order, so the first four ids
(``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3) do not move, and the embedding table is sliced to the same rows:
a sample text gets the same pieces, its ids map one to one, and the encoder sees the same vectors.

Text outside the sample can differ: a word that needed a dropped piece is split into shorter kept pieces.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The word-embedding initializers of the e5 graph (:func:`training.e5_export.build_graph`): packed 4-bit rows and
#: their fp16 block scales, both indexed by token id on their first axis.
EMBEDDING_TABLES = ("emb.word.packed", "emb.word.scale")
#: Texts tokenized per call when collecting the pieces a sample uses.
BATCH = 2000


class PruneError(ValueError):
    """A tokenizer or graph this pruning cannot handle, or a pruned result that fails its check."""


@dataclass(frozen=True)
class Selection:
    """The old ids kept (ascending) and why each group was kept."""

    keep: np.ndarray  # int64 old ids, ascending; new id = position
    counts: dict[str, int]  # used / single_character / special / lowest_score (ids new to that reason)
    vocabulary: int  # size before pruning

    def old_to_new(self) -> np.ndarray:
        """A lookup table over old ids: the new id, or -1 where the piece was dropped."""
        table = np.full(self.vocabulary, -1, dtype=np.int64)
        table[self.keep] = np.arange(len(self.keep))
        return table

    def digest(self) -> str:
        """SHA-256 of the kept old ids as little-endian int32, for encoder.json."""
        return hashlib.sha256(self.keep.astype("<i4").tobytes()).hexdigest()


def unigram_vocab(tokenizer_json: dict[str, Any]) -> list[list[Any]]:
    """The ``[piece, score]`` list of a Unigram tokenizer.json; raises PruneError for any other model."""
    model = tokenizer_json.get("model") or {}
    vocab = model.get("vocab")
    if model.get("type") != "Unigram" or not isinstance(vocab, list) or not vocab:
        raise PruneError("tokenizer.json is not a Unigram (SentencePiece) tokenizer")
    if model.get("byte_fallback"):
        raise PruneError("byte-fallback Unigram tokenizers are not supported (their byte pieces are not characters)")
    return vocab


def special_ids(tokenizer_json: dict[str, Any]) -> set[int]:
    """The ids of the added tokens (``<s>``, ``<pad>``, ...) and of the model's ``unk_id``."""
    ids = {int(token["id"]) for token in tokenizer_json.get("added_tokens", [])}
    unk = tokenizer_json["model"].get("unk_id")
    if unk is not None:
        ids.add(int(unk))
    return ids


def used_ids(tokenizer: Any, texts: Iterable[str], prefix: str = "") -> set[int]:
    """Every id ``tokenizer`` (a ``tokenizers.Tokenizer``) produces on ``prefix + text``, without special tokens."""
    used: set[int] = set()
    batch: list[str] = []
    for text in texts:
        batch.append(prefix + text)
        if len(batch) == BATCH:
            used.update(i for e in tokenizer.encode_batch(batch, add_special_tokens=False) for i in e.ids)
            batch = []
    if batch:
        used.update(i for e in tokenizer.encode_batch(batch, add_special_tokens=False) for i in e.ids)
    return used


def select(vocab: list[list[Any]], used: set[int], specials: set[int]) -> Selection:
    """The ids to keep: used pieces, single-character pieces, specials and the lowest-scoring piece."""
    n = len(vocab)
    bad = sorted(i for i in used | specials if not 0 <= i < n)
    if bad:
        raise PruneError(f"ids outside the vocabulary of {n} pieces: {bad[:5]}")
    single = {i for i, (piece, _score) in enumerate(vocab) if len(piece) == 1}
    scores = np.array([float(score) for _piece, score in vocab])
    lowest = {int(np.argmin(scores))}
    keep: set[int] = set()
    counts: dict[str, int] = {}
    for reason, ids in (("used", used), ("special", specials), ("single_character", single), ("lowest_score", lowest)):
        counts[reason] = len(ids - keep)
        keep |= ids
    return Selection(keep=np.array(sorted(keep), dtype=np.int64), counts=counts, vocabulary=n)


def fill(selection: Selection, ranking: dict[int, float], limit: int,
         reason: str = "frequent_in_wider_text") -> Selection:
    """``selection`` plus the highest-ranked pieces of ``ranking`` (id → occurrences in a wider text, or the
    tokenizer's own score) not yet kept, up to ``limit`` pieces in all (ties by id). Filling only adds pieces: it
    never removes one the sample uses, so the sample's tokenization stays exact."""
    have = set(selection.keep.tolist())
    room = limit - len(have)
    if room < 0:
        raise PruneError(f"the sample alone needs {len(have)} pieces, more than the limit of {limit}")
    ranked = sorted((i for i in ranking if i not in have and 0 <= i < selection.vocabulary),
                    key=lambda i: (-ranking[i], i))
    added = ranked[:room]
    return Selection(keep=np.array(sorted(have | set(added)), dtype=np.int64),
                     counts={**selection.counts, reason: len(added)}, vocabulary=selection.vocabulary)


def piece_scores(vocab: list[list[Any]]) -> dict[int, float]:
    """Each piece's Unigram score: its log-probability in the corpus the tokenizer was trained on (XLM-R's:
    CommonCrawl in 100 languages), the widest text there is to rank pieces by without fetching any."""
    return {i: float(score) for i, (_piece, score) in enumerate(vocab)}


def piece_counts(tokenizer: Any, texts: Iterable[str], prefix: str = "") -> dict[int, int]:
    """How often ``tokenizer`` produces each id on ``prefix + text`` over ``texts``."""
    counts: dict[int, int] = {}
    batch: list[str] = []

    def add(chunk: list[str]) -> None:
        for encoding in tokenizer.encode_batch(chunk, add_special_tokens=False):
            for i in encoding.ids:
                counts[i] = counts.get(i, 0) + 1

    for text in texts:
        batch.append(prefix + text)
        if len(batch) == BATCH:
            add(batch)
            batch = []
    if batch:
        add(batch)
    return counts


def prune_tokenizer(tokenizer_json: dict[str, Any], selection: Selection) -> dict[str, Any]:
    """A copy of a Unigram tokenizer.json holding only the kept pieces, every id in it renumbered."""
    vocab = unigram_vocab(tokenizer_json)
    if len(vocab) != selection.vocabulary:
        raise PruneError(f"the selection is for {selection.vocabulary} pieces, the tokenizer has {len(vocab)}")
    table = selection.old_to_new()

    def new_id(old: int, what: str) -> int:
        if not 0 <= old < len(table) or table[old] < 0:
            raise PruneError(f"{what} (id {old}) is not kept")
        return int(table[old])

    out = copy.deepcopy(tokenizer_json)
    out["model"]["vocab"] = [list(vocab[i]) for i in selection.keep.tolist()]
    if out["model"].get("unk_id") is not None:
        out["model"]["unk_id"] = new_id(int(out["model"]["unk_id"]), "the unknown-piece id")
    for token in out.get("added_tokens", []):
        token["id"] = new_id(int(token["id"]), f"added token {token.get('content')!r}")
    post = out.get("post_processor")
    if post is not None:
        _renumber_post_processor(post, new_id)
    kept_scores = [float(score) for _piece, score in out["model"]["vocab"]]
    if min(kept_scores) != min(float(score) for _piece, score in vocab):
        raise PruneError("the lowest piece score changed, so <unk> would score differently")
    return out


def _renumber_post_processor(post: dict[str, Any], new_id: Any) -> None:
    """Renumber the special-token ids a post-processor inserts (TemplateProcessing, Roberta/Bert, Sequence)."""
    kind = post.get("type")
    if kind == "Sequence":
        for inner in post.get("processors", []):
            _renumber_post_processor(inner, new_id)
    elif kind == "TemplateProcessing":
        for name, token in post.get("special_tokens", {}).items():
            token["ids"] = [new_id(int(i), f"post-processor token {name!r}") for i in token["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            piece, old = post[key]
            post[key] = [piece, new_id(int(old), f"post-processor token {piece!r}")]
    elif kind not in ("ByteLevel",):
        raise PruneError(f"post-processor {kind!r} is not supported")


def prune_graph(model: Any, selection: Selection, tables: tuple[str, ...] = EMBEDDING_TABLES) -> Any:
    """A copy of an ONNX model whose embedding initializers hold only the kept rows (first axis)."""
    from onnx import numpy_helper

    out = copy.deepcopy(model)
    found = set()
    for index, init in enumerate(out.graph.initializer):
        if init.name not in tables:
            continue
        found.add(init.name)
        array = numpy_helper.to_array(init)
        if array.shape[0] < selection.vocabulary:
            raise PruneError(f"{init.name} has {array.shape[0]} rows for {selection.vocabulary} pieces")
        out.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array[selection.keep]),
                                                                      init.name))
    missing = sorted(set(tables) - found)
    if missing:
        raise PruneError(f"the graph has no initializer(s) {missing}: not an e5 graph from training.e5_export")
    return out


def externalize(model: Any, location: str, tables: tuple[str, ...] = EMBEDDING_TABLES) -> Any:
    """Mark the embedding initializers of ``model`` to be written to ``location`` (ONNX external data, a file beside
    the graph) when the model is saved with ``onnx.save``; the graph itself is unchanged."""
    from onnx.external_data_helper import set_external_data

    found = set()
    for init in model.graph.initializer:
        if init.name in tables:
            set_external_data(init, location=location)
            found.add(init.name)
    missing = sorted(set(tables) - found)
    if missing:
        raise PruneError(f"the graph has no initializer(s) {missing}: not an e5 graph from training.e5_export")
    return model


def same_tokens(old: Any, new: Any, selection: Selection, texts: list[str], prefix: str = "") -> list[int]:
    """Indices of the texts whose ids under the pruned tokenizer ``new`` are not their ``old`` ids renumbered."""
    table = selection.old_to_new()
    differ: list[int] = []
    for start in range(0, len(texts), BATCH):
        chunk = [prefix + t for t in texts[start : start + BATCH]]
        olds = old.encode_batch(chunk, add_special_tokens=False)
        news = new.encode_batch(chunk, add_special_tokens=False)
        for offset, (a, b) in enumerate(zip(olds, news)):
            mapped = table[np.asarray(a.ids, dtype=np.int64)] if a.ids else np.zeros(0, np.int64)
            if len(a.ids) != len(b.ids) or bool(np.any(mapped != np.asarray(b.ids, dtype=np.int64))):
                differ.append(start + offset)
    return differ


def sample_files(data_dir: Path, extra_dir: Path | None) -> list[Path]:
    """The JSONL files whose prompts make the sample: every ``*.jsonl`` of the data directory and the extra rows."""
    files = sorted(data_dir.glob("*.jsonl"))
    if extra_dir is not None:
        files += sorted(extra_dir.glob("*.jsonl"))
    return files


def read_prompts(path: Path) -> list[str]:
    """The ``prompt`` of every row of a JSONL file (rows without a string prompt are skipped)."""
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                prompt = json.loads(line).get("prompt")
                if isinstance(prompt, str):
                    prompts.append(prompt)
    return prompts
