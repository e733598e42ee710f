"""``route-llm feedback export``: stored ratings → training rows ``{"prompt", "weak_score", "strong_score"}``.

The rows have the shape of the router's labelled training data (``training.data`` reads them as ``--extra`` /
feedback rows), where the target is "strong needed" = the strong answer was good and the weak one was not. A
rating says how the *answering* tier did; the other tier's outcome was never observed, so each case is mapped
to the pair that gives the right target under that rule:

| answered by | rating | weak_score | strong_score | target | reading                                        |
|-------------|--------|------------|--------------|--------|------------------------------------------------|
| weak        | bad    | 0          | 1            | 1      | weak failed: the strong model was needed        |
| weak        | good   | 1          | 1            | 0      | the weak model was enough                       |
| strong      | bad    | 0          | 0            | 0      | strong failed too: paying for it bought nothing |
| strong      | good   | dropped    |              |        | says nothing about weak (``--strong-good soft``: |
|             |        | 0.5        | 1            | 0.5    | kept as a soft target)                           |

"strong, bad" is exact under the rule: with a failed strong answer, strong cannot have beaten weak, whatever
weak would have done. "weak, bad" assumes the strong model would have succeeded, the optimistic reading that
routing can act on. The optional ``score`` of a rating is exported but not used for the target.

Who chose the tier does not matter: a rating of a request for a concrete model (not routed) is as much an
observation of that tier on that prompt as a routed one, and is exported the same way. A rating of a request that
failed (no answer, or a stream cut short: status other than ``ok``) says nothing about a model's answer and is
counted and skipped.

The mapping is two-tier: ratings of tiers other than ``weak`` and ``strong`` (in configs with more tiers) are
dropped. Only ratings of requests recorded with ``feedback.store_prompts: true`` carry their prompt; the others have a
hash only and cannot train a router, so they are counted and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from proxy.state.records import Feedback

StrongGood = Literal["drop", "soft"]

#: (tier that answered, rating) -> (weak_score, strong_score); "strong"/"good" is handled by ``strong_good``.
MAPPING: dict[tuple[str, str], tuple[float, float]] = {
    ("weak", "bad"): (0.0, 1.0),
    ("weak", "good"): (1.0, 1.0),
    ("strong", "bad"): (0.0, 0.0),
}
SOFT_STRONG_GOOD = (0.5, 1.0)


def target_pair(tier: str, rating: str, strong_good: StrongGood = "drop") -> tuple[float, float] | None:
    """(weak_score, strong_score) for a rating of an answer from ``tier``, or None when it is dropped."""
    if (tier, rating) == ("strong", "good"):
        return SOFT_STRONG_GOOD if strong_good == "soft" else None
    return MAPPING.get((tier, rating))


@dataclass
class ExportSummary:
    written: int = 0
    no_prompt: int = 0  # recorded with store_prompts off: a hash only
    dropped: int = 0  # "strong, good" with --strong-good drop
    failed: int = 0  # the rated request was not answered (status other than "ok")
    by_case: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        cases = ", ".join(f"{case}: {n}" for case, n in sorted(self.by_case.items())) or "none"
        text = f"{self.written} training rows written ({cases}); {self.dropped} strong/good ratings dropped"
        if self.failed:
            text += f"; {self.failed} ratings of failed requests skipped (no answer to learn from)"
        if self.no_prompt:
            text += (f"; {self.no_prompt} ratings skipped because their prompt was not stored (set "
                     "feedback.store_prompts: true to keep prompts of future requests)")
        return text


def export_rows(ratings: Iterable[Feedback], out: TextIO, *, strong_good: StrongGood = "drop") -> ExportSummary:
    """Write one JSON line per usable rating; return what was written and skipped."""
    summary = ExportSummary()
    for fb in ratings:
        if fb.status != "ok":
            summary.failed += 1
            continue
        pair = target_pair(fb.tier, fb.rating, strong_good)
        if pair is None:
            summary.dropped += 1
            continue
        if fb.prompt is None:
            summary.no_prompt += 1
            continue
        row: dict[str, Any] = {"prompt": fb.prompt, "weak_score": pair[0], "strong_score": pair[1],
                               "tier": fb.tier, "routed": fb.routed, "rating": fb.rating,
                               "rating_score": fb.rating_score,
                               "request_id": fb.request_id, "feedback_id": fb.id,
                               "router_version": fb.router_version, "created_at": round(fb.created_at, 3)}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        summary.written += 1
        summary.by_case[f"{fb.tier}/{fb.rating}"] += 1
    return summary
