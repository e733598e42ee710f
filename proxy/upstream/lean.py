"""LiteLLM's chat completion without the per-call work the proxy does not use.

``litellm.acompletion`` wraps the provider call in three layers of its own: a callback set-up that builds a
logging object, a hop to a thread-pool thread to run ``completion`` (the request building), and, once the
answer is back, pricing it, filling its hidden parameters and scheduling success-logging tasks. The proxy has
no LiteLLM callbacks, prices answers itself (:mod:`proxy.upstream.pricing`) and times its own calls, so for
the providers in :data:`LEAN_PROVIDERS` it calls ``litellm.completion`` with ``acompletion=True`` on the
event loop, with a bare logging object, and awaits the provider's coroutine. That is the same message and
parameter translation, the same provider transformation and the same pooled HTTP client as before; only the
wrapper is gone. Errors are mapped to LiteLLM's exception classes the way ``acompletion`` maps them, so
:func:`proxy.upstream.calls._classify` sees what it always saw.

The one part of ``acompletion``'s wrapper that is kept is the thread, for requests that carry tools or a
response schema (:data:`THREADED_PARAMS`): ``completion`` translates those into the provider's form there,
schema by schema, which for a few hundred tools is tens of milliseconds of CPU; on the event loop that
froze every other request; and for messages of more than :data:`THREADED_TEXT_CHARS` characters. Plain
chats, the common case, are still built on the loop (a thread hop costs more
than their build). The sizes that reach the thread are bounded at the edge (:mod:`proxy.edge.schema_limits`).
Builds take the worker's one lane for such work (``proxy.pools``, kind ``cpu``): a thread still holds the GIL, and
the event loop competes with one such thread, not with one per request being built.

Other providers keep ``litellm.acompletion``: some of them do blocking work (credential look-ups, SDK
clients) while building a request, which must not run on the event loop.

LiteLLM also loads tiktoken's cl100k encoding on the first call of most providers (``completion`` passes
``encoding=_get_encoding()`` to the handler eagerly), although Gemini reports its own usage and the handler
never touches it: about 40 MB of RSS and 0.1-0.3 s of CPU per worker for nothing. :func:`defer_encoding` puts a
stand-in in LiteLLM's encoding cache that loads the real encoding the first time anything reads from it, so a
provider or a path that does count tokens still gets tiktoken's answer, only later.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import typing
import uuid
from typing import Any

import litellm
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.litellm_core_utils.litellm_logging import Logging
from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
from litellm.main import completion as python_completion  # litellm.completion is its native-dispatch front

from proxy import pools

#: Providers whose request building in ``completion(acompletion=True)`` does no I/O: it returns the provider's
#: coroutine, and all network work happens when that is awaited.
LEAN_PROVIDERS = frozenset({"gemini"})

#: Parameters whose translation is CPU work in proportion to their size: with any of them, the build is threaded.
THREADED_PARAMS = ("tools", "functions", "response_format")
#: Messages with more text than this are built in the thread too (LiteLLM copies and converts every part).
THREADED_TEXT_CHARS = 256 * 1024


def _text_chars(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return total


class _DeferredEncoding:
    """LiteLLM's default encoding, loaded on first attribute access (then every access goes to the real one)."""

    def __init__(self) -> None:
        self.loaded: Any = None

    def __getattr__(self, name: str) -> Any:
        if self.loaded is None:
            from litellm._lazy_imports import get_default_encoding

            self.loaded = get_default_encoding()
        return getattr(self.loaded, name)


def defer_encoding() -> bool:
    """Give LiteLLM a deferred default encoding if its cache is still empty; True when it now holds one.

    The cache is LiteLLM's private ``litellm.main._encoding_cache``: if a LiteLLM release renames it or has
    already filled it, nothing is changed and LiteLLM loads the encoding as it always did.
    """
    import litellm.main

    current = getattr(litellm.main, "_encoding_cache", _MISSING)
    if current is None:
        litellm.main._encoding_cache = _DeferredEncoding()  # type: ignore[assignment]  # duck-typed: forwards every attribute
        return True
    return isinstance(current, _DeferredEncoding)


_MISSING = object()
defer_encoding()


def note_finishes() -> bool:
    """Make LiteLLM's Gemini stream reader note when the upstream itself says a stream is finished.

    Its chunk parser maps a chunk without ``finishReason`` to ``finish_reason: "stop"`` like one with it, and
    a stream that simply ends is then closed with a made-up final chunk: a stream cut mid-event, or past an
    event that was not JSON, reads as a complete answer. The wrapped parser sets ``upstream_finished`` on the
    reader when a raw chunk carries a ``finishReason`` (or a prompt ``blockReason``), which
    :class:`proxy.upstream.calls.CheckedStream` reads. The class is LiteLLM's private
    ``ModelResponseIterator``: if a release renames it, nothing is wrapped and no stream is checked.
    """
    try:
        from litellm.llms.vertex_ai.gemini import vertex_and_google_ai_studio_gemini as gemini
    except ImportError:
        return False
    reader = getattr(gemini, "ModelResponseIterator", None)
    parse = getattr(reader, "chunk_parser", None)
    if reader is None or parse is None:
        return False
    if getattr(parse, "notes_finishes", False):
        return True

    def chunk_parser(self: Any, chunk: Any) -> Any:
        if _says_finished(chunk):
            self.upstream_finished = True
        return parse(self, chunk)

    chunk_parser.notes_finishes = True  # type: ignore[attr-defined]
    reader.chunk_parser = chunk_parser
    reader.upstream_finished = False
    return True


def _says_finished(chunk: Any) -> bool:
    if not isinstance(chunk, dict):
        return False
    candidates = chunk.get("candidates")
    feedback = chunk.get("promptFeedback")
    return (isinstance(candidates, list) and any(isinstance(c, dict) and c.get("finishReason") for c in candidates)
            or isinstance(feedback, dict) and bool(feedback.get("blockReason")))


note_finishes()


def read_schema_fields_once() -> bool:
    """Have LiteLLM's Gemini schema conversion read the fields of its ``Schema`` type once, not per schema.

    ``build_vertex_schema`` starts with ``get_type_hints(Schema)`` for every tool's parameters: evaluating the
    annotations of a TypedDict of thirty fields, more than half of the build's time (500 tools: about 25 of 45
    ms, in a thread that holds the GIL). The fields never change, so the hints are read here once, and the name
    ``get_type_hints`` in LiteLLM's module (``litellm.llms.vertex_ai.common_utils``, private) answers a copy of
    them for ``Schema`` and passes every other call through. If a LiteLLM release renames the module, the
    function or the type, nothing is changed and it reads them as it always did.
    """
    try:
        from litellm.llms.vertex_ai import common_utils
    except ImportError:
        return False
    current = getattr(common_utils, "get_type_hints", None)
    if getattr(current, "reads_schema_once", False):
        return True
    schema = getattr(common_utils, "Schema", None)
    if current is not typing.get_type_hints or schema is None:
        return False
    fields = typing.get_type_hints(schema)

    def get_type_hints(obj: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if obj is schema and not args and not kwargs:
            return dict(fields)
        return typing.get_type_hints(obj, *args, **kwargs)

    get_type_hints.reads_schema_once = True  # type: ignore[attr-defined]
    common_utils.get_type_hints = get_type_hints  # type: ignore[attr-defined]
    return True


read_schema_fields_once()


class _RecentChunks(list):  # type: ignore[type-arg]  # LiteLLM's list of chunks, typed there
    """LiteLLM's record of a stream's chunks, holding only the chunks it reads back (see :func:`bound_history`).

    It keeps the first chunk, the latest chunk that carries usage (the upstream's usage is cumulative: LiteLLM
    itself reads only the most recent), the latest that names a service tier, and the last :attr:`TAIL` chunks
    (its repetition check compares the last two). Older chunks are dropped as new ones arrive.
    """

    TAIL = 4

    def append(self, chunk: Any) -> None:
        super().append(chunk)
        if len(self) <= 2 * self.TAIL:
            return
        keep = {0, *range(len(self) - self.TAIL, len(self))}
        for name in ("usage", "service_tier"):
            latest = next((i for i in range(len(self) - 1, 0, -1) if getattr(self[i], name, None)), None)
            if latest is not None:
                keep.add(latest)
        self[:] = [c for i, c in enumerate(self) if i in keep]


class _TextTail(str):
    """LiteLLM's running text of a stream (``response_uptil_now``), holding only its last :attr:`LIMIT` characters.

    LiteLLM grows it with ``+=`` for every chunk (a copy of the whole answer each time: quadratic in its length) and
    reads it only for callbacks' rules and a router's mid-stream fallback, neither of which the proxy uses.
    """

    LIMIT = 4096

    def __add__(self, other: str) -> _TextTail:
        return _TextTail((str(self) + other)[-self.LIMIT:])


def bound_history(stream: Any) -> bool:
    """Keep a LiteLLM stream's history of what it passed on bounded, whatever the length of the answer.

    LiteLLM's stream wrapper appends every chunk it hands out to ``chunks`` and every piece of text to
    ``response_uptil_now``, to build a complete response for logging at the end and to hand a router what was
    already said. The proxy reads neither: it relays each chunk and takes the usage from the last. A 10 MB answer
    was held whole twice until the stream ended, and a client that stopped reading still made the proxy read (and
    keep) as much as the sockets between them hold: 20 such clients grew a worker by about 170 MB. Both
    attributes are private to LiteLLM's ``CustomStreamWrapper``; if a release renames them, or they are not a
    list and a string, nothing is changed (True only when both are bounded). Used for the lean providers, whose
    upstream reports usage in its events, so the dropped chunks are never needed to count tokens.
    """
    chunks = getattr(stream, "chunks", None)
    text = getattr(stream, "response_uptil_now", None)
    if type(chunks) is not list and not isinstance(chunks, _RecentChunks) or not isinstance(text, str):
        return False
    if not isinstance(chunks, _RecentChunks):
        stream.chunks = _RecentChunks(chunks)
    if not isinstance(text, _TextTail):
        stream.response_uptil_now = _TextTail(text[-_TextTail.LIMIT:])
    return True


def provider_of(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else ""


async def acompletion(*, model: str, messages: list[dict[str, Any]], stream: bool = False, **kwargs: Any) -> Any:
    """``litellm.acompletion(model=..., messages=..., **kwargs)``, with the wrapper left out for a lean provider."""
    provider = provider_of(model)
    if provider not in LEAN_PROVIDERS:
        return await litellm.acompletion(model=model, messages=messages, stream=stream, **kwargs)
    call_id = str(uuid.uuid4())
    logging_obj = Logging(model=model, messages=messages, stream=stream, call_type="acompletion",
                          start_time=datetime.datetime.now(), litellm_call_id=call_id, function_id="")
    logging_obj.update_environment_variables(model=model, user="", optional_params={},
                                             litellm_params={"api_base": ""},
                                             stream_options=kwargs.get("stream_options"))
    build = functools.partial(python_completion, model=model, messages=messages, stream=stream, acompletion=True,
                              litellm_call_id=call_id, litellm_logging_obj=logging_obj, **kwargs)
    try:
        threaded = (any(kwargs.get(k) is not None for k in THREADED_PARAMS)
                    or _text_chars(messages) > THREADED_TEXT_CHARS)
        result = await pools.run("cpu", build) if threaded else build()
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        # Raised inside the handler without ``from``, as acompletion does: a LiteLLM error comes back as the same
        # object (``from`` would make it its own cause), and any other keeps it as ``__context__``.
        raise exception_type(  # type: ignore[no-untyped-call]
            model=model, custom_llm_provider=provider, original_exception=exc,
            completion_kwargs={}, extra_kwargs=kwargs)
    if isinstance(result, CustomStreamWrapper):
        result.set_logging_event_loop(loop=asyncio.get_running_loop())  # type: ignore[no-untyped-call]  # as acompletion does
        bound_history(result)
    return result
