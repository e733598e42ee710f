"""The evaluation pictures: a deferral curve per labelled source and a score histogram per source."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from training.data import Row
from training.metrics import routing_curve
from training.plots import write_plots

matplotlib = pytest.importorskip("matplotlib", reason="the pictures need matplotlib (the [train] or [dev] extra)")


def _rows() -> tuple[list[Row], dict[str, list[float]]]:
    """Two labelled sources and an unlabelled one; a router that knows, a length baseline that guesses."""
    rng = random.Random(1)
    rows, router, length = [], [], []
    for n in range(300):
        source = ("gsm8k", "mmlu", "arena")[n % 3]
        needs_strong = rng.random() < 0.4
        weak = None if source == "arena" else float(not needs_strong)
        rows.append(Row(prompt="x" * rng.randint(5, 500), source=source, group="g", key=str(n), weak=weak,
                        strong=None if source == "arena" else 1.0))
        router.append(min(1.0, max(0.0, (0.7 if needs_strong else 0.3) + rng.gauss(0, 0.15))))
        length.append(len(rows[-1].prompt) / 500)
    return rows, {"router": router, "length": length}


def test_every_source_gets_its_pictures_and_they_are_not_blank(tmp_path: Path) -> None:
    rows, scores = _rows()
    written = write_plots(tmp_path / "plots", rows, scores, cut=0.5)
    assert sorted(p.name for p in written) == ["deferral_gsm8k.png", "deferral_mmlu.png", "scores_arena.png",
                                               "scores_gsm8k.png", "scores_mmlu.png"]
    for path in written:
        pixels = matplotlib.image.imread(path)[..., :3]  # matplotlib.image: loaded by write_plots
        assert pixels.shape[0] > 200 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, path.name


def test_the_curve_drawn_is_the_one_apgr_integrates(tmp_path: Path) -> None:
    """The legend's APGR is the table's: the curve is training.metrics.routing_curve, not a second computation."""
    import matplotlib.pyplot as plt

    from training.plots import deferral_curve

    rows, scores = _rows()
    fig, ax = plt.subplots()
    deferral_curve(ax, rows, scores, "gsm8k")
    picked = [i for i, r in enumerate(rows) if r.source == "gsm8k"]
    weak = [rows[i].weak or 0.0 for i in picked]
    strong = [rows[i].strong or 0.0 for i in picked]
    expected = routing_curve([scores["router"][i] for i in picked], weak, strong)
    labels = [line.get_label() for line in ax.get_lines()]
    plt.close(fig)
    assert f"router (APGR {expected.apgr:.3f})" in labels and "random (APGR 0.500)" in labels
    assert expected.apgr > 0.6  # the synthetic router knows, so a broken curve cannot pass by accident


def test_the_evaluation_script_draws_every_source_it_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/evaluate_router.py --plot end to end: the shipped router and the length baseline on tiny MMLU and
    GSM8K files (the TF-IDF baseline needs scikit-learn and is left out here)."""
    from tests.training import script_main
    from tests.helpers import benchmark_line as _line
    from tests.helpers import toy_eval_sets as _own_sets

    lines = [_line(i, f"subject {s} item {i}", "mmlu", f"s{s}") for s in range(10) for i in range(6)]
    lines += [_line(i, f"word problem {i}", "gsm8k", "gsm8k") for i in range(40)]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    script_main("evaluate_router")(["--data-dir", str(data_dir), "--no-tfidf", "--threads", "1",
                                    "--eval-sets", str(_own_sets(tmp_path / "sets")), "--plot", str(tmp_path / "p")])
    assert "plots in" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    sources = {n.split("_", 1)[1][:-4] for n in names}
    assert sources and all(f"scores_{s}.png" in names and f"deferral_{s}.png" in names for s in sources)
