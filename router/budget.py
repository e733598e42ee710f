"""Budget-aware routing: how far a key's spend moves its operating point toward the cheapest tier.

Pure functions over numbers, in the manner of ``router.policy``: the proxy reads a key's spend and budget, and
these turn them into cut points. Two steps, kept apart so each has one rule:

- :func:`steer_fraction`: the share of the budget spent → how far to steer, 0 (not at all) to 1 (everything to the
  cheapest tier). Below ``start`` it is 0; from ``start`` to the whole budget it rises linearly to 1.
- :func:`steer_cuts`: cut points and that fraction → new cut points. Steering is linear in *traffic*, not in
  score: the share of the reference traffic that reaches each dearer tier is multiplied by ``1 - fraction``
  (read through the model's quantile table, as ``router.policy.cuts_for_shares`` does). Moving the raw scores
  instead would do little, then everything, because a model's scores crowd into a narrow band.

At fraction 1 every cut is :data:`router.policy.NEVER_STRONG`, so no score leaves the cheapest tier.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from router.policy import NEVER_STRONG, _check_real, check_cuts, check_quantiles, threshold_for_strong_share


def steer_fraction(spent_share: float, start: float) -> float:
    """How far to steer (0 to 1) when ``spent_share`` of the budget is spent and steering begins at ``start``.

    ``start`` 1 means no steering before the budget is gone (and full steering once it is).
    """
    spent_share = _check_real("spent_share", spent_share)
    start = _check_real("start", start)
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"start must be between 0 and 1, got {start}")
    if spent_share >= 1.0:
        return 1.0
    if spent_share <= start:
        return 0.0
    return min(1.0, (spent_share - start) / (1.0 - start))


def steer_cuts(cuts: Sequence[float], fraction: float, quantiles: Iterable[Sequence[float]]) -> tuple[float, ...]:
    """Cut points that send ``1 - fraction`` of what ``cuts`` sent above each cut (on the reference traffic)."""
    values = check_cuts(tuple(cuts), len(cuts) + 1)
    fraction = _check_real("fraction", fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    if fraction == 0.0:
        return values
    if fraction == 1.0:
        return (NEVER_STRONG,) * len(values)
    table = check_quantiles(quantiles)
    levels = [level for level, _ in table]
    scores = [score for _, score in table]
    steered = []
    for cut in values:
        # The share of traffic at or above this cut; a cut beyond every score (NEVER_STRONG) passes nothing.
        tail = 0.0 if cut > 1.0 else 1.0 - float(np.interp(cut, scores, levels))
        share = min(1.0, max(0.0, tail * (1.0 - fraction)))
        steered.append(max(cut, threshold_for_strong_share(table, share)))  # steering never lowers a cut
    # Each cut was raised by the same rule, so the order holds; the running maximum removes float noise.
    return tuple(float(v) for v in np.maximum.accumulate(steered))
