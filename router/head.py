"""The routing head of a format-2 model: a small numpy network over [sentence embedding, prompt features].

Format 2 splits the model in two. The ONNX file is a sentence encoder (token states, mean-pooled and
L2-normalised here); ``head.npz`` maps that embedding plus :mod:`router.features` to one logit, p(strong model
needed). The split is what lets a deployment refit the head on its own feedback in minutes, on frozen
embeddings, without re-exporting the encoder; and a head this size (a few hundred by a few dozen) costs
microseconds in numpy, so putting it in the ONNX graph would buy nothing.

File layout (``numpy.savez``, no pickles): ``input_mean`` and ``input_scale`` standardise the input vector;
``w0``, ``b0``, ``w1``, ``b1``, ... are dense layers applied in order, with tanh-approximated GELU between
them; the last layer has one output, the logit. Optionally ``lex_idf`` and ``lex_weight`` add a linear term over
the prompt's hashed word n-grams (:mod:`router.lexical`) to that logit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router.lexical import Lexical

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form, the one the training side uses (torch ``approximate="tanh"``)."""
    return np.asarray(0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))))


class Head:
    """A validated stack of dense layers; :meth:`logits` maps rows of inputs to one logit each."""

    def __init__(
        self,
        *,
        mean: np.ndarray,
        scale: np.ndarray,
        layers: list[tuple[np.ndarray, np.ndarray]],
        lexical: Lexical | None = None,
    ) -> None:
        if mean.ndim != 1 or mean.shape != scale.shape:
            raise ValueError(
                f"input_mean and input_scale must be vectors of one length, got {mean.shape}, {scale.shape}"
            )
        if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError("input_mean must be finite and input_scale finite and positive")
        if not layers:
            raise ValueError("the head has no layers")
        width = mean.shape[0]
        for index, (weight, bias) in enumerate(layers):
            if weight.ndim != 2 or weight.shape[0] != width or bias.shape != (weight.shape[1],):
                raise ValueError(f"layer {index}: weight {weight.shape} / bias {bias.shape} do not take {width} inputs")
            if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
                raise ValueError(f"layer {index}: non-finite weights")
            width = weight.shape[1]
        if width != 1:
            raise ValueError(f"the last layer must have one output (the logit), it has {width}")
        self._mean = mean.astype(np.float64)
        self._scale = scale.astype(np.float64)
        self._layers = [(w.astype(np.float64), b.astype(np.float64)) for w, b in layers]
        self.lexical = lexical

    @property
    def input_size(self) -> int:
        """Length of the input vector: embedding size plus the number of features."""
        return int(self._mean.shape[0])

    @classmethod
    def load(cls, path: Path) -> Head:
        """Read a head file; raises ValueError (or OSError) describing what is wrong with it."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
        for required in ("input_mean", "input_scale", "w0", "b0"):
            if required not in arrays:
                raise ValueError(f"missing array {required!r}")
        layers = []
        index = 0
        while f"w{index}" in arrays:
            if f"b{index}" not in arrays:
                raise ValueError(f"missing array 'b{index}'")
            layers.append((arrays[f"w{index}"], arrays[f"b{index}"]))
            index += 1
        lexical = None
        if "lex_idf" in arrays or "lex_weight" in arrays:
            if "lex_idf" not in arrays or "lex_weight" not in arrays:
                raise ValueError("lex_idf and lex_weight come together")
            lexical = Lexical(idf=arrays["lex_idf"], weight=arrays["lex_weight"])
        return cls(mean=arrays["input_mean"], scale=arrays["input_scale"], layers=layers, lexical=lexical)

    def save(self, path: Path) -> None:
        """Write the head in the layout :meth:`load` reads (float32 keeps the file small)."""
        arrays = {"input_mean": self._mean.astype(np.float32), "input_scale": self._scale.astype(np.float32)}
        for index, (weight, bias) in enumerate(self._layers):
            arrays[f"w{index}"] = weight.astype(np.float32)
            arrays[f"b{index}"] = bias.astype(np.float32)
        if self.lexical is not None:
            arrays["lex_idf"] = self.lexical.idf.astype(np.float32)
            arrays["lex_weight"] = self.lexical.weight.astype(np.float32)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]

    def logits(self, inputs: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """One logit per input row; a head with a word term also needs the rows' prompt ``texts``."""
        if self.lexical is not None and (texts is None or len(texts) != len(inputs)):
            raise ValueError("this head has a word term: pass the prompt texts, one per input row")
        logits = self.dense_logits(inputs)
        if self.lexical is not None and texts is not None:
            logits = logits + self.lexical.logits(texts)
        return logits

    def dense_logits(self, inputs: np.ndarray) -> np.ndarray:
        """The logit without the word term: retraining adds that term from stored word counts, not from texts."""
        x = (np.asarray(inputs, dtype=np.float64) - self._mean) / self._scale
        last = len(self._layers) - 1
        for index, (weight, bias) in enumerate(self._layers):
            x = x @ weight + bias
            if index < last:
                x = gelu(x)
        return np.asarray(x[:, 0])
