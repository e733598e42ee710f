"""``route-llm retrain``: refit the current model's routing head with a deployment's feedback, keep it only if better.

Fast by construction: the current model's encoder is frozen (format 2: ``model.onnx`` is a sentence encoder), so
only the small numpy head is refitted, on cached embeddings, starting from the current head's weights. The steps:

1. Rows. The base data (``--data-dir``) is split by group as in training (:func:`training.data.assign_split`).
   Embedding all 23k base prompts costs about 20 minutes on two busy cores, so fast mode embeds a sample: up to
   ``base_per_source`` training rows of every source and up to ``val_per_source`` validation rows of every
   source, each chosen by a seeded shuffle (the same rows every run, so their embeddings come from the cache).
   Feedback rows (``route-llm feedback export``) are split by a hash of the prompt: ``feedback_holdout`` of them
   are held out to judge the candidate, the rest train.
2. Fit. The head starts from the current weights and is trained by full-batch Adam on the weighted soft-target
   cross-entropy of base sample + feedback, plus ``proximity`` times the squared distance to the current
   weights. The base rows are there to keep what the current model does: their targets are the current model's
   own scores (distillation), so the fit moves only where the feedback asks it to. (Refitting them on their
   labels instead, ``base_targets="labels"``, refits the head to the small sample, and on the shipped model
   that cost 0.08 MMLU APGR in the simulation.) As in training, every source has
   its own learned intercept (feedback included), dropped from the exported head: the fit learns to rank prompts
   within each source, not to tell sources apart. Feedback's total weight is ``feedback_weight`` times that of
   an average base source.
3. Compare. Current and candidate are scored on the held-out feedback and on the base validation sample (per
   source, :func:`training.evaluate.per_source`). The candidate is written only if its APGR on the held-out
   feedback is higher than the current model's and no labelled base source loses more than ``tolerance`` APGR.
4. Write. A new directory ``<out_dir>/<version>``: the current ``model.onnx`` and tokenizer, the new head, and
   router.json with a quantile table recomputed from the candidate's scores on the (MIXTURE-weighted) sample
   and the comparison table. The serving proxy picks it up on reload.

Needs no torch: numpy does the fit, so it runs wherever the proxy runs plus scipy (the train extra's evaluation).

``full=True`` (``route-llm retrain --full``) replaces step 2 with :func:`training.retrain_full.finetune_encoder`:
the encoder is rebuilt from the current ONNX file and fine-tuned with the head on the same rows and targets, then
exported; step 3 scores the candidate with its own encoder (those embeddings are computed afresh) and step 4 writes
the new encoder. It needs torch and transformers (the train extra) and costs tens of minutes on two cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from router.classifier import META_FILE, MODEL_FILE, Router
from router.head import Head, gelu
from router.lexical import Lexical, tfidf
from training import data, encoder, evaluate
from training.metrics import auroc, routing_curve
from training.pipeline import mixture_quantiles, sigmoid, stage_dir

log = logging.getLogger(__name__)

FEEDBACK_SALT = "feedback-holdout:"
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class RetrainError(Exception):
    """The inputs cannot be retrained on (wrong model format, no usable feedback); the message says why."""


@dataclass(frozen=True)
class RetrainConfig:
    base_per_source: int | None = 400  # base rows embedded per source (None: all); anchors for distillation
    val_per_source: int | None = 600  # base validation rows embedded per source (None: all)
    feedback_holdout: float = 0.2
    feedback_weight: float = 1.0  # feedback's total loss weight, in units of one base source's
    proximity: float = 0.03  # pull towards the current weights (per parameter, squared distance)
    words: str = "fixed"  # a head's word term: "fixed" (an offset) or "refit" (its weights move too)
    base_targets: str = "current"  # "current": the current model's scores (distillation); "labels": the data's
    steps: int = 1000
    lr: float = 3e-3
    tolerance: float = 0.01  # largest APGR drop allowed on any labelled base validation source
    seed: int = 13
    threads: int = 2
    # --full (training.retrain_full): the encoder moves too; the settings below apply to that mode only
    full: bool = False
    full_epochs: float = 1.0  # passes over the fit rows (base sample + training feedback)
    full_steps: int | None = None  # a fixed number of steps instead (tests)
    batch_size: int = 32
    encoder_lr: float = 2e-5
    head_lr: float = 1e-3
    freeze_layers: int = 2  # lowest encoder layers kept fixed (the embeddings always are)


@dataclass
class RetrainResult:
    accepted: bool
    verdict: str
    table: str
    comparison: dict[str, Any]
    path: Path | None = None
    version: str | None = None


def sample_rows(rows: list[data.Row], limit: int | None, seed: int) -> list[data.Row]:
    """Up to ``limit`` rows of every source, by a seeded shuffle (stable across runs, so cached)."""
    if limit is None:
        return rows
    by_source: dict[str, list[data.Row]] = {}
    for r in rows:
        by_source.setdefault(r.source, []).append(r)
    chosen: list[data.Row] = []
    for source in sorted(by_source):
        group = sorted(by_source[source], key=lambda r: r.key)
        random.Random(f"{seed}:{source}").shuffle(group)
        chosen.extend(group[:limit])
    return chosen


def load_feedback(paths: list[Path]) -> list[data.Row]:
    """Exported feedback rows (``route-llm feedback export``) as training rows of source "feedback"."""
    rows = []
    for path in paths:
        for number, r in enumerate(data.read_jsonl(path), 1):
            try:
                prompt, weak, strong = r["prompt"], float(r["weak_score"]), float(r["strong_score"])
            except (KeyError, TypeError, ValueError) as exc:
                raise RetrainError(f"{path}:{number}: not a feedback row (prompt, weak_score, strong_score): "
                                   f"{exc}") from None
            if not isinstance(prompt, str) or not prompt:
                raise RetrainError(f"{path}:{number}: prompt must be a non-empty string")
            rows.append(data.Row(prompt, "feedback", Path(path).name, prompt, weak, strong))
    return rows


def _gelu_grad(x: np.ndarray) -> np.ndarray:
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
    t = np.tanh(u)
    return np.asarray(0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x))


def read_head(path: Path) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The arrays of a head file (mean, scale, layers), for starting a fit from them."""
    Head.load(path)  # validates
    with np.load(path, allow_pickle=False) as arrays:
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        while f"w{len(layers)}" in arrays:
            i = len(layers)
            layers.append((np.asarray(arrays[f"w{i}"], np.float64), np.asarray(arrays[f"b{i}"], np.float64)))
        return np.asarray(arrays["input_mean"], np.float64), np.asarray(arrays["input_scale"], np.float64), layers


def fit_from(head_path: Path, inputs: np.ndarray, target: np.ndarray, weight: np.ndarray, groups: np.ndarray,
             config: RetrainConfig, texts: list[str] | None = None) -> Head:
    """Continue training a head: full-batch Adam on weighted cross-entropy + proximity to the start weights.

    A head with a word term (:mod:`router.lexical`) keeps that term as it is (``config.words == "fixed"``): its
    contribution to each row's logit (from ``texts``) is a fixed offset while the dense layers move. With
    ``"refit"`` its weights move too, under the same pull towards their start.
    """
    mean, scale, start = read_head(head_path)
    words = Head.load(head_path).lexical
    if words is not None and texts is None:
        raise ValueError(f"{head_path} has a word term: pass the rows' prompt texts")
    refit_words = words is not None and texts is not None and config.words == "refit"
    offset = np.zeros(len(inputs)) if words is None or texts is None or refit_words else words.logits(texts)
    x = (inputs.astype(np.float64) - mean) / scale
    w = weight / weight.sum()
    params = [a.copy() for layer in start for a in layer]
    n_dense = len(params)
    if refit_words:
        assert words is not None and texts is not None
        grams = _tfidf_rows(texts, words.idf)
        params.append(words.weight.copy())
    origin = [a.copy() for a in params]
    bias = np.zeros(int(groups.max()) + 1)
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in [*params, bias]]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n_layers = len(start)
    for step in range(1, config.steps + 1):
        hidden = [x]
        pre = []
        for i in range(n_layers):
            a = hidden[-1] @ params[2 * i] + params[2 * i + 1]
            pre.append(a)
            if i < n_layers - 1:
                hidden.append(gelu(a))
        logit = pre[-1][:, 0] + bias[groups] + (grams @ params[-1] if refit_words else offset)
        d_logit = (sigmoid(logit) - target) * w
        grads: list[np.ndarray] = [np.empty(0)] * len(params)
        if refit_words:
            grads[-1] = grams.T @ d_logit + config.proximity * (params[-1] - origin[-1])
        d_a = d_logit[:, None]
        for i in reversed(range(n_layers)):
            grads[2 * i] = hidden[i].T @ d_a + config.proximity * (params[2 * i] - origin[2 * i])
            grads[2 * i + 1] = d_a.sum(axis=0) + config.proximity * (params[2 * i + 1] - origin[2 * i + 1])
            if i:
                d_a = (d_a @ params[2 * i].T) * _gelu_grad(pre[i - 1])
        d_bias = np.bincount(groups, weights=d_logit, minlength=len(bias))
        for p, g, (m, v) in zip([*params, bias], [*grads, d_bias], moments, strict=True):
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= config.lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
    layers = [(params[2 * i], params[2 * i + 1]) for i in range(n_layers)]
    if refit_words:
        assert words is not None and len(params) == n_dense + 1
        words = Lexical(idf=words.idf, weight=params[-1])
    return Head(mean=mean, scale=scale, layers=layers, lexical=words)


def _tfidf_rows(texts: list[str], idf: np.ndarray) -> Any:
    """The word term's TF-IDF vectors of ``texts`` as a sparse matrix (rows x buckets)."""
    from scipy import sparse

    index, values, starts = [], [], [0]
    for text in texts:
        i, v = tfidf(text, idf)
        index.append(i)
        values.append(v)
        starts.append(starts[-1] + len(i))
    return sparse.csr_matrix((np.concatenate(values), np.concatenate(index), np.array(starts)),
                             shape=(len(texts), idf.shape[0]))


def _feedback_metrics(rows: list[data.Row], scores: np.ndarray) -> dict[str, float]:
    weak = [float(r.weak or 0.0) for r in rows]
    strong = [float(r.strong or 0.0) for r in rows]
    curve = routing_curve(scores.tolist(), weak, strong)
    labels = [int(s > w) for w, s in zip(weak, strong, strict=True)]
    return {"n": len(rows), "apgr": round(curve.apgr, 4), "auroc": round(auroc(scores.tolist(), labels), 4)}


def compare(current: dict[str, Any], candidate: dict[str, Any], tolerance: float) -> tuple[bool, str, str]:
    """The acceptance rule and the table that shows it: (accepted, verdict, table)."""
    gain = candidate["feedback"]["apgr"] - current["feedback"]["apgr"]
    lines = [f"{'':22}{'n':>6}{'current':>10}{'candidate':>11}{'change':>9}  rule",
             f"{'feedback (held out)':22}{current['feedback']['n']:>6}{current['feedback']['apgr']:>10.3f}"
             f"{candidate['feedback']['apgr']:>11.3f}{gain:>+9.3f}  must rise"]
    worst: tuple[float, str] = (0.0, "")
    for source in data.LABELLED:
        if source not in current["base"]:
            continue
        before, after = current["base"][source]["apgr"], candidate["base"][source]["apgr"]
        worst = min(worst, (after - before, source))
        lines.append(f"{'base ' + source:22}{current['base'][source]['n']:>6}{before:>10.3f}{after:>11.3f}"
                     f"{after - before:>+9.3f}  may fall <= {tolerance:.3f}")
    if gain <= 0:
        return False, f"not better on the held-out feedback (APGR change {gain:+.3f})", "\n".join(lines)
    if worst[0] < -tolerance:
        return False, (f"base validation source {worst[1]} fell {-worst[0]:.3f} APGR, more than the tolerance "
                       f"{tolerance:.3f}"), "\n".join(lines)
    return True, (f"better on the held-out feedback ({gain:+.3f} APGR) and no base source fell more than "
                  f"{tolerance:.3f}"), "\n".join(lines)


def retrain(data_dir: Path, feedback_paths: list[Path], *, current_dir: str | Path | None, out_dir: Path,
            work_dir: Path, config: RetrainConfig) -> RetrainResult:
    """Run steps 1-4 of the module docstring; ``result.path`` is None when the candidate is not better."""
    current = Router.load(current_dir, threads=config.threads)
    directory = current.path
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    if current.meta.format != 2 or current.meta.head_file is None:
        raise RetrainError(f"{directory} is a format-{current.meta.format} model; fast retraining refits the head "
                           "of a format-2 model (sentence encoder + head.npz). Train a new model with "
                           "scripts/train_router.py --extra <exported feedback> instead.")
    feedback = load_feedback(feedback_paths)
    held = [r for r in feedback if data.hash_fraction(r.key, FEEDBACK_SALT) < config.feedback_holdout]
    train_feedback = [r for r in feedback if data.hash_fraction(r.key, FEEDBACK_SALT) >= config.feedback_holdout]
    if len(held) < 10 or len(train_feedback) < 10:
        raise RetrainError(f"{len(feedback)} feedback rows give {len(train_feedback)} to train on and {len(held)} "
                           "to judge by; at least 10 of each are needed")
    base = data.load(data_dir)
    data.assign_split(base)
    base_train = sample_rows([r for r in base if not r.val], config.base_per_source, config.seed)
    base_val = sample_rows([r for r in base if r.val], config.val_per_source, config.seed)
    log.info("retrain: %d base training rows, %d base validation rows, %d feedback rows (%d held out)",
             len(base_train), len(base_val), len(feedback), len(held))

    clf = current.classifier
    cache = work_dir / "cache"

    def embed(rows: list[data.Row]) -> np.ndarray:
        return encoder.cached_inputs(clf, [r.prompt for r in rows], cache, directory)

    x_base, x_val, x_fb, x_held = embed(base_train), embed(base_val), embed(train_feedback), embed(held)

    target, weight = data.targets(base_train, data.TargetConfig())
    head_path = directory / current.meta.head_file
    current_head = Head.load(head_path)
    def texts(rows: list[data.Row]) -> list[str]:
        return [r.prompt for r in rows]

    if config.base_targets == "current":
        target = sigmoid(current_head.logits(x_base, texts(base_train)))
    fb_target = np.array([min(1.0, max(0.0, float(r.strong or 0.0) - float(r.weak or 0.0))) for r in train_feedback])
    sources = np.array([r.source for r in base_train])
    totals = [weight[sources == s].sum() for s in set(sources.tolist())]
    fb_weight = np.full(len(train_feedback), config.feedback_weight * float(np.mean(totals)) / len(train_feedback))
    groups = np.array([data.INTERCEPT_GROUP.get(r.source, data.N_GROUPS - 1) for r in base_train]
                      + [data.N_GROUPS - 1] * len(train_feedback))
    fit = (np.concatenate([x_base, x_fb]), np.concatenate([target, fb_target]), np.concatenate([weight, fb_weight]))
    encoder_dir = directory  # the candidate's encoder: the current one, unless --full moves it
    if config.full:
        from training.retrain_full import finetune_encoder

        hidden = x_base.shape[1] - len(current.meta.features)
        try:
            encoder_dir, candidate = finetune_encoder(clf, directory, head_path, texts(base_train + train_feedback),
                                                      fit[0][:, hidden:], fit[1], fit[2], groups, work_dir / "full",
                                                      config)
        except ValueError as exc:  # an encoder graph it cannot rebuild
            raise RetrainError(str(exc)) from None
        tuned = encoder.classifier(encoder_dir, list(current.meta.features), max_length=current.meta.max_length,
                                   head_fraction=current.meta.head_fraction, threads=config.threads)
        log.info("retrain --full: embedding %d rows with the new encoder", len(base_train) + len(base_val) + len(held))
        c_base, c_val, c_held = (encoder.cached_inputs(tuned, texts(rows), cache, encoder_dir)
                                 for rows in (base_train, base_val, held))
    else:
        candidate = fit_from(head_path, *fit, groups, config, texts(base_train + train_feedback))
        c_base, c_val, c_held = x_base, x_val, x_held

    results: dict[str, dict[str, Any]] = {}
    for name, head, h_val, h_held in (("current", current_head, x_val, x_held),
                                      ("candidate", candidate, c_val, c_held)):
        results[name] = {"feedback": _feedback_metrics(held, sigmoid(head.logits(h_held, texts(held)))),
                         "base": evaluate.per_source(base_val, sigmoid(head.logits(h_val, texts(base_val))).tolist())}
    accepted, verdict, table = compare(results["current"], results["candidate"], config.tolerance)
    log.info("retrain: %s\n%s", verdict, table)
    if not accepted:
        return RetrainResult(False, verdict, table, results)

    sampled = base_train + base_val
    sample_scores = sigmoid(candidate.logits(np.concatenate([c_base, c_val]), texts(sampled)))
    created = datetime.now(timezone.utc)
    # the encoder directory carries the current model's tokenizer (--full's export copies it there)
    tmp = stage_dir(encoder_dir, candidate, out_dir / f".retrain-{created:%Y%m%d%H%M%S}.tmp")
    digest = hashlib.sha256((tmp / MODEL_FILE).read_bytes() + (tmp / "head.npz").read_bytes()).hexdigest()[:8]
    parent = str(meta.get("version", "model")).split("+", 1)[0]
    version = f"{parent}+{'ft' if config.full else 'fb'}{created:%Y%m%d%H%M}-{digest}"
    meta.update({
        "head": "head.npz",
        "quantiles": mixture_quantiles(sampled, sample_scores),
        "quantile_sample": "candidate scores of the retrain sample (base training and validation rows), each "
                           "source weighted by 'mixture', split equally among its rows",
        "version": version,
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "retrain": {"parent_version": meta.get("version"), "config": asdict(config), "verdict": verdict,
                    "comparison": results, "feedback_rows": len(feedback), "feedback_files":
                    [Path(p).name for p in feedback_paths]},
    })
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    Router.load(tmp)  # the directory must load before it gets its final name
    out = out_dir / version
    tmp.rename(out)
    log.info("retrain: wrote %s", out)
    return RetrainResult(True, verdict, table, results, out, version)
