"""Turning attached documents into the text sent upstream, within a character budget.

Each document becomes a delimited block that names it and numbers its pages, so the model can cite pages
and tell documents apart::

    <document name="report.pdf" pages="3">
    <page number="1">
    ...
    </page>
    </document>

When everything fits the budget, everything is sent in order. Otherwise either the pages most relevant to
the question (BM25, ``selection="bm25"``) or the first pages (``"all"``) are sent, always in page order,
and the block says it is incomplete so the model does not conclude that missing text does not exist.
"""

from __future__ import annotations

import base64
import binascii
import html
import math
import re
from collections import Counter
from dataclasses import dataclass

from proxy.settings import Selection


class DocumentInputError(ValueError):
    """An inline document could not be decoded; the message says what is wrong with it."""


@dataclass(frozen=True)
class Document:
    name: str
    pages: list[str]


@dataclass(frozen=True)
class RenderResult:
    text: str
    selected: dict[str, list[int]]  # document name (as rendered) -> 1-based page numbers sent, in order
    truncated: bool  # True when any page was left out or cut


_DATA_URL = re.compile(r"data:(?P<media>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.DOTALL | re.IGNORECASE)


def decode_file_data(file_data: str) -> bytes:
    """Decode OpenAI's inline file form, ``data:application/pdf;base64,<base64>``."""
    match = _DATA_URL.fullmatch(file_data.strip())
    if match is None:
        raise DocumentInputError("must be a data URL such as 'data:application/pdf;base64,JVBERi0...'")
    media = match["media"].strip().lower()
    if media != "application/pdf":
        raise DocumentInputError(f"media type {media or '(none)'!r} is not supported; only application/pdf is")
    if "base64" not in (p.strip().lower() for p in match["params"].split(";")):
        raise DocumentInputError("the data URL is not base64-encoded (';base64' is missing)")
    # Line-wrapped base64 (as written by `base64` tools and some clients) is still base64.
    payload = "".join(match["payload"].split())
    if not payload:
        raise DocumentInputError("the data URL holds no data")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DocumentInputError(f"invalid base64 in the data URL ({exc})") from None


# --- ranking -------------------------------------------------------------------------------------------

# Chinese and Japanese do not separate words with spaces, so each ideograph or kana is its own token;
# everything else splits on non-word characters. Good enough for ranking pages, no language models needed.
_IDEOGRAPHIC = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_IDEOGRAPHIC}]|[^\\W_{_IDEOGRAPHIC}]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def bm25_scores(query: str, passages: list[str], *, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 of each passage against ``query``, with the non-negative IDF used by Lucene.

    Rare words dominate: a term in every page adds almost nothing, so "what is the name of ..." is ranked
    by its distinctive words. Written out here (twenty lines) rather than taken from a library because
    the corpus is one request's pages and needs no index.
    """
    docs = [_tokens(p) for p in passages]
    if not docs:
        return []
    average = sum(len(d) for d in docs) / len(docs) or 1.0
    frequency = Counter(term for d in docs for term in set(d))
    terms = list(dict.fromkeys(_tokens(query)))
    scores = []
    for doc in docs:
        counts = Counter(doc)
        norm = k1 * (1 - b + b * len(doc) / average)
        score = 0.0
        for term in terms:
            tf = counts.get(term, 0)
            if tf:
                idf = math.log(1 + (len(docs) - frequency[term] + 0.5) / (frequency[term] + 0.5))
                score += idf * tf * (k1 + 1) / (tf + norm)
        scores.append(score)
    return scores


# --- rendering -----------------------------------------------------------------------------------------

# Page text must not be able to end its own block early or fake a new one; the ``<`` of anything that
# looks like one of our tags is escaped. Nothing else is touched, so the text reaches the model as is.
_OUR_TAG = re.compile(r"<(?=\s*/?\s*(?:document|page)\b)", re.IGNORECASE)


def _clean(text: str) -> str:
    return _OUR_TAG.sub("&lt;", text)


def _unique_names(docs: list[Document]) -> list[str]:
    """Names as rendered: distinct (a repeat gets " (2)"), so ``selected`` and the text stay unambiguous."""
    seen: Counter[str] = Counter()
    names = []
    for doc in docs:
        # An inline file's name comes from JSON, where lone surrogates are legal escapes but not text: as is,
        # they would fail the UTF-8 header and the request upstream.
        name = " ".join(doc.name.encode("utf-8", "replace").decode("utf-8").split()) or "document"
        seen[name] += 1
        names.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return names


def render_documents(
    docs: list[Document], *, question: str, budget_chars: int | None, selection: Selection
) -> RenderResult:
    """Render ``docs`` as delimited text, keeping the page text within ``budget_chars`` characters.

    The budget counts page text only; the tags add about 30 characters per page. Over budget, pages are
    taken in order of preference (BM25 score against ``question``, or page order) while they fit whole; the
    first that does not fit is cut to the space left. Chosen pages are then emitted in document order.
    """
    names = _unique_names(docs)
    full = {(d, p): _clean(text) for d, doc in enumerate(docs) for p, text in enumerate(doc.pages)}
    truncated = budget_chars is not None and sum(map(len, full.values())) > budget_chars
    kept = full
    if truncated:
        order = list(full)
        if selection == "bm25":
            scores = dict(zip(order, bm25_scores(question, list(full.values()))))
            order.sort(key=lambda key: -scores[key])  # stable: equal scores keep document and page order
        kept = {}
        room = budget_chars or 0
        for key in order:
            if room <= 0:
                break
            kept[key] = full[key][:room]
            room -= len(kept[key])

    blocks = []
    selected: dict[str, list[int]] = {}
    for d, doc in enumerate(docs):
        numbers = [p + 1 for p in range(len(doc.pages)) if (d, p) in kept]
        cut = {n for n in numbers if len(kept[(d, n - 1)]) < len(full[(d, n - 1)])}
        complete = len(numbers) == len(doc.pages) and not cut
        selected[names[d]] = numbers
        lines = [f'<document name="{html.escape(names[d])}" pages="{len(doc.pages)}"'
                 + ("" if complete else ' complete="false"') + ">"]
        for n in numbers:
            mark = ' complete="false"' if n in cut else ""
            lines += [f'<page number="{n}"{mark}>', kept[(d, n - 1)], "</page>"]
        lines.append("</document>")
        blocks.append("\n".join(lines))
    return RenderResult(text="\n\n".join(blocks), selected=selected, truncated=truncated)
