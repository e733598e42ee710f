"""Fine-tune the encoder and the routing head together, then export a format-2 model directory.

A head on frozen sentence embeddings barely ranks prompts within a source (MMLU APGR 0.57 on the held-out
subjects, against 0.67 for the first, fine-tuned router), so the encoder is trained too. The network is exactly
what the runtime computes: token states → mean pool → L2 normalise → concatenate the standardised prompt
features → head → logit. During training every intercept group adds its own bias (see :mod:`training.data`);
the exported head drops them, so the score ranks prompts by what the sources share rather than by which data
set a prompt resembles.

Export: the fine-tuned encoder goes through optimum's feature-extraction exporter and onnxruntime's dynamic int8
quantisation; the head becomes ``head.npz``; router.json gets the per-source validation table (computed by the
runtime on the int8 model), and the quantile table of the MIXTURE-weighted validation scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from router.classifier import META_FILE, MODEL_FILE, TOKENIZER_FILE, Router, load_tokenizer
from router.features import FEATURES, compute
from router.head import Head
from training import base_rows, data, encoder, evaluate
from training.network import recover_encoder, trainable_body, weighted_step
from training.pipeline import mixture_quantiles, replace_dir, stage_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters; the defaults are the shipped model's."""

    max_length: int = 128
    head_fraction: float = 0.5
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    freeze_layers: int = 2
    hidden: int = 0
    math_limit: int = 1500
    mmlu_limit: int = 0
    seed: int = 13
    init: str = ""  # a model directory whose (int8 or fp32) ONNX encoder is the starting point; "": the base MiniLM
    threads: int = 2


def _select(rows: list[data.Row], config: FinetuneConfig) -> list[data.Row]:
    """Training rows: the training part of every source, with MATH capped (it is large and only a level) and MMLU
    capped when ``mmlu_limit`` is set (it is most of the data, and the per-source weights make its extra rows cost
    time rather than add weight)."""
    caps = {"math": config.math_limit, **({"mmlu": config.mmlu_limit} if config.mmlu_limit else {})}
    return [rows[i] for i in data.training_subset(rows, caps, seed=config.seed) if not rows[i].val]


def finetune(
    data_dir: Path,
    out: Path,
    work: Path,
    *,
    config: FinetuneConfig,
    targets: data.TargetConfig,
    extra: list[Path] | None = None,
    extra_dir: Path | None = None,
) -> dict[str, Any]:
    """Train, export and write ``out`` (replaced atomically); return router.json's content. ``extra_dir`` adds the
    built extra rows (:func:`training.data.load_extra_dir`)."""
    import torch
    from transformers import AutoModel, get_linear_schedule_with_warmup

    t_start = time.time()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = random.Random(config.seed)
    all_rows = data.load(data_dir, extra or [], extra_dir)
    split = data.assign_split(all_rows)
    train_rows = _select(all_rows, config)
    val_rows = [r for r in all_rows if r.val]
    log.info("split: %s; training rows %d", json.dumps(split), len(train_rows))

    encoder_dir = encoder.export(work / "encoder")  # only for its tokenizer.json (truncation and padding off)
    tokenizer = load_tokenizer(encoder_dir / TOKENIZER_FILE)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    cls_id, sep_id, pad_id = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    budget = config.max_length - 2
    head_len = round(config.head_fraction * budget)

    start_dir = encoder.base_model_dir()
    if config.init:
        start_dir = recover_encoder(Path(config.init), work / "init-encoder")
        log.info("starting from the encoder of %s (rebuilt from its ONNX graph)", config.init)

    def encode(prompts: list[str]) -> list[list[int]]:
        out_ids = []
        for start in range(0, len(prompts), 1024):
            for enc in tokenizer.encode_batch(prompts[start : start + 1024], add_special_tokens=False):
                ids = enc.ids
                if len(ids) > budget:
                    ids = ids[:head_len] + ids[len(ids) - (budget - head_len) :]
                out_ids.append([cls_id, *ids, sep_id])
        return out_ids

    names = list(FEATURES)
    train_ids = encode([r.prompt for r in train_rows])
    train_feats = np.asarray(compute([r.prompt for r in train_rows], names))
    feat_mean = train_feats.mean(axis=0)
    feat_scale = train_feats.std(axis=0) + 1e-6
    target, weight = data.targets(train_rows, targets)
    groups = np.array([data.INTERCEPT_GROUP.get(r.source, data.N_GROUPS - 1) for r in train_rows])
    # The everyday contrast (AlpacaEval instructions low, Arena-Hard prompts high, in a group of their own) is
    # added as extra rows exactly as the head-only training does, so the encoder learns it too.
    extra_index, extra_target, extra_weight = data.everyday_contrast(
        train_rows, targets, np.ones(len(train_rows), bool)
    )
    if len(extra_index):
        train_ids += [train_ids[i] for i in extra_index]
        train_feats = np.concatenate([train_feats, train_feats[extra_index]])
        target = np.concatenate([target, extra_target])
        weight = np.concatenate([weight, extra_weight])
        groups = np.concatenate([groups, np.full(len(extra_index), data.N_GROUPS - 1)])

    class RouterNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(start_dir))
            width = self.bert.config.hidden_size + len(names)
            if config.hidden:
                self.head = torch.nn.Sequential(
                    torch.nn.Linear(width, config.hidden),
                    torch.nn.GELU(approximate="tanh"),
                    torch.nn.Dropout(0.1),
                    torch.nn.Linear(config.hidden, 1),
                )
            else:
                self.head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(width, 1))
            self.group_bias = torch.nn.Parameter(torch.zeros(data.N_GROUPS))
            self.emb_scale = math.sqrt(self.bert.config.hidden_size)

        def forward(self, ids: Any, mask: Any, feats: Any) -> Any:
            states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1)
            # The unit vector's components are ~1/sqrt(H) each; scaled by sqrt(H) they sit on the standardised
            # features' scale, so the head's initial weights neither ignore the encoder nor starve its gradient
            # (without this, one epoch learned little more than prompt length).
            pooled = torch.nn.functional.normalize(pooled, dim=-1) * self.emb_scale
            return self.head(torch.cat([pooled, feats], dim=-1)).squeeze(-1)

    net = RouterNet()
    body = trainable_body(net.bert, config.freeze_layers)
    optimiser = torch.optim.AdamW(
        [
            {"params": body, "lr": config.lr, "weight_decay": config.weight_decay},
            {"params": [*net.head.parameters(), net.group_bias], "lr": config.head_lr, "weight_decay": 0.01},
        ]
    )
    steps = int(math.ceil(len(train_ids) / config.batch_size) * config.epochs)
    schedule = get_linear_schedule_with_warmup(optimiser, int(config.warmup * steps), steps)  # type: ignore[no-untyped-call]

    def batch_tensors(index: list[int], ids: list[list[int]], feats: np.ndarray) -> tuple[Any, Any, Any]:
        width = max(len(ids[i]) for i in index)
        t_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
        t_mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            t_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            t_mask[row, : len(ids[i])] = 1
        t_feats = torch.tensor((feats[index] - feat_mean) / feat_scale, dtype=torch.float32)
        return t_ids, t_mask, t_feats

    w_all = torch.tensor(weight / weight[weight > 0].mean(), dtype=torch.float32)
    t_all = torch.tensor(target, dtype=torch.float32)
    g_all = torch.tensor(groups, dtype=torch.long)
    lengths = [len(x) for x in train_ids]
    # A fixed sample of labelled validation rows, scored every 100 steps, shows in the log whether the encoder is
    # learning anything beyond length; it is only watched, never used to pick a checkpoint.
    watch = [i for i, r in enumerate(val_rows) if r.weak is not None][:: max(1, len(val_rows) // 600)]
    watch_ids = encode([val_rows[i].prompt for i in watch])
    watch_feats = np.asarray(compute([val_rows[i].prompt for i in watch], names))
    watch_y = [int(val_rows[i].strong > val_rows[i].weak) for i in watch]  # type: ignore[operator]

    def watch_auroc() -> float:
        from training.metrics import auroc

        net.eval()
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(watch), 64):
                index = list(range(start, min(start + 64, len(watch))))
                scores += net(*batch_tensors(index, watch_ids, watch_feats)).tolist()
        net.train()
        return auroc(scores, watch_y)

    step = 0
    running = 0.0
    net.train()
    while step < steps:
        keyed = sorted(range(len(lengths)), key=lambda i: lengths[i] * (1.0 + 0.1 * rng.random()))
        batches = [keyed[i : i + config.batch_size] for i in range(0, len(keyed), config.batch_size)]
        rng.shuffle(batches)
        for index in batches:
            if step >= steps:
                break
            ids_t, mask_t, feats_t = batch_tensors(index, train_ids, train_feats)
            logit = net(ids_t, mask_t, feats_t) + net.group_bias[g_all[index]]
            loss = weighted_step(net, optimiser, logit, t_all[index], w_all[index])
            schedule.step()
            step += 1
            running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()
            if step % 20 == 0:
                log.info("step %d/%d loss %.4f elapsed %.0fs", step, steps, running, time.time() - t_start)
            if step % 100 == 0:
                log.info("step %d: pooled AUROC on %d watched validation rows %.4f", step, len(watch), watch_auroc())
    train_seconds = time.time() - t_start
    net.eval()

    # Export: encoder → ONNX int8; head → numpy (the group biases dropped, centred on their weighted mean).
    hf_dir = work / "hf"
    net.bert.save_pretrained(hf_dir)
    shutil.copy(encoder.base_model_dir() / "tokenizer.json", hf_dir / "tokenizer.json")
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (encoder.base_model_dir() / name).is_file():
            shutil.copy(encoder.base_model_dir() / name, hf_dir / name)
    tuned_dir = work / "tuned-encoder"
    if tuned_dir.exists():
        shutil.rmtree(tuned_dir)
    encoder.export(tuned_dir, source=hf_dir)
    linears = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)]
    layers = [
        (m.weight.detach().numpy().T.astype(np.float64), m.bias.detach().numpy().astype(np.float64)) for m in linears
    ]
    used = np.bincount(groups, weights=weight, minlength=data.N_GROUPS)
    w_last, b_last = layers[-1]
    layers[-1] = (w_last, b_last + float(np.dot(used / used.sum(), net.group_bias.detach().numpy())))
    hidden = net.bert.config.hidden_size
    head = Head(
        mean=np.concatenate([np.zeros(hidden), feat_mean]),
        scale=np.concatenate([np.full(hidden, 1.0 / net.emb_scale), feat_scale]),
        layers=layers,
    )

    tmp = stage_dir(tuned_dir, head, out.with_name(out.name + ".tmp"))
    meta = encoder.encoder_meta(
        names, max_length=config.max_length, head_fraction=config.head_fraction, pad_token_id=pad_id
    )
    (tmp / META_FILE).write_text(json.dumps(meta))

    # Validation with the runtime on the int8 model: these are the scores users will get.
    t_val = time.time()
    scores = np.asarray(Router.load(tmp, threads=config.threads).score([r.prompt for r in val_rows]))
    val_prompts = [r.prompt for r in val_rows]
    results = {
        "router": evaluate.per_source(val_rows, scores.tolist()),
        "length": evaluate.per_source(val_rows, evaluate.length_scores(val_prompts)),
        "tfidf_lr": evaluate.per_source(
            val_rows, evaluate.tfidf_scorer([r for r in all_rows if not r.val])(val_prompts)
        ),
    }
    log.info("validation (int8 runtime, %.0fs):\n%s", time.time() - t_val, evaluate.table(results))
    created = datetime.now(timezone.utc)
    digest = hashlib.sha256((tmp / MODEL_FILE).read_bytes() + (tmp / "head.npz").read_bytes()).hexdigest()
    meta.update(
        {
            "quantiles": mixture_quantiles(val_rows, scores),
            "mixture": data.MIXTURE,
            "quantile_sample": "int8 scores of the validation rows, each source weighted by 'mixture', split "
            "equally among its rows",
            "version": f"minilm-ft-{created:%Y%m%d}-{digest[:8]}",
            "base_model": encoder.BASE_MODEL_NAME,
            "data": {name: data.FILES[name] for name in data.FILES if (data_dir / data.FILES[name]).is_file()},
            "split": split,
            "targets": asdict(targets),
            "finetune": asdict(config),
            "train_seconds": round(train_seconds, 1),
            "validation": results,
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "licence_note": "trained partly on AlpacaEval instructions (CC BY-NC 4.0: research use only)",
        }
    )
    # What `route-llm retrain` needs to keep this model's behaviour without the data (training.base_rows): every
    # row embedded once more, by the new encoder through the runtime (cached in the work directory).
    clf = encoder.classifier(tmp, names, max_length=config.max_length, head_fraction=config.head_fraction,
                             threads=config.threads)

    def embed(rows: list[data.Row]) -> np.ndarray:
        return encoder.cached_inputs(clf, [r.prompt for r in rows], work / "cache", tmp)

    meta["base_rows"] = base_rows.export(tmp, train_rows, val_rows, targets, embed(train_rows), embed(val_rows),
                                         len(names))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    np.save(work / "val_scores.npy", scores)
    replace_dir(tmp, out)
    log.info("wrote %s (version %s) after %.0fs", out, meta["version"], time.time() - t_start)
    return meta
