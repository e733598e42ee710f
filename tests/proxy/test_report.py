"""`route-llm report`: a day of decision records and ratings, written through the real store, rendered to one HTML
page and opened in headless Chromium; and the record fields the report needs (cost, tokens, error reason)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from click.testing import CliRunner

from proxy.cli import main
from proxy.report import NO_TIER, Inputs, ReportError, parse_since, summarize
from proxy.state import records
from proxy.state.database import Database, PostgresDatabase, SqliteDatabase
from proxy.state.records import DB_FILE, DecisionRecord, RecordStore, prompt_hash, read_decisions
from proxy.upstream.pricing import Price
from tests.conftest import RunningProxy, base_config, wait_until
from tests.standin import Fault, StandInServer

PRICES = {"weak": Price(0.075e-6, 0.30e-6), "strong": Price(1.25e-6, 5.0e-6)}  # base_config's prices
ERRORS = [("timeout", 504, "upstream_error"), ("server_error", 502, "upstream_error"),
          ("model_not_found", 404, "client_error"), ("upstream_rate_limited", 429, "rate_limited"),
          ("invalid_request_error", 400, "client_error")]


def _day(now: float, count: int = 600, seed: int = 7) -> list[DecisionRecord]:
    """A day of traffic: mostly routed requests at a 0.5 cut, some pinned, a few failing in several ways."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        at = now - 86400 + 86400 * n / count
        score = min(1.0, max(0.0, rng.betavariate(2, 3)))
        routed = rng.random() < 0.85
        tier = ("strong" if score >= 0.5 else "weak") if routed else rng.choice(["weak", "strong"])
        failing = rng.random() < 0.08
        reason, status, kind = rng.choice(ERRORS) if failing else ("", 200, "ok")
        tokens_in, tokens_out = rng.randint(20, 2000), rng.randint(10, 800)
        answered = not failing
        out.append(DecisionRecord(
            owner="", request_id=f"req-{n}", created_at=at, alias="auto" if routed else "",
            score=score if routed else None, threshold=0.5 if routed else None,
            tier="" if reason == "model_not_found" else tier, model=f"model-{tier}", fallback=False,
            router_error=False, router_version="v1" if routed else "", prompt=None, prompt_hash=prompt_hash(str(n)),
            routed=routed, status=kind, http_status=status,
            prompt_tokens=tokens_in if answered else 0, completion_tokens=tokens_out if answered else 0,
            cost_usd=PRICES[tier].cost(tokens_in, tokens_out) if answered else None, error_reason=reason))
    return out


def _store_day(db: Database, now: float) -> list[DecisionRecord]:
    day = _day(now)
    store = RecordStore(db, retention_days=30, limit_records=None)
    for r in day:
        store.add(r)
    store.flush()
    rng = random.Random(3)
    for r in day[::9]:
        if r.status == "ok":
            bad = rng.random() < (0.35 if r.tier == "weak" else 0.12)
            store.rate("", r.request_id, "bad" if bad else "good", None, None)
    store.close()
    return day


def _config(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, **sections)))
    return path


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does)")
    return found


# Test-only: measures, in the browser, what each panel drew, and writes it where --dump-dom shows it.
_MEASURE = """<script>
for (const panel of document.querySelectorAll('.panel')) {
  const svg = panel.querySelector('svg');
  let drawn = 0;
  if (svg) for (const el of svg.querySelectorAll('path, rect, text, use')) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 || box.height > 0) drawn++;
  }
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  panel.setAttribute('data-measured', `${Math.round(box.width)}x${Math.round(box.height)}:${drawn}`);
}
</script></body>"""


def _browser(chromium: str, page: Path, *args: str) -> str:
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=5000", *args, page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_a_replayed_day_renders_every_panel_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    now = time.time()
    config = _config(tmp_path)
    db = SqliteDatabase(tmp_path / "files" / DB_FILE)
    day = _store_day(db, now)
    db.close()
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--config", str(config), "--since", "1d", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(day) - 1} requests" in result.output or f"{len(day)} requests" in result.output
    page = out.read_text(encoding="utf-8")

    # Self-contained: nothing fetched when it is opened (no scripts, styles, fonts or images from elsewhere).
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.findall(r"url\((?!#)", page)  # only the charts' own clip paths
    assert not re.findall(r'(?:src|href)="(?!#|data:)', page)
    assert page.count('data-filled="true"') == 5 and 'class="empty"' not in page

    measured = tmp_path / "measured.html"
    measured.write_text(page.replace("</body>", _MEASURE), encoding="utf-8")
    dom = _browser(chromium, measured, "--dump-dom")
    panels = dict(re.findall(r'<section class="panel" id="(\w+)"[^>]*data-measured="([^"]+)"', dom))
    assert set(panels) == {"requests", "scores", "cost", "ratings", "errors"}, dom[:500]
    for name, value in panels.items():
        size, drawn = value.split(":")
        width, height = (int(v) for v in size.split("x"))
        assert width > 300 and height > 100 and int(drawn) > 20, (name, value)

    shot = tmp_path / "report.png"
    _browser(chromium, out, f"--screenshot={shot}", "--window-size=1100,2300")
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    colours = {tuple(p) for p in (pixels[::7, ::7].reshape(-1, 3) * 255).astype(int).tolist()}
    assert len(colours) > 50  # charts, not a blank or single-colour page


def test_the_summary_prices_the_same_tokens_on_the_dearest_tier() -> None:
    now = 1_800_000_000.0
    day = _day(now)
    s = summarize(Inputs(records=day, ratings=[], tiers=["weak", "strong"], prices=[PRICES["weak"], PRICES["strong"]],
                         cuts=[0.5], since=now - 86400, until=now))
    answered = [r for r in day if r.cost_usd is not None]
    assert s.cost == pytest.approx(sum(r.cost_usd or 0 for r in answered))
    assert s.dearest_cost == pytest.approx(sum(PRICES["strong"].cost(r.prompt_tokens, r.completion_tokens)
                                               for r in answered))
    assert 0 < s.savings < s.dearest_cost
    assert s.bucket_seconds == 3600 and sum(sum(v) for v in s.per_tier.values()) == len(day)
    assert NO_TIER in s.per_tier  # model_not_found: refused before a tier
    assert dict(s.errors)["timeout"] > 0 and s.failed == sum(r.status != "ok" for r in day)


@pytest.mark.parametrize(("text", "seconds"), [("7d", 7 * 86400), ("36h", 36 * 3600), ("90m", 5400), ("2w", 14 * 86400),
                                               ("1.5d", 1.5 * 86400), (" 45s ", 45)])
def test_since_takes_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("bad", ["", "7", "d", "7 days", "-1d", "0d", "1y", "7D", "1e3d", "99999w", "7d;rm", "٣d"])
def test_a_bad_since_is_refused_with_what_to_give(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="--since"):
        parse_since(bad)
    result = CliRunner().invoke(main, ["report", "--config", str(_config(tmp_path)), "--since", bad,
                                       "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "--since" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.html").exists()


def test_a_missing_store_is_an_input_error_not_a_new_empty_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", "--config", str(_config(tmp_path)), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 4 and "no feedback store here" in result.output
    assert not (tmp_path / "files" / DB_FILE).exists()


def test_an_empty_window_says_so_in_every_panel(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "files" / DB_FILE)
    RecordStore(db, retention_days=30, limit_records=None).close()
    db.close()
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", "--config", str(_config(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.count('data-filled="false"') == 5 and page.count('class="empty"') == 5


def _open(url: str) -> Database:
    if url.startswith("sqlite:///"):
        return SqliteDatabase(Path(url[len("sqlite:///"):]) / DB_FILE)
    return PostgresDatabase(url, limit_connections=2)


def test_a_store_of_the_previous_schema_gains_the_accounting_columns(storage_url: str) -> None:
    db = _open(storage_url)
    db.migrate("records", records._SQLITE[:2] if db.kind == "sqlite" else records._POSTGRES[:2])
    with db.transaction() as tx:
        tx.execute("INSERT INTO decisions (owner, request_id, created_at, alias, score, threshold, tier, model, "
                   "fallback, router_error, router_version, prompt, prompt_hash, routed, status, http_status) "
                   "VALUES ('', 'old', ?, 'auto', 0.7, 0.5, 'strong', 'm', 0, 0, 'v', NULL, 'h', 1, 'ok', 200)",
                   (time.time(),))
    store = RecordStore(db, retention_days=30, limit_records=None)  # migrates to the newest version
    store.add(DecisionRecord(owner="", request_id="new", created_at=time.time(), alias="", score=None, threshold=None,
                             tier="weak", model="m", fallback=False, router_error=False, router_version="",
                             prompt=None, prompt_hash="h", routed=False, status="upstream_error", http_status=504,
                             error_reason="timeout"))
    store.close()
    got = {r.request_id: (r.prompt_tokens, r.cost_usd, r.error_reason) for r in read_decisions(db, 0)}
    db.close()
    assert got == {"old": (0, None, ""), "new": (0, None, "timeout")}


def test_served_and_failed_requests_record_tokens_cost_and_error_reason(make_proxy: Any,
                                                                       standin: StandInServer) -> None:
    proxy: RunningProxy = make_proxy(upstream={"retries": 0, "fallback": "none"})
    client = proxy.client()
    ok = client.chat.completions.with_raw_response.create(model="gemini-1.5-pro",
                                                          messages=[{"role": "user", "content": "hello"}])
    standin.state.faults.append(Fault("status", status=500, model="gemini-1.5-flash"))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="gemini-1.5-flash", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    db = SqliteDatabase(Path(proxy.settings.storage_dir()) / DB_FILE)

    def found() -> list[DecisionRecord]:
        return read_decisions(db, 0)

    wait_until(lambda: len(found()) == 3, "three decision records", timeout=30)
    by_reason = {r.error_reason: r for r in found()}
    db.close()
    served = by_reason[""]
    usage = ok.parse().usage
    assert served.request_id == ok.headers["x-request-id"] and served.tier == "strong"
    assert (served.prompt_tokens, served.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert served.cost_usd == pytest.approx(PRICES["strong"].cost(usage.prompt_tokens, usage.completion_tokens))
    assert by_reason["server_error"].status == "upstream_error" and by_reason["server_error"].cost_usd is None
    assert by_reason["model_not_found"].http_status == 404
