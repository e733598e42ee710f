"""Building the extra router rows (training.extra_build, training.extra_sources, scripts/data/build_router_extra.py)
from git snapshots: provenance on every row, lookups and analyses typed from the source's own annotation,
lengths of the two labels matched, translations kept in one group."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers import commit_repo
from tests.training import script_main
from training import extra_build as build
from training import extra_languages as lang
from training import extra_manifest as manifest_module
from training import extra_sources as src
from training.extra_sources import Item, Mirror


def tatqa_doc(uid: str, answer_types: list[str]) -> dict[str, object]:
    return {
        "table": {"uid": uid, "table": [["", "2019", "2018"], ["Revenue", "1,200", "1,000"]]},
        "paragraphs": [{"uid": "p", "order": 1, "text": "Revenue rose because of new contracts. " * 20}],
        "questions": [
            {"question": f"Question {i} ({kind}) about revenue in {uid}?", "answer_type": kind}
            for i, kind in enumerate(answer_types)
        ],
    }


@pytest.fixture
def tatqa_mirror(tmp_path: Path) -> Mirror:
    root = tmp_path / "tatqa"
    docs = [tatqa_doc(f"t{i}", ["span", "arithmetic", "count", "multi-span"]) for i in range(30)]
    files = {path: json.dumps(docs if "dev" in path else docs[:5]) for path in src.TATQA_FILES}
    return Mirror(str(root / ".git"), "example/tatqa", commit_repo(root, files))


def test_tatqa_types_spans_and_arithmetic_as_lookups_of_rising_target_and_drops_counts(tatqa_mirror: Mirror) -> None:
    items = list(src.tatqa(tatqa_mirror))
    assert len(items) == 35 * 3
    kinds = {i.question.split("(")[1].split(")")[0]: (i.kind, i.target) for i in items}
    assert kinds == {
        "span": ("document_lookup", 0.0),
        "multi-span": ("document_lookup", 0.1),
        "arithmetic": ("document_lookup", 0.4),
    }
    assert all(i.group == "tatqa:" + i.question.split(" in ")[1].rstrip("?") for i in items)
    assert "Revenue | 1,200 | 1,000" in items[0].passage


@pytest.fixture
def conditionalqa_mirror(tmp_path: Path) -> Mirror:
    root = tmp_path / "cqa"
    questions = []
    for i in range(40):
        page = f"https://example.org/page{i % 8}"
        scenario = "I live alone and work part time. " * (1 + i % 25)
        questions.append(
            {
                "url": page,
                "scenario": scenario,
                "question": f"Where do I apply {i}?",
                "not_answerable": False,
                "answers": [["the council office", []]],
            }
        )
        questions.append(
            {
                "url": page,
                "scenario": scenario,
                "question": f"Can I claim the benefit {i}?",
                "not_answerable": False,
                "answers": [["yes", ["<p>if you earn under the limit</p>"]]],
            }
        )
        questions.append(
            {"url": page, "scenario": scenario, "question": "Unanswerable?", "not_answerable": True, "answers": []}
        )
    files = {path: json.dumps(questions) for path in src.CONDITIONALQA_FILES}
    return Mirror(str(root / ".git"), "example/cqa", commit_repo(root, files))  # fmt: skip


def test_conditionalqa_verdicts_with_conditions_are_analyses_of_the_same_pages_as_lookups(
    conditionalqa_mirror: Mirror,
) -> None:
    items = list(src.conditionalqa(conditionalqa_mirror))
    assert len(items) == 160  # unanswerable questions left out
    lookups = {i.group for i in items if i.kind == "document_lookup" and i.target == 0.1}
    analyses = {i.group for i in items if i.kind == "document_analysis" and i.target == 0.75}
    assert lookups == analyses == {f"conditionalqa:https://example.org/page{k}" for k in range(8)}
    assert all(i.question.startswith("I live alone") for i in items)  # the situation comes first, as people write


def test_build_writes_rows_with_provenance_and_balanced_labels(
    tatqa_mirror: Mirror, conditionalqa_mirror: Mirror, tmp_path: Path
) -> None:
    config = build.BuildConfig(excerpt_share=0.5, max_ratio=1.0)
    mirrors = {"tatqa": tatqa_mirror, "conditionalqa": conditionalqa_mirror}
    families = build.build(mirrors, config)
    rows = families["doc_qa"]
    assert families["multilingual"] == []
    assert all(r["commit"] == mirrors[r["source"]].commit for r in rows)
    tatqa = [r for r in rows if r["source"] == "tatqa"]
    assert tatqa and all(r["repo"] == "NExTplusplus/TAT-QA" for r in tatqa)
    assert {r["license"] for r in tatqa} == {"CC BY 4.0"}
    assert set(rows[0]) == {"prompt", "target", "source", "license", "repo", "commit", "path", "group", "language",
                            "kind"}  # fmt: skip
    high = [r for r in rows if r["target"] >= build.HIGH]
    assert len(high) == len(rows) - len(high)  # max_ratio 1: as many of each label
    assert any("Revenue rose" in r["prompt"] for r in tatqa)  # some carry an excerpt ...
    assert any(r["prompt"].startswith("Question") for r in tatqa)  # ... some are the bare question
    assert all(len(r["prompt"]) <= config.max_chars for r in rows)
    manifest = manifest_module.write(tmp_path / "out", families, mirrors)
    assert (tmp_path / "out" / "doc_qa.jsonl").read_text(encoding="utf-8").count("\n") == len(rows)
    assert manifest["families"]["doc_qa"]["rows"] == len(rows)
    assert tatqa_mirror.commit[:12] in (tmp_path / "out" / "SOURCES.md").read_text(encoding="utf-8")


FAIRYTALE_HEADER = "question_id,local-or-sum,cor_section,attribute1,attribute2,question,ex-or-im1,answer1,ex-or-im2\n"


@pytest.fixture
def fairytaleqa_mirror(tmp_path: Path) -> Mirror:
    root = tmp_path / "fqa"
    files = {}
    for n in range(6):
        book = f"book{n % 2}"
        files[f"{src.FAIRYTALEQA_QUESTIONS}/{book}/tale{n}-questions.csv"] = FAIRYTALE_HEADER + "".join([
            f"1,local,1,character,,Who found the goose in tale {n}?,explicit,a,explicit\n",
            f'2,summary,"1,2",causal relationship,,Why did the king relent in tale {n}?,implicit,b,\n',
            f"3,local,2,feeling,,How did the miller feel in tale {n}?,implicit,c,\n",  # one section, inferred
            f'4,summary,"1,2",action,,What did they do in tale {n}?,explicit,d,\n',  # several, stated
            f"5,local,1,action,,Where did he go in tale {n}?,explicit,e,implicit\n",  # annotators disagree
        ])  # fmt: skip
        files[f"{src.FAIRYTALEQA_STORIES}/{book}/tale{n}-story.csv"] = (
            f'section,text\n1,"Once upon a time in tale {n}."\n2,"The king relented, and the miller wept."\n'
        )
    return Mirror(str(root / ".git"), "example/fqa", commit_repo(root, files))


def test_fairytaleqa_stated_one_section_answers_are_lookups_and_inferred_several_section_ones_analyses(
    fairytaleqa_mirror: Mirror,
) -> None:
    items = list(src.fairytaleqa(fairytaleqa_mirror))
    assert len(items) == 12  # the three mixed cases of each tale are left out
    assert {i.question.split(" in ")[0]: (i.kind, i.target) for i in items} == {
        "Who found the goose": ("document_lookup", 0.1),
        "Why did the king relent": ("document_analysis", 0.7),
    }
    assert {i.group for i in items} == {f"fairytaleqa:tale{n}" for n in range(6)}
    why = next(i for i in items if i.question.startswith("Why") and i.group == "fairytaleqa:tale3")
    assert why.passage == "Once upon a time in tale 3.\n\nThe king relented, and the miller wept."  # its sections


def test_a_later_family_leaves_the_published_rows_as_they_were(
    tatqa_mirror: Mirror, conditionalqa_mirror: Mirror, fairytaleqa_mirror: Mirror
) -> None:
    config = build.BuildConfig(excerpt_share=0.5)
    mirrors = {"tatqa": tatqa_mirror, "conditionalqa": conditionalqa_mirror}
    before = build.build(mirrors, config)
    after = build.build({**mirrors, "fairytaleqa": fairytaleqa_mirror}, config)
    assert after["doc_qa"] == before["doc_qa"] and after["multilingual"] == before["multilingual"]
    assert before["doc_qa_more"] == [] and {r["source"] for r in after["doc_qa_more"]} == {"fairytaleqa"}
    assert {r["license"] for r in after["doc_qa_more"]} == {"Apache-2.0 (stories: Project Gutenberg, public domain)"}


def test_length_matching_leaves_each_bin_with_as_many_rows_of_either_label() -> None:
    rng = random.Random(0)
    rows = [{"prompt": "x" * rng.randint(10, 200), "target": 0.0} for _ in range(400)]
    rows += [{"prompt": "y" * rng.randint(100, 1000), "target": 1.0} for _ in range(400)]
    matched = build.length_match(rows, lambda r: "all", 0.5, 1.0, rng)
    low = sorted(len(r["prompt"]) for r in matched if r["target"] < build.HIGH)
    high = sorted(len(r["prompt"]) for r in matched if r["target"] >= build.HIGH)
    assert len(low) == len(high) > 20
    assert max(low) >= 100 and min(high) <= 200  # only the overlap survives
    assert abs(low[len(low) // 2] - high[len(high) // 2]) < 0.5 * high[len(high) // 2]


def test_everyday_requests_are_joined_only_within_a_language_and_group() -> None:
    items = [Item(f"request {g}-{i}", "", 0.0, "everyday", f"g{g}", lang, "p", "command") for g in range(3)
             for i in range(6) for lang in ("de", "ja")]  # fmt: skip
    config = build.BuildConfig(join_share=1.0)
    out = list(build.compose_multilingual(items, random.Random(1), config))
    assert sum(len(i.question) for i in items) < sum(len(p) for p, _ in out)  # punctuation joins the requests
    for prompt, item in out:
        for part in prompt.replace("。", ".").split("."):
            if part.strip():
                assert part.strip().startswith(f"request {item.group[1:]}-")
    assert any(p.count("request") > 1 for p, _ in out)


def test_xsid_text_loses_the_tokenising_spaces_in_chinese_and_japanese() -> None:
    assert lang._join_tokens("すべて の リマインダー を 表示", "ja") == "すべてのリマインダーを表示"
    assert lang._join_tokens("播放 Taylor Swift 的 歌", "zh") == "播放Taylor Swift的歌"
    assert lang._join_tokens("wake me up at 7", "en") == "wake me up at 7"


def test_a_humaneval_stub_gives_its_description_without_examples_and_its_signature() -> None:
    stub = 'from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    """ Gib die Summe zurück.\n'
    stub += '    >>> f([1])\n    1\n    """\n'
    assert lang._docstring(stub) == ("Gib die Summe zurück.", "def f(xs: List[int]) -> int:")


def test_the_script_skips_missing_snapshots_and_refuses_when_none_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = script_main("data/build_router_extra")
    with pytest.raises(SystemExit) as stopped:
        main(["--mirror-root", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "no source snapshot found" in err and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["--mirror-root", str(tmp_path), "--out", str(tmp_path / "out"), "--mirror", "nosuch=/x"])
    assert "--mirror" in capsys.readouterr().err


def test_balance_caps_each_language_of_a_many_language_source_and_the_named_sources_per_kind() -> None:
    def row(source: str, language: str, high: bool, i: int) -> dict[str, object]:
        return {
            "prompt": f"{source} {language} {'hard' if high else 'easy'} prompt {i:04d}",
            "target": float(high),
            "source": source,
            "language": language,
            "kind": "hard" if high else "everyday",
            "group": f"g{i}",
        }

    rows = [row("multi", lang, high, i) for lang in ("de", "ja") for high in (False, True) for i in range(50)]
    rows += [row("single", "en", high, i) for high in (False, True) for i in range(50)]
    config = build.BuildConfig(cap_per_language=20, kind_caps=(("single", 7),), max_ratio=1.0)
    out = build.balance(rows, "multilingual", config, random.Random(0))
    counts: dict[tuple[str, str, float], int] = {}
    for r in out:
        key = (str(r["source"]), str(r["language"]), float(r["target"]))
        counts[key] = counts.get(key, 0) + 1
    assert counts == {
        ("multi", "de", 0.0): 20,
        ("multi", "de", 1.0): 20,
        ("multi", "ja", 0.0): 20,
        ("multi", "ja", 1.0): 20,
        ("single", "en", 0.0): 7,
        ("single", "en", 1.0): 7,
    }
