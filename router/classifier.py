"""ONNX routing classifier: prompt texts → probability that the strong model is needed.

Everything that touches the model files lives here: reading router.json, loading the tokenizer and the
ONNX session, truncating inputs, and turning logits into probabilities. The decision rule is
in :mod:`router.policy`; this module never decides a tier.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from router import features as prompt_features
from router import lexical as lexical_terms
from router.doc_head import FILE as DOC_HEAD_FILE
from router.doc_head import DocHead
from router.head import Head
from router.policy import Quantiles, check_quantiles, document_score

MODEL_FILE = "model.onnx"
#: A pruned e5 encoder keeps its word-embedding tables beside the graph, as ONNX external data (the graph names
#: this file). onnxruntime maps such a file instead of copying it into each process, so workers share its pages
#: and only the rows that text uses are ever read; and neither file grows past the repository's per-file limit.
EMBEDDING_FILE = "embedding.bin"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "router.json"
#: Format 1: the ONNX graph is a classifier with logits. Format 2: it is a sentence encoder, and a numpy head
#: (:mod:`router.head`) scores its mean-pooled embedding together with :mod:`router.features`.
FORMATS = (1, 2)

#: Characters kept from each end of a very long prompt before tokenizing. Tokenizing 100k characters costs
#: far more than the model run, yet at most ``max_length`` tokens survive truncation. A WordPiece token
#: covers well under 12 characters of ordinary text in any script (so does a SentencePiece one: XLM-R's longest
#: piece has 16, its pieces average under 8), so ``max_length * 12`` characters per end hold more tokens than
#: the head or the tail can keep, and truncation on the cut text gives the same ids as on the full text. Only text
#: with extremely long "words" (e.g. a base64 blob, which WordPiece turns into a single [UNK]) can differ, and
#: there the middle is noise anyway.
CHARS_PER_TOKEN_BOUND = 12

#: Range of router.json's ``max_length``. The encoders this runtime serves (MiniLM, multilingual-e5: see
#: encoder.json's ``max_positions``) have 512 position embeddings; a longer ``max_length`` loads, yet every prompt
#: longer than the positions then fails in the model and falls back. Below 8 the head and tail hold a word or two.
MAX_LENGTH_RANGE = (8, 512)

#: Longest ``version`` router.json may set: it is sent as a response header and a metric label on every request,
#: so it is printable ASCII (no line breaks or characters a header cannot carry) of bounded length.
MAX_VERSION_CHARS = 256

#: Longest ``text_prefix`` router.json may set: an instruction tag, not a system prompt (it is tokenized per request).
MAX_PREFIX_CHARS = 64

_TRUNCATIONS = ("head_tail", "head")
_ALLOWED_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}
_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


class RouterError(Exception):
    """Base class of every error the router package raises on purpose."""


class ModelLoadError(RouterError):
    """A model directory or one of its files is missing or unusable; the message names the path."""


class InferenceError(RouterError):
    """Tokenizing or running the model failed, or the model returned unusable logits."""


@dataclass(frozen=True)
class ModelMeta:
    """The runtime-relevant part of router.json; informational keys (metrics, data, ...) are ignored."""

    format: int
    labels: tuple[str, ...]
    strong_label: str
    max_length: int
    truncation: str
    head_fraction: float
    pad_token_id: int  # the format's padding id; the runtime runs unpadded, but a bad value means a bad directory
    quantiles: Quantiles
    version: str
    features: tuple[str, ...] = ()
    head_file: str | None = None
    lexical: str | None = None  # the word-term scheme (router.lexical.SCHEME) when head.npz carries one
    #: Text put before every prompt before tokenizing: encoders trained with an instruction prefix (e5's
    #: ``"query: "``) embed a bare prompt differently from the way they were trained. Empty for MiniLM.
    text_prefix: str = ""

    @property
    def strong_index(self) -> int:
        """Index of the strong label in the model's logits."""
        return self.labels.index(self.strong_label)

    @classmethod
    def from_dict(cls, data: Any) -> ModelMeta:
        """Validate a parsed router.json; raises ValueError naming the first bad key."""
        if not isinstance(data, dict):
            raise ValueError("top level must be a JSON object")
        fmt = data.get("format", 1)
        if fmt not in FORMATS or isinstance(fmt, bool):
            raise ValueError(f"unsupported format {fmt!r} (this runtime reads formats {', '.join(map(str, FORMATS))})")
        per_format = ("labels", "strong_label") if fmt == 1 else ("features", "head")
        required = (
            "format",
            *per_format,
            "max_length",
            "truncation",
            "head_fraction",
            "pad_token_id",
            "quantiles",
            "version",
        )
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"missing key(s): {', '.join(missing)}")
        labels = data.get("labels", ["weak_ok", "strong_needed"])
        if (
            not isinstance(labels, list)
            or len(labels) < 2
            or len(set(labels)) != len(labels)
            or not all(isinstance(label, str) for label in labels)
        ):
            raise ValueError(f"'labels' must be a list of at least two distinct strings, got {labels!r}")
        strong_label = data.get("strong_label", "strong_needed")
        if strong_label not in labels:
            raise ValueError(f"'strong_label' {strong_label!r} is not one of the labels {labels!r}")
        names: list[str] = []
        head_file = None
        if fmt == 2:
            names = data["features"]
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise ValueError(f"'features' must be a list of feature names, got {names!r}")
            try:
                prompt_features.check_names(names)
            except ValueError as exc:
                raise ValueError(f"'features': {exc}") from None
            head_file = data["head"]
            if not isinstance(head_file, str) or not head_file or Path(head_file).name != head_file:
                raise ValueError(f"'head' must be a file name inside the model directory, got {head_file!r}")
        lexical = data.get("lexical")
        if lexical is not None and (fmt != 2 or lexical != lexical_terms.SCHEME):
            raise ValueError(
                f"'lexical' must be {lexical_terms.SCHEME!r} (format 2 only; this runtime's word-term scheme), "
                f"got {lexical!r}"
            )
        max_length = data["max_length"]
        low, high = MAX_LENGTH_RANGE
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not low <= max_length <= high:
            raise ValueError(f"'max_length' must be an integer from {low} to {high} (the encoder's positions), "
                             f"got {max_length!r}")
        if data["truncation"] not in _TRUNCATIONS:
            raise ValueError(f"'truncation' must be one of {_TRUNCATIONS}, got {data['truncation']!r}")
        head_fraction = data["head_fraction"]
        if (
            isinstance(head_fraction, bool)
            or not isinstance(head_fraction, (int, float))
            or not 0.0 <= head_fraction <= 1.0
        ):
            raise ValueError(f"'head_fraction' must be a number in [0, 1], got {head_fraction!r}")
        pad = data["pad_token_id"]
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"'pad_token_id' must be a non-negative integer, got {pad!r}")
        text_prefix = data.get("text_prefix", "")
        if not isinstance(text_prefix, str) or len(text_prefix) > MAX_PREFIX_CHARS:
            raise ValueError(
                f"'text_prefix' must be a string of at most {MAX_PREFIX_CHARS} characters, got {text_prefix!r}"
            )
        version = data["version"]
        if (
            not isinstance(version, str)
            or not 0 < len(version) <= MAX_VERSION_CHARS
            or not all(" " <= char <= "~" for char in version)
        ):
            raise ValueError(
                f"'version' must be a non-empty string of at most {MAX_VERSION_CHARS} printable ASCII characters, "
                f"got {(version[:80] if isinstance(version, str) else version)!r}"
            )
        try:
            quantiles = check_quantiles(data["quantiles"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'quantiles': {exc}") from None
        return cls(
            format=fmt,
            labels=tuple(labels),
            strong_label=strong_label,
            max_length=max_length,
            truncation=data["truncation"],
            head_fraction=float(head_fraction),
            pad_token_id=pad,
            quantiles=quantiles,
            version=data["version"],
            features=tuple(names),
            head_file=head_file,
            lexical=lexical,
            text_prefix=text_prefix,
        )


def encoder_files(directory: Path) -> list[Path]:
    """The files that hold an encoder's weights: ``model.onnx``, and ``embedding.bin`` when the graph keeps its
    embedding tables outside (a pruned e5 encoder)."""
    return [directory / name for name in (MODEL_FILE, EMBEDDING_FILE) if name == MODEL_FILE
            or (directory / name).is_file()]


def encoder_sha256(directory: Path) -> bytes:
    """SHA-256 over the encoder's weight files in order: what embeddings computed with it are keyed by.

    For a graph with its weights inside (no ``embedding.bin``) it is the plain SHA-256 of ``model.onnx``, so caches
    and base rows keyed before the embedding could live outside stay valid."""
    digest = hashlib.sha256()
    for path in encoder_files(directory):
        digest.update(path.read_bytes())
    return digest.digest()


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ModelLoadError(f"{path}: {what} not found")


def load_meta(path: Path) -> ModelMeta:
    """Read and validate router.json, turning every failure into a ModelLoadError naming the file."""
    _require_file(path, "router metadata file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
    try:
        return ModelMeta.from_dict(data)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: bad router metadata: {exc}") from exc


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a fast tokenizer from tokenizer.json, as a ModelLoadError naming the file if it is unusable."""
    _require_file(path, "tokenizer file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception for every kind of bad file
        raise ModelLoadError(f"{path}: not a valid tokenizer.json ({exc})") from exc


def load_session(path: Path, *, threads: int = 1) -> ort.InferenceSession:
    """Create the ONNX session the way serving needs it: CPU only, a fixed thread count, sequential.

    The provider is named explicitly so a machine with a GPU build of onnxruntime does not silently change
    numerics or latency. One inter-op thread and sequential execution suit a BERT graph (a chain of ops)
    and keep several proxy workers from oversubscribing the cores.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    _require_file(path, "ONNX model file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: load-time optimiser chatter is noise in a server log
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated pybind classes for bad files
        raise ModelLoadError(f"{path}: not a valid ONNX model or corrupt ({exc})") from exc


def _special_ids(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Return the ids to put before and after every sequence.

    BERT vocabularies have [CLS]/[SEP]; those are used directly, since it is cheaper than running the
    post-processor per text. Otherwise the post-processor is probed once: encode a word with and without
    special tokens and read off what it adds on each side (nothing, if it has no post-processor).
    """
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        return [cls_id], [sep_id]
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError("cannot tell which special tokens the tokenizer's post-processor adds")


class Classifier:
    """Scores texts with a ready ONNX session and tokenizer (built by the loaders above or by a test)."""

    def __init__(
        self, *, session: ort.InferenceSession, tokenizer: Tokenizer, meta: ModelMeta, head: Head | None = None
    ) -> None:
        inputs = {node.name: node.type for node in session.get_inputs()}
        unknown = sorted(set(inputs) - _ALLOWED_INPUTS)
        if unknown or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ValueError(
                f"model inputs must be input_ids, attention_mask and optionally token_type_ids; got {sorted(inputs)}"
            )
        bad_types = {name: kind for name, kind in inputs.items() if kind not in _NUMPY_TYPES}
        if bad_types:
            raise ValueError(f"model inputs must be int64 or int32 tensors, got {bad_types}")
        outputs = [node.name for node in session.get_outputs()]
        wanted = "logits" if meta.format == 1 else "last_hidden_state"
        if len(outputs) != 1 and wanted not in outputs:
            raise ValueError(f"model has several outputs and none is named {wanted!r}: {outputs}")
        self._output = outputs[0] if len(outputs) == 1 else wanted
        if meta.format == 1 and head is not None:
            raise ValueError("only a format-2 model (a sentence encoder) takes a routing head")
        if head is not None:
            hidden = session.get_outputs()[outputs.index(self._output)].shape[-1]
            if isinstance(hidden, int) and head.input_size != hidden + len(meta.features):
                raise ValueError(
                    f"head takes {head.input_size} inputs, but the encoder gives {hidden} and there are "
                    f"{len(meta.features)} features"
                )
        self._routing_head = head
        self._input_types = {name: _NUMPY_TYPES[kind] for name, kind in inputs.items()}
        if meta.pad_token_id >= tokenizer.get_vocab_size():
            raise ValueError(f"pad_token_id {meta.pad_token_id} is outside the tokenizer's vocabulary")
        # The runtime truncates and pads itself (head + tail, per-chunk padding); a tokenizer.json saved with
        # its own truncation or padding settings would otherwise cut or pad first.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._session = session
        self._tokenizer = tokenizer
        self._meta = meta
        self._prefix, self._suffix = _special_ids(tokenizer)
        budget = meta.max_length - len(self._prefix) - len(self._suffix)
        if budget < 1:
            raise ValueError(f"max_length {meta.max_length} leaves no room for text tokens")
        head_fraction = 1.0 if meta.truncation == "head" else meta.head_fraction
        self._budget = budget
        # The prefix is tokenized with the text (so its ids are exactly those of "prefix + text") and is always
        # kept: the head holds at least its tokens (its bare tokenization, which can only be one longer).
        prefix_tokens = len(tokenizer.encode(meta.text_prefix, add_special_tokens=False).ids) if meta.text_prefix else 0
        if prefix_tokens >= budget:
            raise ValueError(f"max_length {meta.max_length} leaves no room for text after text_prefix")
        self._head = max(round(head_fraction * budget), prefix_tokens)
        self._char_limit = meta.max_length * CHARS_PER_TOKEN_BOUND
        # The attention mask and token types of an unpadded single sequence are all ones and all zeros: one
        # read-only row of each per input dtype, allocated here and sliced per run, instead of three fresh
        # arrays and dtype casts on every request. Read-only, so concurrent runs can share them.
        self._constant_rows: dict[str, np.ndarray] = {}
        for name, dtype in self._input_types.items():
            if name == "input_ids":
                continue
            row = (np.ones if name == "attention_mask" else np.zeros)((1, meta.max_length), dtype=dtype)
            row.flags.writeable = False
            self._constant_rows[name] = row
        self._ids_dtype = self._input_types["input_ids"]

    @property
    def meta(self) -> ModelMeta:
        """The metadata the classifier was built with."""
        return self._meta

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Return the exact ids the model sees for each text: truncated to head + tail, then wrapped.

        The text is ``text_prefix`` + the prompt. Truncation keeps the first ``round(head_fraction * budget)``
        tokens (at least the prefix's) and fills the rest of the budget from the end, because a long prompt usually
        states its task at the start (instructions) or at the end (the question after a pasted document); the middle
        is the least informative part.
        """
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
        limit = self._char_limit
        cut = [t if len(t) <= 2 * limit else f"{t[:limit]} {t[-limit:]}" for t in texts]
        # Lone surrogates (legal JSON escapes, not text) make the tokenizer raise; read them as "?" here, so
        # `route-llm score`, calibration and the proxy all score such input, and score it the same. ASCII text
        # (CPython knows it without a scan) has none.
        cut = [t if t.isascii() else t.encode("utf-8", "replace").decode("utf-8") for t in cut]
        if self._meta.text_prefix:
            cut = [self._meta.text_prefix + t for t in cut]
        try:
            # One text, the proxy's usual case: ``encode`` gives the same ids as ``encode_batch`` without handing
            # the text to the tokenizer's thread pool and back.
            if len(cut) == 1:
                encodings = [self._tokenizer.encode(cut[0], add_special_tokens=False)]
            else:
                encodings = self._tokenizer.encode_batch(cut, add_special_tokens=False)
        except Exception as exc:
            raise InferenceError(f"tokenizer failed: {exc}") from exc
        result = []
        for encoding in encodings:
            ids = encoding.ids
            if len(ids) > self._budget:
                tail = self._budget - self._head
                ids = ids[: self._head] + (ids[len(ids) - tail :] if tail else [])
            result.append(self._prefix + ids + self._suffix)
        return result

    def score(self, texts: Sequence[str]) -> list[float]:
        """Return p(strong label) for each text, in input order.

        Tokenization is batched (one Rust call), but the model runs one sequence at a time. A dynamically
        quantised int8 model computes one activation scale per tensor, so in a padded batch every row's score
        shifts with its neighbours (by ~1e-3 measured on MiniLM int8): the same prompt would score differently
        in ``route-llm score`` and in the proxy, and could flip tier near the threshold. Single runs cost little:
        on MiniLM int8 with one thread (CPU time, mixed train.jsonl prompts) batch 1 matched sorted, padded
        batches of 32 (104 vs 88 prompts/s); only uniformly short prompts gain from batching (about 1.6x).
        """
        if self._meta.format == 1:
            return [self._run(row) for row in self.token_ids(texts)]
        return self.head_scores(self.head_inputs(texts), texts)

    def head_scores(self, inputs: np.ndarray, texts: Sequence[str]) -> list[float]:
        """The routing head's p(strong) for head inputs already computed (:meth:`head_inputs` of ``texts``)."""
        if self._routing_head is None:
            raise InferenceError("this format-2 classifier was built without a routing head")
        logits = self._routing_head.logits(inputs, texts)
        if not np.all(np.isfinite(logits)):
            raise InferenceError("routing head produced non-finite logits")
        # a logistic of a clipped logit: exp cannot overflow, and 1e-300 steps are irrelevant to a routing score
        return [float(1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, z))))) for z in logits]

    def head_inputs(self, texts: Sequence[str]) -> np.ndarray:
        """The head's input rows for a format-2 model: the embedding, then the named prompt features.

        Training builds its inputs with this same method, so a prompt reaches the head identically there and
        in serving.
        """
        if self._meta.format != 2:
            raise InferenceError("only a format-2 model has head inputs")
        embeddings = np.stack([self._embed(row) for row in self.token_ids(texts)]) if texts else np.zeros((0, 0))
        clean = [text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8") for text in texts]
        extra = np.asarray(prompt_features.compute(clean, list(self._meta.features)), dtype=np.float64)
        return np.concatenate([embeddings, extra.reshape(len(texts), -1)], axis=1)

    def _embed(self, ids: list[int]) -> np.ndarray:
        """The encoder's mean-pooled, L2-normalised token states for one unpadded sequence."""
        hidden = self._forward(ids)
        if hidden.ndim != 3 or hidden.shape[:2] != (1, len(ids)):
            raise InferenceError(f"encoder output has shape {hidden.shape}, expected (1, {len(ids)}, hidden)")
        vector = hidden[0].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            raise InferenceError("encoder produced an unusable embedding")
        return np.asarray(vector / norm)

    def _forward(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        feed = {name: row[:, :n] for name, row in self._constant_rows.items()}
        feed["input_ids"] = np.array([ids], dtype=self._ids_dtype)
        try:
            (output,) = self._session.run([self._output], feed)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed on a sequence of {len(ids)} tokens: {exc}") from exc
        return np.asarray(output)

    def _run(self, ids: list[int]) -> float:
        logits = self._forward(ids)
        n_labels = len(self._meta.labels)
        if getattr(logits, "shape", None) != (1, n_labels):
            raise InferenceError(f"model output has shape {getattr(logits, 'shape', None)}, expected (1, {n_labels})")
        row = [float(value) for value in logits[0]]
        if not all(math.isfinite(value) for value in row):
            raise InferenceError("model produced non-finite logits")
        # Softmax of the strong column, shifted by the row maximum so large logits cannot overflow.
        top = max(row)
        exp = [math.exp(value - top) for value in row]
        return min(1.0, max(0.0, exp[self._meta.strong_index] / sum(exp)))


class Router:
    """A loaded model directory: the classifier plus where it came from and which version it is."""

    def __init__(self, *, classifier: Classifier, path: Path, doc_head: DocHead | None = None) -> None:
        self._classifier = classifier
        self.path = path
        #: The document-question head (:mod:`router.doc_head`), when the directory has one (format 2 only).
        self.doc_head = doc_head

    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int = 1) -> Router:
        """Load a model directory (default: the model shipped inside this package).

        Every problem with the directory becomes a ModelLoadError whose message starts with the offending
        path, so a misconfigured ``--model-dir`` is diagnosable from the message alone.
        """
        directory = Path(__file__).parent / "model" if path is None else Path(path)
        if not directory.is_dir():
            raise ModelLoadError(f"{directory}: model directory not found")
        meta = load_meta(directory / META_FILE)
        tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
        model_path = directory / MODEL_FILE
        session = load_session(model_path, threads=threads)
        head = None
        if meta.head_file is not None:
            head_path = directory / meta.head_file
            _require_file(head_path, "routing head file")
            try:
                head = Head.load(head_path)
            except Exception as exc:  # numpy raises OSError, EOFError, BadZipFile, pickle and value errors here
                raise ModelLoadError(f"{head_path}: not a valid routing head ({exc})") from exc
            if (head.lexical is None) != (meta.lexical is None):
                raise ModelLoadError(
                    f"{head_path}: {META_FILE} says lexical={meta.lexical!r}, but the head "
                    f"{'has no' if head.lexical is None else 'has a'} word term (lex_idf/lex_weight)"
                )
        try:
            classifier = Classifier(session=session, tokenizer=tokenizer, meta=meta, head=head)
        except ValueError as exc:
            raise ModelLoadError(f"{model_path}: does not match {META_FILE}/{TOKENIZER_FILE}: {exc}") from exc
        doc_head = None
        doc_path = directory / DOC_HEAD_FILE
        if meta.format == 2 and doc_path.is_file():
            try:
                doc_head = DocHead.load(doc_path)
            except Exception as exc:  # numpy and json raise many unrelated classes for a bad file
                raise ModelLoadError(f"{doc_path}: not a valid document head ({exc})") from exc
            width = head.input_size - len(meta.features) if head is not None else None
            if width is not None and doc_head.weight.size != width:
                raise ModelLoadError(f"{doc_path}: reads {doc_head.weight.size} dimensions, the encoder gives {width}")
        return cls(classifier=classifier, path=directory, doc_head=doc_head)

    @property
    def meta(self) -> ModelMeta:
        """The model's router.json metadata (labels, truncation, quantile table, version)."""
        return self._classifier.meta

    @property
    def version(self) -> str:
        """The model version string from router.json, for headers, logs and metrics."""
        return self._classifier.meta.version

    @property
    def classifier(self) -> Classifier:
        """The underlying classifier, for callers that need token ids (benchmarks, debugging)."""
        return self._classifier

    def score(self, texts: Sequence[str]) -> list[float]:
        """Return p(strong model needed) in [0, 1] for each text, in order.

        With a gated document head (:mod:`router.doc_head`), a text the gate reads as a question about a document
        gets the document head's p(analysis) placed on the general scale instead (:func:`router.policy.document_score`
        at the gate's ``general_cut``): the general head orders such questions poorly, and a caller scoring prompts
        without their documents (``route-llm score``) has no other way to say what they are. Both heads read the
        same embedding, so this costs no second encoder run.
        """
        doc = self.doc_head
        if doc is None or doc.gate is None:
            return self._classifier.score(texts)
        return self._scored(texts, analysis=False)[0]

    def score_both(self, texts: Sequence[str]) -> tuple[list[float], list[float] | None]:
        """:meth:`score` of each text, and the document head's p(analysis) of each (None where the model has no
        document head), from one encoder run: what a request that carries a document needs."""
        if self.doc_head is None:
            return self._classifier.score(texts), None
        general, analysis = self._scored(texts, analysis=True)
        assert analysis is not None
        return general, analysis

    def _scored(self, texts: Sequence[str], *, analysis: bool) -> tuple[list[float], list[float] | None]:
        doc = self.doc_head
        assert doc is not None
        inputs = self._classifier.head_inputs(texts)
        general = self._classifier.head_scores(inputs, texts)
        embeddings = inputs[:, : doc.weight.size]
        gated = (doc.gate.probabilities(embeddings) >= doc.gate.cut if doc.gate is not None
                 else np.zeros(len(texts), dtype=bool))
        p = doc.probabilities(embeddings) if analysis or gated.any() else None
        if p is not None and gated.any():
            assert doc.gate is not None
            general = [document_score(p[i], doc.cut_probability, doc.gate.general_cut) if gated[i] else score
                       for i, score in enumerate(general)]
        return general, p

    def document_scores(self, texts: Sequence[str]) -> list[float]:
        """p(analysis) of each text read as a question about an attached document (the document head); raises
        InferenceError where the model has no document head."""
        if self.doc_head is None:
            raise InferenceError("this model directory has no document head")
        width = self.doc_head.weight.size
        return self.doc_head.probabilities(self._classifier.head_inputs(texts)[:, :width])


__all__ = [
    "Classifier",
    "InferenceError",
    "ModelLoadError",
    "ModelMeta",
    "Router",
    "RouterError",
    "load_meta",
    "load_session",
    "load_tokenizer",
]
