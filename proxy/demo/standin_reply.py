"""What the Gemini stand-in (``proxy/demo/standin.py``) answers, read from the request: a function call when the
request's tool configuration asks for one, JSON when it asks for JSON, the fixed text otherwise. Arguments and JSON
are minimal values valid under the request's schemas (``proxy/schema_instance.py``), so that clients which
validate structured output (LangChain's ``with_structured_output``, pydantic) accept the demo's answers.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxy.demo.schema_instance import SchemaError, minimal_instance


def reply_parts(model: str, body: dict[str, Any], reply_words: int = 8) -> list[dict[str, Any]]:
    """A deterministic answer shaped by the request: a call of the tool that ``tool_choice`` forces (or, under
    "auto", that the last user message names), with arguments valid under its schema; for JSON mode, JSON valid
    under the response schema; otherwise the fixed text."""
    text = f"answer from {model}"
    call = _tool_call(body, text)
    if call is not None:
        return [{"functionCall": call}]
    words = " ".join(f"w{i}" for i in range(reply_words))
    config = body.get("generationConfig") or {}
    if (config.get("response_mime_type") or config.get("responseMimeType")) == "application/json":
        schema = next((config[k] for k in ("response_json_schema", "responseJsonSchema", "response_schema",
                                           "responseSchema") if isinstance(config.get(k), dict)), None)
        value = _instance_or_none(schema, text) if schema else None
        if value is None:  # JSON mode without a schema (json_object): an object, shaped by one the prompt shows
            value = _instance_or_none(_schema_in_prompt(body), text)
            value = value if isinstance(value, dict) else {"answer": f"{text}: {words}"}
        return [{"text": json.dumps(value)}]
    return [{"text": f"{text}: {words}"}]


def _tool_call(body: dict[str, Any], text: str) -> dict[str, Any] | None:
    """Gemini's ``functionCall`` for the request's tools and ``toolConfig``, or None for a text answer.

    Mode ANY (OpenAI's "required" or a named tool) calls the allowed tool, else the one the last user message
    names, else the first; AUTO (or no mode) calls a tool only when the last user message names it, so that an
    agent loop that sends the tool's result back gets a text answer; NONE never calls.
    """
    declarations = [d for t in body.get("tools") or [] if isinstance(t, dict)
                    for d in t.get("functionDeclarations", t.get("function_declarations")) or [] if isinstance(d, dict)]
    if not declarations:
        return None
    config = body.get("toolConfig", body.get("tool_config")) or {}
    calling = config.get("functionCallingConfig", config.get("function_calling_config")) or {}
    mode = str(calling.get("mode", "AUTO")).upper()
    allowed = calling.get("allowedFunctionNames", calling.get("allowed_function_names")) or []
    named = _named_in_last_user_message(body, [str(d.get("name", "")) for d in declarations])
    if mode == "ANY":
        chosen = next((d for d in declarations if d.get("name") in allowed), None) if allowed else None
        chosen = chosen or next((d for d in declarations if d.get("name") == named), declarations[0])
    elif mode == "NONE" or named is None:
        return None
    else:
        chosen = next(d for d in declarations if d.get("name") == named)
    schema = next((chosen[k] for k in ("parameters", "parametersJsonSchema", "parameters_json_schema")
                   if isinstance(chosen.get(k), dict)), {"type": "object", "properties": {}})
    args = _instance_or_none(schema, text)
    return {"name": chosen.get("name", ""), "args": args if isinstance(args, dict) else {}}


def _named_in_last_user_message(body: dict[str, Any], names: list[str]) -> str | None:
    """The first of ``names`` that the last turn mentions, when that turn is the user's text (not a tool result)."""
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    if not contents or contents[-1].get("role", "user") != "user":
        return None
    said = " ".join(p["text"] for p in contents[-1].get("parts") or [] if isinstance(p, dict) and "text" in p)
    return next((n for n in names if n and re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", said, re.I)), None)


def _schema_in_prompt(body: dict[str, Any]) -> dict[str, Any] | None:
    """The first JSON schema (an object with ``properties``, or ``type: object``) written in the prompt, newest
    text first: JSON mode leaves the format to the prompt, and LangChain's json_mode asks callers to put it there."""
    instruction = body.get("systemInstruction", body.get("system_instruction")) or {}
    turns = [c for c in body.get("contents") or [] if isinstance(c, dict)][::-1]
    texts = [p["text"] for c in [*turns, instruction] if isinstance(c, dict)
             for p in c.get("parts") or [] if isinstance(p, dict) and isinstance(p.get("text"), str)]
    decoder = json.JSONDecoder()
    for text in texts:
        for start in [m.start() for m in re.finditer(r"\{", text)][:200]:
            try:
                found, _ = decoder.raw_decode(text, start)
            except ValueError:
                continue
            if isinstance(found, dict) and (isinstance(found.get("properties"), dict) or found.get("type") == "object"):
                return found
    return None


def _instance_or_none(schema: dict[str, Any] | None, text: str) -> Any:
    """A value valid under ``schema``, or None when there is none or the generator cannot satisfy it."""
    if schema is None:
        return None
    try:
        return minimal_instance(schema, text)
    except (SchemaError, TypeError, ValueError, RecursionError):  # a malformed schema: the stand-in answers anyway
        return None
