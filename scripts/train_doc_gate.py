"""Fit the document head's gate: which prompts, scored without their document, are questions about one.

    python scripts/train_doc_gate.py --model-dir router/model

``route-llm score`` and a chat that pasted no file give the router a bare question ("Who audited these
accounts?"). The general head orders such questions poorly (own documents set AUROC 0.686) while the document head
orders them well; the gate lets :meth:`router.Router.score` tell them apart (:mod:`router.doc_head`). It reads no
text: the model directory's ``base_rows.npz`` holds the head inputs of the general head's training and validation
rows with their sources. The gate is a logistic model, ``doc_qa`` rows against every other source, fitted on the
training part; its penalty is the one with the best validation AUROC.

Its cut is chosen on the validation part, never on the project's own sets: the lowest of ``--cuts`` at which no
labelled source's APGR falls and at most ``--max-share`` of any other source's rows is read as a document
question (a gated prompt leaves the general head's scale, so firing on a benchmark's prompts would move them).
The general score the document head's cut is placed at is the shipped operating point's: the cut that sends
``--strong-share`` of the traffic mixture to the strong tier (``config.yaml``'s ``auto``: 0.3).

The gate is written into ``doc_head.npz`` beside the head (the head itself is kept as it is).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from router.classifier import META_FILE, load_meta
from router.doc_head import FILE, DocHead, Gate
from router.head import Head
from router.policy import document_score, threshold_for_strong_share
from training import base_rows, evaluate
from training.metrics import auroc
from training.pipeline import sigmoid

DOCUMENT_SOURCE = "doc_qa"


def blended(general: np.ndarray, analysis: np.ndarray, gated: np.ndarray, doc_cut: float,
            general_cut: float) -> np.ndarray:
    """The scores :meth:`router.Router.score` gives: the general score, or where gated the head's p(analysis)
    placed on the general scale."""
    placed = np.array([document_score(float(p), doc_cut, general_cut) for p in analysis])
    return np.where(gated, placed, general)


def choose_cut(rows: base_rows.RowSet, general: np.ndarray, analysis: np.ndarray, gate_p: np.ndarray,
               doc_cut: float, general_cut: float, cuts: list[float], max_share: float) -> tuple[float, list[dict]]:
    """The lowest cut meeting the rule (module docstring), and every cut's figures."""
    listed = rows.as_rows()
    base = evaluate.per_source(listed, general.tolist())
    others = sorted({s for s in rows.source.tolist() if s != DOCUMENT_SOURCE})
    table = []
    chosen = None
    for cut in sorted(cuts):
        gated = gate_p >= cut
        scores = blended(general, analysis, gated, doc_cut, general_cut)
        result = evaluate.per_source(listed, scores.tolist())
        drops = {k: round(result[k]["apgr"] - base[k]["apgr"], 4) for k in base
                 if isinstance(base[k], dict) and "apgr" in base[k]}
        shares = {s: round(float(gated[rows.source == s].mean()), 4) for s in others}
        docs = rows.source == DOCUMENT_SOURCE
        entry = {"cut": cut, "apgr_change": drops, "gated_share": shares,
                 "documents_gated": round(float(gated[docs].mean()), 4)}
        table.append(entry)
        if chosen is None and all(d >= 0 for d in drops.values()) and max(shares.values()) <= max_share:
            chosen = cut
    if chosen is None:
        raise SystemExit(f"train_doc_gate: no cut in {sorted(cuts)} meets the rule; the table: {json.dumps(table)}")
    return chosen, table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("router/model"), help="reads base_rows.npz, head.npz, "
                   "router.json and doc_head.npz; writes the gate into doc_head.npz")
    p.add_argument("--c", type=float, nargs="+", default=[0.1, 1.0, 10.0], help="penalties tried")
    p.add_argument("--cuts", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    p.add_argument("--max-share", type=float, default=0.01,
                   help="at most this share of any other source's validation rows may be gated")
    p.add_argument("--strong-share", type=float, default=0.3, help="the operating point the cut is placed at")
    args = p.parse_args(argv)
    if not all(0.0 < c < 1.0 for c in args.cuts) or not 0.0 <= args.max_share < 1.0:
        p.error("--cuts must lie strictly between 0 and 1, --max-share in [0, 1)")
    if not 0.0 < args.strong_share < 1.0 or not all(c > 0 for c in args.c):
        p.error("--strong-share must lie strictly between 0 and 1, --c must be positive")
    model_dir = args.model_dir
    rows = base_rows.load(model_dir)
    head = Head.load(model_dir / "head.npz")
    doc = DocHead.load(model_dir / FILE)
    meta = load_meta(model_dir / META_FILE)
    width = doc.weight.size
    x_train, y_train = rows.train.inputs[:, :width], rows.train.source == DOCUMENT_SOURCE
    x_val, y_val = rows.val.inputs[:, :width], rows.val.source == DOCUMENT_SOURCE
    fits: dict[float, tuple[LogisticRegression, float]] = {}
    for c in args.c:
        model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(x_train, y_train)
        fits[c] = (model, auroc(model.predict_proba(x_val)[:, 1], y_val))
    best_c = max(fits, key=lambda c: fits[c][1])
    model = fits[best_c][0]
    gate_p = model.predict_proba(x_val)[:, 1]
    general = sigmoid(base_rows.head_logits(head, rows.val))
    analysis = np.asarray(doc.probabilities(x_val))
    general_cut = threshold_for_strong_share(meta.quantiles, args.strong_share)
    cut, table = choose_cut(rows.val, general, analysis, gate_p, doc.cut_probability, general_cut, args.cuts,
                            args.max_share)
    info: dict[str, Any] = {
        "fitted": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder": "scripts/train_doc_gate.py",
        "rows": {"train": int(len(y_train)), "train_documents": int(y_train.sum()), "val": int(len(y_val))},
        "c": best_c, "val_auroc_by_c": {str(c): round(v, 4) for c, (_, v) in fits.items()},
        "cut": cut, "max_share": args.max_share, "strong_share": args.strong_share, "general_cut": general_cut,
        "rule": "the lowest cut at which no labelled source's validation APGR falls and at most max_share of any "
                "other source's validation rows is gated",
        "by_cut": table,
    }
    gate = Gate(weight=model.coef_[0].astype(np.float64), bias=float(model.intercept_[0]), cut=cut,
                general_cut=general_cut)
    DocHead(weight=doc.weight, bias=doc.bias, cut=doc.cut, meta={**doc.meta, "gate": info}, gate=gate).save(
        model_dir / FILE)
    DocHead.load(model_dir / FILE)  # what was written must load
    print(json.dumps({k: v for k, v in info.items() if k != "by_cut"}, indent=1))
    for entry in table:
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
