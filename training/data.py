"""The router's training data: every source read into one row type, the group split, and the training targets.

Sources (files under a data directory, each optional; see the README for where they come from):

| source       | file                      | label                                                      |
|--------------|---------------------------|------------------------------------------------------------|
| mmlu, gsm8k  | train.jsonl               | weak/strong correctness of one model pair                  |
| chat         | chat_alpacaeval.jsonl     | judged head to head (weak_win), plus others_loss           |
| arc, mbpp, winogrande | bench_routerbench.jsonl | weak/strong correctness, plus others_correct         |
| math         | aux_math.jsonl            | MATH level 1-5 only                                        |
| arena        | aux_hard.jsonl            | none: real hard chat prompts                               |
| feedback     | --extra files             | weak/strong scores from a deployment's own traffic         |
| doc_qa       | --extra-dir doc_qa.jsonl  | a target per row: lookup (low) or analysis (high) of a document |
| multilingual | --extra-dir multilingual.jsonl | a target per row: everyday (low) or hard (high), 20+ languages |

The two ``--extra-dir`` sources are built by ``scripts/data/build_router_extra.py`` from public repositories (see
docs/router-data.md). Their rows carry an absolute target instead of a model pair's outcome; they share the
everyday contrast's intercept group (the spare one), because like the contrast they say where a prompt sits on
one scale ("a greeting is easy next to a proof"), not only how it ranks within its source. They are split by their
``group`` (a report, a story, an utterance and its translations), never by row.

The base rate of "strong needed" differs between sources for reasons that are not difficulty (81% of MMLU rows
are weak-ok, 26% of the judged chat rows), so a model trained on pooled rows would learn to recognise the
source. Training therefore gives every source its own intercept (see :mod:`training.head`) and measures every
source on its own.

Validation is by group, never by row: whole MMLU subjects (the same nine the first shipped model held out, so
the two can be compared), and for the single-benchmark sources a share chosen by a hash of the prompt. Inside
the training part, five folds are assigned the same way for model selection.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FILES = {
    "train": "train.jsonl",
    "chat": "chat_alpacaeval.jsonl",
    "bench": "bench_routerbench.jsonl",
    "math": "aux_math.jsonl",
    "arena": "aux_hard.jsonl",
}
#: Sources with a weak/strong outcome per prompt, on which APGR is measured.
LABELLED = ("mmlu", "gsm8k", "chat", "arc", "mbpp", "winogrande")
SOURCES = (*LABELLED, "math", "arena")
#: Sources read from ``--extra-dir`` (the built extra rows), each from its own file.
EXTRA_FILES = {"doc_qa": "doc_qa.jsonl", "multilingual": "multilingual.jsonl"}
EXTRA_SOURCES = tuple(EXTRA_FILES)
_BENCH_NAMES = {"arc_challenge": "arc", "mbpp": "mbpp", "winogrande": "winogrande"}

#: Intercept groups: Arena-Hard shares the chat intercept, which is what lets "hard, as judged by real users"
#: (an unlabelled source) pull hard chat prompts above everyday ones.
INTERCEPT_GROUP = {"mmlu": 0, "gsm8k": 1, "chat": 2, "arena": 2, "arc": 3, "mbpp": 4, "winogrande": 5, "math": 6}
N_GROUPS = 8  # one spare, for --extra feedback rows

#: The traffic mixture the shipped quantile table describes, as a weight per source (each source's prompts share
#: its weight equally): "30% strong" means 30% of this mixture. Chat carries the most weight because everyday
#: chat is most of what a proxy sees; multiple-choice sources the least.
MIXTURE = {
    "chat": 3.0,
    "arena": 1.0,
    "gsm8k": 1.0,
    "math": 1.0,
    "mbpp": 1.0,
    "mmlu": 1.0,
    "arc": 0.5,
    "winogrande": 0.5,
}

VAL_SALT = "seed13:"
FOLD_SALT = "fold:"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; the line number is in the error so bad files are easy to fix."""
    return [row for _, row in read_jsonl_lines(path)]


def read_jsonl_lines(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, value) for every non-empty line: blank lines are skipped, so a caller checking the values
    needs the file's own numbering to name the line it refuses."""
    rows: list[tuple[int, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    return rows


def hash_fraction(text: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) from the text, so splits do not depend on file order."""
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:12], 16) / float(1 << 48)


@dataclass
class Row:
    """One prompt of any source; fields a source does not have are None."""

    prompt: str
    source: str
    group: str  # MMLU subject, MATH subject, AlpacaEval subset, ...
    key: str  # what the hash split uses: the prompt hash if the file has one
    weak: float | None = None
    strong: float | None = None
    others: float | None = None  # difficulty from many other models, higher = harder
    level: int | None = None  # MATH level 1..5
    target: float | None = None  # an absolute p(strong needed), for the --extra-dir sources
    val: bool = False
    fold: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _math_level(difficulty: Any) -> int | None:
    words = str(difficulty).split()
    return int(words[-1]) if words and words[-1].isdigit() and 1 <= int(words[-1]) <= 5 else None


def load_extra_dir(extra_dir: str | Path) -> list[Row]:
    """The rows of the built extra sources under ``extra_dir`` (files that are absent are skipped); each row keeps
    its origin (the public source), kind and language in ``extra``."""
    base = Path(extra_dir)
    rows: list[Row] = []
    for source, name in EXTRA_FILES.items():
        if not (base / name).is_file():
            continue
        for number, r in enumerate(read_jsonl(base / name), 1):
            target = float(r["target"])
            if not 0.0 <= target <= 1.0:
                raise ValueError(f"{base / name}:{number}: target {target} is not in [0, 1]")
            # the group is the split key as it is, without the source: the build script gives a passage's lookups
            # and its plain questions (in different files) the same group, and they must fall on one side
            group = str(r["group"])
            extra = {"origin": r.get("source", source), "kind": r.get("kind", ""), "language": r.get("language", "")}
            rows.append(Row(r["prompt"], source, group, group, target=target, extra=extra))
    if not rows:
        raise ValueError(f"{base}: none of {sorted(EXTRA_FILES.values())} found")
    return rows


def load(data_dir: str | Path, extra: Iterable[str | Path] = (), extra_dir: str | Path | None = None) -> list[Row]:
    """Read every source file present under ``data_dir`` (and labelled ``extra`` files, and the built extra rows
    under ``extra_dir``), without splitting."""
    base = Path(data_dir)
    rows: list[Row] = []

    def present(name: str) -> list[dict[str, Any]]:
        path = base / FILES[name]
        return read_jsonl(path) if path.is_file() else []

    for r in present("train"):
        source = "mmlu" if r["benchmark"] == "mmlu" else r["benchmark"]
        rows.append(
            Row(
                r["prompt"],
                source,
                r["category"],
                r.get("prompt_hash") or r["prompt"],
                float(r["weak_score"]),
                float(r["strong_score"]),
            )
        )
    for r in present("chat"):
        rows.append(
            Row(
                r["prompt"],
                "chat",
                r["category"],
                r.get("prompt_hash") or r["prompt"],
                float(r["weak_score"]),
                float(r["strong_score"]),
                others=float(r["others_loss"]),
            )
        )
    for r in present("bench"):
        weak, strong, correct = (float(r[k]) for k in ("weak_score", "strong_score", "others_correct"))
        if math.isnan(weak) or math.isnan(strong):
            continue  # a few RouterBench rows have no outcome for the pair
        others = None if math.isnan(correct) else 1.0 - correct
        key = r.get("prompt_hash") or r["prompt"]
        rows.append(Row(r["prompt"], _BENCH_NAMES[r["benchmark"]], r["category"], key, weak, strong, others=others))
    for r in present("math"):
        level = _math_level(r["difficulty"])
        if level is not None:  # an unrated problem says nothing about difficulty
            rows.append(Row(r["prompt"], "math", r["category"], r["prompt"], level=level))
    for r in present("arena"):
        rows.append(Row(r["prompt"], "arena", r.get("category", "arena-hard"), r["prompt"]))
    for path in extra:
        for r in read_jsonl(path):
            rows.append(
                Row(
                    r["prompt"],
                    "feedback",
                    Path(path).name,
                    r["prompt"],
                    float(r["weak_score"]),
                    float(r["strong_score"]),
                )
            )
    if not rows:
        raise ValueError(f"{base}: none of {sorted(FILES.values())} found")
    if extra_dir is not None:
        rows += load_extra_dir(extra_dir)
    return rows


def choose_val_subjects(rows: list[Row], seed: int = 13, fraction: float = 0.15) -> list[str]:
    """Pick whole MMLU subjects until about ``fraction`` of the MMLU rows are held out.

    Subjects are visited in a seeded order; one that would push the share far past the target is skipped, so a
    single huge subject (professional_law has 1.5k rows) cannot become most of the validation set. With the
    defaults this picks the nine subjects the first shipped model was validated on.
    """
    counts: dict[str, int] = {}
    for r in rows:
        if r.source == "mmlu":
            counts[r.group] = counts.get(r.group, 0) + 1
    total = sum(counts.values())
    subjects = sorted(counts)
    random.Random(seed).shuffle(subjects)
    chosen: list[str] = []
    held = 0
    for subject in subjects:
        if held >= fraction * total:
            break
        if held + counts[subject] > 1.5 * fraction * total:
            continue
        chosen.append(subject)
        held += counts[subject]
    return sorted(chosen)


def assign_split(rows: list[Row], *, folds: int = 5) -> dict[str, Any]:
    """Mark validation rows and training folds in place; return a description for router.json.

    MMLU: nine whole subjects for validation, the other subjects dealt into folds. GSM8K and the aux sets: 15%
    by prompt hash (as the first model did); the RouterBench and chat sources: 20% by prompt hash. Feedback rows
    always train (``route-llm retrain`` holds out its own share). The extra sources: 20% by a hash of the row's
    group (their ``key`` is the group), so a document's questions or an utterance's translations stay together.
    """
    val_subjects = set(choose_val_subjects(rows))
    train_subjects = sorted({r.group for r in rows if r.source == "mmlu" and r.group not in val_subjects})
    random.Random(0).shuffle(train_subjects)
    subject_fold = {s: i % folds for i, s in enumerate(train_subjects)}
    for r in rows:
        if r.source == "mmlu":
            r.val = r.group in val_subjects
            r.fold = subject_fold.get(r.group, 0)
            continue
        share = 0.15 if r.source in ("gsm8k", "math", "arena") else 0.2
        r.val = r.source != "feedback" and hash_fraction(r.key, VAL_SALT) < share
        r.fold = int(hash_fraction(r.key, FOLD_SALT) * folds)
    present = [s for s in EXTRA_SOURCES if any(r.source == s for r in rows)]  # absent: the description is unchanged
    return {
        "method": "group: nine MMLU subjects held out whole; gsm8k/math/arena 15% and chat/arc/mbpp/winogrande 20% "
        "by prompt hash (salt 'seed13:')"
        + ("; doc_qa/multilingual 20% by a hash of the row's group" if present else ""),
        "val_mmlu_subjects": sorted(val_subjects),
        "n_val": {s: sum(1 for r in rows if r.val and r.source == s) for s in (*SOURCES, *present)},
        "n_train": {s: sum(1 for r in rows if not r.val and r.source == s) for s in (*SOURCES, "feedback", *present)},
    }


def _percentile(values: np.ndarray) -> np.ndarray:
    """Rank-based percentile in (0, 1), ties averaged."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # average ties so equal inputs get equal targets
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return np.asarray((ranks + 0.5) / len(values))


@dataclass(frozen=True)
class TargetConfig:
    """How rows become soft targets and weights.

    ``everyday`` is the weight of an extra contrast: every AlpacaEval instruction (everyday requests) again with a
    low target and every Arena-Hard prompt (real prompts picked for being hard) with a high one, in a group of
    their own. The judged chat labels only rank chat against chat, and the judge prefers the stronger model's
    answer even for "write a haiku"; this contrast is what teaches the score that a greeting or a haiku is easy
    next to a proof or a systems design.

    ``soft`` blends a labelled row's pair outcome with the within-source percentile of its many-model difficulty
    (others_loss / 1 - others_correct), which is less noisy than one pair's single outcome. ``weight_power``
    sets each source's total weight to n**power (0: equal per source, 1: equal per row).
    """

    soft: float = 0.5
    arena_target: float = 0.85
    weight_power: float = 0.5
    source_weight: tuple[tuple[str, float], ...] = (("math", 0.5), ("arena", 1.0), ("chat", 3.0))
    everyday: float = 1.0
    everyday_targets: tuple[tuple[str, float], ...] = (("chat", 0.2), ("arena", 0.9))


def targets(rows: list[Row], config: TargetConfig, *, use: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Soft target p(strong needed) and loss weight per row; rows outside ``use`` get weight 0.

    Percentiles are taken over the rows in ``use`` only, so a validation row's target never depends on how
    other validation rows ranked.
    """
    n = len(rows)
    use = np.ones(n, bool) if use is None else use
    target = np.zeros(n)
    weight = np.zeros(n)
    source = np.array([r.source for r in rows])
    for i, r in enumerate(rows):
        if r.weak is not None and r.strong is not None:
            # A judged pair is a preference (strong = 1 - weak_win), a graded one an outcome: both read as the
            # probability that the strong answer was needed.
            target[i] = r.strong if r.source == "chat" else float(r.strong > r.weak)
        elif r.level is not None:
            target[i] = (r.level - 1) / 4
        elif r.source == "arena":
            target[i] = config.arena_target
        elif r.target is not None:
            target[i] = r.target
    if config.soft:
        for name in ("chat", "arc", "mbpp", "winogrande"):
            mask = (source == name) & use & np.array([r.others is not None for r in rows])
            if mask.sum() > 1:
                others = np.array([rows[i].others for i in np.nonzero(mask)[0]], dtype=float)
                target[mask] = (1 - config.soft) * target[mask] + config.soft * _percentile(others)
    multipliers = dict(config.source_weight)
    for name in (*SOURCES, "feedback", *EXTRA_SOURCES):
        mask = (source == name) & use
        count = int(mask.sum())
        if count:
            weight[mask] = multipliers.get(name, 1.0) * count**config.weight_power / count
    return target, weight


def everyday_contrast(
    rows: list[Row], config: TargetConfig, use: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extra training rows for the everyday contrast: (row index, target, weight), one target per source named in
    ``config.everyday_targets`` (AlpacaEval chat low, Arena-Hard high, ...); each source's rows share a total
    weight of ``everyday * sqrt(n)``."""
    wanted = dict(config.everyday_targets)
    index = np.array([i for i, r in enumerate(rows) if use[i] and r.source in wanted], dtype=int)
    target = np.array([wanted[rows[i].source] for i in index], dtype=float)
    weight = np.zeros(len(index))
    for name in wanted:
        mask = np.array([rows[i].source == name for i in index], dtype=bool)
        if mask.any():
            weight[mask] = config.everyday * math.sqrt(mask.sum()) / mask.sum()
    return index, target, weight


def training_subset(rows: list[Row], caps: dict[str, int], seed: int = 0) -> list[int]:
    """Indices of every validation row plus the training rows, with the named sources capped (seeded sample).

    MMLU and MATH are most of the data; capping them keeps the embedding pass affordable on two cores and stops
    them from outweighing the sources users send most.
    """
    rng = random.Random(seed)
    chosen = [i for i, r in enumerate(rows) if r.val]
    for name, cap in caps.items():
        pool = [i for i, r in enumerate(rows) if not r.val and r.source == name]
        rng.shuffle(pool)
        chosen += pool[:cap]
    chosen += [i for i, r in enumerate(rows) if not r.val and r.source not in caps]
    return sorted(chosen)
