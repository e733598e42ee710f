"""Parsing a JSON request body, and the checks that must run before anything walks it recursively.

Two kinds of JSON are valid but poison further down: very deep nesting, and lone UTF-16 surrogates.
LiteLLM converts tool schemas and response formats recursively, so 500 levels of nesting in
``tools[].function.parameters`` hit Python's recursion limit inside it, after seconds of work and a huge
logged traceback per tier. A ``\\ud800`` escape parses into a string that cannot be encoded as UTF-8, so
the upstream call fails in one mode and is forwarded mangled in another. Both are found here, in one
iterative walk (no recursion, so it cannot fail the same way), and refused with a 400 that names the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from proxy.errors import BadRequest

# Parsing and walking a body this large on the event loop would stall every other request for milliseconds.
THREAD_BYTES = 256 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def _parse(raw: bytes, limit_depth: int | None) -> Any:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # ValueError: also bad UTF-8 and ints over 4300 digits
        raise BadRequest(f"We could not parse the JSON body of your request: {str(exc)[:200]}") from exc
    if isinstance(value, (dict, list)):
        check_json(value, limit_depth=limit_depth)
    elif isinstance(value, str) and _SURROGATE.search(value):
        _surrogate("")
    return value


async def parse_json(raw: bytes, *, limit_depth: int | None) -> Any:
    """Parse and check ``raw``; large bodies in a thread, so the event loop keeps serving others."""
    if not raw.strip():
        raise BadRequest("The request body is empty; send a JSON object.")
    if len(raw) > THREAD_BYTES:
        return await asyncio.to_thread(_parse, raw, limit_depth)
    return _parse(raw, limit_depth)
