"""``route-llm retrain``: refit the current model's routing head with a deployment's feedback, keep it unless worse.

Fast by construction: the current model's encoder is frozen (format 2: ``model.onnx`` is a sentence encoder), so
only the small numpy head is refitted, on embeddings, starting from the current head's weights. It needs nothing
beyond the base dependencies (numpy does the fit and the evaluation). The steps:

1. Rows. The base rows come from the model directory's ``base_rows.npz`` (:mod:`training.base_rows`: the rows
   the head was trained and validated on, as embeddings and word counts, written by the training pipeline; the
   judged chat rows are left out for their licence), or, with ``--data-dir``, from the data itself: split by
   group as in training (:func:`training.data.assign_split`) and, because embedding all 23k base prompts costs
   about 20 minutes on two busy cores, sampled: up to ``base_per_source`` training and ``val_per_source``
   validation rows of every source by a seeded shuffle (the same rows every run, so their embeddings come from the
   cache). Feedback rows (``route-llm feedback export``) are first capped per rater: no proxy key (the row's
   ``rater``) gives more than ``max_key_share`` of them (default 0.5, ``--max-key-share``; the rule and which rows
   stay: :mod:`router.rater_share`; rows that name no rater are kept, uncut). A half is the default because the
   fit cannot tell one key's opinion from a deployment's: with it, one key at least needs another key's agreement
   in numbers to steer the router, and a deployment whose ratings all come from one key must say so with
   ``--max-key-share 1``. Then they are split by a hash of the prompt: ``feedback_holdout``
   of them are held out to judge the candidate, the rest train; at least :data:`MIN_TRAIN_ROWS` must train.
2. Fit. The head starts from the current weights and is trained by full-batch Adam on the weighted soft-target
   cross-entropy of base rows + feedback, plus ``proximity`` times the squared distance to the current weights
   (this pull is also what keeps the behaviour on sources whose rows do not ship, such as chat). The base rows
   are there to keep what the current model does: their targets are the current model's own scores
   (distillation), so the fit moves only where the feedback asks it to. (Refitting them on their labels instead,
   ``base_targets="labels"``, cost 0.08 MMLU APGR in the simulation.) As in training, every source has its own
   learned intercept (feedback included), dropped from the exported head. Feedback's total weight is
   ``feedback_weight`` times that of an average base source.
3. Judge (:func:`judge`). Current and candidate are scored on the held-out feedback and on the base validation
   rows (per source). Every APGR change gets a paired bootstrap interval. The candidate is refused when the
   held-out feedback's change lies below zero beyond its interval, or when a base source falls more than
   ``tolerance`` and its interval lies below zero too: a drop that noise cannot explain. Held-out feedback too
   small to judge (:data:`MIN_JUDGE_ROWS`) refuses unless ``accept`` is set.
4. Write. A new directory ``<out_dir>/<version>``: the current ``model.onnx`` and tokenizer, the new head, the
   base rows (so the next retrain needs no data either), and router.json with the comparison and a quantile table
   carried over from the current model (each point moved to the candidate's score at the same mixture-weighted
   rank of the base rows, so ``strong_share`` keeps its meaning). The serving proxy picks it up on reload.

``full=True`` (``route-llm retrain --full``) replaces step 2 with :func:`training.network.finetune_encoder`:
the encoder is rebuilt from the current ONNX file and fine-tuned with the head on the same rows and targets, then
exported; step 3 scores the candidate with its own encoder (those embeddings are computed afresh, which needs the
prompts: ``--data-dir``) and step 4 writes the new encoder. It needs torch and transformers (the train extra) and
costs tens of minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from router.classifier import META_FILE, MODEL_FILE, Router
from router.head import Head, gelu
from router.lexical import Lexical
from router.rater_share import cap_share
from training import base_rows, data, encoder, evaluate
from training.base_rows import BaseRows, BaseRowsError, RowSet, Terms, head_logits
from training.metrics import auroc, routing_curve
from training.network import read_head
from training.pipeline import sigmoid, stage_dir

log = logging.getLogger(__name__)

FEEDBACK_SALT = "feedback-holdout:"
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
#: Feedback rows the fit needs at the least (after the held-out share is set aside).
MIN_TRAIN_ROWS = 10
#: Held-out feedback rows below which an APGR change is a coin toss: the candidate is refused unless accepted.
MIN_JUDGE_ROWS = 30
#: ... and rows of each outcome (strong needed, not needed) it must hold; with none of one kind APGR is undefined.
MIN_JUDGE_EACH = 5
CONFIDENCE = 0.95


class RetrainError(Exception):
    """The inputs cannot be retrained on (wrong model format, no usable feedback); the message says why."""


@dataclass(frozen=True)
class RetrainConfig:
    base_per_source: int | None = 400  # --data-dir: base rows embedded per source (None: all)
    val_per_source: int | None = 600  # --data-dir: base validation rows embedded per source (None: all)
    feedback_holdout: float = 0.2
    holdout_seed: int = 0  # which hash split of the feedback is held out (0: the original salt)
    feedback_weight: float = 1.0  # feedback's total loss weight, in units of one base source's
    proximity: float = 0.03  # pull towards the current weights (per parameter, squared distance)
    words: str = "fixed"  # a head's word term: "fixed" (an offset) or "refit" (its weights move too)
    base_targets: str = "current"  # "current": the current model's scores (distillation); "labels": the data's
    steps: int = 1000
    lr: float = 3e-3
    tolerance: float = 0.01  # largest APGR drop beyond noise allowed on any labelled base validation source
    max_key_share: float | None = 0.5  # most of the feedback rows one rater (proxy key) may give (None: no cap)
    accept: bool = False  # take a candidate whose held-out feedback is too small to judge
    bootstrap: int = 1000  # resamples behind every interval
    seed: int = 13
    threads: int = 2
    # --full (training.network.finetune_encoder): the encoder moves too; the settings below apply to that mode only
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
    explanation: str = ""  # which rows were used and the rule, in words, with the numbers
    candidate: Head | None = None  # the fitted head, kept or not (the simulation scores refused ones too)
    feedback_raters: dict[str, int] = dataclasses.field(default_factory=dict)  # rows used per rater ("": none named)


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
        try:
            records = data.read_jsonl_lines(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise RetrainError(f"{path}: {exc}") from None
        for number, r in records:
            where = f"{path}:{number}"
            try:
                prompt, raw_weak, raw_strong = r["prompt"], r["weak_score"], r["strong_score"]
            except (KeyError, TypeError) as exc:
                raise RetrainError(f"{where}: not a feedback row (prompt, weak_score, strong_score): "
                                   f"{exc}") from None
            if not isinstance(prompt, str) or not prompt:
                raise RetrainError(f"{where}: prompt must be a non-empty string")
            weak, strong = _score(raw_weak, "weak_score", where), _score(raw_strong, "strong_score", where)
            rater, name = r.get("rater"), r.get("rater_name")
            if rater is not None and (not isinstance(rater, str) or not rater):
                raise RetrainError(f"{where}: rater must be a string (the rating key's owner hash) or null, not "
                                   f"{json.dumps(rater)[:40]}")
            fid = r.get("feedback_id")
            rows.append(data.Row(prompt, "feedback", Path(path).name, prompt, weak, strong,
                                 extra={"rater": rater, "rater_name": name if isinstance(name, str) else None,
                                        "order": fid if isinstance(fid, str) and fid else prompt}))
    return rows


def cap_raters(rows: list[data.Row], share: float | None) -> tuple[list[data.Row], str]:
    """The rows with no rater above ``share`` of them (:mod:`router.rater_share`) and a line saying what was cut."""
    raters = [r.extra.get("rater") for r in rows]
    names = {r.extra["rater"]: r.extra.get("rater_name") or r.extra["rater"][:12] for r in rows if r.extra.get("rater")}
    counts = Counter(rater for rater in raters if rater)
    unnamed = len(rows) - sum(counts.values())
    kept = rows if share is None else [rows[i] for i in cap_share(raters, [r.extra["order"] for r in rows], share)]
    left = Counter(r.extra["rater"] for r in kept if r.extra.get("rater"))
    parts: list[str] = []
    if counts:
        top, most = max(counts.items(), key=lambda item: (item[1], item[0]))
        parts.append(f"feedback from {len(counts)} raters (proxy keys); the most from one: {most} of {len(rows)}, "
                     f"from {names[top]}")
    if unnamed:
        parts.append(f"{unnamed} rows name no rater (an older export, or a proxy without keys): kept, never cut")
    if len(kept) < len(rows):
        cut = ", ".join(f"{names[k]} {left[k]} of {n}" for k, n in sorted(counts.items()) if left[k] < n)
        parts.append(f"{len(rows) - len(kept)} rows of the largest raters left out (--max-key-share {share:g}: no "
                     f"key gives more than that share; kept: {cut})")
    line = "; ".join(parts)
    if not kept and len(counts) == 1:
        raise RetrainError(f"{line}: one key gave every rated row, and no key may give more than {share:g} of "
                           "them. If that key is the deployment's only one, pass --max-key-share 1")
    return kept, line


def _score(value: object, field: str, where: str) -> float:
    """A JSON number in [0, 1]. Python's json reads NaN and Infinity, and float() would take True and "0.5";
    any of them would reach the fit and the held-out APGR (Infinity makes it NaN), so each is refused by name."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RetrainError(f"{where}: {field} must be a number between 0 and 1, not {json.dumps(value)[:40]}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise RetrainError(f"{where}: {field} must be between 0 and 1, not {value!r}")
    return float(value)


def split_feedback(rows: list[data.Row], holdout: float, seed: int) -> tuple[list[data.Row], list[data.Row]]:
    """(train, held out): a stable split by a hash of the prompt; ``seed`` picks another split."""
    salt = FEEDBACK_SALT if seed == 0 else f"{FEEDBACK_SALT}{seed}:"
    held = [r for r in rows if data.hash_fraction(r.key, salt) < holdout]
    return [r for r in rows if data.hash_fraction(r.key, salt) >= holdout], held


def _gelu_grad(x: np.ndarray) -> np.ndarray:
    u = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
    t = np.tanh(u)
    return np.asarray(0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x))


def fit_from(head_path: Path, inputs: np.ndarray, target: np.ndarray, weight: np.ndarray, groups: np.ndarray,
             config: RetrainConfig, terms: Terms | None = None) -> Head:
    """Continue training a head: full-batch Adam on weighted cross-entropy + proximity to the start weights.

    A head with a word term (:mod:`router.lexical`) keeps that term as it is (``config.words == "fixed"``): its
    contribution to each row's logit (from the rows' word counts ``terms``) is a fixed offset while the dense
    layers move. With ``"refit"`` its weights move too, under the same pull towards their start.
    """
    mean, scale, start = read_head(head_path)
    words = Head.load(head_path).lexical
    if words is not None and terms is None:
        raise ValueError(f"{head_path} has a word term: pass the rows' word counts")
    refit_words = words is not None and config.words == "refit"
    values = terms.tfidf(words.idf) if words is not None and terms is not None else np.zeros(0)
    offset = np.zeros(len(inputs))
    if words is not None and terms is not None and not refit_words:
        offset = terms.dot(values, words.weight)
    x = (inputs.astype(np.float64) - mean) / scale
    w = weight / weight.sum()
    params = [a.copy() for layer in start for a in layer]
    n_dense = len(params)
    if refit_words:
        assert words is not None
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
        word_logit = terms.dot(values, params[-1]) if refit_words and terms is not None else offset
        logit = pre[-1][:, 0] + bias[groups] + word_logit
        d_logit = (sigmoid(logit) - target) * w
        grads: list[np.ndarray] = [np.empty(0)] * len(params)
        if refit_words and terms is not None:
            grads[-1] = terms.rdot(values, d_logit) + config.proximity * (params[-1] - origin[-1])
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


def _feedback_metrics(rows: RowSet, scores: np.ndarray) -> dict[str, Any]:
    if not len(rows):
        return {"n": 0, "apgr": float("nan"), "auroc": float("nan")}
    curve = routing_curve(scores.tolist(), rows.weak.tolist(), rows.strong.tolist())
    labels = (rows.strong > rows.weak).astype(int).tolist()
    return {"n": len(rows), "apgr": round(curve.apgr, 4), "auroc": round(auroc(scores.tolist(), labels), 4)}


def change_interval(weak: np.ndarray, strong: np.ndarray, current: np.ndarray, candidate: np.ndarray, *,
                    rounds: int, seed: int) -> tuple[float, float, float]:
    """APGR(candidate) - APGR(current) and its paired bootstrap interval (:data:`CONFIDENCE`): rows are resampled
    with replacement and both scorers judged on the same resample, so the interval is the change's own noise."""
    def apgr(scores: np.ndarray, rows: np.ndarray) -> float:
        return routing_curve(scores[rows], weak[rows], strong[rows]).apgr

    everything = np.arange(len(weak))
    change = apgr(candidate, everything) - apgr(current, everything)
    rng = np.random.default_rng(seed)
    draws = np.empty(rounds)
    for b in range(rounds):
        rows = rng.integers(0, len(weak), len(weak))
        draws[b] = apgr(candidate, rows) - apgr(current, rows)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [tail, 1 - tail]) if rounds else (change, change)
    return change, float(low), float(high)


@dataclass(frozen=True)
class Check:
    """One line of the judgement: a set of rows, both models' APGR, the change and its interval, the outcome."""

    name: str
    n: int
    current: float
    candidate: float
    change: float
    low: float
    high: float
    outcome: str  # "pass", "refuse" or "too few"


def _worse(change: float, low: float, high: float, tolerance: float) -> bool:
    """A drop beyond ``tolerance`` whose interval lies below zero, or a change that is not a number: every
    comparison with NaN is False, so without the finite check a NaN APGR would pass as "no drop"."""
    if not all(math.isfinite(x) for x in (change, low, high)):
        return True
    return change < -tolerance and high < 0


def judge(held: RowSet, held_scores: tuple[np.ndarray, np.ndarray], val: RowSet,
          val_scores: tuple[np.ndarray, np.ndarray], config: RetrainConfig) -> tuple[bool, str, str, list[Check]]:
    """The acceptance rule (module docstring, step 3): (accepted, verdict, table, checks)."""
    checks: list[Check] = []
    needed = int((held.strong > held.weak).sum())
    enough = len(held) >= MIN_JUDGE_ROWS and min(needed, len(held) - needed) >= MIN_JUDGE_EACH
    if len(held) and needed:
        change, low, high = change_interval(held.weak, held.strong, *held_scores, rounds=config.bootstrap,
                                            seed=config.seed)
        cur = routing_curve(held_scores[0], held.weak, held.strong).apgr
        outcome = "too few" if not enough else "refuse" if _worse(change, low, high, 0.0) else "pass"
        checks.append(Check("feedback (held out)", len(held), cur, cur + change, change, low, high, outcome))
    else:
        nan = float("nan")
        checks.append(Check("feedback (held out)", len(held), nan, nan, nan, nan, nan, "too few"))
    for source in data.LABELLED:
        rows = np.nonzero(val.source == source)[0]
        if len(rows) < 2:
            continue
        weak, strong = val.weak[rows], val.strong[rows]
        current, candidate = val_scores[0][rows], val_scores[1][rows]
        change, low, high = change_interval(weak, strong, current, candidate, rounds=config.bootstrap,
                                            seed=config.seed)
        cur = routing_curve(current, weak, strong).apgr
        outcome = "refuse" if _worse(change, low, high, config.tolerance) else "pass"
        checks.append(Check(f"base {source}", len(rows), cur, cur + change, change, low, high, outcome))

    lines = [f"{'':22}{'n':>6}{'current':>10}{'candidate':>11}{'change':>9}  {'95% interval':18}result"]
    for c in checks:
        numbers = (f"{c.current:>10.3f}{c.candidate:>11.3f}{c.change:>+9.3f}  [{c.low:+.3f}, {c.high:+.3f}]  "
                   if not math.isnan(c.change) else f"{'-':>10}{'-':>11}{'-':>9}  {'-':18}")
        lines.append(f"{c.name:22}{c.n:>6}{numbers}{c.outcome}")
    table = "\n".join(lines)

    fb = checks[0]
    dropped = [c for c in checks[1:] if c.outcome == "refuse"]
    unmeasured = [c for c in checks if c.outcome == "refuse" and not math.isfinite(c.change + c.low + c.high)]
    if unmeasured:
        return False, (f"the APGR change on {unmeasured[0].name} is not a finite number (current "
                       f"{unmeasured[0].current}, candidate {unmeasured[0].candidate}): it cannot show the "
                       "candidate is no worse"), table, checks
    if fb.outcome == "refuse":
        return False, (f"worse on the held-out feedback: APGR change {fb.change:+.3f}, and its 95% interval "
                       f"[{fb.low:+.3f}, {fb.high:+.3f}] lies below zero"), table, checks
    if dropped:
        worst = min(dropped, key=lambda c: c.change)
        return False, (f"base validation source {worst.name[5:]} fell {-worst.change:.3f} APGR, more than the "
                       f"tolerance {config.tolerance:.3f}, and its 95% interval [{worst.low:+.3f}, {worst.high:+.3f}] "
                       "lies below zero: not noise"), table, checks
    base_ok = f"no base source fell more than {config.tolerance:.3f} beyond its noise"
    if fb.outcome == "too few":
        why = (f"{fb.n} held-out feedback rows ({needed} where the strong model was needed) are too few to judge by: "
               f"it takes {MIN_JUDGE_ROWS} rows with at least {MIN_JUDGE_EACH} of each outcome")
        if not config.accept:
            return False, f"{why}; collect more ratings, or pass --accept to take the candidate on the base " \
                          "checks alone", table, checks
        return True, f"taken with --accept: {why}; {base_ok}", table, checks
    return True, (f"held-out feedback APGR change {fb.change:+.3f} (95% interval [{fb.low:+.3f}, {fb.high:+.3f}]) "
                  f"is not a drop beyond noise, and {base_ok}"), table, checks


def carry_quantiles(table: list[list[float]], rows: RowSet, current: np.ndarray,
                    candidate: np.ndarray) -> list[list[float]]:
    """The current quantile table moved to the candidate: every point moves by the candidate's minus the current
    model's score at the point's MIXTURE-weighted rank among ``rows``. The table's own sample (the training run's
    validation rows, chat included) keeps its say, and an unchanged head keeps an unchanged table."""
    counts = {s: int((rows.source == s).sum()) for s in set(rows.source.tolist())}
    weights = np.array([data.MIXTURE.get(s, 0.0) / counts[s] for s in rows.source])
    keep = weights > 0
    if not keep.any():
        return table
    cur, cand, w = current[keep], candidate[keep], weights[keep]
    order = np.argsort(cur, kind="stable")
    cumulative = np.cumsum(w[order]) / w.sum()
    moved = []
    for _, point in table:
        rank = float(np.clip(np.interp(point, cur[order], cumulative), 0.0, 1.0))
        shift = (float(np.quantile(cand, rank, weights=w, method="inverted_cdf"))
                 - float(np.quantile(cur, rank, weights=w, method="inverted_cdf")))
        moved.append(min(1.0, max(0.0, point + shift)))
    values = np.maximum.accumulate(np.array(moved))
    return [[level, round(float(v), 6)] for (level, _), v in zip(table, values, strict=True)]


def _base_from_data(data_dir: Path, embed: Any, bits: int | None,
                    config: RetrainConfig) -> tuple[BaseRows, list[data.Row], list[data.Row]]:
    base = data.load(data_dir)
    data.assign_split(base)
    train = sample_rows([r for r in base if not r.val], config.base_per_source, config.seed)
    val = sample_rows([r for r in base if r.val], config.val_per_source, config.seed)
    target, weight = data.targets(train, data.TargetConfig())
    rows = BaseRows(RowSet.from_rows(train, embed(train), bits, target, weight),
                    RowSet.from_rows(val, embed(val), bits), {"origin": f"a sample of {data_dir}"})
    return rows, train, val


def _concat(a: RowSet, b: RowSet) -> RowSet:
    """The rows of ``a`` then those of ``b``."""
    terms = None
    if a.terms is not None and b.terms is not None:
        terms = Terms(ptr=np.concatenate([a.terms.ptr, a.terms.ptr[-1] + b.terms.ptr[1:]]),
                      index=np.concatenate([a.terms.index, b.terms.index]),
                      count=np.concatenate([a.terms.count, b.terms.count]), bits=a.terms.bits)
    return RowSet(inputs=np.concatenate([a.inputs, b.inputs]), terms=terms,
                  source=np.concatenate([a.source, b.source]), target=np.concatenate([a.target, b.target]),
                  weight=np.concatenate([a.weight, b.weight]), weak=np.concatenate([a.weak, b.weak]),
                  strong=np.concatenate([a.strong, b.strong]), level=np.concatenate([a.level, b.level]))


def retrain(data_dir: Path | None, feedback_paths: list[Path], *, current_dir: str | Path | None, out_dir: Path,
            work_dir: Path, config: RetrainConfig) -> RetrainResult:
    """Run steps 1-4 of the module docstring; ``result.path`` is None when the candidate is refused.

    ``data_dir`` None reads the base rows shipped beside the current model (``base_rows.npz``)."""
    current = Router.load(current_dir, threads=config.threads)
    directory = current.path
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    if current.meta.format != 2 or current.meta.head_file is None:
        raise RetrainError(f"{directory} is a format-{current.meta.format} model; fast retraining refits the head "
                           "of a format-2 model (sentence encoder + head.npz). Train a new model with "
                           "scripts/train_router.py --extra <exported feedback> instead.")
    if config.full and data_dir is None:
        raise RetrainError("--full fine-tunes the encoder, so the base rows must be embedded again from their "
                           "prompts, which do not ship: pass --data-dir with the base training data")
    feedback, raters_line = cap_raters(load_feedback(feedback_paths), config.max_key_share)
    train_feedback, held = split_feedback(feedback, config.feedback_holdout, config.holdout_seed)
    rows_line = (f"{len(feedback)} feedback rows: {len(train_feedback)} to train on, {len(held)} held out "
                 f"({config.feedback_holdout:.0%}, chosen by a hash of the prompt) to judge the candidate")
    used = dict(Counter(r.extra.get("rater") or "" for r in feedback))
    if len(train_feedback) < MIN_TRAIN_ROWS:
        who = f" ({raters_line})" if raters_line else ""
        raise RetrainError(f"{rows_line}{who}; the fit needs at least {MIN_TRAIN_ROWS} to train on. "
                           "Rate more answers (with feedback.store_prompts: true) and export again.")

    head_path = directory / current.meta.head_file
    current_head = Head.load(head_path)
    bits = current_head.lexical.bits if current_head.lexical is not None else None
    clf = current.classifier
    cache = work_dir / "cache"

    def embed(rows: list[data.Row]) -> np.ndarray:
        if not rows:
            return np.zeros((0, current_head.input_size))
        return encoder.cached_inputs(clf, [r.prompt for r in rows], cache, directory)

    base_train_rows: list[data.Row] = []
    base_val_rows: list[data.Row] = []
    if data_dir is None:
        try:
            base = base_rows.load(directory)
        except BaseRowsError as exc:
            raise RetrainError(str(exc)) from None
        origin = f"{directory / base_rows.FILE} (shipped with the model; left out: {', '.join(base_rows.EXCLUDED)})"
    else:
        base, base_train_rows, base_val_rows = _base_from_data(data_dir, embed, bits, config)
        origin = f"a seeded sample of {data_dir}"
    base_line = (f"base rows: {len(base.train)} to keep the current behaviour, {len(base.val)} to validate, from "
                 f"{origin}")
    log.info("retrain: %s; %s", rows_line, base_line)

    fb_target = np.array([min(1.0, max(0.0, float(r.strong or 0.0) - float(r.weak or 0.0))) for r in train_feedback])
    fb_train = RowSet.from_rows(train_feedback, embed(train_feedback), bits, target=fb_target)
    fb_held = RowSet.from_rows(held, embed(held), bits)
    try:
        target = (sigmoid(head_logits(current_head, base.train)) if config.base_targets == "current"
                  else base.train.target)
    except BaseRowsError as exc:
        raise RetrainError(str(exc)) from None
    weight = base.train.weight
    totals = [weight[base.train.source == s].sum() for s in set(base.train.source.tolist())]
    fb_weight = np.full(len(fb_train), config.feedback_weight * float(np.mean(totals)) / len(fb_train))
    fit_rows = _concat(dataclasses.replace(base.train, target=target),
                       dataclasses.replace(fb_train, weight=fb_weight))
    groups = np.array([data.INTERCEPT_GROUP.get(s, data.N_GROUPS - 1) for s in base.train.source]
                      + [data.N_GROUPS - 1] * len(fb_train))
    encoder_dir = directory  # the candidate's encoder: the current one, unless --full moves it
    c_train, c_val, c_held = base.train, base.val, fb_held
    if config.full:
        from training.network import finetune_encoder

        hidden = fit_rows.inputs.shape[1] - len(current.meta.features)
        texts = [r.prompt for r in base_train_rows + train_feedback]
        try:
            encoder_dir, candidate = finetune_encoder(clf, directory, head_path, texts, fit_rows.inputs[:, hidden:],
                                                      fit_rows.target, fit_rows.weight, groups, work_dir / "full",
                                                      config)
        except ValueError as exc:  # an encoder graph it cannot rebuild
            raise RetrainError(str(exc)) from None
        tuned = encoder.classifier(encoder_dir, list(current.meta.features), max_length=current.meta.max_length,
                                   head_fraction=current.meta.head_fraction, threads=config.threads)
        log.info("retrain --full: embedding %d rows with the new encoder",
                 len(base_train_rows) + len(base_val_rows) + len(held))

        def embed_tuned(rows: list[data.Row]) -> np.ndarray:
            if not rows:
                return np.zeros((0, current_head.input_size))
            return encoder.cached_inputs(tuned, [r.prompt for r in rows], cache, encoder_dir)

        c_train = dataclasses.replace(base.train, inputs=embed_tuned(base_train_rows))
        c_val = dataclasses.replace(base.val, inputs=embed_tuned(base_val_rows))
        c_held = dataclasses.replace(fb_held, inputs=embed_tuned(held))
    else:
        candidate = fit_from(head_path, fit_rows.inputs, fit_rows.target, fit_rows.weight, groups, config,
                             fit_rows.terms)

    scores = {name: (sigmoid(head_logits(head, held_rows)), sigmoid(head_logits(head, val_rows)))
              for name, head, held_rows, val_rows in (("current", current_head, fb_held, base.val),
                                                      ("candidate", candidate, c_held, c_val))}
    val_as_rows = base.val.as_rows()
    results: dict[str, Any] = {name: {"feedback": _feedback_metrics(fb_held, s[0]),
                                      "base": evaluate.per_source(val_as_rows, s[1].tolist())}
                               for name, s in scores.items()}
    accepted, verdict, table, checks = judge(fb_held, (scores["current"][0], scores["candidate"][0]), base.val,
                                             (scores["current"][1], scores["candidate"][1]), config)
    results["checks"] = [asdict(c) for c in checks]
    explanation = "\n".join([
        rows_line + f" (the fit needs at least {MIN_TRAIN_ROWS} to train on)",
        *([raters_line] if raters_line else []),
        base_line,
        f"rule: refused if the APGR on the held-out feedback drops and its {CONFIDENCE:.0%} bootstrap interval "
        f"({config.bootstrap} resamples) lies below zero, or if a base source falls more than --tolerance "
        f"{config.tolerance:.3f} with its interval below zero; fewer than {MIN_JUDGE_ROWS} held-out rows (or fewer "
        f"than {MIN_JUDGE_EACH} of either outcome) cannot judge, and then it is refused unless --accept",
    ])
    log.info("retrain: %s", verdict)
    if not accepted:
        return RetrainResult(False, verdict, table, results, explanation=explanation, candidate=candidate,
                             feedback_raters=used)

    sampled = _concat(base.train, base.val)
    current_scores = sigmoid(head_logits(current_head, sampled))
    candidate_scores = sigmoid(head_logits(candidate, _concat(c_train, c_val)))
    created = datetime.now(timezone.utc)
    # the encoder directory carries the current model's tokenizer (--full's export copies it there)
    tmp = stage_dir(encoder_dir, candidate, out_dir / f".retrain-{created:%Y%m%d%H%M%S}.tmp")
    digest = hashlib.sha256((tmp / MODEL_FILE).read_bytes() + (tmp / "head.npz").read_bytes()).hexdigest()[:8]
    parent = str(meta.get("version", "model")).split("+", 1)[0]
    version = f"{parent}+{'ft' if config.full else 'fb'}{created:%Y%m%d%H%M}-{digest}"
    meta.update({
        "head": "head.npz",
        "quantiles": carry_quantiles(meta["quantiles"], sampled, current_scores, candidate_scores),
        "quantile_sample": "the parent model's table, each point moved to the candidate's score at the same "
                           "mixture-weighted rank of the retrain's base rows; the parent's: "
                           + str(meta.get("quantile_sample", "")),
        "version": version,
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "retrain": {"parent_version": meta.get("version"), "config": asdict(config), "verdict": verdict,
                    "comparison": results, "feedback_rows": len(feedback), "base_rows": origin,
                    "feedback_files": [Path(p).name for p in feedback_paths],
                    "feedback_largest_rater_share": round(max((n for k, n in used.items() if k), default=0)
                                                           / max(1, len(feedback)), 4)},
    })
    # the rows used, so the next retrain needs no data either (with --full: embedded by the new encoder)
    meta["base_rows"] = base_rows.write(tmp / base_rows.FILE, c_train, c_val, model_dir=tmp,
                                        n_features=len(current.meta.features),
                                        extra_meta={"origin": f"retrain of {meta['retrain']['parent_version']}: "
                                                    + origin})
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    Router.load(tmp)  # the directory must load before it gets its final name
    out = out_dir / version
    tmp.rename(out)
    log.info("retrain: wrote %s", out)
    return RetrainResult(True, verdict, table, results, out, version, explanation, candidate, used)
