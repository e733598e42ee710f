"""A client that leaves a long stream whose upstream answers faster than the proxy can pass it on (issue 29 row 17).

The slow-stream tests beside this one (``test_chat_e2e.py``, ``test_stream_endings.py``) leave a stream whose
upstream pauses between chunks. Here the upstream has the next event ready every time the proxy asks: the case
where the proxy used to read the whole answer to its end for nobody, holding LiteLLM's copy of it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from prometheus_client import REGISTRY

from tests.conftest import RunningProxy
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
