"""Stored Responses end to end, on SQLite and on PostgreSQL: the official SDK's ``responses.create`` with
``previous_response_id``, ``retrieve``, ``input_items.list`` and ``delete``, streamed and not -> route-llm on a
real socket -> LiteLLM -> the Gemini stand-in; keys, deletion, expiry, the quota, the body limits and restarts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import openai
import pytest

from proxy.edge.guard import owner_of
from proxy.settings import ConfigError, settings_from_dict
from proxy.state.database import SqliteDatabase
from proxy.state.responses import DB_FILE, ResponseStore
from router import Router
from tests.conftest import RunningProxy, base_config, start_proxy, stop_proxy, storage_section
from tests.proxy.both_backends import backend  # noqa: F401 (fixture: every test here runs on both backends)
from tests.standin import Fault, StandInServer

FLASH = "gemini-1.5-flash"
K1, K2 = "key-one", "key-two"
HARD = "Prove Fermat's little theorem rigorously, step by step."
EASY = "What is the capital of France?"


def keyed_config(tmp: Path, backend: str, request: pytest.FixtureRequest, **sections: dict[str, Any]
                 ) -> dict[str, Any]:
    server = {"api_keys": [K1, K2], **sections.pop("server", {})}
    return base_config(tmp, storage=storage_section(backend, request), server=server, **sections)


@pytest.fixture(scope="module")
def proxy(backend: str, router: Router, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[RunningProxy]:
    """A proxy with two proxy keys (so storage is on by default), shared by the module's tests on one backend."""
    running = start_proxy(settings_from_dict(keyed_config(tmp_path_factory.mktemp("proxy"), backend, request,
                                                          router={"context": "conversation"})), router)
    yield running
    stop_proxy(running)


@pytest.fixture()
def make(backend: str, router: Router, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Proxies with sections replaced; all of one test share its database (``tmp_path``, or one schema)."""
    started: list[RunningProxy] = []
    storage = storage_section(backend, request)

    def start(**sections: dict[str, Any]) -> RunningProxy:
        server = {"api_keys": [K1, K2], **sections.pop("server", {})}
        settings = settings_from_dict(base_config(tmp_path, storage=storage, server=server, **sections))
        started.append(start_proxy(settings, router))
        return started[-1]

    yield start
    for running in started:
        stop_proxy(running)


def _contents(standin: StandInServer) -> list[tuple[str, str]]:
    """(role, text) of the last request the stand-in saw."""
    return [(c["role"], "".join(p.get("text", "") for p in c["parts"]))
            for c in standin.state.requests[-1].body["contents"]]


def _without_ids(response: dict[str, Any]) -> dict[str, Any]:
    """A Response object with what differs between two calls (ids, times) taken out."""
    out = {k: v for k, v in response.items() if k not in ("id", "created_at", "completed_at")}
    out["output"] = [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]
    return out


# --- chains -------------------------------------------------------------------------------------------------

def test_previous_response_id_sends_earlier_turns_but_not_their_instructions(proxy: RunningProxy,
                                                                           standin: StandInServer) -> None:
    client = proxy.client(K1)
    first = client.responses.create(model=FLASH, input="My name is Ada.", instructions="Be terse.")
    assert first.store is True and first.previous_response_id is None
    second = client.responses.create(model=FLASH, input="What is my name?", previous_response_id=first.id,
                                     instructions="Answer in French.")
    assert second.previous_response_id == first.id and second.instructions == "Answer in French."
    assert _contents(standin) == [("user", "My name is Ada."), ("model", first.output_text),
                                  ("user", "What is my name?")]
    assert standin.state.requests[-1].system_instruction == "Answer in French."  # not "Be terse."
    third = client.responses.create(model=FLASH, input="And again?", previous_response_id=second.id)
    assert [text for _, text in _contents(standin)] == ["My name is Ada.", first.output_text, "What is my name?",
                                                        second.output_text, "And again?"]
    assert standin.state.requests[-1].system_instruction is None and third.instructions is None


def test_retrieve_returns_the_response_as_sent_and_input_items_page_through_the_chain(proxy: RunningProxy) -> None:
    client = proxy.client(K1)
    first = client.responses.create(model=FLASH, input="one")
    second = client.responses.create(model=FLASH, input=[{"role": "user", "content": "two"}],
                                     previous_response_id=first.id)
    assert client.responses.retrieve(second.id).model_dump() == second.model_dump()
    items = list(client.responses.input_items.list(second.id, limit=1))  # the SDK follows `after`, page by page
    texts = [item.content[0].text for item in items]  # type: ignore[union-attr]
    assert texts == ["two", first.output_text, "one"]  # newest first, as OpenAI's default order
    assert [item.role for item in items] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    assert items[1].id == first.output[0].id and all(item.id for item in items)
    page = client.responses.input_items.list(second.id, order="asc", limit=2)
    assert [i.id for i in page.data] == [items[2].id, items[1].id] and page.has_more
    rest = client.responses.input_items.list(second.id, order="asc", after=items[1].id)
    assert [i.id for i in rest.data] == [items[0].id] and not rest.has_more
    assert [i.id for i in client.responses.input_items.list(first.id)] == [items[2].id]


def test_delete_answers_openais_deleted_object_and_later_turns_keep_their_chain(proxy: RunningProxy,
                                                                               standin: StandInServer) -> None:
    client = proxy.client(K1)
    first = client.responses.create(model=FLASH, input="remember 7")
    second = client.responses.create(model=FLASH, input="and 8", previous_response_id=first.id)
    raw = proxy.http().delete(f"/v1/responses/{first.id}", headers={"authorization": f"Bearer {K1}"})
    assert raw.status_code == 200 and raw.json() == {"id": first.id, "object": "response", "deleted": True}
    for call in (lambda: client.responses.retrieve(first.id), lambda: client.responses.delete(first.id),
                 lambda: client.responses.input_items.list(first.id),
                 lambda: client.responses.create(model=FLASH, input="x", previous_response_id=first.id)):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["code"] == "response_not_found"  # type: ignore[index]
        assert first.id in err.value.body["message"]  # type: ignore[index]
    client.responses.create(model=FLASH, input="and 9", previous_response_id=second.id)
    assert [t for _, t in _contents(standin)][:2] == ["remember 7", first.output_text]


def test_another_keys_response_is_a_404_everywhere(proxy: RunningProxy, standin: StandInServer) -> None:
    mine = proxy.client(K1).responses.create(model=FLASH, input="secret")
    theirs = proxy.client(K2)
    calls = [lambda: theirs.responses.retrieve(mine.id), lambda: theirs.responses.delete(mine.id),
             lambda: theirs.responses.input_items.list(mine.id),
             lambda: theirs.responses.create(model=FLASH, input="x", previous_response_id=mine.id),
             lambda: theirs.responses.retrieve("resp_unknown")]
    seen = len(standin.state.requests)
    for call in calls:
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert len(standin.state.requests) == seen  # a refused chain never reaches the model
    assert proxy.client(K1).responses.retrieve(mine.id).id == mine.id  # K2's delete did not delete it


def test_store_false_keeps_nothing(proxy: RunningProxy) -> None:
    client = proxy.client(K1)
    response = client.responses.create(model=FLASH, input="forget this", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


# --- streams ------------------------------------------------------------------------------------------------

def test_a_streamed_response_is_stored_as_its_last_event_carries_it_and_as_a_plain_one(proxy: RunningProxy,
                                                                                     standin: StandInServer) -> None:
    client = proxy.client(K1)
    first = client.responses.create(model=FLASH, input="start")
    with client.responses.create(model=FLASH, input=EASY, previous_response_id=first.id, stream=True) as stream:
        final = [event for event in stream][-1].response  # type: ignore[union-attr]
    streamed_history = _contents(standin)
    stored = proxy.http().get(f"/v1/responses/{final.id}", headers={"authorization": f"Bearer {K1}"}).json()
    assert stored == final.model_dump(exclude_unset=True) and stored["store"] is True
    assert stored == client.responses.retrieve(final.id).model_dump(exclude_unset=True)
    plain = client.responses.create(model=FLASH, input=EASY, previous_response_id=first.id)
    assert _contents(standin) == streamed_history
    assert _without_ids(stored) == _without_ids(client.responses.retrieve(plain.id).model_dump(exclude_unset=True))
    chained = client.responses.create(model=FLASH, input="next", previous_response_id=final.id)
    assert [t for _, t in _contents(standin)] == ["start", first.output_text, EASY, final.output_text, "next"]
    assert chained.previous_response_id == final.id


def test_a_stream_cut_by_the_client_stores_nothing(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.reply_words, standin.state.stream_chunks = 40, 20
    standin.state.faults.append(Fault("slow_stream", seconds=0.2))
    try:
        with proxy.http() as http, http.stream("POST", "/v1/responses", headers={"authorization": f"Bearer {K1}"},
                                               json={"model": FLASH, "input": EASY, "stream": True}) as r:
            lines = r.iter_lines()
            created = next(json.loads(line[6:]) for line in lines if line.startswith("data: "))
        response_id = created["response"]["id"]
        deadline = time.monotonic() + 10
        while standin.state.streams_closed_early == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert standin.state.streams_closed_early == 1
    finally:
        standin.state.reply_words, standin.state.stream_chunks = 8, 3
    time.sleep(0.5)  # had anything been written after the cut, it would be there by now
    with pytest.raises(openai.NotFoundError):
        proxy.client(K1).responses.retrieve(response_id)


def test_a_stream_broken_upstream_stores_nothing(proxy: RunningProxy, standin: StandInServer) -> None:
    standin.state.faults.append(Fault("midstream"))
    with proxy.client(K1).responses.create(model=FLASH, input=EASY, stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    with pytest.raises(openai.NotFoundError):
        proxy.client(K1).responses.retrieve(events[0].response.id)  # type: ignore[union-attr]


# --- routing and the decision record --------------------------------------------------------------------------

def test_a_chain_is_routed_on_its_whole_conversation_and_linked_to_its_decision_record(
        proxy: RunningProxy, backend: str) -> None:
    client = proxy.client(K1)
    first = client.responses.create(model="auto", input=HARD)
    raw = client.responses.with_raw_response.create(model="auto", input=EASY, previous_response_id=first.id,
                                                    extra_headers={"x-request-id": "chain-turn-2"})
    as_chat = client.chat.completions.with_raw_response.create(model="auto", messages=[
        {"role": "user", "content": HARD}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": EASY}])
    alone = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": EASY}])
    assert raw.headers["x-route-llm-score"] == as_chat.headers["x-route-llm-score"]
    assert raw.headers["x-route-llm-score"] != alone.headers["x-route-llm-score"]  # the earlier turn weighs in
    if backend == "sqlite":
        store = ResponseStore(SqliteDatabase(Path(proxy.settings.storage_dir()) / DB_FILE), retention_days=None,
                              limit_per_key=None, own_db=True)
        try:
            row = store.get(owner_of(K1), raw.parse().id)
        finally:
            store.close()
        assert row is not None and row.request_id == "chain-turn-2" and row.previous_id == first.id


# --- bad input -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "param"), [
    ({"previous_response_id": 5}, "previous_response_id"),
    ({"previous_response_id": ["resp_1"]}, "previous_response_id"),
    ({"store": "yes"}, "store"),
    ({"conversation": "conv_1"}, "conversation"),
])
def test_bad_state_parameters_are_400s_naming_the_field(proxy: RunningProxy, body: dict[str, Any], param: str) -> None:
    r = proxy.http().post("/v1/responses", headers={"authorization": f"Bearer {K1}"},
                          json={"model": FLASH, "input": "hi", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert proxy.client(K1).responses.create(model=FLASH, input="still serving?").status == "completed"


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/input_items", {"limit": "0"}, "limit"), ("/input_items", {"limit": "101"}, "limit"),
    ("/input_items", {"limit": "ten"}, "limit"), ("/input_items", {"order": "sideways"}, "order"),
    ("/input_items", {"after": "msg_nope"}, "after"), ("", {"stream": "true"}, "stream"),
])
def test_bad_list_and_retrieve_parameters_are_400s(proxy: RunningProxy, path: str, params: dict[str, str],
                                                   param: str) -> None:
    response = proxy.client(K1).responses.create(model=FLASH, input="hi")
    r = proxy.http().get(f"/v1/responses/{response.id}{path}", params=params,
                         headers={"authorization": f"Bearer {K1}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_without_proxy_keys_storage_is_off_unless_turned_on(make: Any) -> None:
    keyless = make(server={"api_keys": []})
    response = keyless.client().responses.create(model=FLASH, input="hi", store=True)
    assert response.store is False
    with pytest.raises(openai.BadRequestError) as err:
        keyless.client().responses.create(model=FLASH, input="hi", previous_response_id=response.id)
    assert "responses.store" in err.value.body["message"]  # type: ignore[index]
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        keyless.client().responses.retrieve(response.id)
    turned_on = make(server={"api_keys": []}, responses={"store": True})
    first = turned_on.client().responses.create(model=FLASH, input="hi")
    assert turned_on.client().responses.create(model=FLASH, input="again", previous_response_id=first.id).store


def test_storage_turned_off_with_keys_refuses_previous_response_id(make: Any) -> None:
    off = make(responses={"store": False})
    with pytest.raises(openai.BadRequestError) as err:
        off.client(K1).responses.create(model=FLASH, input="hi", previous_response_id="resp_1")
    assert err.value.body["code"] == "unsupported_parameter"  # type: ignore[index]


def test_the_per_key_quota_is_a_clear_400_before_the_model_is_asked(make: Any, standin: StandInServer) -> None:
    proxy = make(responses={"limit_per_key": 2})
    client = proxy.client(K1)
    kept = [client.responses.create(model=FLASH, input=f"turn {i}").id for i in range(2)]
    seen = len(standin.state.requests)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model=FLASH, input="one more", stream=stream)
        body: Any = err.value.body
        assert body["code"] == "response_quota_exceeded" and "responses.limit_per_key = 2" in body["message"]
    assert len(standin.state.requests) == seen
    assert client.responses.create(model=FLASH, input="not kept", store=False).store is False
    assert proxy.client(K2).responses.create(model=FLASH, input="other key").store is True
    client.responses.delete(kept[0])
    assert client.responses.create(model=FLASH, input="room again").store is True


@pytest.mark.parametrize(("server", "limit"), [({"limit_messages": 4}, "server.limit_messages"),
                                               ({"limit_content_chars": 300}, "server.limit_content_chars"),
                                               ({"limit_body_bytes": 1500}, "server.limit_body_bytes")])
def test_a_chain_grown_past_the_body_limits_is_a_413_naming_the_limit(make: Any, server: dict[str, int],
                                                                        limit: str) -> None:
    client = make(server=server).client(K1)
    previous: str | None = None
    with pytest.raises(openai.APIStatusError) as err:
        for turn in range(30):
            chain = {"previous_response_id": previous} if previous else {}
            previous = client.responses.create(model=FLASH, input=f"turn {turn}: " + "words " * 10, **chain).id
    assert err.value.status_code == 413
    body: Any = err.value.body
    assert body["param"] == "previous_response_id" and limit in body["message"]
    assert "start a new chain" in body["message"]
    assert client.responses.create(model=FLASH, input="a fresh chain").status == "completed"


@pytest.mark.parametrize(("server", "given", "limit"), [
    ({"limit_messages": 2}, [{"role": "user", "content": "x"}] * 3, "server.limit_messages"),
    ({"limit_content_chars": 100}, "x" * 101, "server.limit_content_chars")])
def test_an_input_alone_past_the_limits_is_a_413_naming_input_and_the_limit(make: Any, server: dict[str, int],
                                                                            given: Any, limit: str) -> None:
    r = make(server=server).http().post("/v1/responses", headers={"authorization": f"Bearer {K1}"},
                                        json={"model": FLASH, "input": given})
    assert r.status_code == 413 and r.json()["error"]["param"] == "input" and limit in r.json()["error"]["message"]


def test_an_expired_response_is_a_404(make: Any) -> None:
    client = make(responses={"retention_days": 1 / 86400}).client(K1)  # one second
    response = client.responses.create(model=FLASH, input="soon gone")
    time.sleep(1.5)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=FLASH, input="x", previous_response_id=response.id)


# --- durability ----------------------------------------------------------------------------------------------

def test_a_chain_survives_a_restart_and_is_read_through_a_second_replica(make: Any, standin: StandInServer) -> None:
    before = make()
    first = before.client(K1).responses.create(model=FLASH, input="kept across restarts")
    stop_proxy(before)
    after, replica = make(), make()  # a restart on the same storage; a second replica beside it
    assert after.client(K1).responses.retrieve(first.id).output_text == first.output_text
    second = replica.client(K1).responses.create(model=FLASH, input="and then?", previous_response_id=first.id)
    assert [t for _, t in _contents(standin)] == ["kept across restarts", first.output_text, "and then?"]
    assert [i.id for i in after.client(K1).responses.input_items.list(second.id)][-1] == \
        [i.id for i in replica.client(K1).responses.input_items.list(first.id)][0]
    replica.client(K1).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        after.client(K1).responses.retrieve(first.id)


# --- configuration -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "key"), [({"retention_days": 0}, "responses.retention_days"),
                                              ({"limit_per_key": 0}, "responses.limit_per_key"),
                                              ({"store": "sometimes"}, "responses.store"),
                                              ({"keep": True}, "responses.keep")])
def test_bad_responses_settings_stop_the_start_naming_the_key(tmp_path: Path, section: dict[str, Any],
                                                              key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        settings_from_dict(base_config(tmp_path, responses=section))


@pytest.mark.parametrize("response_id", ["resp_%00nul", "..%2F..%2Fetc", "'; DROP TABLE responses; --", "r" * 5000,
                                         "résumé-✓", "resp_%ZZ"])
def test_junk_ids_are_404s_and_the_store_keeps_serving(proxy: RunningProxy, response_id: str) -> None:
    http = proxy.http(headers={"authorization": f"Bearer {K1}"})
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        r = http.request(method, f"/v1/responses/{response_id}{path}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error", r.text
    r = http.post("/v1/responses", json={"model": FLASH, "input": "x", "previous_response_id": unquote(response_id)})
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    kept = proxy.client(K1).responses.create(model=FLASH, input="still here")
    assert proxy.client(K1).responses.retrieve(kept.id).id == kept.id


def test_a_store_that_fails_while_storing_is_a_503_or_a_failed_stream_never_a_completed_one(
        proxy: RunningProxy, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk or a lost database cannot be produced on demand here, so the store's write raises the error the
    driver would: the client must not be told a response is complete (and continuable) when it was not stored."""
    import sqlite3

    import psycopg

    def broken(*args: Any, **kwargs: Any) -> None:
        if backend == "sqlite":
            raise sqlite3.OperationalError("database or disk is full")
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")

    monkeypatch.setattr(ResponseStore, "put", broken)
    client = proxy.client(K1)
    with pytest.raises(openai.APIStatusError) as err:
        client.responses.create(model=FLASH, input="not kept")
    assert err.value.status_code == 503 and err.value.body["code"] == "storage_unavailable"  # type: ignore[index]
    assert "disk" not in err.value.body["message"]  # type: ignore[index]  # the driver's words stay in the log
    with client.responses.create(model=FLASH, input="not kept either", stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
    monkeypatch.undo()
    assert client.responses.create(model=FLASH, input="kept again").store is True
