"""scripts/train_doc_gate.py: the gate's cut is the lowest that fires on no more than the allowed share of any
other source's validation rows and moves no labelled source's APGR; bad options are refused."""

from __future__ import annotations

import numpy as np
import pytest

from router.doc_head import DocHead
from router.head import Head
from scripts.train_doc_gate import DOCUMENT_SOURCE, choose_cut, main
from tests.router.conftest import SHIPPED_MODEL_DIR
from training import base_rows
from training.pipeline import sigmoid


@pytest.fixture(scope="module")
def val() -> tuple[base_rows.RowSet, np.ndarray, np.ndarray, DocHead]:
    rows = base_rows.load(SHIPPED_MODEL_DIR).val
    head, doc = Head.load(SHIPPED_MODEL_DIR / "head.npz"), DocHead.load(SHIPPED_MODEL_DIR / "doc_head.npz")
    general = sigmoid(base_rows.head_logits(head, rows))
    analysis = np.asarray(doc.probabilities(rows.inputs[:, : doc.weight.size]))
    return rows, general, analysis, doc


def test_the_cut_skips_every_cut_that_fires_on_another_source(val) -> None:  # type: ignore[no-untyped-def]
    rows, general, analysis, doc = val
    documents, mmlu = rows.source == DOCUMENT_SOURCE, np.nonzero(rows.source == "mmlu")[0]
    gate_p = np.where(documents, 0.995, 0.0)
    gate_p[mmlu[: len(mmlu) // 10]] = 0.75  # a tenth of MMLU looks like document questions to this gate
    cut, table = choose_cut(rows, general, analysis, gate_p, doc.cut_probability, 0.6, [0.5, 0.7, 0.8, 0.9], 0.01)
    assert cut == 0.8
    by_cut = {entry["cut"]: entry for entry in table}
    assert by_cut[0.5]["gated_share"]["mmlu"] > 0.01 and by_cut[0.8]["gated_share"]["mmlu"] == 0.0
    assert by_cut[0.8]["documents_gated"] == 1.0 and all(v == 0 for v in by_cut[0.8]["apgr_change"].values())
    with pytest.raises(SystemExit, match="no cut"):
        choose_cut(rows, general, analysis, gate_p, doc.cut_probability, 0.6, [0.5, 0.7], 0.01)


@pytest.mark.parametrize(
    "argv",
    [["--cuts", "1.5"], ["--cuts", "0"], ["--max-share", "1"], ["--strong-share", "0"], ["--c", "-1"]],
)
def test_bad_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--model-dir", str(SHIPPED_MODEL_DIR), *argv])
    assert stop.value.code == 2
    assert "must" in capsys.readouterr().err
