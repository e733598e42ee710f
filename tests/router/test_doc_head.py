"""The document-question head (router/doc_head.py), its load checks, and the pure signal that maps its score onto a
request's policy (router.policy.document_score)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from router import InferenceError, ModelLoadError, Router, TierPolicy
from router.doc_head import FILE, DocHead
from router.policy import document_score
from tests.router.conftest import SHIPPED_MODEL_DIR


@pytest.mark.parametrize("cut", [0.3, 0.638, 0.9])
def test_document_score_puts_lookups_below_the_policy_cut_and_analyses_at_or_above(cut: float) -> None:
    policy = TierPolicy.two_way(cut, 2)
    for p in np.linspace(0.0, 1.0, 101):
        tier = policy.tier_index(document_score(float(p), 0.6, cut))
        assert tier == (1 if p >= 0.6 else 0), (p, cut)


def test_document_score_keeps_the_order_and_the_ends() -> None:
    values = [document_score(float(p), 0.4, 0.7) for p in np.linspace(0.0, 1.0, 51)]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    assert document_score(0.4, 0.4, 0.7) == 0.7
    # a policy that sends everything (cut 0) or nothing (cut 1) strong keeps doing so
    assert TierPolicy.two_way(0.0, 2).tier_index(document_score(0.01, 0.4, 0.0)) == 1
    assert TierPolicy.two_way(1.0, 2).tier_index(document_score(0.99, 0.4, 1.0)) == 0


@pytest.mark.parametrize(
    ("p", "d", "c", "message"),
    [(1.5, 0.5, 0.5, "probability"), (math.nan, 0.5, 0.5, "NaN"), (0.5, 0.0, 0.5, "document_cut"),
     (0.5, 1.0, 0.5, "document_cut"), (0.5, 0.5, -0.1, "policy_cut"), ("0.5", 0.5, 0.5, "number"),
     (True, 0.5, 0.5, "number")],
)
def test_document_score_refuses_bad_values(p: object, d: float, c: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        document_score(p, d, c)  # type: ignore[arg-type]


def test_the_shipped_document_head_orders_a_plain_lookup_below_an_analysis(router: Router) -> None:
    """Questions written for this test (not from the evaluation sets), far apart on purpose. ``router``: the
    session's shipped one (tests/conftest.py)."""
    assert router.doc_head is not None
    lookups = ["What is the invoice number?", "On which page is the table of contents?",
               "What date was the contract signed?"]
    analyses = ["Weigh the arguments in this paper against its own data and judge whether its conclusion holds.",
                "Assess whether the termination clauses in this contract favour the supplier, and explain the risks.",
                "Critically evaluate the strategy set out in this report and what it means for future profits."]
    low, high = router.document_scores(lookups), router.document_scores(analyses)
    assert max(low) < router.doc_head.cut_probability <= min(high), (low, high)


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    """The shipped model's small files copied (the tests damage them); the encoder and tokenizer (56 MB, never
    written here) linked, not copied for every case."""
    out = tmp_path / "model"
    big = ("model.onnx", "embedding.bin", "tokenizer.json")
    shutil.copytree(SHIPPED_MODEL_DIR, out, ignore=shutil.ignore_patterns("base_rows.npz", *big))
    for name in big:
        (out / name).symlink_to(SHIPPED_MODEL_DIR / name)
    return out


def test_a_model_without_a_document_head_loads_and_says_so(model_copy: Path) -> None:
    (model_copy / FILE).unlink()
    router = Router.load(model_copy)
    assert router.doc_head is None
    with pytest.raises(InferenceError, match="no document head"):
        router.document_scores(["What is the total?"])


@pytest.mark.parametrize("damage", ["garbage", "no_cut", "wrong_width", "nan"])
def test_a_bad_document_head_is_a_load_error_naming_the_file(model_copy: Path, damage: str) -> None:
    path = model_copy / FILE
    head = DocHead.load(path)
    if damage == "garbage":
        path.write_bytes(b"not an npz")
    elif damage == "no_cut":
        np.savez(path, weight=head.weight, bias=np.array(head.bias), meta=np.array(json.dumps(head.meta)))
    elif damage == "wrong_width":
        DocHead(weight=head.weight[:10], bias=head.bias, cut=head.cut, meta=head.meta).save(path)
    else:
        DocHead(weight=head.weight * np.nan, bias=head.bias, cut=head.cut, meta=head.meta).save(path)
    with pytest.raises(ModelLoadError, match=FILE):
        Router.load(model_copy)


# --- the gate: a bare question about a document, scored through Router.score --------------------------------------


def test_the_shipped_gate_reads_a_bare_document_question_and_leaves_other_prompts_alone(router: Router) -> None:
    """``Router.score`` gives a question the gate recognises the document head's score placed at the gate's
    ``general_cut``, and every other prompt the general head's score, bit for bit."""
    head = router.doc_head
    assert head is not None and head.gate is not None
    prompts = ["According to the annual report attached above, who audited these accounts?",
               "What is the capital of France?", "Prove that there are infinitely many primes."]
    inputs = router.classifier.head_inputs(prompts)
    width = head.weight.size
    gate_p = head.gate.probabilities(inputs[:, :width])
    general = router.classifier.score(prompts)
    analysis = head.probabilities(inputs[:, :width])
    got = router.score(prompts)
    assert gate_p[0] >= head.gate.cut, gate_p
    assert got[0] == document_score(analysis[0], head.cut_probability, head.gate.general_cut) != general[0]
    assert got[0] < head.gate.general_cut  # a lookup: below the operating point's cut
    for i in (1, 2):
        assert gate_p[i] < head.gate.cut and got[i] == general[i]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"gate_cut": np.array(1.0)}, "strictly between 0 and 1"),
        ({"general_cut": np.array(0.0)}, "strictly between 0 and 1"),
        ({"gate_weight": np.full(3, 0.1)}, "gate_weight"),
        ({"gate_weight": np.full(384, np.nan)}, "gate_weight"),
        ({"gate_bias": np.array(np.inf)}, "gate_bias"),
        ("drop_cut", "a gate needs all of"),
    ],
)
def test_a_bad_gate_is_refused_with_the_array_named(tmp_path: Path, damage: object, message: str) -> None:
    with np.load(SHIPPED_MODEL_DIR / FILE, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if damage == "drop_cut":
        del arrays["gate_cut"]
    else:
        arrays.update(damage)  # type: ignore[arg-type]
    np.savez(tmp_path / FILE, **arrays)
    with pytest.raises(ValueError, match=message):
        DocHead.load(tmp_path / FILE)


def test_a_document_head_without_a_gate_scores_every_prompt_with_the_general_head(tmp_path: Path) -> None:
    head = DocHead.load(SHIPPED_MODEL_DIR / FILE)
    plain = DocHead(weight=head.weight, bias=head.bias, cut=head.cut, meta=head.meta)
    plain.save(tmp_path / FILE)
    again = DocHead.load(tmp_path / FILE)
    assert again.gate is None and np.array_equal(again.weight, head.weight)
