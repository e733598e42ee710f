"""Word evidence for the routing head: hashed word unigrams and bigrams, TF-IDF weighted, one linear term.

The sentence embedding is good at "what is this prompt about" and weak at the surface words that often decide
how hard it is ("prove", "derive", "step by step", "O(n log n)", "translate", "haiku"). A linear model over
word n-grams is the classic complement, and on the validation split it carries most of what TF-IDF + logistic
regression knows; added to the head's logit it costs tens of microseconds for a short prompt.

Scheme ``words12-crc32`` (recorded in router.json as ``lexical``; the runtime refuses any other):

* the first and last :data:`SCAN_LIMIT` characters of the prompt, lower-cased;
* tokens are runs of ASCII letters, runs of digits, and every other non-space character on its own;
* every token and every pair of adjacent tokens is hashed with CRC-32 (stable across processes and platforms)
  into ``2**bits`` buckets; a bucket's value is ``1 + log(count)`` times its inverse document frequency;
* the vector is L2-normalised and dotted with the learned weights.

``head.npz`` carries the two vectors, ``lex_idf`` and ``lex_weight``; their common length gives ``bits``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

SCHEME = "words12-crc32"
#: Characters kept from each end of a long prompt; the middle of a pasted document says little about the task.
SCAN_LIMIT = 2000

_TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def grams(text: str) -> list[str]:
    """The unigrams and bigrams of a prompt, in the scheme's tokenisation."""
    if len(text) > 2 * SCAN_LIMIT:
        text = f"{text[:SCAN_LIMIT]}\n{text[-SCAN_LIMIT:]}"
    tokens = _TOKEN.findall(text.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def counts(text: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted bucket indices of a prompt's n-grams and their sublinear counts ``1 + log(count)``."""
    mask = (1 << bits) - 1
    tally: dict[int, int] = {}
    for gram in grams(text):
        bucket = zlib.crc32(gram.encode("utf-8", "replace")) & mask
        tally[bucket] = tally.get(bucket, 0) + 1
    index = np.fromiter(sorted(tally), dtype=np.int64, count=len(tally))
    values = 1.0 + np.log(np.fromiter((tally[i] for i in index), dtype=np.float64, count=len(index)))
    return index, values


def tfidf(text: str, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bucket indices and L2-normalised TF-IDF values of one prompt (empty arrays for a prompt with no tokens)."""
    bits = int(idf.shape[0]).bit_length() - 1
    index, values = counts(text, bits)
    values = values * idf[index]
    norm = float(np.sqrt(np.dot(values, values)))
    return index, (values / norm if norm > 0 else values)


class Lexical:
    """The learned word term: validated ``idf`` and ``weight`` vectors over ``2**bits`` buckets."""

    def __init__(self, *, idf: np.ndarray, weight: np.ndarray) -> None:
        size = idf.shape[0] if idf.ndim == 1 else 0
        if size < 2 or size & (size - 1) or weight.shape != idf.shape:
            raise ValueError(
                f"lex_idf and lex_weight must be vectors of one power-of-two length, got {idf.shape}, {weight.shape}"
            )
        if not (np.all(np.isfinite(idf)) and np.all(idf > 0) and np.all(np.isfinite(weight))):
            raise ValueError("lex_idf must be finite and positive and lex_weight finite")
        self.idf = idf.astype(np.float64)
        self.weight = weight.astype(np.float64)

    @property
    def bits(self) -> int:
        """log2 of the number of hash buckets."""
        return int(self.idf.shape[0]).bit_length() - 1

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The word term's contribution to each text's logit."""
        out = np.zeros(len(texts))
        for row, text in enumerate(texts):
            index, values = tfidf(text, self.idf)
            out[row] = float(np.dot(values, self.weight[index]))
        return out
