"""Cross-validation over the training part: every training row scored by models that never saw its fold.

The validation split holds 84 MBPP, 101 GSM8K and 118 chat rows: one noisy estimate per source, on which a
model has also been selected many times. The training part is four to six times larger per source, and
:func:`training.data.assign_split` already deals it into five group folds (whole MMLU subjects; a prompt hash
elsewhere). Refitting the head once per fold and scoring the held-out fold gives an out-of-fold score for every
training row, so per-source figures rest on every training row instead of on the validation rows alone.

The head of each fold is fitted exactly as the shipped one (:func:`training.pipeline.fit_head`), on frozen
inputs. The encoder is not refitted: where it was fine-tuned on the training rows themselves (the shipped
encoder saw MMLU and GSM8K), their out-of-fold figures are optimistic, and the caller says so.

Also here: the scorers compared in the same folds, the TF-IDF baseline and a nearest-neighbour term (the
difficulty residual of a prompt's most similar labelled prompts, blended into the head's logit), which is how
kNN over the encoder's embeddings was tried (README, "What lost").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training import data, evaluate
from training.head import HeadConfig, JointConfig
from training.pipeline import fit_head


def folds_of(rows: list[data.Row]) -> np.ndarray:
    """Fold number per row, with -1 for validation rows (which no fold model scores)."""
    return np.array([-1 if r.val else r.fold for r in rows])


def out_of_fold(rows: list[data.Row], score_fold: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Run ``score_fold(train_mask, test_index)`` once per fold; NaN for validation rows."""
    fold = folds_of(rows)
    out = np.full(len(rows), np.nan)
    for f in sorted(set(fold.tolist()) - {-1}):
        test = np.nonzero(fold == f)[0]
        train = (fold != f) & (fold >= 0)
        if train.any():
            out[test] = score_fold(train, test)
    return out


def head_logits(
    rows: list[data.Row], inputs: np.ndarray, targets: data.TargetConfig, head: HeadConfig | JointConfig
) -> np.ndarray:
    """Out-of-fold logits of a head fitted as the shipped one is, for every training row."""
    prompts = [r.prompt for r in rows]

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        fitted = fit_head(rows, inputs, train, targets, head)
        return fitted.logits(inputs[test], [prompts[i] for i in test])

    return out_of_fold(rows, score)


def tfidf_scores(rows: list[data.Row], pool: list[data.Row]) -> np.ndarray:
    """Out-of-fold TF-IDF + LR scores; each fold's model is fitted on ``pool``'s training rows of the other
    folds (the pipeline fits its baseline on every training row, uncapped)."""

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        held = rows[test[0]].fold
        fit_rows = [r for r in pool if not r.val and r.fold != held]
        return np.asarray(evaluate.tfidf_scorer(fit_rows)([rows[i].prompt for i in test]))

    return out_of_fold(rows, score)


def difficulty_residuals(rows: list[data.Row], targets: data.TargetConfig, use: np.ndarray) -> np.ndarray:
    """Each labelled row's target minus its source's mean target over ``use`` (0 elsewhere): how much harder
    than usual for its source a prompt was, which is comparable across sources whose base rates differ."""
    target, _ = data.targets(rows, targets, use=use)
    source = np.array([r.source for r in rows])
    labelled = use & np.isin(source, [*data.LABELLED, "math"])
    out = np.zeros(len(rows))
    for name in set(source[labelled].tolist()):
        mask = labelled & (source == name)
        out[mask] = target[mask] - target[mask].mean()
    return out


def neighbour_mean(
    embeddings: np.ndarray, query: np.ndarray, bank: np.ndarray, values: np.ndarray, k: int, power: float = 4.0
) -> np.ndarray:
    """For each query row, the mean of ``values`` over its ``k`` most cosine-similar ``bank`` rows, weighted by
    similarity**power (negative similarities count 0). ``embeddings`` are L2-normalised rows."""
    k = min(k, len(bank))
    out = np.zeros(len(query))
    for start in range(0, len(query), 2000):  # bounded memory: a 2,000 x bank similarity block at a time
        q = query[start : start + 2000]
        sims = embeddings[q] @ embeddings[bank].T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(sims, top, 1), 0.0) ** power
        out[start : start + len(q)] = (w * values[bank][top]).sum(1) / (w.sum(1) + 1e-12)
    return out


def neighbour_scores(
    rows: list[data.Row], embeddings: np.ndarray, targets: data.TargetConfig, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour term, out of fold for the training rows and from the whole training part for the validation
    rows: (training scores, validation scores), each NaN where the other applies."""
    labelled = np.array([r.source in (*data.LABELLED, "math") for r in rows])
    is_val = np.array([r.val for r in rows])

    def score(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        residual = difficulty_residuals(rows, targets, train)
        return neighbour_mean(embeddings, test, np.nonzero(train & labelled)[0], residual, k)

    train_scores = out_of_fold(rows, score)
    val_scores = np.full(len(rows), np.nan)
    val_scores[is_val] = score(~is_val, np.nonzero(is_val)[0])
    return train_scores, val_scores
