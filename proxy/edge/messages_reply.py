"""The chat path's answer in Anthropic's shape: a Message object, its stream of events, and its errors.

Pure functions and one stream format, no I/O. A chat completion becomes a ``message`` with content blocks
(text, then one ``tool_use`` per call), ``stop_reason`` and ``usage``; a stream of chat chunks becomes
``message_start``, ``ping``, per block ``content_block_start`` / ``content_block_delta`` (``text_delta``,
``input_json_delta``) / ``content_block_stop``, then ``message_delta`` (stop reason, usage) and ``message_stop``.

``stop_sequence`` is never reported: the chat answer (and Gemini's, under it) says "stop" both when the model
ended and when a stop sequence cut it, so such answers say ``end_turn`` with ``stop_sequence: null``.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.edge.messages import MessagesRequest
from proxy.edge.routes import StreamFormat
from proxy.errors import ProxyError

STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
               "content_filter": "refusal"}

# Anthropic's error type for each status the proxy answers (its statuses are kept, so Retry-After and the
# meaning of 502/503/504 stay the chat path's; the SDK picks its exception class by status).
ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 405: "not_found_error", 408: "timeout_error", 413: "request_too_large",
              429: "rate_limit_error", 431: "request_too_large", 503: "overloaded_error", 504: "timeout_error",
              529: "overloaded_error"}


def error_type(status: int) -> str:
    return ERROR_TYPE.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def from_openai_error(status: int, body: Any) -> dict[str, Any]:
    """An error the proxy rendered in OpenAI's shape (``{"error": {"message", ...}}``) in Anthropic's."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = f"error {status}"
    elif status == 401:
        message += " Anthropic clients may send the proxy key as `x-api-key` instead."
    return error_body(status, message)


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic counts cached input apart from the rest: ``input_tokens`` excludes what was read from cache."""
    chat_usage = chat_usage or {}
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    cached = int((chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": prompt - cached, "output_tokens": int(chat_usage.get("completion_tokens") or 0),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def _input(arguments: str | None) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is; a model's malformed JSON becomes {}."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"type": "tool_use", "id": call.get("id") or "", "name": fn.get("name") or "",
            "input": _input(fn.get("arguments"))}


def render_message(req: MessagesRequest, completion: dict[str, Any]) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    content += [_tool_use(call) for call in message.get("tool_calls") or []]
    return {"id": req.message_id, "type": "message", "role": "assistant", "model": completion.get("model"),
            "content": content, "stop_reason": STOP_REASON.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": usage(completion.get("usage"))}


def _event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


class MessagesStream(StreamFormat):
    """Chat chunks in, Anthropic events out. One block is open at a time: text, or one tool call whose
    arguments arrive as ``input_json_delta`` pieces."""

    def __init__(self, req: MessagesRequest, model: str) -> None:
        self.req, self.model = req, model
        self.index = -1  # the open (or last) block's index
        self.open: str | int | None = None  # "text", a chat tool-call index, or None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.failed = False

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.req.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _event("message_start", message=message) + _event("ping")

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", index=self.index)

    def _begin(self, kind: str | int, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        return out + _event("content_block_start", index=self.index, content_block=block)

    def chunk(self, data: dict[str, Any]) -> bytes:
        out = b""
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.open != "text":
                    out += self._begin("text", {"type": "text", "text": ""})
                out += _event("content_block_delta", index=self.index,
                              delta={"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                which = call.get("index", 0)
                if self.open != which:
                    out += self._begin(which, {"type": "tool_use", "id": call.get("id") or "",
                                               "name": fn.get("name") or "", "input": {}})
                if fn.get("arguments"):
                    out += _event("content_block_delta", index=self.index,
                                  delta={"type": "input_json_delta", "partial_json": fn["arguments"]})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def error(self, err: ProxyError) -> bytes:
        """Anthropic ends a failed stream with an ``error`` event and nothing after it."""
        self.failed = True
        return _event("error", error=error_body(err.status_code, err.message)["error"])

    def end(self) -> bytes:
        if self.failed:
            return b""
        stop = STOP_REASON.get(self.finish_reason or "stop", "end_turn")
        return (self._close() + _event("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
                                       usage=usage(self.usage)) + _event("message_stop"))
