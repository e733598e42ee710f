"""No single rater gives more than a share of the rows a router learns from.

Every rating comes from the proxy key that made the rated request (``POST /v1/feedback`` looks the request up by
the caller's own key), so the exported rows name their rater: the key's owner hash. One busy or hostile key could
otherwise fill the feedback: 400 ratings from one key beside 50 from another make that key 89 % of what the next
router learns. ``route-llm feedback export`` and ``route-llm retrain`` take ``--max-key-share F`` and apply this
rule, written once here because both the proxy and the training code import ``router/``:

- Only raters above the share lose rows, and all of them are cut to one common count ``C``: the largest ``C``
  such that ``C <= F * total``, where ``total`` counts the rows kept (every rater's ``min(n, C)``) plus the rows
  that name no rater. The smaller raters keep everything; the cut takes as few rows as the rule allows.
- Rows that name no rater (an export from before raters were recorded, hand-made rows, a proxy without keys,
  where every request has the same empty owner) are kept and count in the total, but are never cut: no key can
  be told apart there.
- A rater alone (no other rater, nothing unattributed) cannot be at most a share below 1 of its own rows, so with
  ``F < 1`` all of its rows go; the callers say so and how to lift the cap (``--max-key-share 1``).
- Which rows of a cut rater stay is deterministic and independent of file order: the ``C`` whose SHA-256 of their
  key (the feedback id, else the prompt) is smallest, ties by position. Exporting or retraining twice keeps the
  same rows, and a capped export passes a second cap at the same share unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence

#: Slack for the float comparison ``C <= F * total`` (0.3 * 10 is 2.9999999999999996 in binary).
_EPS = 1e-9


def check_share(share: float) -> float:
    """``share`` if it lies in (0, 1]; ValueError otherwise (NaN and infinities included)."""
    if not (isinstance(share, int | float) and math.isfinite(share) and 0.0 < share <= 1.0):
        raise ValueError(f"must be a number above 0 and at most 1, got {share!r}")
    return float(share)


def kept_counts(counts: Mapping[str, int], unattributed: int, share: float) -> dict[str, int]:
    """Rows each rater keeps under ``share`` (module docstring): ``min(n, C)`` for the largest feasible ``C``."""
    check_share(share)

    def fits(cap: int) -> bool:
        return cap <= share * (unattributed + sum(min(n, cap) for n in counts.values())) + _EPS

    # C - F * total is convex in C (its slope, 1 - F * raters above C, only rises) and <= 0 at C = 0, so the Cs
    # that fit are 0..C*: bisection over 0..largest count finds C*.
    low, high = 0, max(counts.values(), default=0)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return {rater: min(n, low) for rater, n in counts.items()}


def _rank(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "replace")).digest()


def cap_share(raters: Sequence[str | None], keys: Sequence[str], share: float) -> list[int]:
    """Indices of the rows to keep, ascending; ``raters[i]`` None (or "") names no rater, ``keys[i]`` orders the
    cut (the feedback id, else the prompt)."""
    if len(raters) != len(keys):
        raise ValueError("one key per row")
    counts = Counter(r for r in raters if r)
    limits = kept_counts(counts, len(raters) - sum(counts.values()), share)
    by_rater: dict[str, list[int]] = {}
    for i, rater in enumerate(raters):
        if rater:
            by_rater.setdefault(rater, []).append(i)
    dropped: set[int] = set()
    for rater, rows in by_rater.items():
        if len(rows) > limits[rater]:
            dropped.update(sorted(rows, key=lambda i: (_rank(keys[i]), i))[limits[rater]:])
    return [i for i in range(len(raters)) if i not in dropped]
