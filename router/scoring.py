"""Score prompts from JSONL in bulk, and calibrate a threshold on a user's own prompt sample.

These are the library halves of ``route-llm score`` and ``route-llm calibrate``; the CLI only opens files and
maps errors to exit codes. Input is JSONL with a ``"prompt"`` string per line for both, so one reader
validates both and reports bad lines the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from router.classifier import Router, RouterError
from router.policy import Quantiles, check_strong_share, quantiles_from_scores, threshold_for_strong_share


class ScoreInputError(RouterError):
    """A line of prompt JSONL is malformed; ``line_number`` is 1-based (None when no line is to blame)."""

    def __init__(self, message: str, line_number: int | None = None) -> None:
        super().__init__(f"line {line_number}: {message}" if line_number is not None else message)
        self.line_number = line_number


def read_prompts(lines: Iterable[str]) -> Iterator[str]:
    """Yield the prompt of each JSONL line, raising ScoreInputError at the first malformed one.

    A blank line is malformed rather than skipped: output must have exactly one score per input line, and a
    silently skipped line would shift every later score onto the wrong prompt.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ScoreInputError('blank line; expected a JSON object with a "prompt" string', number)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScoreInputError(f"not valid JSON ({exc.msg} at column {exc.colno})", number) from None
        if not isinstance(record, dict):
            raise ScoreInputError(f"expected a JSON object, got {type(record).__name__}", number)
        if "prompt" not in record:
            raise ScoreInputError('missing "prompt" key', number)
        prompt = record["prompt"]
        if not isinstance(prompt, str):
            raise ScoreInputError(f'"prompt" must be a string, got {type(prompt).__name__}', number)
        yield prompt


def score_jsonl(router: Router, lines: Iterable[str], out: TextIO, *, batch_size: int = 64) -> int:
    """Write ``{"score": float}`` to ``out`` for each JSONL line, in order; return the number written.

    Lines are read and scored in batches so a large file streams with bounded memory. On a malformed line
    the scores of all earlier lines are written first and then ScoreInputError is raised, so the output is
    always a correct prefix and the error's line number says where it stops.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    written = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal written
        if batch:
            out.writelines(json.dumps({"score": score}) + "\n" for score in router.score(batch))
            out.flush()
            written += len(batch)
            batch.clear()

    try:
        for prompt in read_prompts(lines):
            batch.append(prompt)
            if len(batch) >= batch_size:
                flush()
    except ScoreInputError:
        flush()
        raise
    flush()
    return written


@dataclass(frozen=True)
class CalibrationResult:
    """A threshold hitting the requested strong share on a sample, and the sample's quantile table."""

    threshold: float
    n: int
    quantiles: Quantiles


def calibrate(
    router: Router, prompts: Iterable[str], strong_share: float, *, batch_size: int = 64
) -> CalibrationResult:
    """Score a prompt sample and derive the threshold that sends ``strong_share`` of it to the strong model.

    ``prompts`` are the lines of a JSONL file with a ``"prompt"`` per line (the same format as scoring).
    The threshold is computed from the sample's own quantile table with the runtime's arithmetic, so putting
    the returned table into router.json and asking for the same share there gives the same threshold.
    """
    strong_share = check_strong_share(strong_share)  # fail before scoring thousands of prompts
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    scores: list[float] = []
    batch: list[str] = []
    for prompt in read_prompts(prompts):
        batch.append(prompt)
        if len(batch) >= batch_size:
            scores.extend(router.score(batch))
            batch.clear()
    scores.extend(router.score(batch))
    if not scores:
        raise ScoreInputError("no prompts to calibrate on")
    table = tuple(quantiles_from_scores(scores))
    return CalibrationResult(threshold=threshold_for_strong_share(table, strong_share), n=len(scores), quantiles=table)
