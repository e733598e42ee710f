"""``route-llm feedback export``: the (tier, rating) → target mapping, and rows read from a real store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.state import records
from proxy.state.database import Database, PostgresDatabase, SqliteDatabase
from proxy.state.feedback_export import target_pair
from proxy.state.records import DB_FILE, DecisionRecord, RecordStore, prompt_hash, read_feedback


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


def _record(request_id: str, tier: str, prompt: str | None, *, routed: bool = True,
            status: str = "ok") -> DecisionRecord:
    return DecisionRecord(owner="", request_id=request_id, created_at=time.time(), alias="auto" if routed else "",
                          score=0.4 if routed else None, threshold=0.5 if routed else None, tier=tier,
                          model=f"model-{tier}", fallback=False, router_error=False,
                          router_version="abc123def456" if routed else "", prompt=prompt,
                          prompt_hash=prompt_hash(prompt or "x"), routed=routed, status=status,
                          http_status=200 if status == "ok" else 503)


def _export(tmp_path: Path, records: list[tuple[DecisionRecord, str]], *args: str) -> tuple[list[dict[str, Any]], str]:
    """Store the records, rate each, export; returns (rows, the command's summary line)."""
    db = SqliteDatabase(tmp_path / DB_FILE)
    store = RecordStore(db, retention_days=30, limit_records=None)
    for record, _ in records:
        store.add(record)
    store.flush()
    for record, rating in records:
        store.rate("", record.request_id, rating, None, None)  # type: ignore[arg-type]
    store.close()
    db.close()
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["feedback", "export", "--store", str(tmp_path), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()], result.output


def test_export_writes_training_rows_and_says_what_it_skipped(tmp_path: Path) -> None:
    cases = [("r1", "weak", "bad", "p1"), ("r2", "weak", "good", "p2"), ("r3", "strong", "bad", "p3"),
             ("r4", "strong", "good", "p4"), ("r5", "weak", "bad", None)]
    rows, output = _export(tmp_path, [(_record(request_id, tier, prompt), rating)
                                      for request_id, tier, rating, prompt in cases])
    assert [(r["prompt"], r["weak_score"], r["strong_score"]) for r in rows] == [
        ("p1", 0.0, 1.0), ("p2", 1.0, 1.0), ("p3", 0.0, 0.0)]
    assert "3 training rows written" in output and "1 strong/good ratings dropped" in output
    assert "1 ratings skipped because their prompt was not stored" in output


def test_unrouted_answers_train_like_routed_ones_and_failed_requests_are_skipped(tmp_path: Path) -> None:
    rows, output = _export(tmp_path, [
        (_record("pinned", "weak", "pinned prompt", routed=False), "bad"),  # the client chose weak: still weak/bad
        (_record("failed", "weak", "failed prompt", status="upstream_error"), "bad"),  # no answer was rated
        (_record("failed-pinned", "strong", "x", routed=False, status="upstream_error"), "bad"),
    ])
    assert [(r["prompt"], r["weak_score"], r["strong_score"], r["routed"]) for r in rows] == [
        ("pinned prompt", 0.0, 1.0, False)]
    assert "1 training rows written" in output and "2 ratings of failed requests skipped" in output


def _open(url: str) -> Database:
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url[len("sqlite:///"):]) / DB_FILE)
    return PostgresDatabase(url, limit_connections=2)


def test_a_store_of_the_first_schema_is_upgraded_and_keeps_its_ratings(storage_url: str) -> None:
    db = _open(storage_url)
    first = records._SQLITE[:1] if db.kind == "sqlite" else records._POSTGRES[:1]
    db.migrate("records", first)  # version 1: routed, answered requests only, no outcome columns
    now = time.time()
    with db.transaction() as tx:
        tx.execute("INSERT INTO decisions (owner, request_id, created_at, alias, score, threshold, tier, model, "
                   "fallback, router_error, router_version, prompt, prompt_hash) "
                   "VALUES ('', 'old', ?, 'auto', 0.7, 0.5, 'strong', 'm', 0, 0, 'v', 'p0', 'h')", (now,))
        tx.execute("INSERT INTO feedback (id, owner, request_id, created_at, rating, rating_score, comment, "
                   "decided_at, alias, score, threshold, tier, model, fallback, router_version, prompt, prompt_hash) "
                   "VALUES ('fb-old', '', 'old', ?, 'bad', NULL, NULL, ?, 'auto', 0.7, 0.5, 'strong', 'm', 0, 'v', "
                   "'p0', 'h')", (now, now))
    store = RecordStore(db, retention_days=30, limit_records=None)  # the new version starts: migration 2
    store.add(_record("new", "weak", "p1", routed=False, status="upstream_error"))
    store.flush()
    store.rate("", "new", "bad", None, None)
    assert store.rate("", "old", "good", None, None).status == "ok"  # old rows: routed and answered
    store.close()
    got = [(fb.request_id, fb.routed, fb.status, fb.rating) for fb in read_feedback(db)]
    db.close()
    assert sorted(got) == [("new", False, "upstream_error", "bad"), ("old", True, "ok", "good")]
