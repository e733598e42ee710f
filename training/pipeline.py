"""Train a format-2 router end to end: data → split → encoder → cached head inputs → head → model directory.

Steps, and why:

1. Every source under the data directory is read and split by group (:mod:`training.data`).
2. The base encoder is exported to int8 ONNX once, and every prompt's head inputs (embedding + features) are
   computed by the runtime and cached, so changing the head costs a minute, not a re-embedding.
3. The head is fitted on the training part only; the validation part gives the per-source table beside the
   baselines (:mod:`training.evaluate`), which is written into router.json and printed.
4. The quantile table behind ``strong_share`` is computed from the scores of every row, weighted by the
   documented traffic MIXTURE, so "30% strong" means 30% of that mixture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from router import lexical
from router.classifier import META_FILE, MODEL_FILE, TOKENIZER_FILE, Classifier, encoder_files
from router.doc_head import FILE as DOC_HEAD_FILE
from router.features import FEATURES
from router.head import Head
from router.policy import QUANTILE_LEVELS
from training import base_rows, data, encoder, evaluate
from training.head import HeadConfig, JointConfig, fit, fit_joint

log = logging.getLogger(__name__)


def mixture_quantiles(rows: list[data.Row], scores: np.ndarray) -> list[list[float]]:
    """101 score quantiles of the MIXTURE-weighted rows (ends pinned to the observed minimum and maximum)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.source] = counts.get(r.source, 0) + 1
    weights = np.array([data.MIXTURE.get(r.source, 0.0) / counts[r.source] for r in rows])
    keep = weights > 0
    points = np.quantile(scores[keep], QUANTILE_LEVELS, weights=weights[keep], method="inverted_cdf")
    points = np.maximum.accumulate(np.clip(points, 0.0, 1.0))
    points[0], points[-1] = float(scores[keep].min()), float(scores[keep].max())
    return [[round(level, 2), round(float(value), 6)] for level, value in zip(QUANTILE_LEVELS, points)]


def stage_dir(encoder_dir: Path, head: Head, tmp: Path) -> Path:
    """A fresh staging directory ``tmp`` holding the encoder, its tokenizer and the head; router.json is written
    after, and the caller renames it into place (:func:`replace_dir`)."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for path in encoder_files(encoder_dir):  # model.onnx, and embedding.bin where the graph keeps its tables outside
        shutil.copy(path, tmp / path.name)
    shutil.copy(encoder_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
    if (encoder_dir / encoder.ENCODER_FILE).is_file():  # the encoder's provenance and licences ship with it
        shutil.copy(encoder_dir / encoder.ENCODER_FILE, tmp / encoder.ENCODER_FILE)
    # The document head reads this same encoder's embedding, so it stays valid beside a new general head (a head
    # refit, a retrain); an encoder directory without one (a fine-tuned export) gives a model without one.
    if (encoder_dir / DOC_HEAD_FILE).is_file():
        shutil.copy(encoder_dir / DOC_HEAD_FILE, tmp / DOC_HEAD_FILE)
    head.save(tmp / "head.npz")
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished model directory into place, so a reader never sees a half-written one."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def extra_files(extra_dir: Path | None) -> dict[str, str]:
    """The built extra files a run read, for router.json (none without ``--extra-dir``)."""
    if extra_dir is None:
        return {}
    return {name: str(extra_dir / file) for name, file in data.EXTRA_FILES.items() if (extra_dir / file).is_file()}


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function of logits, clipped so exp cannot overflow."""
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -700, 700))))


def fit_head(
    rows: list[data.Row],
    inputs: np.ndarray,
    use: np.ndarray,
    targets: data.TargetConfig,
    head: HeadConfig | JointConfig,
) -> Head:
    """Fit a head on the rows in ``use`` (their targets, per-source weights and intercept groups) plus the everyday
    contrast drawn from the same rows; the training run and the cross-validation (:mod:`training.crossval`) both
    fit through here, so a fold's head is built exactly as the shipped one is."""
    target, weight = data.targets(rows, targets, use=use)
    groups = np.array([data.INTERCEPT_GROUP.get(r.source, data.N_GROUPS - 1) for r in rows])
    index, extra_target, extra_weight = data.everyday_contrast(rows, targets, use)
    prompts = [r.prompt for r in rows]
    fit_args = (
        np.concatenate([inputs, inputs[index]]),
        np.concatenate([target, extra_target]),
        np.concatenate([weight, extra_weight]),
        np.concatenate([groups, np.full(len(index), data.N_GROUPS - 1)]),
    )
    if isinstance(head, JointConfig):
        return fit_joint(fit_args[0], prompts + [prompts[i] for i in index], *fit_args[1:], head)
    return fit(*fit_args, head)


#: Training rows kept per source (MMLU and MATH are most of the data; see :func:`training.data.training_subset`).
DEFAULT_CAPS = {"mmlu": 4000, "math": 1500}


@dataclass
class Prepared:
    """The split rows of a training run and their head inputs (embedding + features), ready for fitting."""

    all_rows: list[data.Row]  # every row read, split marked
    rows: list[data.Row]  # the validation rows plus the capped training rows, in file order
    split: dict[str, Any]  # the split's description for router.json
    caps: dict[str, int]  # training rows kept per capped source
    encoder_dir: Path  # the directory whose model.onnx + tokenizer.json computed ``inputs``
    clf: Classifier
    inputs: np.ndarray  # one row of head inputs per entry of ``rows``


def prepare(
    data_dir: Path,
    work: Path,
    *,
    encoder_source: Path | None = None,
    encoder_dir: Path | None = None,
    caps: dict[str, int] | None = None,
    max_length: int = 128,
    head_fraction: float = 0.5,
    extra: list[Path] | None = None,
    extra_dir: Path | None = None,
    threads: int = 2,
) -> Prepared:
    """Read and split the data, pick the encoder, and compute (or read from ``work``/cache) every row's head inputs.

    ``encoder_source`` is a format-1 classifier directory whose fine-tuned encoder the head reads (the shipped
    model uses the first router's); without it the base MiniLM is exported and used. ``encoder_dir`` instead
    reuses a format-2 model directory's ``model.onnx`` + ``tokenizer.json`` as they are (a deployed model's).
    ``extra_dir`` adds the built extra rows (:func:`training.data.load_extra_dir`).
    """
    t0 = time.time()
    all_rows = data.load(data_dir, extra or [], extra_dir)
    split = data.assign_split(all_rows)
    caps = DEFAULT_CAPS if caps is None else caps
    rows = [all_rows[i] for i in data.training_subset(all_rows, caps)]
    log.info("split: %s; %d rows after caps %s", json.dumps(split), len(rows), caps)
    if encoder_dir is None and encoder_source is not None:
        encoder_dir = encoder.expose_hidden_states(encoder_source, work / "encoder-tuned")
    elif encoder_dir is None:
        encoder_dir = encoder.export(work / "encoder")
    clf = encoder.classifier(
        encoder_dir, list(FEATURES), max_length=max_length, head_fraction=head_fraction, threads=threads
    )
    inputs = encoder.cached_inputs(clf, [r.prompt for r in rows], work / "cache", encoder_dir)
    log.info("head inputs ready (%s) after %.0fs", inputs.shape, time.time() - t0)
    return Prepared(all_rows, rows, split, caps, encoder_dir, clf, inputs)


def train(
    data_dir: Path,
    out: Path,
    work: Path,
    *,
    targets: data.TargetConfig,
    head: HeadConfig | JointConfig,
    encoder_source: Path | None = None,
    encoder_dir: Path | None = None,
    caps: dict[str, int] | None = None,
    max_length: int = 128,
    head_fraction: float = 0.5,
    extra: list[Path] | None = None,
    extra_dir: Path | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Build the model directory ``out`` (replaced atomically) and return the metadata written to router.json
    (the encoder and data options are :func:`prepare`'s)."""
    t0 = time.time()
    prep = prepare(
        data_dir,
        work,
        encoder_source=encoder_source,
        encoder_dir=encoder_dir,
        caps=caps,
        max_length=max_length,
        head_fraction=head_fraction,
        extra=extra,
        extra_dir=extra_dir,
        threads=threads,
    )
    all_rows, rows, inputs, clf = prep.all_rows, prep.rows, prep.inputs, prep.clf
    is_val = np.array([r.val for r in rows])
    t_fit = time.time()
    fitted = fit_head(rows, inputs, ~is_val, targets, head)
    fit_seconds = time.time() - t_fit
    val_rows = [r for r in rows if r.val]
    val_prompts = [r.prompt for r in val_rows]
    scores = sigmoid(fitted.logits(inputs[is_val], val_prompts))
    results = {
        "router": evaluate.per_source(val_rows, scores.tolist()),
        "length": evaluate.per_source(val_rows, evaluate.length_scores(val_prompts)),
        "tfidf_lr": evaluate.per_source(
            val_rows, evaluate.tfidf_scorer([r for r in all_rows if not r.val])(val_prompts)
        ),
    }
    log.info("validation per source (APGR):\n%s", evaluate.table(results))

    tmp = stage_dir(prep.encoder_dir, fitted, out.with_name(out.name + ".tmp"))
    created = datetime.now(timezone.utc)
    digest = hashlib.sha256((tmp / MODEL_FILE).read_bytes() + (tmp / "head.npz").read_bytes()).hexdigest()
    meta = encoder.encoder_meta(
        list(FEATURES),
        max_length=max_length,
        head_fraction=head_fraction,
        pad_token_id=clf.meta.pad_token_id,
        text_prefix=clf.meta.text_prefix,
    )
    described = encoder.encoder_settings(prep.encoder_dir)
    meta.update(
        {
            "quantiles": mixture_quantiles(val_rows, scores),
            "mixture": data.MIXTURE,
            "quantile_sample": "scores of the validation rows of every source, each source weighted by 'mixture', "
            "split equally among its rows",
            "version": f"{described['name']}-head-{created:%Y%m%d}-{digest[:8]}",
            "base_model": described["base_model"],
            "encoder": "fine-tuned encoder of " + str(encoder_source) if encoder_source else "base encoder",
            "data": {name: data.FILES[name] for name in data.FILES if (data_dir / data.FILES[name]).is_file()}
            | extra_files(extra_dir),
            "split": prep.split,
            "caps": prep.caps,
            "targets": asdict(targets),
            "head_config": {"kind": type(head).__name__, **asdict(head)},
            "validation": results,
            "fit_seconds": round(fit_seconds, 1),
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "licence_note": "trained partly on AlpacaEval instructions (CC BY-NC 4.0: research use only); "
            "base_rows.npz leaves those rows out (see base_rows.licences)",
        }
    )
    if fitted.lexical is not None:
        meta["lexical"] = lexical.SCHEME
    # What `route-llm retrain` needs to keep this model's behaviour without the data (training.base_rows).
    meta["base_rows"] = base_rows.export(tmp, [r for r in rows if not r.val], val_rows, targets, inputs[~is_val],
                                         inputs[is_val], len(FEATURES))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    replace_dir(tmp, out)
    log.info("wrote %s (version %s) in %.0fs", out, meta["version"], time.time() - t0)
    return meta
