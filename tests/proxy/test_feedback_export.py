"""``route-llm feedback export``: the (tier, rating) → target mapping, and rows read from a real store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.state.database import SqliteDatabase
from proxy.state.feedback_export import target_pair
from proxy.state.records import DB_FILE, DecisionRecord, RecordStore, prompt_hash


@pytest.mark.parametrize(("tier", "rating", "strong_good", "pair"), [
    ("weak", "bad", "drop", (0.0, 1.0)),  # weak failed: strong was needed (target 1)
    ("weak", "good", "drop", (1.0, 1.0)),  # weak was enough (target 0)
    ("strong", "bad", "drop", (0.0, 0.0)),  # strong failed too: it was not needed (target 0)
    ("strong", "good", "drop", None),  # says nothing about weak
    ("strong", "good", "soft", (0.5, 1.0)),  # or a soft target of 0.5
])
def test_each_tier_and_rating_maps_to_a_documented_target(tier: str, rating: str, strong_good: str,
                                                          pair: tuple[float, float] | None) -> None:
    assert target_pair(tier, rating, strong_good) == pair  # type: ignore[arg-type]


def _record(request_id: str, tier: str, prompt: str | None) -> DecisionRecord:
    return DecisionRecord(owner="", request_id=request_id, created_at=time.time(), alias="auto", score=0.4,
                          threshold=0.5, tier=tier, model=f"model-{tier}", fallback=False, router_error=False,
                          router_version="abc123def456", prompt=prompt, prompt_hash=prompt_hash(prompt or "x"))


def test_export_writes_training_rows_and_says_what_it_skipped(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / DB_FILE)
    store = RecordStore(db, retention_days=30, limit_records=None)
    cases = [("r1", "weak", "bad", "p1"), ("r2", "weak", "good", "p2"), ("r3", "strong", "bad", "p3"),
             ("r4", "strong", "good", "p4"), ("r5", "weak", "bad", None)]
    for request_id, tier, _, prompt in cases:
        store.add(_record(request_id, tier, prompt))
    store.flush()
    for request_id, _, rating, _ in cases:
        store.rate("", request_id, rating, None, None)  # type: ignore[arg-type]
    store.close()
    db.close()
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["feedback", "export", "--store", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["weak_score"], r["strong_score"]) for r in rows] == [
        ("p1", 0.0, 1.0), ("p2", 1.0, 1.0), ("p3", 0.0, 0.0)]
    assert "3 training rows written" in result.output and "1 strong/good ratings dropped" in result.output
    assert "1 ratings skipped because their prompt was not stored" in result.output


def test_export_without_a_store_fails_clearly(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["feedback", "export", "--store", str(tmp_path)])
    assert result.exit_code == 4 and "no feedback store here" in result.output
