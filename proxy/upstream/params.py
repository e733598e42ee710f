"""OpenAI chat parameters: which ones exist, their types, and which ones reach the upstream model.

The proxy promises that a client written for OpenAI works unchanged, so every parameter of OpenAI's chat
API is accepted and type-checked (a wrong type is the client's bug, and OpenAI answers it with a 400 too).
What reaches the model follows one rule, so that a newer SDK parameter never turns into a 400 from LiteLLM
("gemini does not support parameters: [...]"):

    a parameter is forwarded when LiteLLM maps it for the model that serves the request
    (``litellm.get_supported_openai_params``); otherwise it is dropped, and the response says which
    in ``x-route-llm-dropped-params``.

The one exception is a mapping, not a drop: the legacy ``function_call`` becomes ``tool_choice``, which
LiteLLM does map, so old function-calling clients keep forcing a call. ``stream_options`` belongs to the
proxy (it always asks for usage and forwards the usage chunk only when the client asked).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import litellm

Check = Callable[[Any], "str | None"]


def number(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            return f"must be a number between {lo:g} and {hi:g}"
        return None
    return check


def integer(lo: int, hi: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            return f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
        return None
    return check


def of_type(tp: type, what: str) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, bool) if tp is bool else isinstance(v, tp) and not isinstance(v, bool)
        return None if ok else f"must be {what}"
    return check


def one_of(*values: str) -> Check:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in values else "must be one of " + ", ".join(repr(x) for x in values)
    return check


def _stop(v: Any) -> str | None:
    if isinstance(v, str) or (isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)):
        return None
    return "must be a string or a list of at most 4 strings"


def _tools(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list of tools"
    for i, t in enumerate(v):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            return f"[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}"
    return None


def _functions(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) and f["name"]
                                          for f in v):
        return "must be a list of {'name': ..., 'parameters': ...} objects"
    return None


def _tool_choice(v: Any) -> str | None:
    if v in ("none", "auto", "required"):
        return None
    if isinstance(v, dict) and v.get("type") == "function" and isinstance(v.get("function"), dict):
        return None
    return "must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}"


def _function_call(v: Any) -> str | None:
    if v in ("none", "auto") or (isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"]):
        return None
    return "must be 'none', 'auto' or {'name': ...}"


def _response_format(v: Any) -> str | None:
    if isinstance(v, dict) and v.get("type") in ("text", "json_object", "json_schema"):
        return None
    return "must be an object with type 'text', 'json_object' or 'json_schema'"


def _modalities(v: Any) -> str | None:
    if isinstance(v, list) and all(m in ("text", "audio") for m in v if isinstance(m, str)) \
            and all(isinstance(m, str) for m in v):
        return None
    return "must be a list of 'text' and 'audio'"


def _moderation(v: Any) -> str | None:
    if isinstance(v, dict) and isinstance(v.get("model"), str):
        return None
    return "must be an object with `model` (a string)"


# Every parameter of OpenAI's chat completions API besides model, messages and stream, with its check.
# tests/proxy/test_params.py compares this table with the installed openai SDK, so a parameter a newer
# SDK adds fails a test here instead of a user's request.
CHECKS: dict[str, Check] = {
    "audio": of_type(dict, "an object"),
    "frequency_penalty": number(-2, 2),
    "function_call": _function_call,
    "functions": _functions,
    "logit_bias": of_type(dict, "an object"),
    "logprobs": of_type(bool, "true or false"),
    "max_completion_tokens": integer(1),
    "max_tokens": integer(1),
    "metadata": of_type(dict, "an object"),
    "modalities": _modalities,
    "moderation": _moderation,
    "n": integer(1, 128),
    "parallel_tool_calls": of_type(bool, "true or false"),
    "prediction": of_type(dict, "an object"),
    "presence_penalty": number(-2, 2),
    "prompt_cache_key": of_type(str, "a string"),
    "prompt_cache_options": of_type(dict, "an object"),
    "prompt_cache_retention": one_of("in_memory", "24h"),
    "reasoning_effort": one_of("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "response_format": _response_format,
    "safety_identifier": of_type(str, "a string"),
    "seed": integer(-(2**63), 2**63 - 1),
    "service_tier": one_of("auto", "default", "flex", "scale", "priority", "fast"),
    "stop": _stop,
    "store": of_type(bool, "true or false"),
    "stream_options": of_type(dict, "an object"),
    "temperature": number(0, 2),
    "tool_choice": _tool_choice,
    "tools": _tools,
    "top_logprobs": integer(0, 20),
    "top_p": number(0, 1),
    "user": of_type(str, "a string"),
    "verbosity": one_of("low", "medium", "high"),
    "web_search_options": of_type(dict, "an object"),
}

PROXY_OWNED = frozenset({"stream_options"})


def check(params: dict[str, Any]) -> tuple[str, str] | None:
    """The first ill-typed parameter as (name, problem), or None."""
    for key, value in params.items():
        problem = CHECKS[key](value)
        if problem:
            return key, problem
    return None


@functools.lru_cache(maxsize=64)
def supported(model: str) -> frozenset[str]:
    """The OpenAI parameters LiteLLM maps for ``model`` (a LiteLLM model string)."""
    try:
        names = litellm.get_supported_openai_params(model=model) or []
    except Exception:  # a provider LiteLLM cannot name: forward nothing optional rather than fail every call
        names = []
    return frozenset(names)


def for_model(params: dict[str, Any], model: str) -> tuple[dict[str, Any], list[str]]:
    """Split ``params`` for ``model`` by the module's rule: (what is forwarded, what is dropped, sorted)."""
    ok = supported(model)
    params = dict(params)
    call = params.pop("function_call", None)
    if call is not None:
        if "tool_choice" in ok and "tool_choice" not in params:
            params["tool_choice"] = call if isinstance(call, str) else {"type": "function", "function": call}
        else:
            params["function_call"] = call  # dropped below, and named in the header
    forwarded = {k: v for k, v in params.items() if k in ok or k in PROXY_OWNED}
    return forwarded, sorted(set(params) - set(forwarded))
