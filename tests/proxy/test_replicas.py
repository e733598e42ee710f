"""Two ``route-llm serve`` processes sharing one PostgreSQL and one Redis, as replicas behind a load balancer do:
files, deletes, ratings and each key's requests-per-minute are the same whichever one answers, and a replica
killed with SIGKILL in the middle of storing an upload leaves nothing half-written behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.conftest import LOOPBACK_TLS, base_config
from tests.helpers import QUESTION, REPORT, Replica, Shared, file_part_by_id, start_replicas, upload
from tests.proxy.pdfs import pdf_with_pages
from tests.services import Services, fresh_redis, fresh_schema
from tests.standin import StandInServer, free_port

ROUTE_LLM = Path(sys.executable).with_name("route-llm")
LIMIT = 30  # requests per minute per key; the limit test spends key k3's, the others use k1 and k2


@pytest.fixture(scope="module")
def shared(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    database_url = fresh_schema(services.need("postgresql"))
    redis_url = fresh_redis(services.need("redis"))
    tmp = tmp_path_factory.mktemp("replicas")
    cfg = base_config(tmp, upstream={"warmup": False},
                      server={"api_keys": ["k1", "k2", "k3"], "limit_requests_per_minute": LIMIT,
                              "redis_url": redis_url, "redis_failure": "closed",
                              "timeout_redis": 10,  # a slow CI box is not an outage
                              "timeout_shutdown": 2},
                      storage={"url": database_url})
    standin_url = os.environ["GEMINI_API_BASE"]
    for tier in ("weak", "strong"):
        cfg["models"][tier].update(api_base=standin_url, api_key="test-upstream-key")
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return Shared(database_url, redis_url, config)


@pytest.fixture(scope="module")
def replicas(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    """a and b serve; the third is killed by the last test."""
    started = start_replicas(shared, tmp_path_factory.mktemp("replicas"), ["a", "b", "victim"])
    yield started
    for replica in started:
        replica.stop()


@pytest.fixture()
def pair(replicas: list[Replica]) -> tuple[Replica, Replica]:
    return replicas[0], replicas[1]


def test_a_file_uploaded_through_one_replica_is_answered_through_the_other(pair: tuple[Replica, Replica],
                                                                           standin: StandInServer) -> None:
    a, b = pair
    stored = upload(a.client(), REPORT, "report.pdf")
    on_b = b.client()
    assert on_b.files.retrieve(stored.id).filename == "report.pdf"
    assert on_b.files.content(stored.id).read() == REPORT
    assert stored.id in [f.id for f in on_b.files.list()]
    answer = on_b.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                             file_part_by_id(stored.id)]}])
    answer.parse()
    assert answer.headers["x-route-llm-documents"] == "full"
    assert "Zephyrine Widgets" in str(standin.state.requests[-1].body)  # B read the text A extracted and stored
    with pytest.raises(openai.NotFoundError):  # another key's file, on either replica
        b.client("k2").files.retrieve(stored.id)


def test_a_delete_through_one_replica_is_seen_by_both(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    stored = upload(b.client(), REPORT, "to-delete.pdf")
    assert a.client().files.retrieve(stored.id).id == stored.id
    assert a.client().files.delete(stored.id).deleted is True
    for replica in (a, b):
        with pytest.raises(openai.NotFoundError):
            replica.client().files.retrieve(stored.id)
        with pytest.raises(openai.NotFoundError):
            replica.client().files.content(stored.id)
        assert stored.id not in [f.id for f in replica.client().files.list()]


def test_a_rating_sent_to_one_replica_finds_the_record_the_other_wrote(pair: tuple[Replica, Replica],
                                                                       standin: StandInServer) -> None:
    a, b = pair
    raw = a.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Name three rivers."}])
    raw.parse()
    r = httpx.post(b.base_url + "/v1/feedback", json={"request_id": raw.headers["x-request-id"], "rating": "good"},
                   headers={"authorization": "Bearer k1"}, timeout=30)
    assert r.status_code == 200, r.text


def test_a_response_chain_stored_through_one_replica_continues_and_is_deleted_through_the_other(
        pair: tuple[Replica, Replica], standin: StandInServer) -> None:
    a, b = pair
    first = a.client().responses.create(model="auto", input="My name is Ada.")
    second = b.client().responses.create(model="auto", input="What is my name?", previous_response_id=first.id)
    texts = ["".join(p.get("text", "") for p in c["parts"]) for c in standin.state.requests[-1].body["contents"]]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?"]  # B read the chain A stored
    assert a.client().responses.retrieve(second.id).previous_response_id == first.id
    with pytest.raises(openai.NotFoundError):  # another key's response, on either replica
        a.client("k2").responses.retrieve(second.id)
    b.client().responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        a.client().responses.retrieve(first.id)


def test_the_requests_per_minute_limit_holds_across_replicas(pair: tuple[Replica, Replica]) -> None:
    a, b = pair
    statuses = []
    for i in range(LIMIT + 4):
        replica = a if i % 2 else b
        r = httpx.get(replica.base_url + "/v1/models", headers={"authorization": "Bearer k3"}, timeout=30,
                      verify=LOOPBACK_TLS)
        statuses.append(r.status_code)
    # One process each, counting alone, would have allowed 2 x LIMIT.
    assert statuses == [200] * LIMIT + [429] * 4
    assert httpx.get(a.base_url + "/v1/models", headers={"authorization": "Bearer k1"}, timeout=30).status_code == 200


def _waiting_on_chunks(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation = 'file_chunks'::regclass"
                           ).fetchone()
    return int(row[0]) if row else 0


def test_a_replica_killed_while_storing_an_upload_leaves_no_half_written_file(
        replicas: list[Replica], shared: Shared) -> None:
    """The victim has written the file's row and waits to write its bytes (the test holds a lock on the chunk
    table) when it is killed: its transaction dies with it, and the other replica never sees the file."""
    import psycopg

    _, b, victim = replicas
    big = pdf_with_pages([f"page {i} " + "text " * 200 for i in range(50)])
    before = {f.id for f in b.client().files.list()}
    outcome: list[Any] = []

    def send() -> None:
        try:
            outcome.append(upload(victim.client(), big, "killed.pdf"))
        except Exception as exc:  # the connection dies with the server
            outcome.append(exc)

    locker = psycopg.connect(shared.database_url)
    try:
        locker.execute("LOCK TABLE file_chunks IN SHARE MODE")  # inserts wait; reads go on
        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 120
        while _waiting_on_chunks(shared.database_url) == 0:
            assert time.monotonic() < deadline, victim.log.read_text(errors="replace")[-3000:]
            assert sender.is_alive(), f"the upload ended before it reached the chunk table: {outcome}"
            time.sleep(0.05)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=30)
    finally:
        locker.rollback()
        locker.close()
        victim.stop()
    sender.join(timeout=60)
    assert outcome and not hasattr(outcome[0], "id"), outcome  # the client got an error, not a file
    deadline = time.monotonic() + 60
    while _waiting_on_chunks(shared.database_url):  # the orphaned backend finds its client gone and rolls back
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert {f.id for f in b.client().files.list()} == before
    with psycopg.connect(shared.database_url) as conn:
        orphans = conn.execute("SELECT COUNT(*) FROM files f WHERE f.bytes <> "
                               "(SELECT COALESCE(SUM(LENGTH(c.data)), 0) FROM file_chunks c WHERE c.file_id = f.id)"
                               ).fetchone()
        named = conn.execute("SELECT COUNT(*) FROM files WHERE filename = 'killed.pdf'").fetchone()
    assert orphans == (0,) and named == (0,)
    assert upload(b.client(), REPORT, "after.pdf").id  # the survivor goes on storing files
