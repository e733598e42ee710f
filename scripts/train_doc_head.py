"""Fit the document-question head (router/doc_head.py) on the document rows and write ``doc_head.npz``.

    python scripts/train_doc_head.py --data-dir ../shared/data/router --extra-dir ../data/router-extra \\
        --encoder-dir router/model --work-dir ../models/e5-work --out router/model

The rows are the ``doc_qa`` training rows of the extra data (TAT-QA, ConditionalQA, QMSum, SQuALITY, XQuAD, Gaokao
reading) and, when the extra directory has it, ``doc_qa_more.jsonl`` (FairytaleQA; its validation share is held out
by the same hash of the group); target >= 0.5 is an analysis. Embeddings are read from train_router's cache.

Two cross-validations, both on these rows only (never on the project's own sets), both keeping a document's
questions together:

- five folds grouped by document, as before: each row's logit from a head that never saw its document;
- leave one source out: each source's rows scored by a head fitted on the other sources. Every source but two has
  one label only, so the first measure is mostly "which source is this" (0.98 out of fold, while the own set scored
  0.86); this one asks what a new kind of document needs, and chooses the penalty ``--c`` and the class weighting
  (``--weighting``: none, or every source-and-label cell weighing the same).

The cut is the logit with the best balanced accuracy out of fold (document folds, chosen configuration). The
project's documents set is scored afterwards and printed beside the shipped general head, as a measurement only.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from router import Router
from router.doc_head import FILE, DocHead
from training import encoder, evalsets
from training.data import VAL_SALT, hash_fraction, read_jsonl
from training.metrics import auroc, bootstrap_interval
from training.pipeline import prepare

MORE_FILE = "doc_qa_more.jsonl"  # later document sources (scripts/data/build_router_extra.py), read by this head only
WEIGHTINGS = ("none", "source")


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, cut: float) -> float:
    strong = scores >= cut
    return float(0.5 * (strong[labels == 1].mean() + (~strong[labels == 0]).mean()))


def cell_weights(origin: np.ndarray, y: np.ndarray, weighting: str) -> np.ndarray | None:
    """Sample weights: None, or (``source``) each (source, label) cell weighing the same in total, so that the
    large single-label sources do not decide the direction alone."""
    if weighting == "none":
        return None
    cells = np.array([f"{o}:{label}" for o, label in zip(origin, y)])
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    return np.asarray(len(y) / len(counts) / counts[inverse], dtype=np.float64)


def fit(x: np.ndarray, y: np.ndarray, origin: np.ndarray, c: float, weighting: str) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=3000).fit(x, y, sample_weight=cell_weights(origin, y, weighting))


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, origin: np.ndarray, c: float,
                weighting: str) -> np.ndarray:
    """Each row's logit from a head fitted on the other four document-grouped folds."""
    logits = np.zeros(len(y))
    for train, held in GroupKFold(5).split(x, y, groups):
        logits[held] = fit(x[train], y[train], origin[train], c, weighting).decision_function(x[held])
    return logits


def out_of_source(x: np.ndarray, y: np.ndarray, origin: np.ndarray, c: float, weighting: str) -> np.ndarray:
    """Each row's logit from a head fitted on the other sources only."""
    logits = np.zeros(len(y))
    for source in np.unique(origin):
        held = origin == source
        logits[held] = fit(x[~held], y[~held], origin[~held], c, weighting).decision_function(x[held])
    return logits


def interval(scores: np.ndarray, labels: np.ndarray, groups: list[str]) -> list[float]:
    """AUROC's 95% bootstrap interval, resampling whole groups (documents)."""
    low, high = bootstrap_interval(lambda j: auroc(scores[j], labels[j]), len(labels), groups=groups)
    return [round(low, 4), round(high, 4)]


def more_rows(extra_dir: Path) -> list[dict[str, str | float]]:
    """The training rows of ``doc_qa_more.jsonl`` (absent: none); 20% of groups held out as the other extras are."""
    path = extra_dir / MORE_FILE
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path) if hash_fraction(str(r["group"]), VAL_SALT) >= 0.2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--extra-dir", type=Path, required=True, help="built extra rows (doc_qa.jsonl, doc_qa_more.jsonl)")
    p.add_argument("--encoder-dir", type=Path, default=Path("router/model"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/train"), help="train_router's embedding cache")
    p.add_argument("--out", type=Path, required=True, help="model directory to write doc_head.npz into")
    p.add_argument("--c", type=float, nargs="+", default=[0.1, 1.0, 10.0], help="penalties tried (by the folds)")
    p.add_argument("--weighting", nargs="+", choices=WEIGHTINGS, default=list(WEIGHTINGS),
                   help="class weightings tried (by the folds)")
    args = p.parse_args(argv)
    if not (args.extra_dir / "doc_qa.jsonl").is_file():
        p.error(f"--extra-dir: {args.extra_dir} has no doc_qa.jsonl")
    if any(not c > 0 for c in args.c):
        p.error("--c values must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    prep = prepare(args.data_dir, args.work_dir, encoder_dir=args.encoder_dir, extra_dir=args.extra_dir)
    width = prep.inputs.shape[1] - len(prep.clf.meta.features)
    use = np.array([r.source == "doc_qa" and not r.val for r in prep.rows])
    rows = [r for r, u in zip(prep.rows, use) if u]
    more = more_rows(args.extra_dir)
    cache = args.work_dir / "cache"
    x = prep.inputs[use, :width]
    if more:
        x = np.vstack([x, encoder.cached_inputs(prep.clf, [str(r["prompt"]) for r in more], cache,
                                                prep.encoder_dir)[:, :width]])
    y = np.array([float(r.target or 0.0) >= 0.5 for r in rows] + [float(r["target"]) >= 0.5 for r in more], dtype=int)
    groups = np.array([r.group for r in rows] + [str(r["group"]) for r in more])
    origin = np.array([r.extra.get("origin", "") for r in rows] + [str(r["source"]) for r in more])
    configs = [(c, w) for w in args.weighting for c in args.c]
    transfer = {cw: out_of_source(x, y, origin, *cw) for cw in configs}
    best_c, weighting = max(configs, key=lambda cw: auroc(transfer[cw].tolist(), y.tolist()))
    oof = out_of_fold(x, y, groups, origin, best_c, weighting)
    candidates = np.linspace(-6.0, 6.0, 241)
    cut = float(max(candidates, key=lambda z: balanced_accuracy(oof, y, z)))
    model = fit(x, y, origin, best_c, weighting)
    per_origin = {o: round(auroc(oof[origin == o].tolist(), y[origin == o].tolist()), 3)
                  for o in sorted(set(origin)) if len(set(y[origin == o])) == 2}
    meta = {
        "rows": int(len(y)), "analyses": int(y.sum()),
        "sources": sorted(set(origin)),
        "fit": f"logistic regression on the encoder's embedding, C={best_c}, weighting {weighting} (of C {args.c} "
               f"and weightings {args.weighting}, by leave-one-source-out AUROC)",
        "cut": "the logit with the best out-of-fold balanced accuracy (document folds)",
        "out_of_source": {"auroc": {f"C={c},{w}": round(auroc(f.tolist(), y.tolist()), 4)
                                    for (c, w), f in transfer.items()}},
        "out_of_fold": {"auroc": round(auroc(oof.tolist(), y.tolist()), 4),
                        "interval": interval(oof, y, groups.tolist()),
                        "auroc_within_source": per_origin,
                        "balanced_accuracy_at_cut": round(balanced_accuracy(oof, y, cut), 4)},
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder": "scripts/train_doc_head.py",
    }
    head = DocHead(weight=model.coef_[0].astype(np.float64), bias=float(model.intercept_[0]), cut=cut, meta=meta)
    # A measurement only (nothing above was chosen on it): the project's own documents set.
    own = evalsets.load(evalsets.DEFAULT_DIR, "documents")
    labels = np.array([r.label for r in own])
    inputs = encoder.cached_inputs(prep.clf, [r.prompt for r in own], cache, prep.encoder_dir)
    doc_p = np.array(head.probabilities(inputs[:, :width]))
    general = np.array(Router.load(args.encoder_dir).score([r.prompt for r in own]))
    own_groups = [r.group for r in own]
    head.meta["own_documents_set"] = {
        "auroc": round(auroc(doc_p.tolist(), labels.tolist()), 4), "interval": interval(doc_p, labels, own_groups),
        "general_head_auroc": round(auroc(general.tolist(), labels.tolist()), 4),
        "general_head_interval": interval(general, labels, own_groups),
        "balanced_accuracy_at_cut": round(balanced_accuracy(doc_p, labels, head.cut_probability), 4)}
    head.save(args.out / FILE)
    print(json.dumps(head.meta, indent=1))


if __name__ == "__main__":
    main()
