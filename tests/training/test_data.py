"""training.data: every source read into one row type, the group split, and the targets the head is fitted to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training import data


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    subjects = ["anatomy", "virology", "astronomy", "marketing", "nutrition", "sociology", "philosophy", "law"]
    train = [
        {
            "prompt": f"{s} question {i}",
            "benchmark": "mmlu",
            "category": s,
            "weak_score": float(i % 2),
            "strong_score": 1.0,
            "prompt_hash": f"{s}{i}",
        }
        for s in subjects
        for i in range(20)
    ]
    train += [
        {
            "prompt": f"word problem {i}",
            "benchmark": "gsm8k",
            "category": "gsm8k",
            "weak_score": 0.0,
            "strong_score": float(i % 3 == 0),
            "prompt_hash": f"g{i}",
        }
        for i in range(60)
    ]
    write(tmp_path / "train.jsonl", train)
    write(
        tmp_path / "chat_alpacaeval.jsonl",
        [
            {
                "prompt": f"chat {i}",
                "category": "oasst",
                "weak_score": w,
                "strong_score": 1 - w,
                "others_loss": i / 40,
                "prompt_hash": f"c{i}",
            }
            for i, w in enumerate([0.0, 0.5, 1.0] * 13)
        ],
    )
    write(
        tmp_path / "bench_routerbench.jsonl",
        [
            {
                "prompt": f"code {i}",
                "benchmark": "mbpp",
                "category": "mbpp",
                "weak_score": float("nan") if i == 0 else 1.0,
                "strong_score": 1.0,
                "others_correct": float("nan") if i == 1 else i / 30,
                "prompt_hash": f"m{i}",
            }
            for i in range(30)
        ],
    )
    write(
        tmp_path / "aux_math.jsonl",
        [
            {"prompt": f"math {i}", "difficulty": f"Level {1 + i % 5}" if i else "Level ?", "category": "Algebra"}
            for i in range(25)
        ],
    )
    write(tmp_path / "aux_hard.jsonl", [{"prompt": f"hard {i}"} for i in range(20)])
    return tmp_path


def test_load_reads_every_source_and_skips_rows_without_an_outcome(data_dir: Path) -> None:
    rows = data.load(data_dir)
    counts = {s: sum(r.source == s for r in rows) for s in data.SOURCES}
    assert counts == {
        "mmlu": 160,
        "gsm8k": 60,
        "chat": 39,
        "arc": 0,
        "mbpp": 29,
        "winogrande": 0,
        "math": 24,
        "arena": 20,
    }
    mbpp = [r for r in rows if r.source == "mbpp"]
    assert all(not math.isnan(r.weak) for r in mbpp)  # type: ignore[arg-type]
    assert sum(r.others is None for r in mbpp) == 1  # the NaN many-model score became "unknown"


def test_load_without_any_file_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(tmp_path)):
        data.load(tmp_path)


def test_bad_jsonl_line_is_reported_with_its_number(tmp_path: Path) -> None:
    (tmp_path / "aux_hard.jsonl").write_text('{"prompt": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match="aux_hard.jsonl:2"):
        data.load(tmp_path)


def test_split_holds_out_whole_mmlu_subjects_and_is_deterministic(data_dir: Path) -> None:
    rows = data.load(data_dir)
    split = data.assign_split(rows)
    held = set(split["val_mmlu_subjects"])
    assert held
    for r in rows:
        if r.source == "mmlu":
            assert r.val == (r.group in held)
    again = data.load(data_dir)
    data.assign_split(again)
    assert [(r.val, r.fold) for r in again] == [(r.val, r.fold) for r in rows]
    assert {r.fold for r in rows if not r.val} <= set(range(5))


def test_targets_are_probabilities_and_weights_sum_per_source(data_dir: Path) -> None:
    rows = data.load(data_dir)
    data.assign_split(rows)
    use = np.array([not r.val for r in rows])
    target, weight = data.targets(rows, data.TargetConfig(soft=0.5), use=use)
    assert np.all((target >= 0) & (target <= 1))
    assert np.all(weight[~use] == 0)
    math_rows = [i for i, r in enumerate(rows) if r.source == "math"]
    assert {round(target[i], 2) for i in math_rows} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    multiplier = dict(data.TargetConfig().source_weight)
    for source in ("mmlu", "gsm8k", "chat"):
        mask = np.array([r.source == source for r in rows]) & use
        assert weight[mask].sum() == pytest.approx(multiplier.get(source, 1.0) * math.sqrt(mask.sum()))


def test_soft_targets_blend_the_pair_outcome_with_the_many_model_rank(data_dir: Path) -> None:
    rows = data.load(data_dir)
    hard, _ = data.targets(rows, data.TargetConfig(soft=0.0))
    soft, _ = data.targets(rows, data.TargetConfig(soft=1.0))
    chat = [i for i, r in enumerate(rows) if r.source == "chat"]
    assert [hard[i] for i in chat[:3]] == [1.0, 0.5, 0.0]  # 1 - weak_win
    ranks = [soft[i] for i in chat]
    assert ranks == sorted(ranks)  # others_loss rises with i, so its percentile does


def test_everyday_contrast_puts_chat_low_and_arena_high(data_dir: Path) -> None:
    rows = data.load(data_dir)
    use = np.ones(len(rows), bool)
    config = data.TargetConfig()
    index, target, weight = data.everyday_contrast(rows, config, use)
    sources = [rows[i].source for i in index]
    assert set(sources) == {"chat", "arena"}
    assert all(t == (0.9 if s == "arena" else 0.2) for s, t in zip(sources, target))
    assert weight[[s == "chat" for s in sources]].sum() == pytest.approx(config.everyday * math.sqrt(39))


def test_training_subset_caps_sources_but_keeps_every_validation_row(data_dir: Path) -> None:
    rows = data.load(data_dir)
    data.assign_split(rows)
    chosen = data.training_subset(rows, {"mmlu": 10})
    assert chosen == sorted(chosen)
    assert sum(1 for i in chosen if rows[i].source == "mmlu" and not rows[i].val) == 10
    assert {i for i, r in enumerate(rows) if r.val} <= set(chosen)


def test_finetune_selection_caps_mmlu_and_math_only_when_asked(data_dir: Path) -> None:
    from training.finetune import FinetuneConfig, _select

    rows = data.load(data_dir)
    data.assign_split(rows)
    train = [r for r in rows if not r.val]
    count = {name: sum(r.source == name for r in train) for name in ("mmlu", "gsm8k", "math")}
    assert count["mmlu"] > 10 and count["math"] > 5
    uncapped = _select(rows, FinetuneConfig(math_limit=5))
    assert sum(r.source == "mmlu" for r in uncapped) == count["mmlu"]
    assert sum(r.source == "math" for r in uncapped) == 5
    capped = _select(rows, FinetuneConfig(math_limit=5, mmlu_limit=10))
    assert sum(r.source == "mmlu" for r in capped) == 10
    assert sum(r.source == "gsm8k" for r in capped) == count["gsm8k"]
    assert not any(r.val for r in capped)
    assert capped == _select(rows, FinetuneConfig(math_limit=5, mmlu_limit=10))  # seeded
