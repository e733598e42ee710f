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
    """A document's name, its page texts and their ranking index."""

    name: str
    pages: list[str]
    index: PageIndex

    @classmethod
    def of(cls, name: str, pages: list[str]) -> Document:
        """Build the index here: blocking, a tenth of a second per million characters (see PageIndex)."""
        return cls(name, pages, PageIndex.build(pages))


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
# The words of a question that are looked up: a question is short, but the "question" is the text of a whole
# message, which may be a pasted document of its own; its last words are usually the question itself.
QUERY_CHARS = 4000
QUERY_TERMS = 32


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


@dataclass(frozen=True)
class PageIndex:
    """What BM25 needs to know about a document's pages, built once, where the document is read.

    Tokenising a 300-page document takes a tenth of a second of pure Python; done per question, for every
    question, it holds the GIL long enough to slow every other request of the server. So it is done once:
    in the extraction child, at upload (and for an inline document, in the child that reads it), and stored
    with the page text. A question then costs one substring search per word of the question.

    ``postings`` is text, one line per term: ``"\\n<term>\\t<page>:<count> <page>:<count>..."``. A term
    holds no tab or line break, so looking one up is a ``str.find`` and nothing needs parsing but the lines
    of the question's own words.
    """

    lengths: tuple[int, ...]  # tokens per page
    postings: str

    @classmethod
    def build(cls, pages: list[str]) -> PageIndex:
        lines: dict[str, list[str]] = {}
        lengths = []
        for number, page in enumerate(pages):
            tokens = _tokens(page)
            lengths.append(len(tokens))
            for term, count in Counter(tokens).items():
                lines.setdefault(term, []).append(f"{number}:{count}")
        return cls(tuple(lengths), "".join(f"\n{term}\t{' '.join(found)}" for term, found in lines.items()))

    def dumps(self) -> str:
        """The stored form: the page lengths on the first line, then the postings."""
        return " ".join(map(str, self.lengths)) + self.postings

    @classmethod
    def loads(cls, text: str) -> PageIndex:
        head, newline, postings = text.partition("\n")
        return cls(tuple(int(n) for n in head.split()), newline + postings)

    def counts(self, term: str) -> list[tuple[int, int]]:
        """(page, occurrences) of ``term``, for the pages it occurs on."""
        start = self.postings.find(f"\n{term}\t")
        if start < 0:
            return []
        start += len(term) + 2
        end = self.postings.find("\n", start)
        found = self.postings[start:end if end >= 0 else None].split()
        return [(int(page), int(count)) for page, _, count in (f.partition(":") for f in found)]


def query_terms(question: str) -> list[str]:
    """The distinct words of ``question`` that ranking looks up (its last ones, when it is long)."""
    terms = list(dict.fromkeys(reversed(_tokens(question[-QUERY_CHARS:]))))[:QUERY_TERMS]
    return terms[::-1]


def bm25_scores(query: str, indexes: list[PageIndex], *, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 of every page of every index against ``query`` (in order), with Lucene's non-negative IDF.

    The pages of all ``indexes`` form one corpus. Rare words dominate: a term on every page adds almost
    nothing, so "what is the name of ..." is ranked by its distinctive words. Written out here rather than
    taken from a library because the corpus is one request's pages and needs no search engine.
    """
    lengths = [n for index in indexes for n in index.lengths]
    if not lengths:
        return []
    average = sum(lengths) / len(lengths) or 1.0
    scores = [0.0] * len(lengths)
    for term in query_terms(query):
        hits: list[tuple[int, int]] = []  # (page across all indexes, occurrences)
        offset = 0
        for index in indexes:
            hits += [(offset + page, count) for page, count in index.counts(term)]
            offset += len(index.lengths)
        if not hits:
            continue
        idf = math.log(1 + (len(lengths) - len(hits) + 0.5) / (len(hits) + 0.5))
        for page, tf in hits:
            norm = k1 * (1 - b + b * lengths[page] / average)
            scores[page] += idf * tf * (k1 + 1) / (tf + norm)
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
            scores = dict(zip(order, bm25_scores(question, [doc.index for doc in docs])))
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
