"""Parsing a JSON request body, and the checks that must run before anything walks it recursively.

Two kinds of JSON are valid but poison further down: very deep nesting, and lone UTF-16 surrogates.
LiteLLM converts tool schemas and response formats recursively, so 500 levels of nesting in
``tools[].function.parameters`` hit Python's recursion limit inside it, after seconds of work and a huge
logged traceback per tier. A ``\\ud800`` escape parses into a string that cannot be encoded as UTF-8, so
the upstream call fails in one mode and is forwarded mangled in another. Both are refused with a 400 that
names the field.

The raw bytes are looked at first, at C speed: the nesting depth from the brackets outside strings
(:func:`too_deep`), and whether any escape could be a surrogate. A body that passes both, as nearly every
body does, is parsed and never walked in Python. Otherwise an iterative walk (no recursion, so it cannot
fail the way LiteLLM does) finds the field to name. A body nested past the JSON decoder's own recursion
limit (about a thousand levels) is refused as too deep, not as unparseable.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from proxy import pools
from proxy.errors import BadRequest, PayloadTooLarge

# Parsing and walking a body this large on the event loop would stall every other request for milliseconds.
THREAD_BYTES = 256 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON escape that may stand for a surrogate (\ud800-\udfff); a lone one is only found by walking the value.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Opening brackets become +1, closing ones -1 (as int8); every other byte is deleted.
_STEPS = bytes.maketrans(b"{[}]", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{[}]")
# Every byte but quotes and the three that begin a value: deleted before a value count (ValueCount).
_NOT_COUNTED = bytes(b for b in range(256) if b not in b'",{[')


def too_deep(raw: bytes, limit: int) -> bool:
    """Whether the objects and arrays of ``raw`` nest more than ``limit`` levels deep, without parsing it.

    A body with no more brackets than ``limit`` cannot (the usual case, two counts). Otherwise strings are
    cut out and the running depth of the brackets left is summed by numpy; every step is a bytes method,
    about a millisecond per megabyte. Invalid JSON may be misjudged either way; the parser that follows
    refuses it anyway.
    """
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    # Escapes go first, escaped backslashes before escaped quotes (``\\"`` ends a string, ``\"`` does not);
    # then every other piece between quotes is outside a string (backslashes occur only inside strings).
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[::2])
    steps = np.frombuffer(outside.translate(_STEPS, _NOT_BRACKETS), dtype=np.int8)
    return steps.size > 0 and int(np.cumsum(steps, dtype=np.int32).max()) > limit


class ValueCount:
    """The JSON values of a body (commas and opening brackets outside strings), counted chunk by chunk.

    Parsing costs time in proportion to the values it makes, not the bytes: an 18 MB schema of tiny
    properties is seconds of GIL, an 18 MB base64 string milliseconds. The guard counts a body as it arrives,
    so one over ``server.limit_json_values`` is refused after the chunk that crossed the limit, before the rest
    is read (or held, or counted) at all. Each chunk costs a few bytes methods at C speed; what carries over
    from one chunk to the next is whether it ended inside a string and whether on a backslash that escapes the
    next chunk's first byte. Invalid JSON may be miscounted; the parser that follows refuses it anyway.
    """

    def __init__(self) -> None:
        self.count = 0
        self._in_string = False
        self._escaped = False  # the previous chunk ended on a backslash (inside a string) that escapes the next byte

    def add(self, chunk: bytes) -> int:
        """Count ``chunk`` in; the count so far."""
        if self._escaped and chunk:
            chunk, self._escaped = chunk[1:], False
        if b"\\" in chunk:
            # Escaped backslashes go first, so that ``\\"`` ends a string and ``\"`` does not; a backslash
            # left at the very end escapes the first byte of the next chunk.
            chunk = chunk.replace(b"\\\\", b"")
            if chunk.endswith(b"\\"):
                chunk, self._escaped = chunk[:-1], True
            chunk = chunk.replace(b'\\"', b"")
        # Only quotes and the bytes counted are kept (a few per value, not the text): splitting what is left at the
        # quotes makes few, short pieces, and what lies outside strings is then counted by its length.
        pieces = chunk.translate(None, _NOT_COUNTED).split(b'"')
        self.count += len(b"".join(pieces[1 if self._in_string else 0::2]))
        self._in_string ^= (len(pieces) - 1) % 2 == 1
        return self.count


def too_many_values(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` holds more than ``limit`` JSON values (objects, arrays, and the members and elements
    in them), without parsing it (see :class:`ValueCount`).

    A body under the limit in its raw bytes (two counts, strings and all) is done at once; only one over it is
    counted outside its strings, so text full of brackets and commas is not refused.
    """
    if raw.count(b",") + raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    counter = ValueCount()
    return counter.add(raw) > limit


def too_many_values_error(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body holds more than {limit} JSON values (objects, arrays and their items), "
                           "this proxy's limit", code="too_many_values")


def _where(path: str) -> str:
    return path or "the request body"


def check_json(value: Any, *, limit_depth: int | None) -> None:
    """Raise BadRequest for nesting deeper than ``limit_depth`` or a lone surrogate in any string."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if limit_depth is not None and depth > limit_depth:
            raise BadRequest(f"{_where(path)}: objects and arrays nest more than {limit_depth} levels deep, this "
                             "proxy's limit", param=path or None, code="nesting_too_deep")
        if isinstance(node, dict):
            items: Any = node.items()
        else:
            items = enumerate(node)
        for k, v in items:
            child = (f"{path}.{k}" if path else str(k)) if isinstance(node, dict) else f"{path}[{k}]"
            if isinstance(k, str) and not k.isascii() and _SURROGATE.search(k):
                _surrogate(child)
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1, child))
            elif isinstance(v, str) and not v.isascii() and _SURROGATE.search(v):
                _surrogate(child)


def _surrogate(path: str) -> None:
    raise BadRequest(f"{_where(path)}: holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), "
                     "which is not valid Unicode text", param=path or None, code="invalid_unicode")


def _parse(raw: bytes, limit_depth: int | None, limit_values: int | None = None) -> Any:
    if limit_values is not None and too_many_values(raw, limit_values):
        raise too_many_values_error(limit_values)
    deep = limit_depth is not None and too_deep(raw, limit_depth)
    try:
        value = json.loads(raw)
    except RecursionError as exc:  # past the decoder's own limit: certainly past ours
        if deep:
            raise BadRequest(f"the request body: objects and arrays nest more than {limit_depth} levels deep, this "
                             "proxy's limit", code="nesting_too_deep") from None
        raise BadRequest(f"We could not parse the JSON body of your request: {str(exc)[:200]}") from exc
    except ValueError as exc:  # also bad UTF-8 and ints over 4300 digits
        raise BadRequest(f"We could not parse the JSON body of your request: {str(exc)[:200]}") from exc
    if deep or _SURROGATE_ESCAPE.search(raw):  # worth a walk: it finds the field to name
        if isinstance(value, (dict, list)):
            check_json(value, limit_depth=limit_depth)
        elif isinstance(value, str) and _SURROGATE.search(value):
            _surrogate("")
    return value


async def parse_json(raw: bytes, *, limit_depth: int | None, limit_values: int | None = None) -> Any:
    """Parse and check ``raw``; large bodies in the worker's lane for CPU work (``proxy.pools``, kind ``cpu``),
    so the event loop keeps serving others and competes for the GIL with one such thread at most."""
    if not raw.strip():
        raise BadRequest("The request body is empty; send a JSON object.")
    if len(raw) > THREAD_BYTES:
        return await pools.run("cpu", _parse, raw, limit_depth, limit_values)
    return _parse(raw, limit_depth, limit_values)
