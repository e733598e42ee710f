"""``route-llm feedback export``: the (tier, rating) → target mapping, and rows read from a real store."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from proxy.cli import main
from proxy.state import records
from proxy.state.database import Database, PostgresDatabase, SqliteDatabase
from proxy.state.feedback_export import place_of, target_pair
from proxy.state.records import DB_FILE, DecisionRecord, RecordStore, prompt_hash, read_feedback
from tests.conftest import base_config


@pytest.mark.parametrize(("place", "rating", "strong_good", "pair"), [
    ("cheapest", "bad", "drop", (0.0, 1.0)),  # the cheapest failed: a dearer one was needed (target 1)
    ("cheapest", "good", "drop", (1.0, 1.0)),  # the cheapest was enough (target 0)
    ("between", "bad", "drop", (0.0, 1.0)),  # a middle tier failed: cheaper ones would too (target 1)
    ("dearest", "bad", "drop", (0.0, 0.0)),  # the dearest failed too: it was not needed (target 0)
    ("dearest", "good", "drop", None),  # says nothing about the cheapest
    ("between", "good", "drop", None),
    ("dearest", "good", "soft", (0.5, 1.0)),  # or a soft target of 0.5
    ("between", "good", "soft", (0.5, 1.0)),
])
def test_each_place_and_rating_maps_to_a_documented_target(place: str, rating: str, strong_good: str,
                                                           pair: tuple[float, float] | None) -> None:
    assert target_pair(place, rating, strong_good) == pair  # type: ignore[arg-type]


@pytest.mark.parametrize(("tier", "tiers", "place"), [
    ("weak", ("weak", "strong"), "cheapest"),
    ("strong", ("weak", "strong"), "dearest"),
    ("flash", ("flash", "pro", "ultra"), "cheapest"),
    ("pro", ("flash", "pro", "ultra"), "between"),
    ("ultra", ("flash", "pro", "ultra"), "dearest"),
    ("weak", ("flash", "pro", "ultra"), "cheapest"),  # weak/strong name the ends of any list, as in the config
    ("strong", ("flash", "pro", "ultra"), "dearest"),
    ("gone", ("flash", "pro", "ultra"), None),  # a tier since removed from the configuration
    ("", ("weak", "strong"), None),  # no tier was chosen
])
def test_a_tier_is_placed_by_its_position_in_the_configured_list(tier: str, tiers: tuple[str, ...],
                                                                 place: str | None) -> None:
    assert place_of(tier, tiers) == place


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
    assert "3 training rows written" in output and "1 good ratings of tiers above the cheapest dropped" in output
    assert "1 ratings skipped because their prompt was not stored" in output


def test_an_export_of_ratings_without_prompts_names_the_setting_and_what_retrain_needs(tmp_path: Path) -> None:
    rows, output = _export(tmp_path, [(_record(f"r{i}", "weak", None), "bad") for i in range(4)])
    assert rows == []
    assert "4 ratings read; 0 training rows written" in output
    assert "feedback.store_prompts off (the default" in output and "`feedback: {store_prompts: true}`" in output
    assert "restart the server" in output
    assert "needs at least 10 rows left to train on" in output and "--accept" in output


THREE_TIERS = [("c1", "flash", "bad"), ("c2", "flash", "good"), ("m1", "pro", "bad"), ("m2", "pro", "good"),
               ("d1", "ultra", "bad"), ("d2", "ultra", "good"), ("g1", "gone", "bad"), ("w1", "weak", "bad")]


def _three_tier_records() -> list[tuple[DecisionRecord, str]]:
    return [(_record(request_id, tier, f"prompt {request_id}"), rating) for request_id, tier, rating in THREE_TIERS]


def test_three_tiers_export_by_place_in_the_tier_list(tmp_path: Path) -> None:
    rows, output = _export(tmp_path, _three_tier_records(), "--tiers", "flash, pro,ultra", "--strong-good", "soft")
    got = {r["request_id"]: (r["weak_score"], r["strong_score"], r["tier_place"]) for r in rows}
    assert got == {"c1": (0.0, 1.0, "cheapest"), "c2": (1.0, 1.0, "cheapest"), "m1": (0.0, 1.0, "between"),
                   "m2": (0.5, 1.0, "between"), "d1": (0.0, 0.0, "dearest"), "d2": (0.5, 1.0, "dearest"),
                   "w1": (0.0, 1.0, "cheapest")}
    assert "1 ratings of tiers not in the tier list skipped" in output


def test_the_tier_list_comes_from_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    models = [{"name": name, "model": f"gemini/{name}"} for name in ("flash", "pro", "ultra")]
    config.write_text(yaml.safe_dump({"models": models, "router": {"shares": [0.5, 0.3, 0.2]},
                                      "documents": {"storage_dir": str(tmp_path)}}))
    rows, output = _export(tmp_path, _three_tier_records(), "--config", str(config))
    assert [r["request_id"] for r in rows] == ["c1", "c2", "m1", "d1", "w1"]
    assert "2 good ratings of tiers above the cheapest dropped" in output


@pytest.mark.parametrize("bad", ["", "flash", "flash,,pro", "flash,flash", " , "])
def test_a_bad_tier_list_is_refused_naming_the_option(tmp_path: Path, bad: str) -> None:
    _export(tmp_path, [])
    result = CliRunner().invoke(main, ["feedback", "export", "--store", str(tmp_path), "--tiers", bad])
    assert result.exit_code == 2 and "--tiers needs two or more distinct names" in result.output


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


def test_export_reads_the_store_the_config_names_on_either_backend(storage_url: str, tmp_path: Path) -> None:
    """Without --store, `feedback export` reads where the proxy writes: storage.url (Postgres) or SQLite."""
    db = _open(storage_url)
    store = RecordStore(db, retention_days=30, limit_records=None)
    store.add(_record("r1", "weak", "p1"))
    store.flush()
    store.rate("", "r1", "bad", None, None)
    store.close()
    db.close()
    config = base_config(tmp_path, storage={"url": storage_url})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["feedback", "export", "--config", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == ["p1"]


def test_records_still_queued_at_shutdown_are_all_written(tmp_path: Path) -> None:
    """The writer batches on a timer; closing the store writes whatever is queued, more than one batch of it."""
    db = SqliteDatabase(tmp_path / DB_FILE)
    store = RecordStore(db, retention_days=30, limit_records=None)
    count = 2 * records._BATCH + 7
    for i in range(count):
        store.add(_record(f"req-close-{i}", "weak", None))
    store.close()
    with db.transaction() as tx:
        [(stored,)] = tx.execute("SELECT COUNT(*) FROM decisions WHERE request_id LIKE 'req-close-%'")
    db.close()
    assert stored == count


KEYS = [{"name": "heavy-app", "key": "sk-heavy-secret-0001"}, {"name": "light-app", "key": "sk-light-secret-0002"}]


def _two_keys_store(tmp_path: Path) -> Path:
    """400 ratings from one key, 50 from another, in the SQLite store under ``tmp_path``; returns a config naming
    both keys."""
    from proxy.edge.guard import owner_of

    db = SqliteDatabase(tmp_path / DB_FILE)
    store = RecordStore(db, retention_days=30, limit_records=None)
    rated = [(owner_of(k["key"]), f"{k['name']}-{i}") for k, n in zip(KEYS, (400, 50), strict=True) for i in range(n)]
    for owner, request_id in rated:
        store.add(dataclasses.replace(_record(request_id, "weak", f"prompt {request_id}"), owner=owner))
    store.flush()
    for owner, request_id in rated:
        store.rate(owner, request_id, "bad", None, None)
    store.close()
    db.close()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, server={"api_keys": KEYS},
                                                 feedback={"storage_dir": str(tmp_path)})))
    return config


def test_each_exported_row_names_the_key_that_rated_it_never_the_key_itself(tmp_path: Path) -> None:
    from proxy.edge.guard import owner_of

    config = _two_keys_store(tmp_path)
    rows, output = _export(tmp_path, [], "--config", str(config))
    raters = Counter((r["rater"], r["rater_name"]) for r in rows)
    assert raters == {(owner_of("sk-heavy-secret-0001"), "heavy-app"): 400,
                      (owner_of("sk-light-secret-0002"), "light-app"): 50}
    assert "secret" not in (tmp_path / "rows.jsonl").read_text()
    assert "2 raters" in output and "400 (89%)" in output  # the operator sees one key dominate


def test_without_the_configuration_a_row_names_its_rater_by_hash_only(tmp_path: Path) -> None:
    _two_keys_store(tmp_path)
    rows, _ = _export(tmp_path, [], "--tiers", "weak,strong")
    assert {r["rater_name"] for r in rows} == {None} and len({r["rater"] for r in rows}) == 2


def test_max_key_share_caps_the_largest_rater(tmp_path: Path) -> None:
    config = _two_keys_store(tmp_path)
    rows, output = _export(tmp_path, [], "--config", str(config), "--max-key-share", "0.5")
    assert Counter(r["rater_name"] for r in rows) == {"heavy-app": 50, "light-app": 50}
    assert "350 rows of the largest raters left out by --max-key-share 0.5" in output
    again, _ = _export(tmp_path, [], "--config", str(config), "--max-key-share", "0.5")
    assert [r["feedback_id"] for r in again] == [r["feedback_id"] for r in rows]  # the same rows every time


@pytest.mark.parametrize("bad", ["0", "1.5", "nan", "inf", "-0.2", "half", ""])
def test_a_bad_max_key_share_exits_2_naming_the_option(tmp_path: Path, bad: str) -> None:
    _export(tmp_path, [])
    result = CliRunner().invoke(main, ["feedback", "export", "--store", str(tmp_path), "--tiers", "weak,strong",
                                       "--max-key-share", bad])
    assert result.exit_code == 2 and "Invalid value for '--max-key-share'" in result.output, result.output
