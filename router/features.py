"""Cheap surface features of a prompt, computed beside the encoder's embedding.

The encoder reads at most ``max_length`` tokens and is blind to some things that predict difficulty: how long the
whole prompt is, how many quantities a word problem juggles, whether it is laid out as code, LaTeX or a
multiple-choice question. These counts cost microseconds and feed the routing head next to the embedding.

The list is versioned by name: a model directory records the names it was trained on (``router.json``), and the
runtime refuses a directory that asks for a feature this module does not compute, so a model can never be fed
features in a different order or meaning than it was trained with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_CHOICE_LINE = re.compile(r"^\s*\(?[A-Ea-e][.):]\s", re.MULTILINE)
_CODE = re.compile(r"```|\bdef |\breturn\b|\bclass |#include|;\s*$|\bfunction\b|=>|\{\s*$", re.MULTILINE)
_MATH = re.compile(r"\$|\\[a-zA-Z]+|\^|[=<>≤≥∑∫√π]")


def _log_count(pattern: re.Pattern[str]) -> Callable[[str], float]:
    return lambda text: math.log1p(len(pattern.findall(text)))


#: name -> function of the prompt text. Append new features; never change what an existing name computes.
FEATURES: dict[str, Callable[[str], float]] = {
    "log_chars": lambda text: math.log1p(len(text)),
    "log_words": _log_count(_WORD),
    "log_numbers": _log_count(_NUMBER),
    "digit_share": lambda text: sum(c.isdigit() for c in text) / max(len(text), 1),
    "log_lines": lambda text: math.log1p(text.count("\n")),
    "log_sentences": _log_count(_SENTENCE_END),
    "log_questions": lambda text: math.log1p(text.count("?")),
    "choices": lambda text: float(len(_CHOICE_LINE.findall(text)) >= 2),
    "log_code_marks": _log_count(_CODE),
    "log_math_marks": _log_count(_MATH),
}


def check_names(names: list[str]) -> None:
    """Raise ValueError naming the first feature this runtime cannot compute."""
    for name in names:
        if name not in FEATURES:
            raise ValueError(f"unknown feature {name!r}; this runtime computes {sorted(FEATURES)}")


#: Characters kept from each end of a very long text before counting. The counts are logarithms, so the middle of
#: a pasted book changes them little, while scanning it would make a feature cost more than the model run.
#: ``log_chars`` alone sees the whole length.
SCAN_LIMIT = 8000


def compute(texts: list[str], names: list[str]) -> list[list[float]]:
    """The named features of each text, in the given order."""
    functions = [FEATURES[name] for name in names]
    rows = []
    for text in texts:
        scanned = text if len(text) <= 2 * SCAN_LIMIT else f"{text[:SCAN_LIMIT]}\n{text[-SCAN_LIMIT:]}"
        row = [f(scanned) for f in functions]
        if "log_chars" in names:
            row[names.index("log_chars")] = math.log1p(len(text))
        rows.append(row)
    return rows
