"""Per-source routing quality by five-fold group cross-validation over the training part.

The validation split is small per source (84 MBPP, 101 GSM8K, 118 chat rows), so its figures move by several
hundredths between models that differ by nothing real. This scores every training row with a head fitted, as
the shipped one is, on the other four folds (whole MMLU subjects; a prompt hash elsewhere), beside the prompt
length and TF-IDF + LR baselines fitted on the same folds. The encoder stays frozen: where it was fine-tuned on
these rows (the shipped encoder saw MMLU and GSM8K), those two sources read optimistic.

    python scripts/crossval_router.py --data-dir ../shared/data/router --encoder-dir router/model

``--knn K`` adds the nearest-neighbour term tried for the router (README, "What lost"): the head's logit plus
beta times the similarity-weighted difficulty residual of the K most similar labelled training prompts, out of
fold, and the same blend on the validation split with a head fitted on the whole training part. The head
inputs are cached in ``--work-dir`` with ``train_router.py``'s cache, so after a training run this takes the
five head fits (about five minutes on two cores).

Each source's figures for the head carry a 95% bootstrap interval (1,000 seeded resamples of the out-of-fold
scores; whole MMLU subjects, which is how its folds are drawn, rows elsewhere): a new model is worse than the shipped
one on a source only where its figure falls below the shipped model's interval. The project's own evaluation sets
(``--eval-sets``) are external test sets: they are scored by one more head, fitted on the whole training part as the
shipped head is (so the figure is the model that would ship, not an average of five that would not), beside the
length baseline and the TF-IDF + LR baseline fitted on every training row.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from training import crossval, data, encoder, evalsets, evaluate
from training.head import JointConfig
from training.pipeline import fit_head, prepare


def main(argv: list[str] | None = None) -> None:
    """Parse options, run the folds, print the table(s), optionally write JSON."""
    defaults_j, defaults_t = JointConfig(), data.TargetConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument(
        "--encoder-dir", type=Path, default=Path("router/model"), help="model directory whose encoder is used"
    )
    p.add_argument("--work-dir", type=Path, default=Path("runs/train"), help="embedding cache (train_router's)")
    p.add_argument("--c", type=float, default=defaults_j.c, help="joint head: inverse L2 penalty")
    p.add_argument("--dense-scale", type=float, default=defaults_j.dense_scale, help="joint head: embedding scale")
    p.add_argument("--everyday", type=float, default=defaults_t.everyday, help="weight of the everyday contrast")
    p.add_argument("--knn", type=int, action="append", default=[], metavar="K", help="add the neighbour term")
    p.add_argument(
        "--knn-beta", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="blend weights of the neighbour term"
    )
    p.add_argument(
        "--extra-dir", type=Path, help="directory of built extra rows (scripts/data/build_router_extra.py's output)"
    )
    p.add_argument("--no-tfidf", action="store_true", help="skip the TF-IDF baseline")
    p.add_argument("--json", type=Path, help="write every metric here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--eval-sets", type=Path, default=evalsets.DEFAULT_DIR, help="folder of documents.jsonl and languages.jsonl"
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval")
    args = p.parse_args(argv)
    if not (args.c > 0 and args.dense_scale > 0 and args.everyday >= 0):
        p.error("--c and --dense-scale must be positive, --everyday at least 0")
    if any(k < 1 for k in args.knn) or any(not b >= 0 for b in args.knn_beta):
        p.error("--knn must be at least 1 and --knn-beta at least 0")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.resamples < 1:
        p.error("--resamples must be at least 1")
    if not all((args.eval_sets / f"{name}.jsonl").is_file() for name in evalsets.SETS):
        p.error(f"--eval-sets: {args.eval_sets} lacks " + " or ".join(f"{name}.jsonl" for name in evalsets.SETS))
    if not (args.encoder_dir / "model.onnx").is_file():
        p.error(f"--encoder-dir: {args.encoder_dir} has no model.onnx")
    if args.extra_dir is not None and not any((args.extra_dir / name).is_file() for name in data.EXTRA_FILES.values()):
        p.error(f"--extra-dir: {args.extra_dir} has none of {', '.join(sorted(data.EXTRA_FILES.values()))}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    try:
        prep = prepare(
            args.data_dir, args.work_dir, encoder_dir=args.encoder_dir, extra_dir=args.extra_dir, threads=args.threads
        )
    except (OSError, ValueError, KeyError) as exc:  # unreadable, malformed or missing data files
        p.error(f"--data-dir: {exc}")
    rows, inputs = prep.rows, prep.inputs
    head = JointConfig(c=args.c, dense_scale=args.dense_scale)
    targets = data.TargetConfig(everyday=args.everyday)
    train = np.array([not r.val for r in rows])
    train_rows = [r for r in rows if not r.val]
    logits = crossval.head_logits(rows, inputs, targets, head)
    folds: dict[str, Any] = {
        "head": evaluate.per_source(train_rows, logits[train].tolist()),
        "length": evaluate.per_source(train_rows, evaluate.length_scores([r.prompt for r in train_rows])),
    }
    if not args.no_tfidf:
        folds["tfidf_lr"] = evaluate.per_source(train_rows, crossval.tfidf_scores(rows, prep.all_rows)[train].tolist())
    results: dict[str, Any] = {
        "out_of_fold": folds,
        "intervals": evaluate.source_intervals(train_rows, logits[train].tolist(), resamples=args.resamples),
    }
    full = fit_head(rows, inputs, train, targets, head)

    def full_head(prompts: list[str]) -> list[float]:
        own_inputs = encoder.cached_inputs(prep.clf, prompts, args.work_dir / "cache", prep.encoder_dir)
        return full.logits(own_inputs, prompts).tolist()  # type: ignore[no-any-return]

    own_scorers: dict[str, evaluate.Scorer] = {"head": full_head}
    if not args.no_tfidf:
        own_scorers["tfidf_lr"] = evaluate.tfidf_scorer([r for r in prep.all_rows if not r.val])
    results["eval_sets"] = evalsets.evaluate(args.eval_sets, own_scorers, resamples=args.resamples)
    if args.knn:
        embeddings = inputs[:, : inputs.shape[1] - len(prep.clf.meta.features)].astype(np.float64)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-12
        val_rows = [r for r in rows if r.val]
        val_logits = fit_head(rows, inputs, train, targets, head).logits(inputs[~train], [r.prompt for r in val_rows])
        validation: dict[str, Any] = {"head": evaluate.per_source(val_rows, val_logits.tolist())}
        for k in args.knn:
            near_train, near_val = crossval.neighbour_scores(rows, embeddings, targets, k)
            unit = float(np.std(near_train[train])) or 1.0
            for beta in args.knn_beta:
                name = f"k{k} b{beta:g}"
                folds[name] = evaluate.per_source(train_rows, (logits + beta * near_train / unit)[train].tolist())
                validation[name] = evaluate.per_source(val_rows, (val_logits + beta * near_val[~train] / unit).tolist())
        results["validation"] = validation
    counts = ", ".join(f"{name} {m['n']}" for name, m in folds["head"].items())
    print(f"out of fold, training part ({counts}); APGR per source:")
    print(evaluate.table(folds))
    print("head, 95% bootstrap intervals (out of fold):")
    print(evaluate.interval_table(folds["head"], results["intervals"]))
    if "validation" in results:
        print("validation split, head fitted on the whole training part:")
        print(evaluate.table(results["validation"]))
    print("own evaluation sets, head fitted on the whole training part:")
    print(evalsets.tables(results["eval_sets"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
