"""Fit the routing head on frozen embeddings + prompt features (torch, CPU, about a minute on two cores).

The head is a one-hidden-layer network (or a linear model with ``hidden=0``) trained with soft-target
cross-entropy. During training each intercept group (:data:`training.data.INTERCEPT_GROUP`) adds its own
learned bias to the logit, which absorbs the base-rate differences between sources; the shipped head keeps none
of these biases, so its score ranks prompts by what they share, not by which data set they look like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router.head import Head


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
