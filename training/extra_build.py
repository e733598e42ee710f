"""Build the extra router rows (questions about documents; prompts in many languages) from source snapshots.

The readers in :mod:`training.extra_sources` give questions with the passage they are about; this module turns
them into prompts as a user would send them with their provenance, and caps and balances them
(:mod:`training.extra_manifest` writes them).

Why each step:

- **Composition.** The router scores the user's text only (an attached PDF is not part of it), so most document
  rows are the bare question. A share carry a pasted excerpt of the passage, with the same share and the same
  wordings on both labels, so neither an excerpt nor its framing says "lookup" or "analysis". Short everyday
  requests are sometimes joined in twos or threes (one message asking for several small things), and hard tasks
  sometimes lose their code signature, so the two labels' lengths overlap.
- **Caps.** Per source and language, then per source and kind, so that no one source outweighs the 13k rows of
  the main data (``cap_per_kind``) and no one language dominates a kind.
- **Length matching.** The project's evaluation sets are length-balanced (length alone scores about 0.5 on
  them); if every lookup were short and every analysis long, a model would learn length. Within each kind pair
  (lookup/analysis; everyday/hard; per language for the latter) the rows are binned by log length and each bin
  keeps as many rows of each label as the scarcer label has there.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from training import extra_languages as lang
from training import extra_sources as src
from training.extra_sources import Item, Mirror


@dataclass(frozen=True)
class Source:
    """A public repository, the commit read, its licence and the reader that turns it into items."""

    name: str
    repo: str
    commit: str
    license: str
    family: str  # doc_qa or multilingual: the output file and the training source
    read: Callable[[Mirror], Iterator[Item]]
    note: str = ""
    #: Composed with a random stream of its own (seeded by the seed and the name) instead of the shared one: a
    #: source added after a published build then leaves the other family's rows exactly as they were (the same
    #: rows, so the same cached embeddings and comparable figures); its own family is re-balanced with it.
    own_stream: bool = False


SOURCES = (
    Source("tatqa", "NExTplusplus/TAT-QA", "870accc41953dcde885aabeb963d94aabdc0fbc3", "CC BY 4.0", "doc_qa",
           src.tatqa, "dev and test_gold files (the training file is over the snapshot's size limit)"),
    Source("squality", "nyu-mll/SQuALITY", "dc08d4f574639d773bc64ef3ab3527043108fb4e",
           "CC BY 4.0 (questions); stories: Project Gutenberg licence", "doc_qa", src.squality),
    Source("qmsum", "Yale-LILY/QMSum", "83d7768c1f2b4dfeb091385d3dc7e239b8e5bb7e",
           "MIT (repository); meetings: AMI and ICSI corpora CC BY 4.0, Welsh and Canadian parliamentary committees",
           "doc_qa", src.qmsum),
    Source("conditionalqa", "haitian-sun/ConditionalQA", "77bd295952daf415548b3244db10880d3d55cfe0",
           "BSD-2-Clause (the repository's licence file); guidance pages: gov.uk, Open Government Licence v3.0",
           "doc_qa", src.conditionalqa, "train and dev files (the test file has no answers)"),
    Source("xquad", "google-deepmind/xquad", "7d30520c717524000f0d9d2f9c10a069acd9d285", "CC BY-SA 4.0", "doc_qa",
           src.xquad),
    Source("gaokao_reading", "ruixiangcui/AGIEval", "5c77d073fda993f1652eaae3cf5d04cc5fd21d40", "MIT", "doc_qa",
           src.gaokao_reading, "Gaokao Chinese paper: questions judging analyses of a passage"),
    Source("xquad_plain", "google-deepmind/xquad", "7d30520c717524000f0d9d2f9c10a069acd9d285", "CC BY-SA 4.0",
           "multilingual", lang.xquad_questions, "questions without their paragraph, for languages xSID lacks"),
    Source("xpersona", "HLTCHKUST/Xpersona", "1da049a1bbf3b01548f98cc23ba75ef871416e50", "MIT", "multilingual",
           lang.xpersona, "valid and test dialogues, the user's first three turns"),
    Source("kochat", "songys/Chatbot_data", "4cf20d13fc46f5037fd1c531cd566e2dd9f72974", "MIT", "multilingual",
           lang.korean_chat),
    Source("xsid", "mainlp/xsid", "761d926c3f2e9f6bea13192d2f39cec1d04d9777", "CC BY-SA 4.0", "multilingual",
           lang.xsid, "xSID 0.7 valid and test files, standard-language files only"),
    Source("mhumaneval", "mraihan-gmu/mHumanEval-Benchmark", "b4ac5b3f59bb8a9b27fabd2d63080963995b1388",
           "Apache-2.0 (HumanEval: MIT)", "multilingual", lang.mhumaneval, "Python tasks, descriptions only"),
    Source("gaokao", "ruixiangcui/AGIEval", "5c77d073fda993f1652eaae3cf5d04cc5fd21d40", "MIT", "multilingual",
           lang.gaokao, "Gaokao files only (LogiQA and JEC-QA are non-commercial; MATH is in the main data)"),
    Source("fairytaleqa", "uci-soe/FairytaleQAData", "a24ddc17364666b7c13a425b9970c87368b03417",
           "Apache-2.0 (stories: Project Gutenberg, public domain)", "doc_qa_more", src.fairytaleqa,
           "data-by-origin files: local stated answers as lookups, inferred answers across sections as analyses"),
    Source("exams", "mhardalov/exams-qa", "f859e665de6c370f6214ca5f36a34ace36ada6cb", "CC BY-SA 4.0", "multilingual",
           lang.exams, "multilingual train, dev and test files; ar, de, es, fr, it, tr, vi", own_stream=True),
)  # fmt: skip

#: ``doc_qa_more`` holds document sources added after ``doc_qa.jsonl`` was published. It is its own file, balanced on
#: its own and last, so the earlier files come out byte for byte as before (the general router trained on them is
#: unchanged), and only the document head (scripts/train_doc_head.py) reads it.
FAMILIES = ("doc_qa", "multilingual", "doc_qa_more")
HIGH = 0.5  # a row's label for balancing and reports: target >= HIGH means "strong needed"


@dataclass(frozen=True)
class BuildConfig:
    """Knobs of :func:`build`; the defaults made the published files."""

    seed: int = 25
    excerpt_share: float = 0.4  # document questions shown with a pasted excerpt
    excerpt_chars: tuple[int, int] = (150, 900)
    join_share: float = 0.6  # assistant requests joined with one to three others
    signature_share: float = 0.5  # programming tasks shown with their function signature
    max_chars: int = 1500
    dedupe_keep: int = 3  # copies kept of a question asked of many documents ("What is the plot of the story?")
    cap_per_language: int = 300  # per (source, language, kind), for sources in several languages
    language_caps: tuple[tuple[str, int], ...] = (("xquad", 120),)  # per-source exceptions
    cap_per_kind: int = 3000  # per (source, kind)
    #: TAT-QA alone would be over half the document lookups, and it is the only annual-report source: with no
    #: report analyses to set against it, a model could learn "financial wording means lookup".
    kind_caps: tuple[tuple[str, int], ...] = (("tatqa", 1200),)
    bin_width: float = 0.35  # length bins, in log2(characters)
    max_ratio: float = 1.5  # per length bin, the plentiful label keeps at most this many times the scarcer one


# --- composition -------------------------------------------------------------------------------------------------

_FRAMES_EN = (
    "{excerpt}\n\n{question}",
    "Here is an excerpt from the document:\n\n{excerpt}\n\n{question}",
    "{question}\n\nRelevant part of the document:\n{excerpt}",
    "Context:\n{excerpt}\n\nQuestion: {question}",
)
_FRAMES_ANY = ("{excerpt}\n\n{question}", "{question}\n\n{excerpt}")


def excerpt(passage: str, rng: random.Random, size: tuple[int, int]) -> str:
    """A window of the passage between ``size`` characters long, cut at whitespace."""
    length = rng.randint(*size)
    if len(passage) <= length:
        return passage.strip()
    start = 0 if rng.random() < 0.5 else rng.randrange(0, len(passage) - length)
    window = passage[start : start + length]
    if start:
        window = window.split(None, 1)[-1] if " " in window else window
    return window.rsplit(None, 1)[0].strip() + " …"


def compose_document(item: Item, rng: random.Random, config: BuildConfig) -> str:
    """The question alone, or with a pasted excerpt in one of a few framings (the same for both labels)."""
    if not item.passage or rng.random() >= config.excerpt_share:
        return item.question
    frames = _FRAMES_EN if item.language == "en" else _FRAMES_ANY
    room = config.max_chars - len(item.question) - 60
    size = (min(config.excerpt_chars[0], room), min(config.excerpt_chars[1], room))
    if size[1] < 50:
        return item.question
    return rng.choice(frames).format(excerpt=excerpt(item.passage, rng, size), question=item.question)


def compose_multilingual(items: list[Item], rng: random.Random, config: BuildConfig) -> Iterator[tuple[str, Item]]:
    """Assistant requests, some joined into one message (within a language and a group); programming tasks as a
    one-sentence request and as their full description; other hard tasks with or without their signature or answer
    options; everything else as it is."""
    by_group: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in items:
        if item.source_kind == "command":
            by_group[(item.language, item.group)].append(item)
        elif item.source_kind == "code" and _first_sentence(item.question):
            # both a one-sentence request and the full description: the same task at two lengths
            yield _first_sentence(item.question), item
            yield item.question, item
        elif item.passage and rng.random() < config.signature_share:
            body = f"```python\n{item.passage}\n```" if item.passage.startswith("def ") else item.passage
            yield f"{item.question}\n\n{body}", item
        else:
            yield item.question, item
    for members in by_group.values():
        rng.shuffle(members)
        while members:
            take = rng.choice((2, 3, 4)) if rng.random() < config.join_share and len(members) > 1 else 1
            chunk, members = members[:take], members[take:]
            joiner = "" if chunk[0].language in ("ja", "zh") else " "
            text = joiner.join(_sentence(m.question, m.language) for m in chunk) if take > 1 else chunk[0].question
            yield text, chunk[0]


def _first_sentence(text: str) -> str:
    """The description's first sentence if it is a usable task on its own (25+ characters), else ''."""
    head = re.split(r"(?<=[.!?。！？])\s*", text, maxsplit=1)[0]
    return head if 25 <= len(head) < len(text) else ""


def _sentence(text: str, language: str) -> str:
    """End a joined request with punctuation, so two requests do not run together."""
    if text and text[-1] in ".?!。？！؟":
        return text
    return text + ("。" if language in ("ja", "zh") else ".")


# --- balance -----------------------------------------------------------------------------------------------------


def dedupe(rows: list[dict[str, Any]], keep: int, rng: random.Random) -> list[dict[str, Any]]:
    """At most ``keep`` rows per (source, prompt), chosen at random."""
    rng.shuffle(rows)
    seen: Counter[tuple[str, str]] = Counter()
    out = []
    for r in rows:
        key = (r["source"], r["prompt"].casefold())
        seen[key] += 1
        if seen[key] <= keep:
            out.append(r)
    return out


def cap(rows: list[dict[str, Any]], keys: tuple[str, ...], limit: int, rng: random.Random) -> list[dict[str, Any]]:
    """At most ``limit`` rows per combination of ``keys`` (a seeded sample)."""
    pools: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        pools[tuple(r[k] for k in keys)].append(r)
    out: list[dict[str, Any]] = []
    for key in sorted(pools):
        pool = pools[key]
        rng.shuffle(pool)
        out += pool[:limit]
    return out


def length_match(
    rows: list[dict[str, Any]], strata: Callable[[dict[str, Any]], str], width: float, ratio: float, rng: random.Random
) -> list[dict[str, Any]]:
    """Per stratum and log-length bin, keep every row of the scarcer label and at most ``ratio`` times as many of
    the other (1.0: exactly as many, so length says nothing within a stratum)."""
    bins: dict[tuple[str, int, bool], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        bins[(strata(r), int(math.log2(len(r["prompt"]) + 1) / width), r["target"] >= HIGH)].append(r)
    out: list[dict[str, Any]] = []
    for (stratum, number, high), pool in sorted(bins.items()):
        if high:
            continue
        other = bins.get((stratum, number, True), [])
        n = int(ratio * min(len(pool), len(other)))
        rng.shuffle(pool)
        rng.shuffle(other)
        out += pool[:n] + other[:n]
    return out


# --- build -------------------------------------------------------------------------------------------------------


def rows_of(source: Source, mirror: Mirror, config: BuildConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Every composed row of one source, with its provenance."""
    items = list(source.read(mirror))
    pairs = (
        ((compose_document(i, rng, config), i) for i in items)
        if source.family.startswith("doc_qa")
        else compose_multilingual(items, rng, config)
    )
    return [
        {
            "prompt": prompt[: config.max_chars],
            "target": item.target,
            "source": source.name,
            "license": source.license,
            "repo": source.repo,
            "commit": mirror.commit,
            "path": item.path,
            "group": item.group,
            "language": item.language,
            "kind": item.kind,
        }
        for prompt, item in pairs
        if prompt.strip()
    ]


def balance(rows: list[dict[str, Any]], family: str, config: BuildConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Dedupe, cap and length-match one family's rows."""
    rows = dedupe(rows, config.dedupe_keep, rng)
    languages: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        languages[r["source"]].add(r["language"])
    limits = dict(config.language_caps)
    several = [r for r in rows if len(languages[r["source"]]) > 1]
    rows = [r for r in rows if len(languages[r["source"]]) == 1]
    for name in sorted({r["source"] for r in several}):
        limit = limits.get(name, config.cap_per_language)
        rows += cap([r for r in several if r["source"] == name], ("source", "language", "kind"), limit, rng)
    kind_limits = dict(config.kind_caps)
    capped: list[dict[str, Any]] = []
    for name in sorted({r["source"] for r in rows}):
        limit = kind_limits.get(name, config.cap_per_kind)
        capped += cap([r for r in rows if r["source"] == name], ("source", "kind"), limit, rng)
    rows = capped
    # Document questions are matched across languages (the non-English ones are lookups only); everyday and hard
    # prompts within each language, so that a language never predicts the label.
    strata: Callable[[dict[str, Any]], str] = (
        (lambda r: "all") if family.startswith("doc_qa") else (lambda r: r["language"])
    )
    matched = length_match(rows, strata, config.bin_width, config.max_ratio, rng)
    return sorted(matched, key=lambda r: (r["source"], r["group"], r["prompt"]))


def build(mirrors: dict[str, Mirror], config: BuildConfig) -> dict[str, list[dict[str, Any]]]:
    """The balanced rows of each family from the sources whose mirror is given (others are skipped)."""
    rng = random.Random(config.seed)
    # The first two families share one stream of random numbers, as when they were published; a later family has
    # its own, so adding it leaves their rows as they were.
    rngs = {f: rng if f in FAMILIES[:2] else random.Random(f"{config.seed}:{f}") for f in FAMILIES}
    raw: dict[str, list[dict[str, Any]]] = {f: [] for f in FAMILIES}
    for source in SOURCES:
        if source.name in mirrors:
            stream = random.Random(f"{config.seed}:{source.name}") if source.own_stream else rngs[source.family]
            raw[source.family] += rows_of(source, mirrors[source.name], config, stream)
    return {family: balance(rows, family, config, rngs[family]) for family, rows in raw.items()}
