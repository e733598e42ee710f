"""Fit the routing head on frozen embeddings + prompt features (torch, CPU, about a minute on two cores).

The head is a one-hidden-layer network (or a linear model with ``hidden=0``) trained with soft-target
cross-entropy. During training each intercept group (:data:`training.data.INTERCEPT_GROUP`) adds its own
learned bias to the logit, which absorbs the base-rate differences between sources; the shipped head keeps none
of these biases, so its score ranks prompts by what they share, not by which data set they look like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from router import lexical
from router.head import Head
from router.lexical import Lexical


@dataclass(frozen=True)
class HeadConfig:
    """Hyperparameters of :func:`fit`; the defaults are the shipped model's."""

    hidden: int = 0
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-2
    group_bias: bool = True
    seed: int = 0


def fit(inputs: np.ndarray, target: np.ndarray, weight: np.ndarray, groups: np.ndarray, config: HeadConfig) -> Head:
    """Train on the rows with positive weight and return the head (without the per-group biases)."""
    import torch

    rows = weight > 0
    x = inputs[rows].astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mean) / scale, dtype=torch.float32)
    tt = torch.tensor(target[rows], dtype=torch.float32)
    wt = torch.tensor(weight[rows] / weight[rows].mean(), dtype=torch.float32)
    gt = torch.tensor(groups[rows], dtype=torch.long)
    torch.manual_seed(config.seed)
    width = inputs.shape[1]
    if config.hidden:
        net: torch.nn.Module = torch.nn.Sequential(
            torch.nn.Linear(width, config.hidden),
            torch.nn.GELU(approximate="tanh"),
            torch.nn.Dropout(config.dropout),
            torch.nn.Linear(config.hidden, 1),
        )
    else:
        net = torch.nn.Linear(width, 1)
    bias = torch.nn.Parameter(torch.zeros(int(groups.max()) + 1))
    optimiser = torch.optim.AdamW([*net.parameters(), bias], lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    n = len(tt)
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            logit = net(xt[batch]).squeeze(1)
            if config.group_bias:
                logit = logit + bias[gt[batch]]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, tt[batch], reduction="none")
            loss = (loss * wt[batch]).mean()
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    net.eval()
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]
    # The group biases are dropped; centre the output on the weighted mean of what they learned, so a score of
    # 0.5 still means "as likely as not" for a typical source rather than for none in particular.
    w_last, b_last = layers[-1]
    if config.group_bias:
        used = np.bincount(groups[rows], weights=weight[rows], minlength=len(bias))
        b_last = b_last + float(np.dot(used / used.sum(), bias.detach().numpy()))
    layers[-1] = (w_last, b_last)
    return Head(mean=mean, scale=scale, layers=layers)


@dataclass(frozen=True)
class JointConfig:
    """Hyperparameters of :func:`fit_joint`; the defaults are the shipped model's.

    ``dense_scale`` multiplies the standardised embedding + features before the L2-penalised fit, which sets how
    strongly they are regularised relative to the word term (smaller = stronger); ``c`` is the inverse penalty.
    """

    c: float = 1.0
    dense_scale: float = 0.05
    bits: int = 15
    group_scale: float = 10.0


def word_matrix(texts: list[str], idf: np.ndarray) -> Any:
    """The TF-IDF word rows of ``texts`` as a scipy CSR matrix, computed by the runtime's own code."""
    import scipy.sparse as sp

    indptr = [0]
    indices: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for text in texts:
        index, value = lexical.tfidf(text, idf)
        indices.append(index)
        values.append(value)
        indptr.append(indptr[-1] + len(index))
    return sp.csr_matrix(
        (
            np.concatenate(values) if values else np.zeros(0),
            np.concatenate(indices) if indices else np.zeros(0, int),
            np.array(indptr),
        ),
        shape=(len(texts), len(idf)),
    )


def document_frequency_idf(texts: list[str], bits: int) -> np.ndarray:
    """Smoothed inverse document frequency of every bucket over ``texts``: ``log((1 + n) / (1 + df)) + 1``."""
    df = np.zeros(1 << bits)
    for text in texts:
        index, _ = lexical.counts(text, bits)
        df[index] += 1
    return np.asarray(np.log((1 + len(texts)) / (1 + df)) + 1.0)


def fit_joint(
    inputs: np.ndarray,
    texts: list[str],
    target: np.ndarray,
    weight: np.ndarray,
    groups: np.ndarray,
    config: JointConfig,
) -> Head:
    """A linear head over [embedding, features] plus the word term, fitted together (scikit-learn, a minute).

    Soft targets are fitted as two weighted copies of each row (label 1 with weight ``w·t``, label 0 with
    ``w·(1-t)``), which is exactly the soft-target cross-entropy. The per-group intercepts are one-hot columns,
    scaled up so the penalty barely touches them, and dropped at export like :func:`fit` drops its biases.
    """
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    rows = np.nonzero(weight > 0)[0]
    kept_texts = [texts[i] for i in rows]
    x = inputs[rows].astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    idf = document_frequency_idf(list(dict.fromkeys(kept_texts)), config.bits)  # contrast copies count once
    words = word_matrix(kept_texts, idf)
    n_groups = int(groups.max()) + 1
    one_hot = sp.csr_matrix(
        (np.full(len(rows), config.group_scale), (np.arange(len(rows)), groups[rows])), shape=(len(rows), n_groups)
    )
    design = sp.hstack([sp.csr_matrix((x - mean) / scale * config.dense_scale), words, one_hot]).tocsr()
    w = weight[rows] / weight[rows].mean()
    t = target[rows]
    model = LogisticRegression(C=config.c, max_iter=5000)
    model.fit(
        sp.vstack([design, design]).tocsr(),
        np.r_[np.ones(len(rows)), np.zeros(len(rows))],
        sample_weight=np.r_[w * t, w * (1 - t)],
    )
    coef = model.coef_[0]
    width = inputs.shape[1]
    dense = coef[:width] * config.dense_scale
    word = coef[width : width + len(idf)]
    group_bias = coef[width + len(idf) :] * config.group_scale
    used = np.bincount(groups[rows], weights=weight[rows], minlength=n_groups)
    bias = float(model.intercept_[0]) + float(np.dot(used / used.sum(), group_bias))
    return Head(
        mean=mean,
        scale=scale,
        layers=[(dense.reshape(-1, 1), np.array([bias]))],
        lexical=Lexical(idf=idf, weight=word),
    )
