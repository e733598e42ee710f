"""``route-llm feedback export``: stored ratings → training rows ``{"prompt", "weak_score", "strong_score"}``.

The rows have the shape of the router's labelled training data (``training.data`` reads them as ``--extra`` /
feedback rows), where the target is "strong needed" = the strong answer was good and the weak one was not. The
router's score is one difficulty scale whatever the number of tiers (the cuts split it), so the target stays
two-ended: "weak" is the cheapest tier and "strong" the dearest. A rating says how the *answering* tier did; the
other tiers' outcomes were never observed, so each case is mapped, by the answering tier's place in the
configured list (cheapest first), to the pair that gives the right target under that rule:

| answered by     | rating | weak_score | strong_score | target | reading                                          |
|-----------------|--------|------------|--------------|--------|--------------------------------------------------|
| cheapest        | bad    | 0          | 1            | 1      | the cheapest failed: a dearer model was needed    |
| cheapest        | good   | 1          | 1            | 0      | the cheapest model was enough                     |
| between the two | bad    | 0          | 1            | 1      | a middle tier failed: the cheaper ones would too, |
|                 |        |            |              |        | so only a dearer one could answer                 |
| dearest         | bad    | 0          | 0            | 0      | the dearest failed too: paying bought nothing     |
| between / dearest | good | dropped    |              |        | says nothing about the cheapest (``--strong-good |
|                 |        | 0.5        | 1            | 0.5    | soft``: kept as a soft target)                    |

With two tiers (``weak``, ``strong``) that is the two-tier table. "dearest, bad" is exact under the rule: with a
failed strong answer, strong cannot have beaten weak, whatever weak would have done. "cheapest, bad" and
"between, bad" assume the dearest model would have succeeded (and that a cheaper tier fails where a dearer one
did), the optimistic reading that routing can act on. The optional ``score`` of a rating is exported but not
used for the target.

The tier list is the configuration's (``route-llm feedback export --config``, or ``--tiers a,b,c``). A rating
names its tier; ``weak`` and ``strong`` also name the two ends of any list (as in the configuration), and a name
the list does not know (a tier since removed) is counted and skipped.

Who chose the tier does not matter: a rating of a request for a concrete model (not routed) is as much an
observation of that tier on that prompt as a routed one, and is exported the same way. A rating of a request that
failed (no answer, or a stream cut short: status other than ``ok``) says nothing about a model's answer and is
counted and skipped. Only ratings of requests recorded with ``feedback.store_prompts: true`` carry their prompt;
the others have a hash only and cannot train a router, so they are counted and skipped.

Every row names its rater: ``rater`` is the owner hash of the proxy key that made the rated request (a key can
rate only its own requests, so this is also the key that rated; never the key itself), null on a proxy without
keys, and ``rater_name`` is the key's configured name when the export is given the configuration (else null).
``max_key_share`` (``--max-key-share F``, default: no cap) keeps any one rater to at most that share of the rows
written, by :func:`router.rater_share.cap_share` (the largest raters are cut to a common count, the rows kept
chosen by a hash of their feedback id); ``route-llm retrain`` applies the same rule to what it reads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from proxy.state.records import Feedback
from router.rater_share import cap_share

StrongGood = Literal["drop", "soft"]
Place = Literal["cheapest", "between", "dearest"]

#: (place of the tier that answered, rating) -> (weak_score, strong_score); a good rating above the cheapest tier
#: is handled by ``strong_good``.
MAPPING: dict[tuple[Place, str], tuple[float, float]] = {
    ("cheapest", "bad"): (0.0, 1.0),
    ("cheapest", "good"): (1.0, 1.0),
    ("between", "bad"): (0.0, 1.0),
    ("dearest", "bad"): (0.0, 0.0),
}
SOFT_STRONG_GOOD = (0.5, 1.0)
TWO_TIERS = ("weak", "strong")


def place_of(tier: str, tiers: Sequence[str]) -> Place | None:
    """Where ``tier`` sits in ``tiers`` (cheapest first); ``weak``/``strong`` name the ends; None if unknown."""
    if tier in tiers:
        index = list(tiers).index(tier)
    elif tier in TWO_TIERS:
        index = 0 if tier == "weak" else len(tiers) - 1
    else:
        return None
    return "cheapest" if index == 0 else "dearest" if index == len(tiers) - 1 else "between"


def target_pair(place: Place, rating: str, strong_good: StrongGood = "drop") -> tuple[float, float] | None:
    """(weak_score, strong_score) for a rating of an answer from a tier at ``place``, or None when dropped."""
    if place != "cheapest" and rating == "good":
        return SOFT_STRONG_GOOD if strong_good == "soft" else None
    return MAPPING.get((place, rating))


@dataclass
class ExportSummary:
    written: int = 0
    no_prompt: int = 0  # recorded with store_prompts off: a hash only
    dropped: int = 0  # good ratings of a tier above the cheapest, with --strong-good drop
    failed: int = 0  # the rated request was not answered (status other than "ok")
    unknown_tier: int = 0  # a tier the list does not know, or none (the request failed before one was chosen)
    capped: int = 0  # usable rows left out by max_key_share
    max_key_share: float | None = None
    by_case: Counter[str] = field(default_factory=Counter)
    by_rater: Counter[str] = field(default_factory=Counter)  # rows written per rater ("" names none)

    def describe(self) -> str:
        """What was written and, a line each, what was skipped, why, and what would change it."""
        cases = ", ".join(f"{case}: {n}" for case, n in sorted(self.by_case.items())) or "none"
        read = self.written + self.no_prompt + self.dropped + self.failed + self.unknown_tier + self.capped
        lines = [f"{read} ratings read; {self.written} training rows written ({cases})"]
        keyed = {rater: n for rater, n in self.by_rater.items() if rater}
        if keyed:
            top = max(keyed.values())
            lines.append(f"rows from {len(keyed)} raters (proxy keys); the most from one: {top} "
                         f"({top / self.written:.0%})" + (f"; {self.by_rater['']} rows name no rater (no proxy key)"
                                                          if self.by_rater[""] else ""))
        elif self.written:
            lines.append("no row names a rater: the rated requests were made without a proxy key")
        if self.capped:
            lines.append(f"{self.capped} rows of the largest raters left out by --max-key-share "
                         f"{self.max_key_share:g}, so that no key gives more than that share of the rows")
        if self.no_prompt:
            lines.append(f"{self.no_prompt} ratings skipped because their prompt was not stored: their requests were "
                         "recorded with feedback.store_prompts off (the default, so that no prompt text is kept). "
                         "Set `feedback: {store_prompts: true}` in config.yaml and restart the server; ratings of "
                         "requests made after that can be exported (these ones cannot)")
        if self.dropped:
            lines.append(f"{self.dropped} good ratings of tiers above the cheapest dropped: a good answer from a "
                         "dearer model does not say whether the cheapest would have done (--strong-good soft keeps "
                         "them as a target of 0.5)")
        if self.failed:
            lines.append(f"{self.failed} ratings of failed requests skipped (no answer to learn from)")
        if self.unknown_tier:
            lines.append(f"{self.unknown_tier} ratings of tiers not in the tier list skipped (the configuration's "
                         "models, or --tiers)")
        return "\n".join(lines)


def export_rows(ratings: Iterable[Feedback], out: TextIO, *, tiers: Sequence[str] = TWO_TIERS,
                strong_good: StrongGood = "drop", names: Mapping[str, str] | None = None,
                max_key_share: float | None = None) -> ExportSummary:
    """Write one JSON line per usable rating; return what was written and skipped. ``tiers``: cheapest first;
    ``names``: owner hash -> configured key name; ``max_key_share``: see the module docstring."""
    summary = ExportSummary(max_key_share=max_key_share)
    rows: list[dict[str, Any]] = []
    for fb in ratings:
        if fb.status != "ok":
            summary.failed += 1
            continue
        place = place_of(fb.tier, tiers)
        if place is None:
            summary.unknown_tier += 1
            continue
        pair = target_pair(place, fb.rating, strong_good)
        if pair is None:
            summary.dropped += 1
            continue
        if fb.prompt is None:
            summary.no_prompt += 1
            continue
        row: dict[str, Any] = {"prompt": fb.prompt, "weak_score": pair[0], "strong_score": pair[1],
                               "tier": fb.tier, "tier_place": place, "routed": fb.routed, "rating": fb.rating,
                               "rating_score": fb.rating_score,
                               "request_id": fb.request_id, "feedback_id": fb.id,
                               "router_version": fb.router_version, "created_at": round(fb.created_at, 3),
                               "rater": fb.owner or None,
                               "rater_name": (names or {}).get(fb.owner) if fb.owner else None}
        rows.append(row)
    if max_key_share is not None:
        kept = cap_share([r["rater"] for r in rows], [r["feedback_id"] for r in rows], max_key_share)
        summary.capped = len(rows) - len(kept)
        rows = [rows[i] for i in kept]
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        summary.written += 1
        summary.by_case[f"{row['tier']}/{row['rating']}"] += 1
        summary.by_rater[row["rater"] or ""] += 1
    return summary
