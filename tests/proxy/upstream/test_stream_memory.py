"""What a stream costs while it is passed on: a bounded amount, however long the answer (issue 29 row 17).

LiteLLM's stream wrapper keeps a copy of every chunk it hands out and the whole answer's text, for logging and
fallbacks the proxy does not use: a 10 MB answer held 10 MB twice over until its end, and 20 clients leaving such
streams grew the worker by 170-200 MB. Here one stream of 4 MB is read through the real Gemini provider from the
stand-in, as the proxy reads it, and Python's own allocation tracer says what the reading holds.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

from proxy.upstream import lean
from proxy.upstream.calls import CheckedStream
from tests.standin import Fault, StandInServer

EVENTS = 400  # of 10 kB each (tests.standin's "long" fault)


async def _open() -> CheckedStream:
    return CheckedStream(await lean.acompletion(model="gemini/gemini-1.5-flash", api_key="test-key", stream=True,
                                                messages=[{"role": "user", "content": "a very long story"}],
                                                stream_options={"include_usage": True}))


async def _usage() -> Any:
    """The usage a short answer to the same question reports (the stand-in counts the same for the long one)."""
    last = None
    async for chunk in await _open():
        last = chunk
    return last.usage


async def _read(events: int) -> tuple[int, int, Any, int]:
    """Read a whole stream; the memory held after its first chunk and just before its end, its last chunk."""
    stream = await _open()
    first = await stream.__anext__()
    assert first is not None
    after_first, _ = tracemalloc.get_traced_memory()
    chunks, last, held = 1, first, 0
    async for chunk in stream:
        chunks, last = chunks + 1, chunk
        if chunks == events:  # the upstream's last event has been read; LiteLLM's usage chunk is still to come
            held, _ = tracemalloc.get_traced_memory()
    await stream.aclose()
    return after_first, held, last, chunks


def test_a_long_stream_holds_a_bounded_amount_and_still_reports_its_usage(standin: StandInServer) -> None:
    expected = asyncio.run(_usage())
    assert expected.completion_tokens > 0
    standin.state.faults.append(Fault("long", events=EVENTS))
    tracemalloc.start()
    try:
        after_first, held, last, chunks = asyncio.run(_read(EVENTS))
    finally:
        tracemalloc.stop()
    assert chunks >= EVENTS
    grown = held - after_first
    # 4 MB passed through; a stream may hold a few chunks of it (a chunk is 10 kB), never the answer. (Before the fix:
    # over 8 MB, the chunks and the text both kept whole.)
    assert grown < 400_000, f"reading {EVENTS} chunks of 10 kB kept {grown / 1e6:.1f} MB"
    # What the proxy does read at the end is still right: the usage the upstream reported in its last event.
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (expected.prompt_tokens,
                                                                        expected.completion_tokens)
    assert standin.state.streams_closed_early == 0
