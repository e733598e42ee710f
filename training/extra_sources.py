"""Readers for the public sources behind the extra router rows: questions about documents and prompts in many
languages, read from git snapshots of their repositories (no network at build time).

Each reader takes a :class:`Mirror` (a git directory and the commit to read) and returns :class:`Item` values:
the user's question, an optional passage it is about (a caller may show part of it as pasted context), a target
p(strong model needed) and the grouping id that keeps related rows (one report, one story, one utterance and its
translations) on the same side of every split. Which rows count as lookups and which as analyses is decided here,
from each source's own annotation, and written beside the reader.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mirror:
    """A repository snapshot: ``git_dir`` is a bare git directory, ``commit`` the pinned commit read."""

    git_dir: str
    repo: str
    commit: str

    def show(self, path: str) -> str:
        """The text of ``path`` at the pinned commit."""
        out = subprocess.run(
            ["git", "--git-dir", self.git_dir, "show", f"{self.commit}:{path}"], capture_output=True, check=False
        )
        if out.returncode:
            raise FileNotFoundError(f"{self.repo}@{self.commit[:10]}:{path}: {out.stderr.decode().strip()}")
        return out.stdout.decode("utf-8")

    def ls(self, folder: str) -> list[str]:
        """Paths of the files directly under ``folder`` at the pinned commit."""
        out = subprocess.run(
            ["git", "--git-dir", self.git_dir, "ls-tree", "--name-only", f"{self.commit}:{folder}"],
            capture_output=True,
            check=True,
        )
        return [f"{folder}/{name}" for name in out.stdout.decode("utf-8").split("\n") if name]


@dataclass(frozen=True)
class Item:
    """One prompt before composition: ``passage`` (may be empty) is what the question is about."""

    question: str
    passage: str
    target: float
    kind: str  # document_lookup, document_analysis, everyday, hard
    group: str
    language: str
    path: str
    source_kind: str = ""  # "code": a programming task (may be cut to its first sentence); "command": an assistant
    # request (may be joined with others of its group into one message)


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# --- questions about documents -----------------------------------------------------------------------------------


#: TAT-QA answer types. A span (one value read off the report) is a lookup; a multi-span answer collects several
#: read-off values, still a lookup. Arithmetic questions ("What was the change in revenue between 2018 and 2019?")
#: find two values and compute one more: harder than a read-off, so a higher target, but the same question form as
#: "What was Q3 revenue?" and nothing like "compare the risks and judge which matters most", so still on the lookup
#: side of the line (an earlier build put them at 0.7 as analyses; a head fitted on that build ranked arithmetic
#: forms of lookups as analyses). Count questions are few and in between: left out.
TATQA_TARGETS = {"span": 0.0, "multi-span": 0.1, "arithmetic": 0.4}
TATQA_FILES = ("dataset_raw/tatqa_dataset_dev.json", "dataset_raw/tatqa_dataset_test_gold.json")


def _table_text(table: list[list[str]]) -> str:
    return "\n".join(" | ".join(_clean(cell) for cell in row) for row in table if any(c.strip() for c in row))


def tatqa(mirror: Mirror) -> Iterator[Item]:
    """Questions over real annual reports (a table and its paragraphs), typed by the answer they need."""
    for path in TATQA_FILES:
        for doc in json.loads(mirror.show(path)):
            passage = "\n".join(p["text"] for p in sorted(doc["paragraphs"], key=lambda p: p["order"]))
            passage = _table_text(doc["table"]["table"]) + "\n\n" + passage
            for q in doc["questions"]:
                target = TATQA_TARGETS.get(q.get("answer_type", ""))
                if target is None:
                    continue
                kind = "document_analysis" if target >= 0.5 else "document_lookup"
                yield Item(_clean(q["question"]), passage, target, kind, "tatqa:" + doc["table"]["uid"], "en", path)


#: XQuAD: SQuAD v1.1 paragraphs and questions, professionally translated; every answer is a span of the paragraph,
#: so each question is a lookup. The article title is the group, so a paragraph's translations share it.
XQUAD_LANGUAGES = ("en", "ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")


def xquad(mirror: Mirror) -> Iterator[Item]:
    """Extractive questions over Wikipedia paragraphs in twelve languages: lookups."""
    for language in XQUAD_LANGUAGES:
        path = f"xquad.{language}.json"
        for article in json.loads(mirror.show(path))["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    group = "xquad:" + article["title"]
                    yield Item(
                        _clean(qa["question"]), paragraph["context"], 0.0, "document_lookup", group, language, path
                    )


SQUALITY_FILES = ("data/v1-3/txt/train.jsonl", "data/v1-3/txt/dev.jsonl", "data/v1-3/txt/test.jsonl")


def squality(mirror: Mirror) -> Iterator[Item]:
    """Questions over whole short stories whose answers are written summaries ("What is the relationship between
    X and Y?", "What is the significance of ...?"): synthesis across a document, so analyses."""
    for path in SQUALITY_FILES:
        for line in mirror.show(path).splitlines():
            if not line.strip():
                continue
            story = json.loads(line)
            group = "squality:" + str(story["metadata"]["passage_id"])
            for q in story["questions"]:
                yield Item(_clean(q["question_text"]), story["document"], 0.9, "document_analysis", group, "en", path)


_NOISE = re.compile(r"\{(disfmarker|vocalsound|gap|pause|nonvocalsound|comment)\}\s*")


def qmsum(mirror: Mirror) -> Iterator[Item]:
    """Queries over meeting transcripts ("Summarize the discussion about ...", "Why did the group decide ...?"):
    every answer is a summary drawn from several places in the transcript, so analyses, a little below SQuALITY's
    because many are narrow ("What did A say about X?")."""
    for split in ("train", "val", "test"):
        for path in mirror.ls(f"data/ALL/{split}"):
            meeting = json.loads(mirror.show(path))
            turns = "\n".join(
                f"{t['speaker']}: {_clean(_NOISE.sub('', t['content']))}" for t in meeting["meeting_transcripts"]
            )
            group = "qmsum:" + path.rsplit("/", 1)[-1].removesuffix(".json")
            for q in meeting["general_query_list"] + meeting["specific_query_list"]:
                yield Item(_clean(q["query"]), turns, 0.75, "document_analysis", group, "en", path)


#: ConditionalQA: people describe their situation and ask about a UK government guidance page (benefits, leave,
#: adoption, tax). A short answer read off the page ("aged 21 or over") is a lookup; a yes/no verdict on the
#: person's case needs the page's rules applied to the scenario, and an answer that holds only under conditions
#: needs those conditions found and weighed: analyses. The page is the group. Unanswerable questions are left out.
CONDITIONALQA_FILES = ("v1_0/train.json", "v1_0/dev.json")


def _conditionalqa_target(answers: list[list[Any]]) -> float:
    conditional = any(len(a) > 1 and a[1] for a in answers)
    verdict = all(str(a[0]).strip().lower() in ("yes", "no") for a in answers)
    if conditional:
        return 0.75
    return 0.6 if verdict else 0.1


def conditionalqa(mirror: Mirror) -> Iterator[Item]:
    """A person's situation and their question about a guidance page, typed by the answer it needs."""
    for path in CONDITIONALQA_FILES:
        for q in json.loads(mirror.show(path)):
            if q.get("not_answerable") or not q.get("answers"):
                continue
            target = _conditionalqa_target(q["answers"])
            kind = "document_analysis" if target >= 0.5 else "document_lookup"
            question = _clean(q["scenario"] + " " + q["question"])
            yield Item(question, "", target, kind, "conditionalqa:" + q["url"], "en", path)


# --- prompts in many languages -----------------------------------------------------------------------------------

#: xSID 0.7 (valid + test): voice-assistant requests (alarms, reminders, weather) translated from English. Dialect
#: files (de-st, gsw, nap, ...) are left out.
XSID_LANGUAGES = ("ar", "da", "de", "en", "id", "it", "ja", "kk", "lt", "nl", "sr", "tr", "zh")
_CJK = r"[\u3040-\u30ff\u3400-\u9fff\uff00-\uffef。、，？！]"


def _join_tokens(text: str, language: str) -> str:
    """xSID stores Chinese and Japanese text tokenised with spaces; a user would not type those."""
    if language in ("ja", "zh"):
        return re.sub(rf"(?<={_CJK}) +|(?<=\S) +(?={_CJK})", "", text)
    return text


def xsid(mirror: Mirror) -> Iterator[Item]:
    """Everyday requests to an assistant in thirteen languages."""
    for language in XSID_LANGUAGES:
        for split in ("valid", "test"):
            path = f"data/xSID-0.7/{language}.{split}.conll"
            uid = ""
            for line in mirror.show(path).splitlines():
                if line.startswith("# id = "):
                    uid = line[7:].strip()
                elif line.startswith("# text = "):
                    text = _join_tokens(line[9:].strip(), language)
                    # ids are shared by an utterance's translations; blocks of ten are the group, so requests
                    # joined into one message (see extra_build) stay inside one group
                    block = int(uid) // 10 if uid.isdigit() else uid
                    yield Item(text, "", 0.0, "everyday", f"xsid:{split}:{block}", language, path, "command")


#: mHumanEval: the 164 HumanEval programming tasks with their descriptions machine-translated (NLLB) into 200+
#: languages. Writing a correct function from a description is where the weak model falls behind most often in
#: the labelled code data (MBPP); the task id is the group, shared by a task's translations.
MHUMANEVAL_LANGUAGES = {
    "arb_Arab": "ar", "deu_Latn": "de", "eng_Latn": "en", "hin_Deva": "hi", "ind_Latn": "id", "ita_Latn": "it",
    "jpn_Jpan": "ja", "nld_Latn": "nl", "rus_Cyrl": "ru", "spa_Latn": "es", "tur_Latn": "tr", "zho_Hans": "zh",
    "dan_Latn": "da", "vie_Latn": "vi", "ell_Grek": "el", "tha_Thai": "th", "kor_Hang": "ko", "fra_Latn": "fr",
    "ron_Latn": "ro",
}  # fmt: skip


def _docstring(stub: str) -> tuple[str, str]:
    """(description, signature line) of a HumanEval prompt stub."""
    doc = re.search(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', stub, re.S)
    signature = next((line.strip() for line in stub.splitlines() if line.strip().startswith("def ")), "")
    text = (doc.group(1) or doc.group(2)) if doc else ""
    return _clean(text.split(">>>")[0]), signature


def mhumaneval(mirror: Mirror) -> Iterator[Item]:
    """Programming tasks described in nineteen languages: hard."""
    for code, language in MHUMANEVAL_LANGUAGES.items():
        path = f"mHumanEval-{{NL}}/{code}/mHumanEval-{code}-python.json"
        for task in json.loads(mirror.show(path)):
            description, signature = _docstring(task["prompt"])
            if len(description) < 20:
                continue
            yield Item(description, signature, 1.0, "hard", "mhumaneval:" + task["task_id"], language, path, "code")


#: AGIEval's Gaokao questions (China's university entrance exam, MIT): exam problems in physics, chemistry,
#: biology, mathematics, history and geography, hard in Chinese as MATH is in English. The Chinese-language
#: and English-language papers are left out (reading passages), as are LogiQA and JEC-QA (non-commercial licences).
GAOKAO_FILES = tuple(
    f"data/v1/gaokao-{s}.jsonl"
    for s in ("physics", "chemistry", "biology", "mathqa", "mathcloze", "history", "geography")
)


def gaokao(mirror: Mirror) -> Iterator[Item]:
    """Entrance-exam problems in Chinese: hard."""
    for path in GAOKAO_FILES:
        for number, line in enumerate(mirror.show(path).splitlines()):
            if not line.strip():
                continue
            q: dict[str, Any] = json.loads(line)
            options = "\n".join(q.get("options") or [])
            group = f"gaokao:{path.rsplit('-', 1)[-1].removesuffix('.jsonl')}:{number}"
            yield Item(_clean(q["question"]), options, 1.0, "hard", group, "zh", path)


#: AGIEval's Gaokao Chinese paper: reading-comprehension questions over essays and classical texts that ask which
#: analysis of the passage is (in)correct. Judging interpretations of a text is analysis; these are the Chinese
#: document analyses beside XQuAD's Chinese lookups.
GAOKAO_READING = "data/v1/gaokao-chinese.jsonl"


def gaokao_reading(mirror: Mirror) -> Iterator[Item]:
    """Chinese questions that judge analyses of a passage (the options are part of the question)."""
    for number, line in enumerate(mirror.show(GAOKAO_READING).splitlines()):
        if not line.strip():
            continue
        q: dict[str, Any] = json.loads(line)
        if not q.get("passage"):
            continue
        question = _clean(q["question"]) + "\n" + "\n".join(q.get("options") or [])
        yield Item(question, q["passage"], 0.85, "document_analysis", f"gaokao:chinese:{number}", "zh", GAOKAO_READING)


def xquad_questions(mirror: Mirror) -> Iterator[Item]:
    """XQuAD's questions without their paragraph: short factual questions ("When was the university founded?"),
    easy for any model, in languages that have no everyday requests here otherwise. Same groups as :func:`xquad`,
    so a question never sits on one side of the split as a lookup and on the other as an everyday question."""
    for item in xquad(mirror):
        if item.language not in XSID_LANGUAGES:
            yield Item(item.question, "", 0.1, "everyday", item.group, item.language, item.path)


#: XPersona: PersonaChat dialogues translated (and checked by people) into six languages; the user's turns of a
#: dialogue's opening are small talk ("Hi! How is your evening going?"): the everyday end of chat.
XPERSONA_FILES = {
    "en": ("dataset/En_persona_valid.json", "dataset/En_persona_test.json"),
    **{
        code: (f"dataset/{name}_persona_split_valid_human_annotated.json",
               f"dataset/{name}_persona_split_test_human_annotated.json")
        for code, name in (("fr", "Fr"), ("id", "Id"), ("it", "It"), ("ja", "Jp"), ("ko", "Ko"), ("zh", "Zh"))
    },
}  # fmt: skip


def _tidy(text: str, language: str) -> str:
    """Undo the corpus's tokenisation: no space before punctuation (French keeps its own spacing)."""
    if language == "fr":
        return text
    return re.sub(r"\s+([,.!?！？。、，])", r"\1", text)


def xpersona(mirror: Mirror, turns: int = 3) -> Iterator[Item]:
    """The user's first ``turns`` turns of each dialogue, in seven languages: small talk."""
    for language, paths in XPERSONA_FILES.items():
        for path in paths:
            for number, dialogue in enumerate(json.loads(mirror.show(path))):
                for user, _reply in dialogue["dialogue"][:turns]:
                    text = _tidy(_clean(user), language)
                    if text and not text.startswith("__"):
                        group = f"xpersona:{path.rsplit('_', 1)[-1].split('.')[0]}:{number}"
                        yield Item(text, "", 0.0, "everyday", group, language, path)


def korean_chat(mirror: Mirror) -> Iterator[Item]:
    """Korean everyday chat openers (Chatbot_data_for_Korean: daily life, breakups, love): everyday."""
    for number, row in enumerate(csv.DictReader(io.StringIO(mirror.show("ChatbotData.csv")))):
        question = (row.get("Q") or "").strip()
        if question:
            yield Item(question, "", 0.0, "everyday", f"kochat:{number // 10}", "ko", "ChatbotData.csv")


def counts(items: list[Item]) -> Counter[tuple[str, str]]:
    """Items per (kind, language), for logs."""
    return Counter((i.kind, i.language) for i in items)
