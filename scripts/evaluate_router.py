"""Measure a router model the way RouteLLM does, beside a random and a prompt-length baseline.

For every threshold, prompts scoring at or above it go to the strong model; performance is the mean score of
the answers actually used. PGR (performance gap recovered) normalises that between always-weak (0) and
always-strong (1). CPT(x) is the smallest strong-call share reaching PGR x; APGR the area under PGR over
the strong share (a random router gets 0.5). The curve is computed exactly from the ranking (ties averaged),
and also printed at the score deciles, as RouteLLM reports it.

Example:
    python scripts/evaluate_router.py --data ../shared/data/router/train.jsonl --groups-holdout \
        --model-dir router/model --plot runs/curve.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RoutingCurve,
    hash_fraction,
    load_scorer,
    random_baseline,
    read_jsonl,
    routing_curve,
    summarize,
)


def held_out_rows(rows: list[dict[str, Any]], model_dir: Path) -> list[dict[str, Any]]:
    """Keep only the rows the model did not train on, using the split recorded in its router.json.

    Whole MMLU subjects were held out; other benchmarks (gsm8k) were split by prompt hash with the same salt
    the training script used, so this reproduces the validation set exactly.
    """
    meta = json.loads((model_dir / "router.json").read_text())
    split = meta.get("split")
    if not split:
        raise SystemExit(f"{model_dir / 'router.json'} records no split; cannot select held-out groups")
    subjects = set(split["val_mmlu_subjects"])
    salt = f"seed{meta['seed']}:"
    out = []
    for r in rows:
        if r.get("benchmark") == "mmlu":
            if r.get("category") in subjects:
                out.append(r)
        elif hash_fraction(r.get("prompt_hash") or r["prompt"], salt) < float(split["val_fraction"]):
            out.append(r)
    return out


def decile_table(curve: RoutingCurve, scores: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> list[str]:
    """Performance at thresholds set at the score deciles (RouteLLM's sweep)."""
    lines = [f"{'threshold':>10} {'strong%':>8} {'perf':>7} {'PGR':>7}"]
    for q in np.linspace(0.0, 1.0, 11):
        thr = float(np.quantile(scores, q))
        to_strong = scores >= thr
        perf = float(np.where(to_strong, strong, weak).mean())
        gap = curve.strong_perf - curve.weak_perf
        pgr = (perf - curve.weak_perf) / gap if gap else 0.0
        lines.append(f"{thr:>10.4f} {100 * to_strong.mean():>7.1f}% {perf:>7.4f} {pgr:>7.3f}")
    return lines


def plot_curves(path: str, curves: dict[str, RoutingCurve]) -> None:
    """PGR against strong-call share for each scorer, with the random diagonal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, c in curves.items():
        ax.plot(100 * c.share, c.pgr, label=f"{name} (APGR {c.apgr:.3f})")
    ax.plot([0, 100], [0, 1], "--", color="grey", label="random (APGR 0.500)")
    ax.set_xlabel("strong-model calls (%)")
    ax.set_ylabel("performance gap recovered")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Score the data, print the comparison table, optionally plot and write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="labelled JSONL with prompt, weak_score, strong_score")
    p.add_argument("--model-dir", default=str(Path(__file__).resolve().parent.parent / "router" / "model"))
    p.add_argument("--groups-holdout", action="store_true", help="only the groups the model's training held out")
    p.add_argument("--plot", help="write the PGR curve to this PNG")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    model_dir = Path(args.model_dir)
    rows = read_jsonl(args.data)
    if args.groups_holdout:
        rows = held_out_rows(rows, model_dir)
    if not rows:
        raise SystemExit("no rows to evaluate")
    prompts = [str(r["prompt"]) for r in rows]
    weak = np.array([float(r["weak_score"]) for r in rows])
    strong = np.array([float(r["strong_score"]) for r in rows])

    scorer = load_scorer(model_dir, threads=args.threads)
    scores = np.asarray(scorer.score(prompts), dtype=np.float64)
    lengths = np.array([len(x) for x in prompts], dtype=np.float64)

    results = {
        "router": summarize(scores.tolist(), weak.tolist(), strong.tolist()),
        "length": summarize(lengths.tolist(), weak.tolist(), strong.tolist()),
        "random": random_baseline(),
    }
    curve = routing_curve(scores, weak, strong)
    print(
        f"{len(rows)} prompts; weak perf {curve.weak_perf:.4f}, strong perf {curve.strong_perf:.4f}, "
        f"strong needed on {np.mean(strong > weak):.1%}"
    )
    print(f"{'':8} {'APGR':>7} {'CPT50':>7} {'CPT80':>7} {'AUROC':>7}")
    for name, m in results.items():
        print(f"{name:8} {m['apgr']:>7.4f} {100 * m['cpt50']:>6.1f}% {100 * m['cpt80']:>6.1f}% {m['auroc']:>7.4f}")
    print("router at score deciles:")
    print("\n".join(decile_table(curve, scores, weak, strong)))
    if args.plot:
        plot_curves(args.plot, {"router": curve, "length": routing_curve(lengths, weak, strong)})
        print(f"curve written to {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": len(rows), **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
