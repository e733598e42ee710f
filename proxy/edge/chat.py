"""Validating a chat-completions body against OpenAI's schema, before anything is routed or sent.

Checks are the ones whose failure would otherwise come back as a confusing upstream error or a 500:
types of the fields we read or forward, roles, content parts, limits. Every message says which field is
wrong, with OpenAI's ``param`` path (``messages[2].content``). The result is the neutral
:class:`proxy.request.ChatRequest` that the layers below read.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import BadRequest, PayloadTooLarge
from proxy.request import ChatRequest, FilePart
from proxy.upstream.params import CHECKS, check

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}

# Every OpenAI chat parameter is accepted and type-checked; proxy.upstream.params decides which reach the model.
PASSTHROUGH = frozenset(CHECKS)
KNOWN = PASSTHROUGH | {"model", "messages", "stream"}


def _check_content(i: int, msg: dict[str, Any], files: list[FilePart]) -> int:
    role = msg["role"]
    content = msg.get("content")
    where = f"messages[{i}].content"
    if content is None:
        if role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            return 0
        raise BadRequest(f"{where}: content is required for a {role} message", param=where)
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        raise BadRequest(f"{where}: must be a string or a list of content parts", param=where)
    if not content and role == "user":
        raise BadRequest(f"{where}: must not be an empty list", param=where)
    size = 0
    for j, part in enumerate(content):
        pwhere = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str) or part["type"] not in PART_TYPES:
            raise BadRequest(f"{pwhere}: must be an object with type one of {', '.join(sorted(PART_TYPES))}",
                             param=pwhere)
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise BadRequest(f"{pwhere}.text: must be a string", param=f"{pwhere}.text")
            size += len(part["text"])
        elif kind == "file":
            if role != "user":
                raise BadRequest(f"{pwhere}: file parts are only accepted in user messages", param=pwhere)
            spec = part.get("file")
            if not isinstance(spec, dict):
                raise BadRequest(f"{pwhere}.file: must be an object with file_id, or filename and file_data",
                                 param=f"{pwhere}.file")
            fid, data, name = spec.get("file_id"), spec.get("file_data"), spec.get("filename")
            if isinstance(fid, str) and fid:
                files.append(FilePart(i, j, file_id=fid))
            elif isinstance(data, str) and data:
                if name is not None and not isinstance(name, str):
                    raise BadRequest(f"{pwhere}.file.filename: must be a string", param=f"{pwhere}.file.filename")
                files.append(FilePart(i, j, filename=name or "document.pdf", file_data=data))
                size += len(data)
            else:
                raise BadRequest(f"{pwhere}.file: give file_id (from POST /v1/files) or file_data "
                                 "(data:application/pdf;base64,...)", param=f"{pwhere}.file")
    return size


def check_top_level(body: Any, known: frozenset[str] | set[str]) -> dict[str, Any]:
    """The checks every OpenAI-style body gets first: a JSON object, only known arguments, a model named."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    if "model" not in body:
        raise BadRequest("you must provide a model parameter", param="model")
    return body


def parse_chat_request(body: Any, *, limit_messages: int | None, limit_content_chars: int | None) -> ChatRequest:
    body = check_top_level(body, KNOWN)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list of message objects", param="messages")
    if limit_messages is not None and len(messages) > limit_messages:
        raise PayloadTooLarge(f"`messages` has {len(messages)} entries; this proxy accepts at most {limit_messages}",
                              param="messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false", param="stream")
    files: list[FilePart] = []
    total = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"messages[{i}]: must be an object with role and content", param=f"messages[{i}]")
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:  # str first: a list or dict role is unhashable
            raise BadRequest(f"messages[{i}].role: {role!r} is not one of {', '.join(sorted(ROLES))}",
                             param=f"messages[{i}].role")
        if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
            raise BadRequest(f"messages[{i}].tool_call_id: a tool message needs the id of the call it answers",
                             param=f"messages[{i}].tool_call_id")
        if "tool_calls" in msg and (role != "assistant" or not isinstance(msg["tool_calls"], list)):
            raise BadRequest(f"messages[{i}].tool_calls: only assistant messages carry a list of tool calls",
                             param=f"messages[{i}].tool_calls")
        total += _check_content(i, msg, files)
    if limit_content_chars is not None and total > limit_content_chars:
        raise PayloadTooLarge(f"the messages hold {total} characters; this proxy accepts at most "
                              f"{limit_content_chars}", param="messages")
    params = {k: v for k, v in body.items() if k in PASSTHROUGH and v is not None}
    wrong = check(params)
    if wrong:
        key, problem = wrong
        raise BadRequest(f"`{key}` {problem}; got {params[key]!r}"[:300], param=key)
    if "stream_options" in params and not stream:
        raise BadRequest("`stream_options` is only allowed when `stream` is true", param="stream_options")
    return ChatRequest(body["model"], messages, stream, params, files)
