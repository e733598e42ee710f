"""Prune the multilingual encoder's vocabulary to the pieces real text uses (76.6 MB of weights in one file → a
22.6 MB graph and a 25.9 MB embedding table beside it, at 120,000 pieces).

    python scripts/data/prune_encoder_vocab.py --encoder-dir ../models/e5-int8 \\
        --data-dir ../shared/data/router --extra-dir ../data/router-extra \\
        --mirror-root /work/.mirror --max-pieces 120000 --carry-cache ../models/e5-work/cache \\
        --out ../models/e5-p120k

The sample is the prompt of every row of every ``*.jsonl`` in ``--data-dir`` and ``--extra-dir`` (the training
data, never an evaluation set), each tokenized with the encoder's text prefix as the runtime does. Kept: the pieces
that sample uses, every single-character piece, the special tokens and the lowest-scoring piece
(:mod:`training.vocab_prune` says why that makes the sample's tokenization exact). The word-embedding rows of the
graph are sliced to the kept pieces, so the output is a drop-in encoder directory for ``scripts/train_router.py
--encoder-dir``.

The training rows are short and hold few words of most languages, so text outside them (a greeting in Hindi) loses
pieces it would have used and is split finer. ``--max-pieces`` widens the vocabulary without touching the exactness:
first, with ``--mirror-root``, every piece used by the full texts (every question and every passage) of the
repositories the extra rows are drawn from (``training.extra_build.SOURCES``, read at their pinned commits), most
frequent first; then the pieces the tokenizer itself scores most probable (its Unigram log-probabilities, learned
on XLM-R's CommonCrawl corpus in 100 languages), until ``--max-pieces``.

The embedding tables are written beside the graph as ONNX external data (``embedding.bin``), which onnxruntime
maps rather than copies: a worker's memory holds only the rows text touches, and workers share them.

Checked before anything is written: every sample text gets the same pieces from both tokenizers (the old ids
renumbered); and both encoders embed the reference sentences of :mod:`training.e5_check` (14 languages) and every
``--check-every``-th sample text, which must agree exactly where the tokens are the same. ``encoder.json`` records
what was kept, from which files and which encoder, and the check's figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from router.classifier import EMBEDDING_FILE, MODEL_FILE, TOKENIZER_FILE, encoder_files, load_tokenizer
from training import e5_check, vocab_prune
from training.encoder import ENCODER_FILE, classifier, encoder_settings

#: Embeddings of texts with the same tokens must agree this closely (they are computed from the same numbers).
EXACT = 1e-6


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embeddings(encoder_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """The runtime's embeddings (prefix, head + tail truncation, mean pooling) of ``texts`` under an encoder."""
    clf = classifier(encoder_dir, [], max_length=max_length, head_fraction=0.5, threads=2)
    return clf.head_inputs(texts)


def check(source: Path, out: Path, texts: list[str], probe: list[str], selection: vocab_prune.Selection,
          prefix: str, max_length: int) -> dict[str, Any]:
    """Compare the pruned encoder with its source; raises PruneError where the sample's tokens or vectors differ."""
    old, new = load_tokenizer(source / TOKENIZER_FILE), load_tokenizer(out / TOKENIZER_FILE)
    for tokenizer in (old, new):
        tokenizer.no_truncation()
        tokenizer.no_padding()
    differ = vocab_prune.same_tokens(old, new, selection, texts, prefix)
    if differ:
        raise vocab_prune.PruneError(f"{len(differ)} sample texts tokenize differently, e.g. {texts[differ[0]][:80]!r}")
    reference = list(e5_check.SENTENCES)
    a = embeddings(source, reference + probe, max_length)
    b = embeddings(out, reference + probe, max_length)
    cos = np.sum(a * b, axis=1)  # both L2-normalised
    gap = np.abs(a[len(reference):] - b[len(reference):]).max(initial=0.0)
    if gap > EXACT:
        raise vocab_prune.PruneError(f"sample texts with the same tokens embed differently (max difference {gap:.2e})")
    ref_differ = vocab_prune.same_tokens(old, new, selection, reference, prefix)
    return {
        "sample_texts_same_tokens": f"{len(texts)} of {len(texts)}",
        "sample_texts_embedded": len(probe),
        "sample_max_abs_difference": float(gap),
        "reference_sentences": len(reference),
        "reference_sentences_same_tokens": len(reference) - len(ref_differ),
        "reference_cosine": {"min": round(float(cos[: len(reference)].min()), 6),
                             "mean": round(float(cos[: len(reference)].mean()), 6)},
        "max_length": max_length,
    }


def source_texts(mirror_root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Every distinct question and passage of the extra rows' sources whose snapshot is under ``mirror_root``, and
    a description of each source read (repository, commit, texts)."""
    from training.extra_build import SOURCES
    from training.extra_sources import Mirror

    texts: list[str] = []
    described = []
    for source in SOURCES:
        git_dir = mirror_root / source.repo.replace("/", "+") / "repo"
        if not git_dir.is_dir():
            continue
        seen: set[str] = set()
        for item in source.read(Mirror(str(git_dir), source.repo, source.commit)):
            seen.update(t for t in (item.question, item.passage) if t)
        texts += sorted(seen)
        described.append({"source": source.name, "repo": source.repo, "commit": source.commit, "texts": len(seen)})
    return texts, described


def prune(source: Path, out: Path, files: list[Path], *, check_every: int, max_length: int,
          mirror_root: Path | None = None, max_pieces: int | None = None) -> dict[str, Any]:
    """Write the pruned encoder directory ``out`` and return its encoder.json."""
    settings = encoder_settings(source)
    prefix = settings["text_prefix"]
    texts: list[str] = []
    described = []
    for path in files:
        prompts = vocab_prune.read_prompts(path)
        texts += prompts
        described.append({"file": path.name, "sha256": sha256(path), "prompts": len(prompts)})
    if not texts:
        raise vocab_prune.PruneError("the sample is empty: no prompts in the given files")
    tokenizer_json = json.loads((source / TOKENIZER_FILE).read_text(encoding="utf-8"))
    vocab = vocab_prune.unigram_vocab(tokenizer_json)
    tokenizer = load_tokenizer(source / TOKENIZER_FILE)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    selection = vocab_prune.select(vocab, vocab_prune.used_ids(tokenizer, texts, prefix),
                                   vocab_prune.special_ids(tokenizer_json))
    wider: dict[str, Any] | None = None
    if max_pieces is not None:
        wider = {"max_pieces": max_pieces, "rule": []}
        if mirror_root is not None:
            more, read = source_texts(mirror_root)
            if not read:
                raise vocab_prune.PruneError(f"no source snapshot under {mirror_root}")
            selection = vocab_prune.fill(selection, vocab_prune.piece_counts(tokenizer, more, prefix), max_pieces)
            wider.update({"sources": read, "texts": len(more)})
            wider["rule"].append("the pieces these texts use, most frequent first")
        # then, while there is room, by the tokenizer's own estimate of how common a piece is
        selection = vocab_prune.fill(selection, vocab_prune.piece_scores(vocab), max_pieces,
                                     reason="highest_unigram_score")
        wider["rule"].append("the pieces with the highest Unigram score (log-probability in the tokenizer's own "
                             "training corpus)")
        wider["rule"] = "; then ".join(wider["rule"]) + ", up to max_pieces in all, never dropping a sample piece"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        work = Path(tmp)
        (work / "raw.json").write_text(json.dumps(vocab_prune.prune_tokenizer(tokenizer_json, selection),
                                                  ensure_ascii=False), encoding="utf-8")
        load_tokenizer(work / "raw.json").save(str(work / TOKENIZER_FILE))  # the library's own layout
        graph = vocab_prune.prune_graph(onnx.load(str(source / MODEL_FILE)), selection)
        onnx.save(vocab_prune.externalize(graph, EMBEDDING_FILE), str(work / MODEL_FILE))
        if (source / ENCODER_FILE).is_file():
            (work / ENCODER_FILE).write_bytes((source / ENCODER_FILE).read_bytes())
        probe = texts[::check_every] if check_every > 0 else []
        figures = check(source, work, texts, probe, selection, prefix, max_length)
        info = json.loads((source / ENCODER_FILE).read_text(encoding="utf-8")) if (source / ENCODER_FILE).is_file() \
            else {}
        info.setdefault("shape", {})["vocabulary"] = len(selection.keep)
        if "base_model" in info:
            info["base_model"] += f"; vocabulary pruned to {len(selection.keep):,} pieces"
        info["vocabulary_pruning"] = {
            "from": {"vocabulary": selection.vocabulary, MODEL_FILE: sha256(source / MODEL_FILE),
                     TOKENIZER_FILE: sha256(source / TOKENIZER_FILE)},
            "kept": len(selection.keep),
            "kept_by_reason": selection.counts,
            "kept_old_ids_sha256": selection.digest(),
            "rule": "pieces the tokenizer produces on the sample (text prefix included), every single-character "
                    "piece, the special tokens, the lowest-scoring piece; kept pieces keep their order",
            "sample": {"files": described, "texts": len(texts), "text_prefix": prefix},
            "wider_text": wider,
            "check": figures,
            "built": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "builder": "scripts/data/prune_encoder_vocab.py",
        }
        (work / EMBEDDING_FILE).chmod(0o644)  # onnx writes it owner-only; it ships like the graph beside it
        info["files"] = {name: sha256(work / name) for name in (MODEL_FILE, EMBEDDING_FILE, TOKENIZER_FILE)}
        (work / ENCODER_FILE).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        for name in (MODEL_FILE, EMBEDDING_FILE, TOKENIZER_FILE, ENCODER_FILE):
            (work / name).replace(out / name)
    return info


def carry(cache_dir: Path, source: Path, out: Path, files: list[Path], max_length: int) -> int:
    """Copy the sample prompts' cached head inputs (train_router's settings) from the source encoder to the pruned one."""
    from router.features import FEATURES
    from training.encoder import carry_cached_inputs

    prompts = [prompt for path in files for prompt in vocab_prune.read_prompts(path)]
    clf = classifier(out, list(FEATURES), max_length=max_length, head_fraction=0.5, threads=1)
    return carry_cached_inputs(cache_dir, clf, source, out, prompts)


def main(argv: list[str] | None = None) -> None:
    """Parse options, prune, print what was kept and the sizes."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder-dir", type=Path, required=True, help="encoder directory to prune (left as it is)")
    p.add_argument("--data-dir", type=Path, required=True, help="training data (its *.jsonl prompts are the sample)")
    p.add_argument("--extra-dir", type=Path, help="built extra rows (their prompts join the sample)")
    p.add_argument("--out", type=Path, required=True, help="pruned encoder directory to write")
    p.add_argument("--check-every", type=int, default=100, help="embed every Nth sample text with both encoders "
                   "(0: none)")
    p.add_argument("--max-length", type=int, default=128, help="token limit of the embedding check (the router's)")
    p.add_argument("--mirror-root", type=Path, help="repository snapshots of the extra rows' sources (as for "
                   "build_router_extra.py): their full texts fill the vocabulary up to --max-pieces")
    p.add_argument("--carry-cache", type=Path, metavar="CACHE_DIR", help="train_router's embedding cache "
                   "(<work-dir>/cache): copy the sample prompts' cached inputs to the pruned encoder (they are "
                   "identical, checked above), so training on it embeds nothing again")
    p.add_argument("--max-pieces", type=int, help="fill the vocabulary up to this many pieces (from --mirror-root's texts, then by score)")
    args = p.parse_args(argv)
    if args.max_pieces is not None and args.max_pieces < 5:
        p.error("--max-pieces must be at least 5 (the special tokens)")
    if args.mirror_root is not None and (args.max_pieces is None or not args.mirror_root.is_dir()):
        p.error("--mirror-root needs an existing directory and --max-pieces")
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if not (args.encoder_dir / name).is_file():
            p.error(f"--encoder-dir: {args.encoder_dir} has no {name}")
    if args.out.resolve() == args.encoder_dir.resolve():
        p.error("--out must differ from --encoder-dir (the source is compared with the result)")
    if args.check_every < 0:
        p.error("--check-every must be at least 0")
    files = vocab_prune.sample_files(args.data_dir, args.extra_dir)
    if not files:
        p.error(f"--data-dir: {args.data_dir} holds no *.jsonl files")
    try:
        info = prune(args.encoder_dir, args.out, files, check_every=args.check_every, max_length=args.max_length,
                     mirror_root=args.mirror_root, max_pieces=args.max_pieces)
    except (vocab_prune.PruneError, OSError, json.JSONDecodeError) as exc:
        sys.exit(f"prune_encoder_vocab: {exc}")
    pruning = info["vocabulary_pruning"]
    if args.carry_cache is not None:
        print(f"carried {carry(args.carry_cache, args.encoder_dir, args.out, files, args.max_length)} cached prompts")
    print(f"kept {pruning['kept']:,} of {pruning['from']['vocabulary']:,} pieces {pruning['kept_by_reason']}")
    print(json.dumps(pruning["check"]))
    before = sum(path.stat().st_size for path in encoder_files(args.encoder_dir))
    print(f"encoder weights: {before / 1e6:.1f} MB -> " + ", ".join(
        f"{path.name} {path.stat().st_size / 1e6:.1f} MB" for path in encoder_files(args.out)))
    for name in (TOKENIZER_FILE,):
        print(f"{name}: {(args.encoder_dir / name).stat().st_size / 1e6:.1f} MB -> "
              f"{(args.out / name).stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
