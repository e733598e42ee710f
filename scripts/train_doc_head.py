"""Fit the document-question head (router/doc_head.py) on the document rows and write ``doc_head.npz``.

    python scripts/train_doc_head.py --data-dir ../shared/data/router --extra-dir ../data/router-extra \\
        --encoder-dir router/model --work-dir ../models/e5-work --out router/model

The rows are the ``doc_qa`` training rows of the extra data (TAT-QA, ConditionalQA, QMSum, SQuALITY, XQuAD, Gaokao
reading; target >= 0.5 is an analysis), their embeddings read from train_router's cache. The penalty ``--c`` and the
cut are chosen by five-fold cross-validation grouped by document (never on the project's own sets): the cut is the
logit with the best balanced accuracy out of fold. The project's documents set is scored afterwards and printed
beside the shipped general head, as a measurement only.
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
from training.metrics import auroc
from training.pipeline import prepare


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, cut: float) -> float:
    strong = scores >= cut
    return float(0.5 * (strong[labels == 1].mean() + (~strong[labels == 0]).mean()))


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float) -> np.ndarray:
    """Each row's logit from a head fitted on the other four document-grouped folds."""
    logits = np.zeros(len(y))
    for fit, held in GroupKFold(5).split(x, y, groups):
        logits[held] = LogisticRegression(C=c, max_iter=3000).fit(x[fit], y[fit]).decision_function(x[held])
    return logits


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--extra-dir", type=Path, required=True, help="built extra rows (doc_qa.jsonl)")
    p.add_argument("--encoder-dir", type=Path, default=Path("router/model"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/train"), help="train_router's embedding cache")
    p.add_argument("--out", type=Path, required=True, help="model directory to write doc_head.npz into")
    p.add_argument("--c", type=float, nargs="+", default=[0.1, 1.0, 10.0], help="penalties tried (by the folds)")
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
    x = prep.inputs[use, :width]
    y = np.array([float(r.target or 0.0) >= 0.5 for r in rows], dtype=int)
    groups = np.array([r.group for r in rows])
    folds = {c: out_of_fold(x, y, groups, c) for c in args.c}
    best_c = max(folds, key=lambda c: auroc(folds[c].tolist(), y.tolist()))
    oof = folds[best_c]
    candidates = np.linspace(-6.0, 6.0, 241)
    cut = float(max(candidates, key=lambda z: balanced_accuracy(oof, y, z)))
    model = LogisticRegression(C=best_c, max_iter=3000).fit(x, y)
    origin = np.array([r.extra.get("origin", "") for r in rows])
    per_origin = {o: round(auroc(oof[origin == o].tolist(), y[origin == o].tolist()), 3)
                  for o in sorted(set(origin)) if len(set(y[origin == o])) == 2}
    meta = {
        "rows": int(len(y)), "analyses": int(y.sum()),
        "sources": sorted(set(origin)),
        "fit": f"logistic regression on the encoder's embedding, C={best_c} (of {args.c}, by out-of-fold AUROC)",
        "cut": "the logit with the best out-of-fold balanced accuracy",
        "out_of_fold": {"auroc": {str(c): round(auroc(f.tolist(), y.tolist()), 4) for c, f in folds.items()},
                        "auroc_within_source": per_origin,
                        "balanced_accuracy_at_cut": round(balanced_accuracy(oof, y, cut), 4)},
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder": "scripts/train_doc_head.py",
    }
    head = DocHead(weight=model.coef_[0].astype(np.float64), bias=float(model.intercept_[0]), cut=cut, meta=meta)
    # A measurement only (nothing above was chosen on it): the project's own documents set.
    own = evalsets.load(evalsets.DEFAULT_DIR, "documents")
    labels = [r.label for r in own]
    inputs = encoder.cached_inputs(prep.clf, [r.prompt for r in own], args.work_dir / "cache", prep.encoder_dir)
    doc_p = np.array(head.probabilities(inputs[:, :width]))
    general = np.array(Router.load(args.encoder_dir).score([r.prompt for r in own]))
    head.meta["own_documents_set"] = {
        "auroc": round(auroc(doc_p.tolist(), labels), 4), "general_head_auroc": round(auroc(general.tolist(), labels), 4),
        "balanced_accuracy_at_cut": round(balanced_accuracy(doc_p, np.array(labels), head.cut_probability), 4)}
    head.save(args.out / FILE)
    print(json.dumps(head.meta, indent=1))


if __name__ == "__main__":
    main()
