"""The built extra rows as training sources (training.data with ``extra_dir``): read with their own targets, split by
group, weighted per source, reported by AUROC, and without any effect on the other sources when absent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.training import script_main
from training import data, evaluate


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    base = tmp_path / "router"
    base.mkdir()
    subjects = ["anatomy", "virology", "astronomy", "marketing", "nutrition", "sociology", "philosophy", "law"]
    write(
        base / "train.jsonl",
        [
            {
                "prompt": f"{s} question {i}",
                "benchmark": "mmlu",
                "category": s,
                "weak_score": float(i % 2),
                "strong_score": 1.0,
                "prompt_hash": f"{s}{i}",
            }
            for s in subjects
            for i in range(10)
        ],
    )
    write(base / "aux_hard.jsonl", [{"prompt": f"hard {i}"} for i in range(20)])
    return base


@pytest.fixture
def extra_dir(tmp_path: Path) -> Path:
    """Forty reports with a lookup and an analysis each, and thirty utterance groups in two languages."""
    base = tmp_path / "extra"
    base.mkdir()
    doc = []
    for g in range(40):
        doc.append(
            {
                "prompt": f"What was revenue in report {g}?",
                "target": 0.0,
                "group": f"tatqa:{g}",
                "source": "tatqa",
                "kind": "document_lookup",
                "language": "en",
            }
        )
        doc.append(
            {
                "prompt": f"Compare the risks in report {g} and judge the worst.",
                "target": 0.7,
                "group": f"tatqa:{g}",
                "source": "tatqa",
                "kind": "document_analysis",
                "language": "en",
            }
        )
    write(base / "doc_qa.jsonl", doc)
    langs = []
    for g in range(30):
        for language, easy, hard in (
            ("de", "Wecker um sieben", "Beweise den Satz"),
            ("ja", "七時に起こして", "定理を証明せよ"),
        ):
            langs.append(
                {
                    "prompt": f"{easy} {g}",
                    "target": 0.0,
                    "group": f"xsid:{g}",
                    "source": "xsid",
                    "kind": "everyday",
                    "language": language,
                }
            )
            langs.append(
                {
                    "prompt": f"{hard} {g}",
                    "target": 1.0,
                    "group": f"mh:{g}",
                    "source": "mhumaneval",
                    "kind": "hard",
                    "language": language,
                }
            )
    write(base / "multilingual.jsonl", langs)
    return base  # fmt: skip


def test_extra_rows_load_as_their_own_sources_with_their_targets(data_dir: Path, extra_dir: Path) -> None:
    rows = data.load(data_dir, extra_dir=extra_dir)
    doc = [r for r in rows if r.source == "doc_qa"]
    langs = [r for r in rows if r.source == "multilingual"]
    assert len(doc) == 80 and len(langs) == 120
    assert {r.target for r in doc} == {0.0, 0.7}
    assert doc[1].extra == {"origin": "tatqa", "kind": "document_analysis", "language": "en"}
    assert doc[0].key == doc[0].group == "tatqa:0"  # the group is the split key
    target, weight = data.targets(rows, data.TargetConfig())
    index = [i for i, r in enumerate(rows) if r.source == "doc_qa"]
    assert [target[i] for i in index] == [r.target for r in doc]
    assert weight[index].sum() == pytest.approx(math.sqrt(80))  # one source's total weight is sqrt(n), as for others


def test_extra_rows_are_split_by_group(data_dir: Path, extra_dir: Path) -> None:
    rows = data.load(data_dir, extra_dir=extra_dir)
    split = data.assign_split(rows)
    extra = [r for r in rows if r.source in data.EXTRA_SOURCES]
    by_group: dict[str, set[tuple[bool, int]]] = {}
    for r in extra:
        by_group.setdefault(r.group, set()).add((r.val, r.fold))
    assert all(len(v) == 1 for v in by_group.values())  # a report's lookup and analysis never straddle the split
    assert 0 < sum(r.val for r in extra) < len(extra)
    assert split["n_val"]["doc_qa"] + split["n_train"]["doc_qa"] == 80


def test_without_extra_dir_the_other_sources_are_untouched(data_dir: Path, extra_dir: Path) -> None:
    plain = data.load(data_dir)
    split_plain = data.assign_split(plain)
    mixed = data.load(data_dir, extra_dir=extra_dir)
    data.assign_split(mixed)
    base = [r for r in mixed if r.source not in data.EXTRA_SOURCES]
    assert [(r.prompt, r.val, r.fold) for r in base] == [(r.prompt, r.val, r.fold) for r in plain]
    t_plain, w_plain = data.targets(plain, data.TargetConfig())
    t_mixed, w_mixed = data.targets(mixed, data.TargetConfig())
    assert np.array_equal(t_mixed[: len(plain)], t_plain) and np.array_equal(w_mixed[: len(plain)], w_plain)
    assert "doc_qa" not in split_plain["n_val"] and "doc_qa" not in split_plain["method"]


def test_a_target_outside_zero_one_names_the_line(tmp_path: Path) -> None:
    write(
        tmp_path / "doc_qa.jsonl",
        [{"prompt": "a", "target": 0.0, "group": "g"}, {"prompt": "b", "target": 2, "group": "g"}],
    )
    with pytest.raises(ValueError, match="doc_qa.jsonl:2"):
        data.load_extra_dir(tmp_path)


def test_an_extra_dir_without_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="doc_qa.jsonl"):
        data.load_extra_dir(tmp_path)


def test_evaluation_reports_auroc_per_extra_source_and_a_column_only_when_present(
    data_dir: Path, extra_dir: Path
) -> None:
    rows = data.load(data_dir, extra_dir=extra_dir)
    perfect = [r.target if r.target is not None else 0.5 for r in rows]
    inverted = [1.0 - s for s in perfect]
    good, bad = evaluate.per_source(rows, perfect), evaluate.per_source(rows, inverted)
    assert good["doc_qa"] == {"n": 80, "auroc": 1.0} and bad["multilingual"]["auroc"] == 0.0
    assert "docs auc" in evaluate.table({"router": good})
    plain = [r for r in rows if r.source not in data.EXTRA_SOURCES]
    assert "auc" not in evaluate.table({"router": evaluate.per_source(plain, [0.5] * len(plain))})


@pytest.mark.parametrize("script", ["train_router", "crossval_router"])
def test_scripts_refuse_an_extra_dir_without_extra_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], script: str
) -> None:
    main = script_main(script)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"")
    argv = ["--data-dir", str(tmp_path), "--extra-dir", str(tmp_path / "nothing")]
    argv += ["--out", str(tmp_path / "out")] if script == "train_router" else ["--encoder-dir", str(model)]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "--extra-dir" in capsys.readouterr().err
