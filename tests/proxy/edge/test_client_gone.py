"""A client that leaves a long stream whose upstream answers faster than the proxy can pass it on (issue 29 row 17).

The slow-stream tests beside this one (``test_chat_e2e.py``, ``test_stream_endings.py``) leave a stream whose
upstream pauses between chunks. Here the upstream has the next event ready every time the proxy asks: the case
where the proxy used to read the whole answer to its end for nobody, holding LiteLLM's copy of it. The last two
tests drive the stream over an upstream whose chunks have always arrived, so that what the event loop does is
certain: the stream stops at the next chunk once the client left, and it gives other tasks turns meanwhile (such a
stream never waits on its own: before, it held the loop until its end).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import REGISTRY

from proxy.edge.accounting import Outcome
from proxy.edge.guard import Life
from proxy.edge.routes import ChatHandler, ChatStream
from proxy.settings import settings_from_dict
from tests.conftest import RunningProxy, base_config
from tests.standin import Fault, StandInServer


def _requests(status: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "route_llm_requests" for s in m.samples
               if s.name.endswith("_total") and s.labels["status"] == status)


def test_leaving_a_fast_long_stream_closes_the_upstream_stream(proxy: RunningProxy, standin: StandInServer,
                                                               caplog: Any) -> None:
    # 3,000 events of 10 kB (30 MB), as fast as the proxy takes them: far more than the socket buffers between the
    # stand-in, the proxy and a client that stopped reading can hold, so the upstream is still sending when the
    # client leaves.
    standin.state.faults.append(Fault("long", events=3000))
    gone, ok = _requests("client_disconnected"), _requests("ok")
    with caplog.at_level("INFO", logger="route_llm.access"), httpx.Client(base_url=proxy.base_url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json={
                "model": "gemini-1.5-flash", "stream": True,
                "messages": [{"role": "user", "content": "a very long story"}]}) as r:
            assert r.status_code == 200
            assert next(r.iter_lines()).startswith("data: ")
        # Left after one event. The stream is accounted once it ends, whichever way it ends.
        deadline = time.monotonic() + 60
        while _requests("client_disconnected") + _requests("ok") == gone + ok and time.monotonic() < deadline:
            time.sleep(0.05)
        while standin.state.streams_closed_early == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    # The proxy closed the upstream's stream before its end: the stand-in saw its reader leave. (Before the fix
    # the proxy read all 30 MB for nobody, and the stand-in finished its answer.)
    assert standin.state.streams_closed_early == 1
    assert (_requests("client_disconnected"), _requests("ok")) == (gone + 1, ok)
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "route_llm.access"]
    assert access[-1]["status"] == "client_disconnected"
    # And the server keeps serving.
    answer = proxy.client().chat.completions.create(model="gemini-1.5-flash",
                                                    messages=[{"role": "user", "content": "hi"}])
    assert (answer.choices[0].message.content or "").startswith("answer from gemini-1.5-flash")


class _Arrived:
    """An upstream stream whose next chunk has always arrived: ``__anext__`` never waits for anything."""

    def __init__(self, chunks: int) -> None:
        self.left, self.read, self.closed = chunks, 0, False

    def __aiter__(self) -> _Arrived:
        return self

    async def __anext__(self) -> Any:
        from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

        if self.left == 0:
            raise StopAsyncIteration
        self.left, self.read = self.left - 1, self.read + 1
        return ModelResponseStream(choices=[StreamingChoices(index=0, delta=Delta(content="x" * 10_000))])

    async def aclose(self) -> None:
        self.closed = True


def _passed_on(tmp_path: Path, upstream: _Arrived, leave_after: int | None = None) -> tuple[list[int], Outcome]:
    """Run ChatHandler's stream over ``upstream`` (the client leaving after ``leave_after`` events, if given) beside a
    task that notes how many events had gone out when it first ran."""
    handler = ChatHandler(settings_from_dict(base_config(tmp_path)))
    o, life = Outcome(request_id="req-gone"), Life()
    sent: list[int] = [0]
    other: list[int] = []

    async def run() -> None:
        async def note() -> None:
            other.append(sent[0])

        noted = asyncio.ensure_future(note())  # runs at the first turn the stream gives the loop
        async for _ in handler._sse(None, upstream, "gemini-1.5-flash", o, time.perf_counter(), ChatStream(False),
                                    life):
            sent[0] += 1
            if sent[0] == leave_after:
                life.disconnected = True  # what the guard notes when the http.disconnect arrives
        await noted

    asyncio.run(run())
    return other, o


def test_a_stream_whose_chunks_have_always_arrived_gives_other_tasks_turns(tmp_path: Path) -> None:
    upstream = _Arrived(100)  # 1 MB
    other, o = _passed_on(tmp_path, upstream)
    assert upstream.read == 100 and o.status != "client_disconnected"
    # Another task ran before the stream was through (before the fix: only after all 100 events and [DONE]).
    assert other and other[0] < 10


def test_a_stream_stops_reading_the_upstream_at_the_next_chunk_once_the_client_left(tmp_path: Path) -> None:
    upstream = _Arrived(100)
    _, o = _passed_on(tmp_path, upstream, leave_after=3)
    assert upstream.read == 4 and upstream.closed and o.status == "client_disconnected"
