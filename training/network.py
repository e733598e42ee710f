"""The router's torch network in one place: rebuilding it from a shipped model, one training step, the fit on
feedback and its export. Training from the data (:mod:`training.finetune`) and ``route-llm retrain --full``
(:mod:`training.retrain`) both import it, and it imports neither, so the three form no cycle.

``route-llm retrain --full`` fine-tunes the current model's encoder together with its head on feedback.

Fast mode (:mod:`training.retrain`) keeps the encoder, so it can only re-weigh what the current embedding
already tells apart. This mode moves the encoder too, for feedback the embedding cannot separate (a new domain
whose easy and hard prompts embed alike). The rows, targets, comparison and acceptance rule are fast mode's; only
the fit differs:

1. Encoder weights. A format-2 model ships its encoder as int8 ONNX only, so :func:`recover_encoder` rebuilds a
   torch BERT from the graph: quantised weights dequantised (int8 minus zero point, times scale), fp32 ones
   copied, the shape (layers, width, heads, epsilon) read from the graph itself. The result is checked against
   the ONNX encoder on the first prompts (cosine of the pooled embeddings; int8 activations make them differ a
   little).
2. Fit. Mini-batch AdamW on the weighted soft-target cross-entropy over the upper encoder layers
   (``encoder_lr``; the embeddings and the lowest ``freeze_layers`` layers stay fixed) and the head (``head_lr``,
   starting from the current head's weights), with the per-source intercepts of training and a word term, if the
   head has one, as a fixed offset. Tokens are the runtime's own (``Classifier.token_ids``), the prompt features
   the cached head inputs' feature columns, so the network sees what serving will.
3. Export: the encoder through optimum and int8 quantisation (:func:`training.encoder.export`) and the head (its
   per-source intercepts dropped, as in fast mode) into a staging directory the caller scores and keeps or drops.

Cost: every step runs the encoder forward and backward, and the candidate's validation and held-out rows must be
embedded again with the new encoder (they cannot come from the cache); on two busy CPU cores that is tens of
minutes where fast mode takes one or two (README, "Learning from feedback", has the measured figures). The
command logs its step count and, after the first steps, its projected time.
"""

from __future__ import annotations

import logging
import math
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from router.classifier import MODEL_FILE, TOKENIZER_FILE, Classifier
from router.head import Head
from training import encoder

log = logging.getLogger(__name__)

class FitConfig(Protocol):
    """What :func:`finetune_encoder` reads of ``training.retrain.RetrainConfig`` (its ``--full`` settings)."""

    @property
    def seed(self) -> int: ...

    @property
    def threads(self) -> int: ...

    @property
    def freeze_layers(self) -> int: ...

    @property
    def encoder_lr(self) -> float: ...

    @property
    def head_lr(self) -> float: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def full_steps(self) -> int | None: ...

    @property
    def full_epochs(self) -> float: ...


_NODE = re.compile(r"^/(?:bert/)?((?:encoder|embeddings)/[^ ]+?)/(MatMul_quant|MatMul|Add|LayerNormalization|Gather)$")


def _architecture(graph: Any, arrays: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """BertConfig's keys, read from the shapes of the weights and the attention's reshape constants."""
    from onnx import numpy_helper

    layers = 1 + max(int(m.group(1)) for name in weights if (m := re.match(r"encoder\.layer\.(\d+)\.", name)))
    vocab, hidden = weights["embeddings.word_embeddings.weight"].shape
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    constants.update(arrays)
    head_dims = [int(np.asarray(constants[n.input[-1]]).reshape(-1)[0]) for n in graph.node
                 if n.op_type == "Concat" and re.search(r"layer\.0/attention/self/Concat$", n.name)
                 and n.input[-1] in constants]
    if not head_dims or hidden % head_dims[0]:
        raise ValueError("cannot read the number of attention heads from the encoder graph")
    epsilons = [a.f for n in graph.node if n.op_type == "LayerNormalization"
                for a in n.attribute if a.name == "epsilon"]
    return {"vocab_size": int(vocab), "hidden_size": int(hidden), "num_hidden_layers": layers,
            "num_attention_heads": hidden // head_dims[0],
            "intermediate_size": int(weights["encoder.layer.0.intermediate.dense.weight"].shape[0]),
            "max_position_embeddings": int(weights["embeddings.position_embeddings.weight"].shape[0]),
            "type_vocab_size": int(weights["embeddings.token_type_embeddings.weight"].shape[0]),
            "layer_norm_eps": float(epsilons[0]) if epsilons else 1e-12, "hidden_act": "gelu"}


def recover_encoder(model_dir: Path, out: Path) -> Path:
    """Write a transformers BERT checkpoint (``config.json``, weights, the model's ``tokenizer.json``) into ``out``,
    rebuilt from ``model_dir``'s ONNX encoder (int8 or fp32). Raises ValueError when the graph is not a BERT."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    graph = onnx.load(str(model_dir / MODEL_FILE)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def dequantised(base: str) -> np.ndarray:
        q, zero, scale = arrays[base + "_quantized"], arrays[base + "_zero_point"], arrays[base + "_scale"]
        return np.asarray((q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32))

    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}  # shared equal tensors

    def tensor(name: str) -> np.ndarray | None:
        """An initializer as float32 (dequantised when it is an int8 one), or None for a computed tensor."""
        while name in aliases and name not in arrays:
            name = aliases[name]
        if name.endswith("_quantized") and name in arrays:
            return dequantised(name.removesuffix("_quantized"))
        return arrays[name] if name in arrays and arrays[name].dtype == np.float32 else None

    # Weights are found through the nodes that use them (an exporter may share one initializer between equal
    # tensors, e.g. the zero biases of a fresh model, so names alone do not say where each goes): a node named
    # /bert/encoder/layer.0/attention/self/query/MatMul_quant holds encoder.layer.0.attention.self.query.weight.
    weights: dict[str, np.ndarray] = {}
    for node in graph.node:
        m = _NODE.match(node.name)
        if not m:
            continue
        module, op = m.group(1).replace("/", "."), m.group(2)
        if node.op_type == "MatMulInteger" and op.endswith("MatMul_quant"):
            weights[module + ".weight"] = dequantised(node.input[1].removesuffix("_quantized")).T
        elif node.op_type == "MatMul" and (w := tensor(node.input[1])) is not None:
            weights[module + ".weight"] = w.T
        elif node.op_type == "Add" and op == "Add":
            bias = [t for t in (tensor(i) for i in node.input) if t is not None and t.ndim == 1]
            if bias:
                weights[module + ".bias"] = bias[0]
        elif node.op_type == "LayerNormalization" and len(node.input) == 3:
            for part, name in zip(("weight", "bias"), node.input[1:], strict=True):
                if (t := tensor(name)) is not None:
                    weights[f"{module}.{part}"] = t
        elif node.op_type == "Gather" and (table := tensor(node.input[0])) is not None and table.ndim == 2:
            weights[module + ".weight"] = table
    if "embeddings.word_embeddings.weight" not in weights or "encoder.layer.0.intermediate.dense.weight" not in weights:
        raise ValueError(f"{model_dir / MODEL_FILE}: not a BERT encoder this can rebuild (no embedding table or "
                         "dense layers found)")
    config = BertConfig(**_architecture(graph, arrays, weights))  # type: ignore[no-untyped-call]
    model = BertModel(config, add_pooling_layer=False)  # type: ignore[no-untyped-call]
    state = model.state_dict()
    missing = [k for k in state if k not in weights and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"{model_dir / MODEL_FILE}: the graph lacks {len(missing)} encoder weights, e.g. {missing[0]}")
    model.load_state_dict({k: torch.tensor(np.ascontiguousarray(weights[k])) for k in state if k in weights},
                          strict=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    shutil.copy(model_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    return out


def read_head(path: Path) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The arrays of a head file (mean, scale, layers), for starting a fit from them."""
    Head.load(path)  # validates
    with np.load(path, allow_pickle=False) as arrays:
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        while f"w{len(layers)}" in arrays:
            i = len(layers)
            layers.append((np.asarray(arrays[f"w{i}"], np.float64), np.asarray(arrays[f"b{i}"], np.float64)))
        return np.asarray(arrays["input_mean"], np.float64), np.asarray(arrays["input_scale"], np.float64), layers


def trainable_body(bert: Any, freeze_layers: int) -> list[Any]:
    """Freeze a BERT's embeddings and its lowest ``freeze_layers`` layers; return the parameters left to train."""
    for p in bert.embeddings.parameters():
        p.requires_grad = False
    for layer in bert.encoder.layer[:freeze_layers]:
        for p in layer.parameters():
            p.requires_grad = False
    return [p for p in bert.parameters() if p.requires_grad]


def weighted_step(net: Any, optimiser: Any, logit: Any, target: Any, weight: Any) -> Any:
    """One optimiser step on the weighted mean soft-target cross-entropy (gradients clipped to norm 1); the loss."""
    import torch

    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target, reduction="none")
    loss = (loss * weight).sum() / weight.sum()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
    optimiser.step()
    return loss


class _Batches:
    """Length-bucketed, shuffled mini-batches of token-id rows (padded per batch)."""

    def __init__(self, ids: list[list[int]], size: int, pad: int, seed: int) -> None:
        self.ids, self.size, self.pad, self.rng = ids, size, pad, random.Random(seed)

    def epoch(self) -> list[list[int]]:
        keyed = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]) * (1.0 + 0.1 * self.rng.random()))
        batches = [keyed[i:i + self.size] for i in range(0, len(keyed), self.size)]
        self.rng.shuffle(batches)
        return batches

    def tensors(self, index: list[int]) -> tuple[Any, Any]:
        import torch

        width = max(len(self.ids[i]) for i in index)
        ids = torch.full((len(index), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            ids[row, :len(self.ids[i])] = torch.tensor(self.ids[i])
            mask[row, :len(self.ids[i])] = 1
        return ids, mask


def finetune_encoder(current: Classifier, model_dir: Path, head_path: Path, texts: list[str], features: np.ndarray,
                     target: np.ndarray, weight: np.ndarray, groups: np.ndarray, work: Path,
                     config: FitConfig) -> tuple[Path, Head]:
    """Fine-tune the encoder of ``current`` (loaded from ``model_dir``) and the head at ``head_path`` on the rows;
    returns the exported int8 encoder directory and the new head. ``features`` are the rows' prompt-feature
    columns of the head input."""
    import torch
    from transformers import BertModel

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    start_head = Head.load(head_path)
    mean, scale, layers = read_head(head_path)
    recovered = recover_encoder(model_dir, work / "recovered")
    bert = BertModel.from_pretrained(str(recovered), add_pooling_layer=False)
    ids = current.token_ids(texts)
    offset = np.zeros(len(texts)) if start_head.lexical is None else start_head.lexical.logits(texts)
    _check_recovery(bert, current, model_dir, texts[:8])

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert
            self.mean = torch.tensor(mean, dtype=torch.float32)  # fixed: the head's input standardisation
            self.scale = torch.tensor(scale, dtype=torch.float32)
            self.dense = torch.nn.ModuleList()
            for w, b in layers:
                linear = torch.nn.Linear(w.shape[0], w.shape[1])
                with torch.no_grad():
                    linear.weight.copy_(torch.tensor(w.T, dtype=torch.float32))
                    linear.bias.copy_(torch.tensor(b, dtype=torch.float32))
                self.dense.append(linear)
            self.group_bias = torch.nn.Parameter(torch.zeros(int(groups.max()) + 1))

        def forward(self, ids: Any, mask: Any, feats: Any) -> Any:
            states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1)
            x = (torch.cat([pooled, feats], dim=-1) - self.mean) / self.scale
            for i, linear in enumerate(self.dense):
                x = linear(x)
                if i < len(self.dense) - 1:
                    x = torch.nn.functional.gelu(x, approximate="tanh")
            return x[:, 0]

    net = Net()
    body = trainable_body(net.bert, config.freeze_layers)
    optimiser = torch.optim.AdamW([
        {"params": body, "lr": config.encoder_lr, "weight_decay": 0.01},
        {"params": [*net.dense.parameters(), net.group_bias], "lr": config.head_lr, "weight_decay": 0.0}])
    batches = _Batches(ids, config.batch_size, current.meta.pad_token_id, config.seed)
    steps = config.full_steps or int(math.ceil(len(ids) / config.batch_size) * config.full_epochs)
    log.info("retrain --full: %d rows, %d steps of %d (encoder layers %d.. and head move)", len(ids), steps,
             config.batch_size, config.freeze_layers)
    t_feats = torch.tensor(features, dtype=torch.float32)
    t_target = torch.tensor(target, dtype=torch.float32)
    t_weight = torch.tensor(weight / weight[weight > 0].mean(), dtype=torch.float32)
    t_groups = torch.tensor(groups, dtype=torch.long)
    t_offset = torch.tensor(offset, dtype=torch.float32)
    step, t0 = 0, time.time()
    net.train()
    while step < steps:
        for index in batches.epoch():
            if step >= steps:
                break
            b_ids, b_mask = batches.tensors(index)
            logit = net(b_ids, b_mask, t_feats[index]) + net.group_bias[t_groups[index]] + t_offset[index]
            loss = weighted_step(net, optimiser, logit, t_target[index], t_weight[index])
            step += 1
            if step == 5 or step % 50 == 0 or step == steps:
                spent = time.time() - t0
                log.info("retrain --full: step %d/%d, loss %.4f, %.0fs so far, about %.0fs of fitting left", step,
                         steps, loss.item(), spent, spent / step * (steps - step))
    net.eval()

    tuned = work / "tuned"
    if tuned.exists():
        shutil.rmtree(tuned)
    net.bert.save_pretrained(tuned)
    shutil.copy(model_dir / TOKENIZER_FILE, tuned / TOKENIZER_FILE)
    exported = work / "tuned-int8"
    if exported.exists():
        shutil.rmtree(exported)
    encoder.export(exported, source=tuned)
    shutil.copy(model_dir / TOKENIZER_FILE, exported / TOKENIZER_FILE)  # the runtime's own tokenizer settings
    def array(t: Any) -> np.ndarray:
        return np.asarray(t.detach().numpy(), dtype=np.float64)

    new_layers = [(array(lin.weight).T, array(lin.bias)) for lin in net.dense]
    return exported, Head(mean=mean, scale=scale, layers=new_layers, lexical=start_head.lexical)


def _check_recovery(bert: Any, current: Classifier, model_dir: Path, texts: list[str]) -> None:
    """The rebuilt encoder must embed like the ONNX one (up to int8 activation noise), else stop."""
    import torch

    bert.eval()
    onnx_vectors = current.head_inputs(texts)[:, :bert.config.hidden_size]  # unit vectors
    cosines = []
    with torch.inference_mode():
        for row, onnx_vector in zip(current.token_ids(texts), onnx_vectors, strict=True):
            states = bert(input_ids=torch.tensor([row])).last_hidden_state[0].double().mean(0).numpy()
            cosines.append(float(states @ onnx_vector / np.linalg.norm(states)))
    worst = min(cosines)
    log.info("retrain --full: rebuilt encoder vs ONNX encoder, lowest cosine of %d embeddings %.4f", len(texts), worst)
    if worst < 0.98:
        raise ValueError(f"the encoder rebuilt from {model_dir / MODEL_FILE} does not embed like it (cosine "
                         f"{worst:.3f}); full retraining needs an encoder it can rebuild")
    bert.train()
