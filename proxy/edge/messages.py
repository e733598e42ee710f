"""POST /v1/messages: Anthropic's Messages API, translated into the chat request the rest of the path reads.

One value in, one value out, no I/O, like ``proxy.edge.shape``: an Anthropic body becomes a
:class:`MessagesRequest` (a :class:`ChatRequest`), so documents, routing, retries, fallback, headers, metrics,
the access log and the decision record are the chat endpoint's own; nothing below the edge learns this dialect.
The answer goes back the other way in ``proxy.edge.messages_reply``.

The mapping, block by block:
    system (string or text blocks)      → a system message
    text / image (base64, url)          → text / image_url parts
    document (base64 PDF)               → a file part with inline file_data: the documents path reads its pages;
                                          (plain-text and content sources become text; url PDFs are refused,
                                          since the proxy fetches nothing on a client's behalf)
    tool_use (assistant)                → tool_calls; tool_result (user) → tool messages, placed first, since a
                                          chat conversation needs them right after the call they answer
    thinking / redacted_thinking        → dropped (the upstream's own reasoning is not Anthropic's)
    tools / tool_choice                 → function tools / "auto", "required", a named function, "none"
    max_tokens, stop_sequences, temperature, top_p → max_tokens, stop, temperature, top_p

Every field is checked here, and every message names the field as Anthropic's paths do (``messages.1.content.0``),
because the chat checks that follow would name the translated message's position, not the client's.
Fields Claude Code and the SDKs send that have no counterpart here (``cache_control``, ``thinking``, ``metadata``,
``top_k``, ...) are accepted, type-checked and named in ``x-route-llm-dropped-params``; anything else is a 400,
as Anthropic answers an unknown field.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from proxy.edge.chat import ChatRequest, parse_chat_request
from proxy.errors import BadRequest, ProxyError
from proxy.upstream.params import Check, integer, of_type

# Accepted, not used: their effect is the upstream's business at Anthropic (caching, extended thinking, tiers,
# containers, diagnostics) and has no counterpart on the chat path. Checked for type only.
IGNORED: dict[str, Check] = {
    "cache_control": of_type(dict, "an object"),
    "thinking": of_type(dict, "an object"),
    "metadata": of_type(dict, "an object"),
    "service_tier": of_type(str, "a string"),
    "top_k": integer(0),
    "container": lambda v: None if isinstance(v, (str, dict)) else "must be a string or an object",
    "context_management": of_type(dict, "an object"),
    "diagnostics": of_type(dict, "an object"),
    "inference_geo": of_type(str, "a string"),
    "speed": of_type(str, "a string"),
    "user_profile_id": of_type(str, "a string"),
    "workspace_id": of_type(str, "a string"),
}
TRANSLATED = ("model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "stream",
              "tools", "tool_choice", "output_config")
KNOWN = frozenset((*TRANSLATED, *IGNORED))
# count_tokens takes the same body without the answer's settings.
COUNT_KNOWN = frozenset(KNOWN - {"max_tokens", "stop_sequences", "temperature", "top_p", "stream", "top_k",
                                 "metadata", "service_tier", "container", "inference_geo", "diagnostics"})

# Chat parameters and the Anthropic fields a client spelled them as (messages and the dropped-parameters header).
ANTHROPIC_NAME = {"max_tokens": "max_tokens", "stop": "stop_sequences",
                  "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
                  "response_format": "output_config.format", "temperature": "temperature", "top_p": "top_p",
                  "tools": "tools", "tool_choice": "tool_choice"}

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


@dataclass
class MessagesRequest(ChatRequest):
    """A chat request plus the id the Anthropic message will carry, and where each document came from."""

    message_id: str = ""
    # The documents path names a failing part by its chat position (``messages[2].content[0].file``); this maps
    # that to the client's own (``messages.1.content.0.source``), see :func:`client_paths`.
    document_paths: dict[str, str] = field(default_factory=dict)


def _bad(where: str, problem: str) -> BadRequest:
    return BadRequest(f"{where}: {problem}"[:400], param=where)


def _str(block: dict[str, Any], key: str, where: str, *, empty: bool = True) -> str:
    value = block.get(key)
    if value is None:
        raise _bad(f"{where}.{key}", "Field required (a string)")
    if not isinstance(value, str) or (not empty and not value):
        raise _bad(f"{where}.{key}", "must be a string" if empty else "must be a non-empty string")
    return value


def _block(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _bad(where, "must be an object with a `type`")
    return block


# --- content blocks --------------------------------------------------------------------------------------

def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source", "Field required (an object with `type` base64 or url)")
    kind = source.get("type")
    if kind == "base64":
        media = source.get("media_type")
        if media not in IMAGE_TYPES:
            raise _bad(f"{where}.source.media_type", "must be one of " + ", ".join(IMAGE_TYPES))
        url = f"data:{media};base64,{_str(source, 'data', f'{where}.source', empty=False)}"
    elif kind == "url":
        url = _str(source, "url", f"{where}.source", empty=False)
    else:
        raise _bad(f"{where}.source.type", f"{kind!r} is not supported here; use base64 or url")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source", "Field required (an object with `type` base64, text or content)")
    kind = source.get("type")
    title = block.get("title")
    if title is not None and not isinstance(title, str):
        raise _bad(f"{where}.title", "must be a string")
    if kind == "base64":
        if source.get("media_type") != "application/pdf":
            raise _bad(f"{where}.source.media_type", "must be 'application/pdf' for a base64 document")
        data = _str(source, "data", f"{where}.source", empty=False)
        return {"type": "file", "file": {"filename": title or "document.pdf",
                                         "file_data": f"data:application/pdf;base64,{data}"}, "where": where}
    if kind == "file":  # a file uploaded to this proxy (POST /v1/files)
        return {"type": "file", "file": {"file_id": _str(source, "file_id", f"{where}.source", empty=False)},
                "where": where}
    if kind == "text":
        text = _str(source, "data", f"{where}.source")
    elif kind == "content":
        parts = source.get("content")
        if isinstance(parts, str):
            text = parts
        elif isinstance(parts, list):
            text = "\n".join(_str(_block(p, f"{where}.source.content.{i}"), "text", f"{where}.source.content.{i}")
                             for i, p in enumerate(parts))
        else:
            raise _bad(f"{where}.source.content", "must be a string or a list of text blocks")
    else:
        raise _bad(f"{where}.source.type", f"{kind!r} is not supported here; use base64 (a PDF), file, text or "
                                           "content (the proxy does not fetch URLs)")
    return {"type": "text", "text": f"{title}\n\n{text}" if title else text}


def _user_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": _str(block, "text", where)}
    if kind == "image":
        return _image(block, where)
    if kind == "document":
        return _document(block, where)
    raise _bad(f"{where}.type", f"{kind!r} is not supported in a user message; use text, image, document or "
                                "tool_result")


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = _str(block, "tool_use_id", where, empty=False)
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            part = _block(part, f"{where}.content.{i}")
            if part["type"] != "text":
                raise _bad(f"{where}.content.{i}.type", f"{part['type']!r}: a tool result can only carry text here "
                                                        "(chat tool messages are text)")
            texts.append(_str(part, "text", f"{where}.content.{i}"))
        text = "\n".join(texts)
    else:
        raise _bad(f"{where}.content", "must be a string or a list of text blocks")
    if block.get("is_error") is not None and not isinstance(block["is_error"], bool):
        raise _bad(f"{where}.is_error", "must be true or false")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user(content: list[Any], where: str) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, raw in enumerate(content):
        block = _block(raw, f"{where}.{j}")
        if block["type"] == "tool_result":
            tools.append(_tool_result(block, f"{where}.{j}"))
        else:
            parts.append(_user_part(block, f"{where}.{j}"))
    return [*tools, *([{"role": "user", "content": parts}] if parts else [])]


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, raw in enumerate(content):
        block = _block(raw, f"{where}.{j}")
        kind = block["type"]
        if kind == "text":
            texts.append(_str(block, "text", f"{where}.{j}"))
        elif kind == "tool_use":
            name = _str(block, "name", f"{where}.{j}", empty=False)
            if not isinstance(block.get("input"), dict):
                raise _bad(f"{where}.{j}.input", "must be an object")
            calls.append({"id": _str(block, "id", f"{where}.{j}", empty=False), "type": "function",
                          "function": {"name": name, "arguments": json.dumps(block["input"])}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise _bad(f"{where}.{j}.type", f"{kind!r} is not supported in an assistant message; use text, "
                                            "tool_use or thinking")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(_str(_block(b, f"system.{i}"), "text", f"system.{i}") for i, b in enumerate(system))
    raise _bad("system", "must be a string or a list of text blocks")


def to_chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Anthropic's ``system`` and ``messages`` as one chat conversation."""
    out: list[dict[str, Any]] = []
    if body.get("system") is not None:
        text = _system(body["system"])
        if text:
            out.append({"role": "system", "content": text})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "Field required (a non-empty list of messages)" if messages is None
                   else "must be a non-empty list of messages")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _bad(where, "must be an object with role and content")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"{where}.role", f"must be 'user' or 'assistant'; got {role!r}"[:200])
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or (not content and role == "user"):
            raise _bad(f"{where}.content", "must be a string or a non-empty list of content blocks")
        out += _user(content, f"{where}.content") if role == "user" else [_assistant(content, f"{where}.content")]
    return out


def _document_paths(messages: list[dict[str, Any]]) -> dict[str, str]:
    """Take each file part's Anthropic path off it (it must not travel on), keyed by the part's chat path."""
    paths = {}
    for i, message in enumerate(messages):
        for j, part in enumerate(message["content"] if isinstance(message.get("content"), list) else []):
            if "where" in part:
                paths[f"messages[{i}].content[{j}].file"] = f"{part.pop('where')}.source"
    return paths


def client_paths(exc: ProxyError, paths: dict[str, str]) -> None:
    """Rename a documents error's chat path to the client's path of the same document block, in place."""
    old = exc.param or ""
    for chat_path, own in paths.items():
        if old.startswith(chat_path):
            new = own + {".file_data": ".data", ".file_id": ".file_id"}.get(old[len(chat_path):], "")
            exc.param = new
            exc.message = exc.message.replace(old, new) if old in exc.message else f"{new}: {exc.message}"
            return


# --- tools and parameters --------------------------------------------------------------------------------

def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "must be a list of tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"tools.{i}", "must be an object with name and input_schema")
        if tool.get("type") not in (None, "custom"):
            raise _bad(f"tools.{i}.type", f"{tool['type']!r}: Anthropic's server and built-in tools are not "
                                          "available here; define the tool with name, description and "
                                          "input_schema"[:300])
        name = _str(tool, "name", f"tools.{i}", empty=False)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"tools.{i}.input_schema", "Field required (a JSON schema object)")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if tool.get("description") is not None:
            fn["description"] = _str(tool, "description", f"tools.{i}")
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, params: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    mapped: Any = {"auto": "auto", "any": "required", "none": "none"}.get(kind or "")
    if kind == "tool":
        assert isinstance(choice, dict)
        mapped = {"type": "function", "function": {"name": _str(choice, "name", "tool_choice", empty=False)}}
    if mapped is None:
        raise _bad("tool_choice", "must be {'type': 'auto' | 'any' | 'none'} or {'type': 'tool', 'name': ...}")
    params["tool_choice"] = mapped
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise _bad("tool_choice.disable_parallel_tool_use", "must be true or false")
        params["parallel_tool_calls"] = not parallel


def _output_config(config: Any, params: dict[str, Any], dropped: list[str]) -> None:
    if not isinstance(config, dict):
        raise _bad("output_config", "must be an object")
    fmt = config.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise _bad("output_config.format", "must be {'type': 'json_schema', 'schema': {...}}")
        params["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    if config.get("effort") is not None:
        dropped.append("output_config.effort")


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi):
        raise _bad(key, f"must be a number between {lo:g} and {hi:g}")


def _params(body: dict[str, Any], *, counting: bool) -> tuple[dict[str, Any], list[str]]:
    params: dict[str, Any] = {}
    dropped: list[str] = []
    for key, check in IGNORED.items():
        if body.get(key) is not None:
            if problem := check(body[key]):
                raise _bad(key, problem)
            dropped.append(key)
    if body.get("tools") is not None:
        if tools := _tools(body["tools"]):
            params["tools"] = tools
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], params)
    if body.get("output_config") is not None:
        _output_config(body["output_config"], params, dropped)
    if counting:
        return params, dropped
    if "max_tokens" not in body:
        raise _bad("max_tokens", "Field required")
    if problem := integer(1)(body["max_tokens"]):
        raise _bad("max_tokens", problem)
    params["max_tokens"] = body["max_tokens"]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise _bad("stop_sequences", "must be a list of non-empty strings")
        if stops:
            params["stop"] = stops
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    params.update({k: body[k] for k in ("temperature", "top_p") if body.get(k) is not None})
    return params, dropped


def parse_messages_request(body: Any, *, limit_messages: int | None, limit_content_chars: int | None,
                           counting: bool = False) -> MessagesRequest:
    """An Anthropic Messages body (or, with ``counting``, a count_tokens body) as a chat request."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - (COUNT_KNOWN if counting else KNOWN))
    if unknown:
        raise _bad(unknown[0], "Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model", "Field required (a string)")
    params, dropped = _params(body, counting=counting)
    messages = to_chat_messages(body)
    paths = _document_paths(messages)
    chat_body: dict[str, Any] = {"model": body["model"], "messages": messages, **params}
    if not counting and body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise _bad("stream", "must be true or false")
        chat_body["stream"] = body["stream"]
    try:
        chat = parse_chat_request(chat_body, limit_messages=limit_messages, limit_content_chars=limit_content_chars)
    except ProxyError as exc:  # the chat checks name chat parameters: say which Anthropic field it was
        if exc.param in ANTHROPIC_NAME:
            exc.param = ANTHROPIC_NAME[exc.param]
            exc.message = f"{exc.param}: {exc.message}"
        raise
    return MessagesRequest(chat.model, chat.messages, chat.stream, chat.params, chat.files, dropped,
                           message_id=f"msg_{uuid.uuid4().hex}", document_paths=paths)
