"""Readers for the multilingual extra router rows: everyday requests and hard tasks in many languages, read from
git snapshots (see :mod:`training.extra_sources` for the snapshot and item types and the document readers)."""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from collections.abc import Iterator
from typing import Any

from training.extra_sources import Item, Mirror, _clean, xquad

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


#: EXAMS (mhardalov/exams-qa, CC BY-SA 4.0): high-school matriculation questions written in each language (not
#: translated), in history, philosophy, economics, sociology, politics, biology, physics and more. They are the
#: hard rows that are neither code nor Chinese: without them, "hard" outside English was almost only programming
#: tasks and Gaokao problems, so the head learned "code or maths = hard" and ranked an essay question on law or
#: economics with greetings. Only languages that also have everyday rows here are read (a language with hard rows
#: only would be dropped by the per-language length matching anyway).
EXAMS_LANGUAGES = {
    "Arabic": "ar", "German": "de", "Spanish": "es", "French": "fr", "Italian": "it", "Turkish": "tr",
    "Vietnamese": "vi",
}  # fmt: skip
EXAMS_FILES = tuple(f"data/exams/multilingual/{split}.jsonl.tar.gz" for split in ("train", "dev", "test"))


def _tar_lines(data: bytes) -> Iterator[str]:
    """The lines of every file in a gzipped tar archive."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is not None:
                yield from handle.read().decode("utf-8").splitlines()


def exam_item(q: dict[str, Any], path: str) -> Item | None:
    """One EXAMS question as a hard item (its answer options as the passage a prompt may show), or None when it is
    not in a language read here, or its stem is too short to stand as a question."""
    info = q.get("info") or {}
    language = EXAMS_LANGUAGES.get(str(info.get("language", "")))
    question = q.get("question") or {}
    stem = _clean(str(question.get("stem", "")))
    if language is None or len(stem) < 15:
        return None
    options = "\n".join(f"{c.get('label', '')}. {_clean(str(c.get('text', '')))}" for c in question.get("choices", []))
    return Item(stem, options, 1.0, "hard", f"exams:{q.get('id', stem)}", language, path, "exam")


def exams(mirror: Mirror) -> Iterator[Item]:
    """High-school exam questions in seven languages: hard."""
    for path in EXAMS_FILES:
        for line in _tar_lines(mirror.blob(path)):
            if line.strip():
                item = exam_item(json.loads(line), path)
                if item is not None:
                    yield item
