"""The product's first scenario, end to end at the shipped operating point: a user uploads a multi-page annual report
and asks about it. Lookups ("Who audited these accounts?") should go to the weak tier, analyses ("Is the dividend
sustainable given the cash flow?") to the strong one (issue 25, "Done when").

The twenty questions are the ``e2e`` rows of ``tests/router/data/documents.jsonl`` (group ``annual-report-1``),
chosen when the set was written, before any model was trained against it. The PDF is made here, with the facts
the lookups ask for and the figures the analyses weigh. The proxy runs with the shipped ``config.yaml``'s router
and aliases (``auto`` at ``strong_share: 0.3``), not the tests' fixed threshold of 0.5; the upstream is the
Gemini stand-in. The tier is read from the ``x-route-llm-tier`` header of each answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from proxy.settings import settings_from_dict
from router import Router, threshold_for_strong_share
from tests.conftest import ROOT, RunningProxy, base_config, start_proxy, stop_proxy
from tests.proxy.pdfs import pdf_with_pages

PAGES = [
    "Northgate Harbour Foods plc\nAnnual Report and Accounts 2023\n\n"
    "Registered office: 14 Quayside Road, Hull HU1 2AB. Registered in England and Wales, company number 04418822.\n"
    "Shares listed on the main market of the London Stock Exchange (ticker NHF).",
    "Chair's letter\n\nDear shareholder, 2023 tested every part of our business. Food inflation, wage rises and a poor "
    "harvest in our fresh produce supply base pushed costs up faster than we could pass them on. This year's annual "
    "general meeting will be held on Thursday 16 May 2024 at 11.00 am at the Royal Station Hotel, Leeds. "
    "Margaret Ellison, Chair.",
    "Strategic report\n\nRevenue grew 6.2% to GBP 1,284.6 million, but gross margin fell from 28.1% to 25.4%. We "
    "opened 22 stores, ending the year with 318, and we plan 40 more over the next two years, funded by our "
    "refinanced revolving credit facility. At the year end the group employed 11,240 people. Principal risks: input "
    "cost inflation, concentration of produce suppliers, labour availability and cost, and a cyber attack on our "
    "ordering systems. This strategic report was approved by the board and signed on its behalf by Alistair Penrose, "
    "Chief Executive.",
    "Directors' report\n\nDividend: the board recommends a final dividend of 6.4 pence per share, making 9.6 pence "
    "for the year (2022: 9.6 pence), a total cash cost of GBP 52 million. Free cash flow for the year was GBP 41 "
    "million (2022: GBP 88 million).\n\nGoing concern: the directors have assessed forecasts for 18 months, including "
    "a severe but plausible downside in which gross margin stays at 25% and the store programme continues. Under "
    "that case headroom on the facility falls to GBP 35 million in March 2025.",
    "Remuneration report\n\nTotal base salary paid in 2023: Chief Executive Alistair Penrose GBP 598,000; Chief "
    "Financial Officer Daniel Okafor GBP 412,000. The annual bonus is based 70% on revenue growth and 30% on store "
    "openings; no bonus measure refers to margin or cash flow. Long-term awards vest on total shareholder return "
    "against the FTSE 250.",
    "Independent auditor's report to the members of Northgate Harbour Foods plc\n\nIn our opinion the financial "
    "statements give a true and fair view. Key audit matters: supplier rebates, store impairment, going concern. "
    "Brightwell & Lowe LLP, Statutory Auditor, Leeds, 12 March 2024.",
    "Note 19 Borrowings\n\nDuring the year the group refinanced its revolving credit facility of GBP 350 million, now "
    "maturing in June 2027, at an interest margin of 1.85% over SONIA (previously 1.40%). Net debt rose from GBP 210 "
    "million to GBP 298 million.\n\nSustainability: we aim to halve food waste by 2030 and reach net zero in our "
    "own operations by 2040; both targets are measured against a 2022 baseline.",
    "Five-year summary (GBP million)\n\nRevenue: 2019 1,002.3; 2020 1,051.8; 2021 1,127.4; 2022 1,209.6; 2023 "
    "1,284.6.\nOperating profit: 2019 61.2; 2020 58.9; 2021 70.3; 2022 74.8; 2023 49.1.",
]
REPORT = pdf_with_pages(PAGES)
DOCUMENTS = ROOT / "tests" / "router" / "data" / "documents.jsonl"
ROWS = [r for r in map(json.loads, DOCUMENTS.read_text(encoding="utf-8").splitlines()) if r.get("e2e")]
LOOKUPS = [r["prompt"] for r in ROWS if r["label"] == 0]
ANALYSES = [r["prompt"] for r in ROWS if r["label"] == 1]
SHIPPED = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def shipped_point(router: Router, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """A proxy with the shipped configuration's router and aliases; models, storage and retries as in the tests."""
    config = base_config(tmp_path_factory.mktemp("shipped-point"))
    config["router"], config["aliases"] = SHIPPED["router"], SHIPPED["aliases"]
    running = start_proxy(settings_from_dict(config), router)
    yield running
    stop_proxy(running)


def _tiers(proxy: RunningProxy, router: Router, questions: list[str]) -> list[tuple[str, str, str]]:
    """(tier, score, question) for each question asked about the uploaded report with the ``auto`` alias, which
    must route at the shipped point: the cut that sends ``strong_share`` of the model's reference traffic strong."""
    assert SHIPPED["router"]["threshold"] is None and not SHIPPED["aliases"]["auto"]
    cut = threshold_for_strong_share(router.meta.quantiles, SHIPPED["router"]["strong_share"])
    client = proxy.client()
    file_id = client.files.create(file=("annual-report-2023.pdf", REPORT, "application/pdf"), purpose="user_data").id
    out = []
    for question in questions:
        content = [{"type": "file", "file": {"file_id": file_id}}, {"type": "text", "text": question}]
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": content}]
        )
        assert raw.headers["x-route-llm-documents"] == "full"
        assert raw.headers["x-route-llm-document-pages"] == "annual-report-2023.pdf:1,2,3,4,5,6,7,8"
        assert raw.headers["x-route-llm-threshold"] == f"{cut:.4f}"
        out.append((raw.headers["x-route-llm-tier"], raw.headers["x-route-llm-score"], question))
    return out


def test_the_questions_are_the_sets_ten_lookups_and_ten_analyses() -> None:
    assert len(LOOKUPS) == len(ANALYSES) == 10


def test_lookups_about_an_uploaded_report_go_to_the_weak_tier(shipped_point: RunningProxy, router: Router) -> None:
    answers = _tiers(shipped_point, router, LOOKUPS)
    assert sum(tier == "weak" for tier, _, _ in answers) >= 8, answers


def test_analyses_of_an_uploaded_report_go_to_the_strong_tier(shipped_point: RunningProxy, router: Router) -> None:
    answers = _tiers(shipped_point, router, ANALYSES)
    assert sum(tier == "strong" for tier, _, _ in answers) >= 8, answers
