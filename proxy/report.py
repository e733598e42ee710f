"""``route-llm report``: what the router did over a window, as one self-contained HTML page.

Read from the decision records and ratings (``proxy.state.records``), drawn with matplotlib (the ``report``
extra) as inline SVG: the page has no script, no stylesheet or font from elsewhere, and opens from a file with
the network off. Five panels, each one question an operator asks:

* requests and the share per tier over time (hourly buckets for two days or less, daily ones beyond);
* where routed scores fell against the cut points the configuration puts on the shipped router;
* what the answered requests cost, against the same tokens on the dearest tier (priced as the cost metrics);
* ratings by the tier that answered;
* the most frequent reasons requests failed.

Building the numbers (:func:`summarize`) is kept apart from drawing them (:func:`render`), so the first is tested
on plain values and the second only has to draw what it is given.
"""

from __future__ import annotations

import html
import io
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from proxy.state.records import DecisionRecord, Feedback

if TYPE_CHECKING:
    from proxy.upstream.pricing import Price

NO_TIER = "(none)"  # records of requests refused before a tier was chosen
TOP_ERRORS = 10
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")  # ASCII digits only
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_COLOURS = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#9D755D")


class ReportError(ValueError):
    """A report argument the command refuses, with a message that says what to give instead."""


def parse_since(text: str) -> float:
    """A duration such as ``7d``, ``36h``, ``90m`` or ``2w`` in seconds (positive, at most ten years)."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ReportError(f"--since: {text!r} is not a duration; give a number and a unit, like 7d, 36h, 90m or 2w")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not 0 < seconds <= 3650 * 86400:
        raise ReportError(f"--since: {text!r} must be more than zero and at most ten years")
    return seconds


@dataclass(frozen=True)
class Inputs:
    """Everything a report is made from: records and ratings of the window, and the configuration's view."""

    records: Sequence[DecisionRecord]
    ratings: Sequence[Feedback]
    tiers: Sequence[str]  # cheapest first, as configured
    prices: Sequence[Price]  # per tier, in the same order
    cuts: Sequence[float]  # the default operating point's cut points on the router's scores
    since: float
    until: float


@dataclass
class Summary:
    """The numbers each panel draws."""

    bucket_seconds: int
    starts: list[float]  # bucket start times
    per_tier: dict[str, list[int]]  # tier (or NO_TIER) → requests per bucket
    scores: list[float]  # routed requests' scores
    cost: float  # answered requests, on the tier that answered
    dearest_cost: float  # the same tokens on the dearest tier
    cost_times: list[float] = field(default_factory=list)
    cost_running: list[float] = field(default_factory=list)
    dearest_running: list[float] = field(default_factory=list)
    ratings: dict[str, Counter[str]] = field(default_factory=dict)  # tier → {"good": n, "bad": n}
    errors: list[tuple[str, int]] = field(default_factory=list)  # most frequent first
    requests: int = 0
    failed: int = 0

    @property
    def savings(self) -> float:
        return max(0.0, self.dearest_cost - self.cost)


def summarize(i: Inputs) -> Summary:
    width = 3600 if i.until - i.since <= 2 * 86400 else 86400
    first = i.since - i.since % width
    count = int((i.until - first) // width) + 1
    order = [*i.tiers, NO_TIER]
    per_tier = {t: [0] * count for t in order}
    for r in i.records:
        per_tier.setdefault(r.tier or NO_TIER, [0] * count)[min(count - 1, int((r.created_at - first) // width))] += 1
    s = Summary(width, [first + k * width for k in range(count)], {t: v for t, v in per_tier.items() if any(v)},
                [r.score for r in i.records if r.routed and r.score is not None], 0.0, 0.0)
    index = {name: n for n, name in enumerate(i.tiers)}
    for r in i.records:
        if r.cost_usd is None or r.tier not in index:
            continue
        s.cost += r.cost_usd
        s.dearest_cost += max(p.cost(r.prompt_tokens, r.completion_tokens) for p in i.prices)
        s.cost_times.append(r.created_at)
        s.cost_running.append(s.cost)
        s.dearest_running.append(s.dearest_cost)
    for f in i.ratings:
        s.ratings.setdefault(f.tier or NO_TIER, Counter())[f.rating] += 1
    reasons = Counter(r.error_reason or r.status for r in i.records if r.status != "ok")
    s.errors = reasons.most_common(TOP_ERRORS)
    s.requests, s.failed = len(i.records), sum(reasons.values())
    return s


# --- drawing ---------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _svg(fig: Any, salt: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, ids made unique to this panel."""
    plt = _pyplot()
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _times(values: Sequence[float]) -> list[datetime]:
    return [datetime.fromtimestamp(v, tz=timezone.utc) for v in values]


def _requests_panel(s: Summary) -> str:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.2), sharex=True)
    x = _times(s.starts)
    width = s.bucket_seconds / 86400 * 0.9  # matplotlib dates are in days
    base = [0] * len(x)
    totals = [sum(v[k] for v in s.per_tier.values()) for k in range(len(x))]
    for n, (tier, counts) in enumerate(s.per_tier.items()):
        colour = _COLOURS[n % len(_COLOURS)] if tier != NO_TIER else "#BBBBBB"
        top.bar(x, counts, width=width, bottom=base, color=colour, label=tier, align="edge")
        share = [100.0 * c / t if t else 0.0 for c, t in zip(counts, totals)]
        share_base = [100.0 * b / t if t else 0.0 for b, t in zip(base, totals)]
        bottom.bar(x, share, width=width, bottom=share_base, color=colour, align="edge")
        base = [b + c for b, c in zip(base, counts)]
    top.set_ylabel("requests")
    top.margins(y=0.08)
    top.legend(title="tier", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    bottom.set_ylabel("share (%)")
    bottom.set_ylim(0, 100)
    bottom.set_xlabel("time (UTC)")
    fig.autofmt_xdate()
    return _svg(fig, "requests")


def _scores_panel(s: Summary, cuts: Sequence[float], tiers: Sequence[str]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.hist(s.scores, bins=[k / 50 for k in range(51)], color="#4C78A8", alpha=0.85)
    for n, cut in enumerate(cuts):
        ax.axvline(cut, color="#E45756", linestyle="--", linewidth=1.4)
        label = f"{tiers[n]} | {tiers[n + 1]}" if n + 1 < len(tiers) else f"cut {n + 1}"
        ax.annotate(f"{label}\n{cut:.3f}", (cut, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                    fontsize=8, color="#E45756")
    ax.set_xlim(0, 1)
    ax.set_xlabel("router score (requests above a cut go to the dearer tier)")
    ax.set_ylabel("routed requests")
    return _svg(fig, "scores")


def _cost_panel(s: Summary) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    x = _times(s.cost_times)
    ax.plot(x, s.dearest_running, color="#E45756", linewidth=1.8, label="the same requests on the dearest tier")
    ax.plot(x, s.cost_running, color="#54A24B", linewidth=1.8, label="as routed")
    ax.fill_between(x, s.cost_running, s.dearest_running, color="#54A24B", alpha=0.15, label="saved")
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_xlabel("time (UTC)")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    return _svg(fig, "cost")


def _ratings_panel(s: Summary, tiers: Sequence[str]) -> str:
    plt = _pyplot()
    names = [t for t in [*tiers, NO_TIER] if t in s.ratings]
    fig, ax = plt.subplots(figsize=(9, 3.0))
    positions = range(len(names))
    good = [s.ratings[t]["good"] for t in names]
    bad = [s.ratings[t]["bad"] for t in names]
    ax.bar([p - 0.2 for p in positions], good, width=0.4, color="#54A24B", label="good")
    ax.bar([p + 0.2 for p in positions], bad, width=0.4, color="#E45756", label="bad")
    ax.set_xticks(list(positions), names)
    ax.set_xlabel("tier that answered")
    ax.set_ylabel("ratings")
    ax.legend(fontsize=8)
    return _svg(fig, "ratings")


def _errors_panel(s: Summary) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.32 * len(s.errors)))
    names = [name for name, _ in reversed(s.errors)]
    ax.barh(names, [n for _, n in reversed(s.errors)], color="#F58518")
    ax.set_xlabel("failed requests")
    return _svg(fig, "errors")


def _panel(key: str, title: str, body: str | None, note: str, empty: str) -> str:
    inner = f'<div class="chart">{body}</div>' if body is not None else f'<p class="empty">{html.escape(empty)}</p>'
    return (f'<section class="panel" id="{key}" data-filled="{str(body is not None).lower()}">'
            f"<h2>{html.escape(title)}</h2>{inner}<p class=\"note\">{note}</p></section>")


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{padding:18px 28px;background:#1d2330;color:#fff}header h1{margin:0 0 4px;font-size:20px}
header p{margin:0;color:#c9ced8;font-size:13px}
.totals{display:flex;gap:12px;flex-wrap:wrap;padding:16px 28px 0}
.totals div{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0002;min-width:130px}
.totals b{display:block;font-size:20px}.totals span{font-size:12px;color:#5a6270}
main{padding:8px 28px 28px;display:grid;gap:16px}
.panel{background:#fff;border-radius:8px;padding:12px 18px;box-shadow:0 1px 2px #0002}
.panel h2{font-size:15px;margin:4px 0 8px}.chart svg{max-width:100%;height:auto}
.note{font-size:12px;color:#5a6270;margin:4px 0}.empty{color:#a33;font-style:italic}
"""


def _money(v: float) -> str:
    return f"${v:,.4f}" if v < 1 else f"${v:,.2f}"


def render(i: Inputs, *, generated: float | None = None) -> str:
    """The report page for ``i``: a complete HTML document with every chart inline."""
    s = summarize(i)
    day = "%Y-%m-%d %H:%M UTC"
    window = (f"{datetime.fromtimestamp(i.since, tz=timezone.utc):{day}} to "
              f"{datetime.fromtimestamp(i.until, tz=timezone.utc):{day}}")
    share = 100.0 * s.savings / s.dearest_cost if s.dearest_cost else 0.0
    totals = [("requests", f"{s.requests:,}"), ("failed", f"{s.failed:,}"), ("routed", f"{len(s.scores):,}"),
              ("cost as routed", _money(s.cost)), ("on the dearest tier", _money(s.dearest_cost)),
              ("saved", f"{_money(s.savings)} ({share:.0f}%)"),
              ("ratings", f"{sum(sum(c.values()) for c in s.ratings.values()):,}")]
    cuts = ", ".join(f"{c:.3f}" for c in i.cuts)
    panels = [
        _panel("requests", "Requests and share per tier", _requests_panel(s) if s.requests else None,
               f"{s.bucket_seconds // 3600}-hour buckets; {NO_TIER}: refused before a tier was chosen.",
               "No requests in this window."),
        _panel("scores", "Router scores against the cut points",
               _scores_panel(s, i.cuts, i.tiers) if s.scores else None,
               f"Cut points of the configured default operating point: {cuts}. Aliases with their own operating "
               "point cut elsewhere.", "No routed requests in this window."),
        _panel("cost", "Cost and savings", _cost_panel(s) if s.cost_times else None,
               "Answered requests, priced as route_llm_cost_usd_total is (config prices, else LiteLLM's map), "
               "against the same tokens on the dearest tier.", "No answered requests with token counts."),
        _panel("ratings", "Ratings by tier", _ratings_panel(s, i.tiers) if s.ratings else None,
               "POST /v1/feedback ratings given in this window, by the tier that answered.",
               "No ratings in this window."),
        _panel("errors", "Top error reasons", _errors_panel(s) if s.errors else None,
               "The error code each failed request was answered with (upstream failures by their reason).",
               "No failed requests in this window."),
    ]
    made = datetime.fromtimestamp(generated if generated is not None else time.time(), tz=timezone.utc)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>route-llm report, {html.escape(window)}</title><style>{_STYLE}</style></head><body>"
            f"<header><h1>route-llm report</h1><p>{html.escape(window)} · tiers {html.escape(', '.join(i.tiers))}"
            f" · made {made:{day}}</p></header><div class=\"totals\">"
            + "".join(f"<div><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>" for k, v in totals)
            + "</div><main>" + "".join(panels) + "</main></body></html>\n")
