"""A request that carries a document is decided by the document head (router/doc_head.py) at its own cut; the same
question without a document keeps the general score. Real sockets, the official client, the Gemini stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.routing.decider import Decider
from proxy.settings import settings_from_dict
from router import Router
from router.policy import document_score
from tests.conftest import RunningProxy, base_config, start_proxy, stop_proxy
from tests.proxy.pdfs import pdf_with_pages

PDF = pdf_with_pages(["Supply agreement between Arden Mills Ltd and Corve Bakeries Ltd, signed 3 March 2024.",
                      "Clause 9: either party may end the agreement on 30 days' notice; clause 12 caps liability."])
#: Written for this test; not from the evaluation sets.
QUESTIONS = ["When was the agreement signed?",
             "Assess whether the termination and liability clauses leave the buyer exposed, and explain the risks."]


@pytest.fixture(scope="module")
def proxy(router: Router, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    running = start_proxy(settings_from_dict(base_config(tmp_path_factory.mktemp("doc-head"))), router)
    yield running
    stop_proxy(running)


def _ask(proxy: RunningProxy, question: str, file_id: str | None) -> dict[str, str]:
    content: list[dict[str, object]] = [{"type": "text", "text": question}]
    if file_id is not None:
        content.insert(0, {"type": "file", "file": {"file_id": file_id}})
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": content}])  # type: ignore[list-item]
    return dict(raw.headers)


@pytest.mark.parametrize("question", QUESTIONS)
def test_a_document_question_is_scored_by_the_document_head(proxy: RunningProxy, router: Router, question: str,
                                                             tmp_path: Path) -> None:
    assert router.doc_head is not None
    client = proxy.client()
    file_id = client.files.create(file=("agreement.pdf", PDF, "application/pdf"), purpose="user_data").id
    cut = 0.5  # the tests' fixed threshold (base_config)
    with_document = _ask(proxy, question, file_id)
    assert with_document["x-route-llm-documents"] == "full"
    p = router.document_scores([question])[0]
    expected = document_score(p, router.doc_head.cut_probability, cut)
    assert with_document["x-route-llm-score"] == f"{expected:.4f}"
    assert with_document["x-route-llm-tier"] == ("strong" if p >= router.doc_head.cut_probability else "weak")
    without = _ask(proxy, question, None)
    assert without["x-route-llm-score"] == f"{router.score([question])[0]:.4f}"


def test_a_document_question_runs_the_encoder_once(router: Router, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Both heads read the same embedding: the decision for a request with a document must not run the encoder a
    # second time on its last text for the document head (it did: the general score through the batcher, then
    # Router.document_scores on the router thread).
    assert router.doc_head is not None
    embedded: list[int] = []
    embed = router.classifier._embed

    def counting(ids: list[int]) -> Any:
        embedded.append(len(ids))
        return embed(ids)

    monkeypatch.setattr(router.classifier, "_embed", counting)
    decider = Decider(settings_from_dict(base_config(tmp_path)), router)
    question = QUESTIONS[1]
    decision = asyncio.run(decider.decide(decider.resolve("auto"), [question], document=True))
    assert len(embedded) == 1
    # And the decision is the document head's, as before.
    p = router.document_scores([question])[0]
    assert decision.score == pytest.approx(document_score(p, router.doc_head.cut_probability, 0.5), abs=1e-12)
    # Without a document: one run too, and the general score.
    embedded.clear()
    plain = asyncio.run(decider.decide(decider.resolve("auto"), [question]))
    assert len(embedded) == 1 and plain.score == pytest.approx(router.score([question])[0], abs=1e-12)
