"""The EXAMS reader (hard exam questions outside English and code) and sources composed on their own random
stream (adding one leaves the other family's rows as they were)."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import commit_repo
from training import extra_build as build
from training import extra_languages as lang
from training.extra_sources import Item, Mirror


def question(qid: str, language: str, stem: str, choices: list[str] | None = None) -> dict[str, object]:
    options = [{"text": t, "label": "ABCD"[k]} for k, t in enumerate(choices or ["uno", "due", "tre", "quattro"])]
    return {"id": qid, "question": {"stem": stem, "choices": options},
            "info": {"grade": 12, "subject": "History", "language": language}}  # fmt: skip


def tar_gz(name: str, lines: list[str]) -> bytes:
    """A gzipped tar holding one file of ``lines``, as the EXAMS repository stores its splits."""
    data = ("\n".join(lines) + "\n").encode("utf-8")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def exams_mirror(root: Path, splits: dict[str, list[str]]) -> Mirror:
    root.mkdir(parents=True, exist_ok=True)
    files = {"README.md": "exams\n"}
    commit_repo(root, files)
    for split, lines in splits.items():
        path = root / f"data/exams/multilingual/{split}.jsonl.tar.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tar_gz(f"{split}.jsonl", lines))
    return Mirror(str(root / ".git"), "example/exams", commit_repo(root, {}))


ITALIAN = "Quale fu la causa principale della crisi economica del 1929 negli Stati Uniti?"


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    lines = [
        json.dumps(question("q1", "Italian", ITALIAN)),
        json.dumps(question("q2", "Croatian", "Koji je glavni uzrok gospodarske krize 1929. godine?")),  # not read
        json.dumps(question("q3", "German", "Warum?")),  # too short to stand as a question
        "",
        json.dumps({"id": "q4", "question": {"stem": "Qual è il significato del termine 'catarsi' in Aristotele?"},
                    "info": {"language": "Italian"}}),  # fmt: skip  # no options
        json.dumps({"id": "q5"}),  # no question, no info
    ]
    arabic = json.dumps(question("q6", "Arabic", "ما السبب الرئيسي لسقوط الدولة العباسية في بغداد؟"))
    return exams_mirror(tmp_path / "exams", {"train": lines, "dev": [], "test": [arabic]})


def test_exam_questions_of_the_read_languages_are_hard_items_with_their_options(mirror: Mirror) -> None:
    items = list(lang.exams(mirror))
    assert [(i.language, i.group) for i in items] == [("it", "exams:q1"), ("it", "exams:q4"), ("ar", "exams:q6")]
    first = items[0]
    assert (first.question, first.target, first.kind, first.source_kind) == (ITALIAN, 1.0, "hard", "exam")
    assert first.passage == "A. uno\nB. due\nC. tre\nD. quattro"
    assert items[1].passage == ""  # a question without options is the bare question
    assert first.path == "data/exams/multilingual/train.jsonl.tar.gz"


def test_a_missing_split_or_a_broken_line_is_an_error_not_a_silent_gap(tmp_path: Path) -> None:
    partial = exams_mirror(tmp_path / "partial", {"train": [json.dumps(question("q1", "Italian", ITALIAN))]})
    with pytest.raises(FileNotFoundError, match="dev.jsonl.tar.gz"):
        list(lang.exams(partial))
    broken = exams_mirror(tmp_path / "broken", {s: ["{not json"] for s in ("train", "dev", "test")})
    with pytest.raises(json.JSONDecodeError):
        list(lang.exams(broken))
    with pytest.raises(tarfile.ReadError):
        list(lang._tar_lines(b"plain text, not an archive"))


def test_exam_items_compose_with_or_without_their_options(mirror: Mirror) -> None:
    items = [i for i in lang.exams(mirror) if i.passage] * 20
    prompts = [p for p, _ in build.compose_multilingual(items, random.Random(3), build.BuildConfig())]
    assert ITALIAN in prompts and f"{ITALIAN}\n\nA. uno\nB. due\nC. tre\nD. quattro" in prompts


def documents(_mirror: Mirror) -> Iterator[Item]:
    """Lookups and analyses of many lengths, each with a passage (so composition draws on the random stream)."""
    for k in range(60):
        question = f"Question {k}: " + "why " * (k % 12)
        yield Item(question, "The report says revenue rose. " * 10, float(k % 2), ("document_lookup",
                   "document_analysis")[k % 2], f"doc:{k // 4}", "en", "d.json")  # fmt: skip


def test_a_source_on_its_own_stream_leaves_the_other_family_unchanged(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    exams = next(s for s in build.SOURCES if s.name == "exams")
    assert exams.own_stream and exams.family == "multilingual"
    docs = build.Source("docs", "example/docs", "0" * 40, "CC0", "doc_qa", documents)
    config = build.BuildConfig(excerpt_share=0.5)
    monkeypatch.setattr(build, "SOURCES", (docs, exams))
    alone = build.build({"docs": mirror}, config)
    assert alone["doc_qa"] and not alone["multilingual"]
    assert build.build({"docs": mirror, "exams": mirror}, config)["doc_qa"] == alone["doc_qa"]
    monkeypatch.setattr(build, "SOURCES", (docs, dataclasses.replace(exams, own_stream=False)))
    # the shared stream's counter-case, so the test above can fail: the same addition reshuffles the documents
    assert build.build({"docs": mirror, "exams": mirror}, config)["doc_qa"] != alone["doc_qa"]
