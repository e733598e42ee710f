"""Train the routing model and write a model directory (format 2: int8 MiniLM encoder + routing head).

Reproduces the shipped ``router/model/`` from the public data (see the README for the sources and licences):

    python scripts/train_router.py --data-dir ../shared/data/router --out router/model --log runs/train.log

The first run exports the encoder and embeds every prompt (about 10 minutes on two idle cores); the embeddings
are cached in ``--work-dir``, so later runs with other head settings take about a minute.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.data import EXTRA_FILES, EXTRA_SOURCES, SOURCES, TargetConfig
from training.finetune import FinetuneConfig, finetune
from training.head import HeadConfig, JointConfig
from training.pipeline import train


def main(argv: list[str] | None = None) -> None:
    """Parse options, train, print where the model went."""
    defaults_t, defaults_h = TargetConfig(), HeadConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir", type=Path, required=True, help="directory with train.jsonl, chat_alpacaeval.jsonl, ..."
    )
    p.add_argument("--out", type=Path, required=True, help="model directory to write (replaced atomically)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/train"), help="encoder export and embedding cache")
    p.add_argument(
        "--encoder-from",
        type=Path,
        help="format-1 classifier directory whose fine-tuned encoder the head reads (the shipped model: the first "
        "router, `git show 2e188f8:router/model/...`)",
    )
    p.add_argument(
        "--encoder-dir",
        type=Path,
        help="format-2 model directory whose model.onnx + tokenizer.json are reused as they are (e.g. router/model: "
        "refit the head on the shipped encoder without git history)",
    )
    p.add_argument("--extra", type=Path, action="append", default=[], help="labelled JSONL of your own traffic")
    p.add_argument(
        "--extra-dir",
        type=Path,
        help="directory of built extra rows (doc_qa.jsonl, multilingual.jsonl: scripts/data/build_router_extra.py): "
        "questions about documents and prompts in many languages, as sources of their own",
    )
    p.add_argument("--log", help="also log to this file")
    p.add_argument("--max-length", type=int, default=128)
    defaults_j = JointConfig()
    p.add_argument(
        "--head",
        choices=("joint", "torch"),
        default="joint",
        help="joint: linear head over embedding, features and word n-grams, fitted together (shipped); "
        "torch: the embedding + features head of router v2 (optionally with a hidden layer)",
    )
    p.add_argument("--c", type=float, default=defaults_j.c, help="joint head: inverse L2 penalty")
    p.add_argument(
        "--dense-scale", type=float, default=defaults_j.dense_scale, help="joint head: scale of the embedding block"
    )
    p.add_argument("--hidden", type=int, default=defaults_h.hidden, help="torch head: hidden units (0: linear)")
    p.add_argument("--epochs", type=int, default=defaults_h.epochs)
    p.add_argument("--soft", type=float, default=defaults_t.soft, help="weight of the many-model difficulty signal")
    p.add_argument("--seed", type=int, default=defaults_h.seed)
    p.add_argument("--finetune", action="store_true", help="train the encoder too (the shipped model; ~1 h on 2 cores)")
    p.add_argument("--ft-epochs", type=float, default=FinetuneConfig().epochs)
    p.add_argument("--ft-hidden", type=int, default=FinetuneConfig().hidden)
    p.add_argument(
        "--ft-mmlu-limit", type=int, default=FinetuneConfig().mmlu_limit, help="fine-tuning: MMLU rows kept (0: all)"
    )
    p.add_argument("--ft-lr", type=float, default=FinetuneConfig().lr, help="fine-tuning: encoder learning rate")
    p.add_argument(
        "--ft-init", type=Path, help="fine-tuning: start from this model directory's encoder instead of the base MiniLM"
    )
    p.add_argument(
        "--everyday",
        type=float,
        default=defaults_t.everyday,
        help="weight of the everyday contrast (AlpacaEval low, Arena-Hard high); 0 leaves it out",
    )
    p.add_argument(
        "--source-weight",
        action="append",
        default=[],
        metavar="SOURCE=W",
        help="multiply a source's total loss weight (repeatable; defaults: "
        + ", ".join(f"{k}={v:g}" for k, v in defaults_t.source_weight)
        + f"; others 1). Sources: {', '.join((*SOURCES, 'feedback', *EXTRA_SOURCES))}",
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    weights = dict(defaults_t.source_weight)
    for item in args.source_weight:
        name, _, value = item.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if name not in (*SOURCES, "feedback", *EXTRA_SOURCES) or not w >= 0:
            p.error(f"--source-weight: {item!r} is not SOURCE=W with a known source and a weight >= 0")
        weights[name] = w
    if args.ft_init is not None and not (args.ft_init / "model.onnx").is_file():
        p.error(f"--ft-init: {args.ft_init} has no model.onnx (give a router model directory)")
    for name in ("ft_epochs", "ft_lr"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.ft_mmlu_limit < 0 or args.everyday < 0:
        p.error("--ft-mmlu-limit and --everyday cannot be negative")
    if args.extra_dir is not None and not any((args.extra_dir / name).is_file() for name in EXTRA_FILES.values()):
        p.error(f"--extra-dir: {args.extra_dir} has none of {', '.join(sorted(EXTRA_FILES.values()))}")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers)
    if args.finetune:
        finetune(
            args.data_dir,
            args.out,
            args.work_dir,
            config=FinetuneConfig(
                max_length=args.max_length,
                epochs=args.ft_epochs,
                hidden=args.ft_hidden,
                mmlu_limit=args.ft_mmlu_limit,
                lr=args.ft_lr,
                init=str(args.ft_init or ""),
                threads=args.threads,
            ),
            targets=TargetConfig(soft=args.soft, everyday=args.everyday, source_weight=tuple(weights.items())),
            extra=args.extra,
            extra_dir=args.extra_dir,
        )
        return
    train(
        args.data_dir,
        args.out,
        args.work_dir,
        targets=TargetConfig(soft=args.soft, everyday=args.everyday, source_weight=tuple(weights.items())),
        head=(
            JointConfig(c=args.c, dense_scale=args.dense_scale)
            if args.head == "joint"
            else HeadConfig(hidden=args.hidden, epochs=args.epochs, seed=args.seed)
        ),
        encoder_source=args.encoder_from,
        encoder_dir=args.encoder_dir,
        max_length=args.max_length,
        extra=args.extra,
        extra_dir=args.extra_dir,
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
