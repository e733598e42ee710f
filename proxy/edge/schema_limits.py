"""Bounds on what a request asks LiteLLM to translate: the number of tools and the bytes of their schemas.

LiteLLM turns every tool and a ``response_format`` schema into the provider's form (for Gemini, a recursive
rewrite of each schema) on each attempt, and that costs CPU in proportion to their size: 40,000 tools took
seconds. The translation runs in a worker thread (:mod:`proxy.upstream.lean`), but a thread still holds the
GIL, so the size itself is bounded here, before routing, with an error that names the limit. The defaults
leave room for agent clients (Claude Code sends a few dozen tools, some with schemas of several kB).

Measuring the bytes means serialising the schemas again, which for a body of many megabytes is itself too
slow for the event loop: it runs in the worker's lane for CPU work (``proxy.pools``) too.
"""

from __future__ import annotations

import json
from typing import Any

from proxy import pools
from proxy.errors import BadRequest, PayloadTooLarge

#: The chat parameters whose values LiteLLM translates schema by schema.
SCHEMA_PARAMS = ("tools", "functions", "response_format")


def check_tool_count(params: dict[str, Any], limit: int | None) -> None:
    for key in ("tools", "functions"):
        value = params.get(key)
        if limit is not None and isinstance(value, list) and len(value) > limit:
            raise BadRequest(f"`{key}` has {len(value)} {'tools' if key == 'tools' else 'functions'}; this proxy "
                             f"accepts at most {limit} per request", param=key, code="too_many_tools")


def schema_bytes(params: dict[str, Any]) -> dict[str, int]:
    """The serialised size of each schema-carrying parameter present."""
    return {key: len(json.dumps(params[key], separators=(",", ":")).encode())
            for key in SCHEMA_PARAMS if params.get(key) is not None}


def check_schema_bytes(sizes: dict[str, int], limit: int | None) -> None:
    total = sum(sizes.values())
    if limit is not None and total > limit:
        biggest = max(sizes, key=lambda k: sizes[k])
        raise PayloadTooLarge(f"the request's tool and response schemas take {total} bytes; this proxy accepts at "
                              f"most {limit} bytes of them per request", param=biggest, code="schema_too_large")


async def check_schemas(params: dict[str, Any], *, limit_tools: int | None, limit_bytes: int | None) -> None:
    """Raise the 400 (too many tools) or 413 (schemas too large) for ``params``; measure in a thread."""
    check_tool_count(params, limit_tools)
    if limit_bytes is not None and any(params.get(k) is not None for k in SCHEMA_PARAMS):
        check_schema_bytes(await pools.run("cpu", schema_bytes, params), limit_bytes)
