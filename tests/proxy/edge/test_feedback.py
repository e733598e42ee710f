"""Decision records and POST /v1/feedback over real sockets: the SDK makes the routed call, httpx rates it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from proxy.state.database import open_databases
from proxy.state.records import prompt_hash
from tests.conftest import RunningProxy
from tests.proxy.both_backends import *  # noqa: F403 (fixtures: backend, proxy)
from tests.standin import Fault, StandInServer

PROMPT = "Write a haiku about routers."


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _chat(proxy: RunningProxy, *, key: str = "unused", model: str = "auto", content: str = PROMPT,
          stream: bool = False) -> tuple[str, str]:
    """One routed request through the SDK; returns (x-request-id, tier)."""
    client = proxy.client(api_key=key)
    messages: Any = [{"role": "user", "content": content}]
    if stream:
        with client.chat.completions.with_streaming_response.create(model=model, messages=messages,
                                                                     stream=True) as raw:
            assert raw.status_code == 200
            for _ in raw.parse():
                pass
            return raw.headers["x-request-id"], raw.headers.get("x-route-llm-tier", "")
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    raw.parse()
    return raw.headers["x-request-id"], raw.headers.get("x-route-llm-tier", "")


def _rate(proxy: RunningProxy, body: Any, *, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with proxy.http() as http:
        if isinstance(body, (bytes, str)):
            return http.post("/v1/feedback", content=body, headers={**headers, "content-type": "application/json"})
        return http.post("/v1/feedback", json=body, headers=headers)


def _rows(proxy: RunningProxy, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """A statement on the proxy's records database (SQLite file or Postgres schema), from outside the proxy."""
    databases = open_databases(proxy.settings)
    try:
        assert databases.records is not None
        with databases.records.transaction() as tx:
            return tx.execute(sql, params)
    finally:
        databases.close()


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_rating_a_routed_answer_stores_it_and_counts_it_per_tier(proxy: RunningProxy, standin: StandInServer) -> None:
    request_id, tier = _chat(proxy)
    before = _sample("route_llm_feedback_total", tier=tier, rating="bad")
    r = _rate(proxy, {"request_id": request_id, "rating": "bad", "score": 0.2, "comment": "too short"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("fb-") and body["object"] == "feedback"
    assert (body["request_id"], body["rating"], body["score"], body["tier"]) == (request_id, "bad", 0.2, tier)
    assert body["router_version"] == r.headers["x-route-llm-router-version"]
    assert _sample("route_llm_feedback_total", tier=tier, rating="bad") == before + 1
    [stored] = _rows(proxy, "SELECT id, rating, rating_score, comment, tier FROM feedback WHERE request_id = ?",
                     (request_id,))
    assert stored == (body["id"], "bad", 0.2, "too short", tier)


def test_records_keep_a_hash_not_the_prompt_by_default(proxy: RunningProxy, standin: StandInServer) -> None:
    request_id, tier = _chat(proxy, content=PROMPT + " (hash only)")
    assert _rate(proxy, {"request_id": request_id, "rating": "good"}).status_code == 200
    [row] = _rows(proxy, "SELECT prompt, prompt_hash, alias, tier, model, router_version, score, threshold "
                  "FROM decisions WHERE request_id = ?", (request_id,))
    prompt, hashed, alias, stored_tier, model, version, score, threshold = row
    assert prompt is None and hashed == prompt_hash(PROMPT + " (hash only)")
    assert (alias, stored_tier, threshold) == ("auto", tier, 0.5)
    assert model.startswith("gemini-1.5-") and len(version) == 12 and 0.0 <= score <= 1.0


def test_store_prompts_keeps_the_text_and_streams_are_recorded_too(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(feedback={"store_prompts": True})
    request_id, tier = _chat(proxy, content="Stream me a poem", stream=True)
    r = _rate(proxy, {"request_id": request_id, "rating": "good"})
    assert r.status_code == 200, r.text
    assert _rows(proxy, "SELECT prompt, tier FROM feedback WHERE request_id = ?",
                 (request_id,)) == [("Stream me a poem", tier)]


def test_store_prompts_keeps_only_prompts_that_reached_a_model(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(feedback={"store_prompts": True}, upstream={"retries": 0, "fallback": "none"})
    refused = []
    with proxy.http() as http:
        for body, status in (({"model": "no-such-model", "messages": [{"role": "user", "content": "unknown"}]}, 404),
                             ({"model": "auto", "messages": [{"role": "user", "content": "bad body"}],
                               "temperature": "hot"}, 400)):
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == status, r.text
            refused.append(r.headers["x-request-id"])
    standin.state.faults.append(Fault("status", status=503))
    with pytest.raises(openai.APIStatusError) as err:  # asked a model, which failed: the prompt is kept
        proxy.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": "failed"}])
    failed = err.value.response.headers["x-request-id"]
    served, _ = _chat(proxy, content="served")
    for request_id in (*refused, failed, served):  # a rating waits for its record, so every record is written
        assert _rate(proxy, {"request_id": request_id, "rating": "bad"}).status_code == 200
    prompts = {request_id: _rows(proxy, "SELECT d.prompt, f.prompt FROM decisions d JOIN feedback f "
                                 "ON f.request_id = d.request_id WHERE d.request_id = ?", (request_id,))
               for request_id in (*refused, failed, served)}
    assert prompts == {refused[0]: [(None, None)], refused[1]: [(None, None)], failed: [("failed", "failed")],
                       served: [("served", "served")]}


def test_a_later_rating_of_the_same_request_replaces_the_earlier(proxy: RunningProxy, standin: StandInServer) -> None:
    request_id, _ = _chat(proxy)
    first = _rate(proxy, {"request_id": request_id, "rating": "bad"}).json()
    second = _rate(proxy, {"request_id": request_id, "rating": "good"}).json()
    assert first["id"] != second["id"]
    assert _rows(proxy, "SELECT id, rating FROM feedback WHERE request_id = ?",
                 (request_id,)) == [(second["id"], "good")]


def test_an_unknown_request_id_is_404(proxy: RunningProxy, standin: StandInServer) -> None:
    error = _error(_rate(proxy, {"request_id": "req-never-made", "rating": "good"}), 404)
    assert (error["code"], error["param"]) == ("request_not_found", "request_id")


def _decision(proxy: RunningProxy, request_id: str) -> tuple[Any, ...]:
    [row] = _rows(proxy, "SELECT routed, status, http_status, alias, tier, model, score, threshold, router_version "
                  "FROM decisions WHERE request_id = ?", (request_id,))
    return row


def test_a_request_for_a_concrete_model_is_recorded_and_can_be_rated(proxy: RunningProxy,
                                                                     standin: StandInServer) -> None:
    pinned, tier = _chat(proxy, model="gemini-1.5-flash")  # nothing was routed: the routing fields stay empty
    r = _rate(proxy, {"request_id": pinned, "rating": "bad"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["tier"], body["model"], body["routed"], body["status"], body["router_version"]) == \
        (tier, "gemini-1.5-flash", False, "ok", None)
    assert _decision(proxy, pinned) == (0, "ok", 200, "", tier, "gemini-1.5-flash", None, None, "")


def test_a_failed_request_is_recorded_and_can_be_rated(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(upstream={"retries": 0, "fallback": "none"})
    standin.state.faults.append(Fault("status", status=503))
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": PROMPT}])
    assert err.value.status_code == 503
    request_id = err.value.response.headers["x-request-id"]
    before = _sample("route_llm_feedback_total", tier=err.value.response.headers["x-route-llm-tier"], rating="bad")
    r = _rate(proxy, {"request_id": request_id, "rating": "bad", "comment": "no answer at all"})
    assert r.status_code == 200, r.text
    assert (r.json()["routed"], r.json()["status"]) == (True, "upstream_error")
    routed, status, http_status, alias, tier, _, score, threshold, version = _decision(proxy, request_id)
    assert (routed, status, http_status, alias, threshold) == (1, "upstream_error", 503, "auto", 0.5)
    assert tier == err.value.response.headers["x-route-llm-tier"] and 0.0 <= score <= 1.0 and len(version) == 12
    assert _sample("route_llm_feedback_total", tier=tier, rating="bad") == before + 1


def test_a_request_refused_before_routing_is_recorded_without_a_tier(proxy: RunningProxy,
                                                                      standin: StandInServer) -> None:
    with pytest.raises(openai.NotFoundError) as err:  # an unknown model: no tier, no upstream call
        proxy.client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    request_id = err.value.response.headers["x-request-id"]
    before = _sample("route_llm_feedback_total", tier="none", rating="bad")
    r = _rate(proxy, {"request_id": request_id, "rating": "bad"})
    assert r.status_code == 200, r.text
    assert (r.json()["tier"], r.json()["model"], r.json()["status"]) == (None, None, "client_error")
    assert _decision(proxy, request_id) == (0, "client_error", 404, "", "", "", None, None, "")
    assert _sample("route_llm_feedback_total", tier="none", rating="bad") == before + 1


def test_an_expired_record_cannot_be_rated(proxy: RunningProxy, standin: StandInServer) -> None:
    request_id, _ = _chat(proxy)
    assert _rate(proxy, {"request_id": request_id, "rating": "good"}).status_code == 200
    # Age the record past feedback.retention_days (30 by default).
    _rows(proxy, "UPDATE decisions SET created_at = ? WHERE request_id = ?", (time.time() - 31 * 86400, request_id))
    error = _error(_rate(proxy, {"request_id": request_id, "rating": "bad"}), 404)
    assert "older than 30 days" in error["message"]


def test_a_key_can_rate_only_its_own_requests(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["key-a", "key-b"]})
    request_id, _ = _chat(proxy, key="key-a")
    assert _error(_rate(proxy, {"request_id": request_id, "rating": "bad"}, key="key-b"), 404)["code"] == \
        "request_not_found"
    assert _error(_rate(proxy, {"request_id": request_id, "rating": "bad"}), 401)["code"] == "invalid_api_key"
    assert _rate(proxy, {"request_id": request_id, "rating": "bad"}, key="key-a").status_code == 200


def test_a_stored_rating_names_the_key_that_made_and_rated_the_request(make_proxy: Any,
                                                                      standin: StandInServer) -> None:
    """What `feedback export` writes as each row's rater: the owner hash of the request's own key."""
    from proxy.edge.guard import owner_of
    from proxy.state.records import read_feedback

    proxy = make_proxy(server={"api_keys": ["key-a", "key-b"]}, feedback={"store_prompts": True})
    for key in ("key-a", "key-b", "key-a"):
        request_id, _ = _chat(proxy, key=key, content=f"{PROMPT} ({key})")
        assert _rate(proxy, {"request_id": request_id, "rating": "bad"}, key=key).status_code == 200
    databases = open_databases(proxy.settings)
    try:
        assert databases.records is not None
        owners = sorted(fb.owner for fb in read_feedback(databases.records) if fb.prompt and "(key-" in fb.prompt)
    finally:
        databases.close()
    assert owners == sorted([owner_of("key-a"), owner_of("key-a"), owner_of("key-b")])
    assert "key-a" not in owners and "key-b" not in owners


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    ([], None),
    ({"rating": "good"}, "request_id"),
    ({"request_id": "", "rating": "good"}, "request_id"),
    ({"request_id": 7, "rating": "good"}, "request_id"),
    ({"request_id": "req-1"}, "rating"),
    ({"request_id": "req-1", "rating": "meh"}, "rating"),
    ({"request_id": "req-1", "rating": "good", "score": 1.5}, "score"),
    ({"request_id": "req-1", "rating": "good", "score": -0.1}, "score"),
    ({"request_id": "req-1", "rating": "good", "score": True}, "score"),
    ({"request_id": "req-1", "rating": "good", "score": "0.5"}, "score"),
    ({"request_id": "req-1", "rating": "good", "comment": 3}, "comment"),
    ({"request_id": "req-1", "rating": "good", "comment": "x" * 5000}, "comment"),
    ({"request_id": "req-1", "rating": "good", "stars": 5}, "stars"),
])
def test_malformed_ratings_are_400_naming_the_field(proxy: RunningProxy, body: Any, param: str | None) -> None:
    error = _error(_rate(proxy, body), 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_ratings_are_rate_limited_like_chat(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(server={"api_keys": ["key-a"], "limit_requests_per_minute": 2})
    request_id, _ = _chat(proxy, key="key-a")
    assert _rate(proxy, {"request_id": request_id, "rating": "good"}, key="key-a").status_code == 200
    error = _error(_rate(proxy, {"request_id": request_id, "rating": "good"}, key="key-a"), 429)
    assert error["code"] == "rate_limit_exceeded"


def test_a_full_store_drops_records_and_refuses_ratings_but_serves_every_chat(make_proxy: Any, backend: str,
                                                                             standin: StandInServer) -> None:
    if backend != "sqlite":
        pytest.skip("feedback.limit_store_bytes caps the SQLite file (Postgres: size the database)")
    proxy = make_proxy(feedback={"store_prompts": True, "limit_store_bytes": 48 * 1024})
    before = _sample("route_llm_decision_record_errors_total", reason="full")
    ids = [_chat(proxy, content=f"{i} " + "long prompt " * 800)[0] for i in range(12)]  # every chat answered
    statuses = []
    for request_id in ids:
        r = _rate(proxy, {"request_id": request_id, "rating": "bad"})
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "feedback_store_full"
        else:
            assert r.status_code in (200, 404), r.text  # 404: the record itself did not fit
    assert 503 in statuses
    # Records are written in batches; by now every one is (a rating whose record is not found yet waits for the
    # queue), so the records that did not fit have been counted.
    assert _sample("route_llm_decision_record_errors_total", reason="full") > before


def test_an_unusable_store_leaves_chat_working_and_ratings_503(make_proxy: Any, tmp_path: Path, backend: str,
                                                               standin: StandInServer) -> None:
    if backend != "sqlite":
        pytest.skip("feedback.storage_dir is the SQLite store's directory")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    proxy = make_proxy(feedback={"storage_dir": str(blocker)})
    before = _sample("route_llm_decision_record_errors_total", reason="unavailable")
    request_id, _ = _chat(proxy)
    assert _sample("route_llm_decision_record_errors_total", reason="unavailable") == before + 1
    error = _error(_rate(proxy, {"request_id": request_id, "rating": "good"}), 503)
    assert error["code"] == "feedback_store_unavailable"


def test_feedback_switched_off_is_404(make_proxy: Any, standin: StandInServer) -> None:
    proxy = make_proxy(feedback={"enabled": False})
    request_id, _ = _chat(proxy)
    assert _error(_rate(proxy, {"request_id": request_id, "rating": "good"}), 404)["code"] == "feedback_disabled"
