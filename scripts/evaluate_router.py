"""Per-source routing quality of a model directory beside the random, length and TF-IDF baselines.

The validation rows are the group-held-out split of :mod:`training.data` (nine whole MMLU subjects; a hashed
share of every other source), the same rows the training run held out. The baselines are fitted on the
training part of the same split. The project's own evaluation sets (document questions, eleven languages;
``--eval-sets``) are scored by the same models and baselines. ``--compare`` adds other model directories (e.g. the
previous shipped model, from ``git show``) to the tables; a model is only worth shipping if it is not worse on any
source.

    python scripts/evaluate_router.py --data-dir ../shared/data/router --json runs/eval.json

``--plot DIR`` also draws, per source, the deferral curves of the router and the baselines and the router's score
histogram (:mod:`training.plots`; matplotlib, in the ``train`` extra).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from router import Router
from router.policy import TierPolicy
from training import data, evalsets, evaluate


def main(argv: list[str] | None = None) -> None:
    """Score the validation rows with each model, fit the baselines, print the table, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--model-dir", type=Path, help="model directory (default: the shipped one)")
    p.add_argument("--compare", type=Path, action="append", default=[], help="another model directory to add")
    p.add_argument("--no-tfidf", action="store_true", help="skip the TF-IDF baseline (about a minute)")
    p.add_argument("--json", type=Path, help="write every metric (APGR, CPT50, AUROC per source) here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot", type=Path, help="write deferral curves and score histograms per source (PNG) here")
    p.add_argument(
        "--eval-sets", type=Path, default=evalsets.DEFAULT_DIR, help="folder of documents.jsonl and languages.jsonl"
    )
    args = p.parse_args(argv)

    rows = data.load(args.data_dir)
    data.assign_split(rows)
    val = [r for r in rows if r.val]
    prompts = [r.prompt for r in val]
    print(
        f"{len(val)} validation prompts: " + ", ".join(f"{s} {sum(r.source == s for r in val)}" for s in data.SOURCES)
    )
    results = {}
    scorers: dict[str, evaluate.Scorer] = {}
    scores: dict[str, list[float]] = {}
    cut = None
    for name, directory in [("router", args.model_dir), *((str(d.name), d) for d in args.compare)]:
        t0 = time.time()
        loaded = Router.load(directory, threads=args.threads)
        if cut is None:  # the cut the shipped default (30% strong) puts on the first model's scores
            cut = TierPolicy.from_shares(loaded.meta.quantiles, (0.7, 0.3)).cuts[0]
        scorers[name] = loaded.score
        scores[name] = list(scorers[name](prompts))
        results[name] = evaluate.per_source(val, scores[name])
        print(f"scored with {directory or 'the shipped model'} in {time.time() - t0:.0f}s")
    scores["length"] = list(evaluate.length_scores(prompts))
    results["length"] = evaluate.per_source(val, scores["length"])
    if not args.no_tfidf:
        scorers["tfidf_lr"] = evaluate.tfidf_scorer([r for r in rows if not r.val])
        scores["tfidf_lr"] = list(scorers["tfidf_lr"](prompts))
        results["tfidf_lr"] = evaluate.per_source(val, scores["tfidf_lr"])
    if args.plot:
        from training.plots import write_plots  # matplotlib: only when pictures are asked for

        written = write_plots(args.plot, val, scores, cut=cut)
        print(f"{len(written)} plots in {args.plot}")
    results["random"] = {s: {"apgr": 0.5, "cpt50": 0.5, "auroc": 0.5} for s in data.LABELLED}
    print("APGR per source (math: Spearman of score with level; arena/chat@30%: share sent strong at the")
    print("threshold that sends 30% of the mixture strong):")
    print(evaluate.table(results))
    own = evalsets.evaluate(args.eval_sets, scorers)
    print(evalsets.tables(own))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "eval_sets": own}, indent=1) + "\n")


if __name__ == "__main__":
    main()
