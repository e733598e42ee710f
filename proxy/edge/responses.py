"""POST /v1/responses: OpenAI's Responses API, translated to and from chat completions in this one module.

A Responses request becomes a chat request (``input`` items → messages, ``instructions`` → a system
message, ``max_output_tokens`` → ``max_completion_tokens``, function tools and ``text.format`` → their chat
forms), then takes the chat endpoint's whole path: validation, documents, routing, retries and fallback,
the parameter rule of ``proxy.upstream.params``, headers, metrics and the access log. The chat completion that
comes back is rendered as a Response object, or, streamed, as Responses events. LiteLLM has a Responses
bridge of its own, but going through the proxy's chat path is what keeps both endpoints routed, retried
and counted the same way.

Responses are stored per proxy key when storage is on (``responses.store``; ``proxy.edge.stored``): a request
with ``previous_response_id`` starts from the stored chain's input and output items, before its own ``input``;
``instructions`` apply to their own turn only, as OpenAI documents. ``conversation``, stored prompts and
background runs are refused with a 400 that says to send the conversation in ``input``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from proxy.edge import stored
from proxy.edge.chat import check_top_level, parse_chat_request
from proxy.edge.routes import ChatHandler, StreamFormat
from proxy.errors import BadRequest, PayloadTooLarge, ProxyError
from proxy.request import ChatRequest
from proxy.state.responses import ResponseStore, Stored
from proxy.upstream.params import integer, of_type, one_of

# Request keys of OpenAI's Responses API (tests/proxy/edge/test_responses.py compares them with the installed SDK).
# Copied to the chat request under the same name; the chat checks and proxy.upstream.params' rule apply to them.
SAME_NAME = ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "safety_identifier",
             "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier", "top_logprobs",
             "moderation")
# Translated by this module.
TRANSLATED = ("model", "input", "instructions", "stream", "max_output_tokens", "tools", "tool_choice", "text",
              "reasoning", "store", "previous_response_id")
# Features of OpenAI's servers with no counterpart here: accepted (type-checked), not used, named in
# x-route-llm-dropped-params like any other dropped parameter.
DROPPED: dict[str, Any] = {
    "include": lambda v: None if isinstance(v, list) and all(isinstance(x, str) for x in v)
    else "must be a list of strings",
    "truncation": one_of("auto", "disabled"),
    "max_tool_calls": integer(1),
    "stream_options": of_type(dict, "an object"),
    "context_management": of_type(list, "a list"),
    "background_options": of_type(dict, "an object"),
    "access_programs": of_type(list, "a list"),
    "image": of_type(dict, "an object"),
}
# Accepted only when absent (or false): honouring them needs state this proxy does not keep.
STATEFUL = {
    "conversation": "this proxy does not store conversations; send the whole conversation in `input`",
    "prompt": "stored prompts live on OpenAI's servers; send the prompt's text in `instructions` and `input`",
    "background": "this proxy does not run responses in the background; leave `background` unset or false",
}
KNOWN = frozenset((*SAME_NAME, *TRANSLATED, *DROPPED, *STATEFUL))

ROLES = ("user", "assistant", "system", "developer")
# Chat parameters and the Responses parameters a client spelled them as (for the dropped-parameters header).
_RESPONSES_NAME = {"max_completion_tokens": "max_output_tokens", "reasoning_effort": "reasoning",
                   "response_format": "text", "verbosity": "text", "web_search_options": "tools"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponsesRequest(ChatRequest):
    """A chat request plus what the Response object echoes back."""

    response_id: str = ""
    created_at: int = 0
    echo: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)  # the whole input context, as stored
    store: ResponseStore | None = None  # where the answer is kept (None: not stored)
    owner: str = ""  # whose answer it is (a hash of the proxy key)
    request_id: str = ""  # the decision record's key, stored with the answer


# --- request: Responses → chat ---------------------------------------------------------------------------

def _part(where: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise BadRequest(f"{where}: must be an object with a `type`", param=where)
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}.text: must be a string", param=f"{where}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        if not isinstance(part.get("refusal"), str):
            raise BadRequest(f"{where}.refusal: must be a string", param=f"{where}.refusal")
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise BadRequest(f"{where}.image_url: give the image as a URL or a data: URL (stored images are not "
                             "supported here)", param=f"{where}.image_url")
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if isinstance(part.get("file_id"), str):
            return {"type": "file", "file": {"file_id": part["file_id"]}}
        if isinstance(part.get("file_data"), str):
            spec = {"file_data": part["file_data"]}
            if part.get("filename") is not None:
                spec["filename"] = part["filename"]
            return {"type": "file", "file": spec}
        raise BadRequest(f"{where}: give file_id (from POST /v1/files) or file_data (data:application/pdf;base64,"
                         "...); file_url is not supported", param=where)
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    raise BadRequest(f"{where}.type: {kind!r} is not supported; use input_text, output_text, input_image, "
                     "input_file or input_audio", param=f"{where}.type")


def _content(where: str, content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [_part(f"{where}[{j}]", p) for j, p in enumerate(content)]
    raise BadRequest(f"{where}: must be a string or a list of content parts", param=where)


def _text_only(where: str, content: Any) -> str:
    """A function call's output: a string, or parts of which only text can go to a chat tool message."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "input_text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"{where}: must be a string (or a list of input_text parts)", param=where)


def _messages(body: dict[str, Any], context: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages: this turn's instructions, the stored chain's items (``context``), then ``input``."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("`instructions` must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(context):
        _add_item(messages, f"previous_response_id (stored item {i})", item)
    given = body.get("input")
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise BadRequest("`input` must be a string or a non-empty list of input items", param="input")
    for i, item in enumerate(given):
        _add_item(messages, f"input[{i}]", item)
    return messages


def _add_item(messages: list[dict[str, Any]], where: str, item: Any) -> None:
    if not isinstance(item, dict):
        raise BadRequest(f"{where}: must be an object (a message, function_call or function_call_output)",
                         param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(f"{where}.role: must be one of {', '.join(ROLES)}", param=f"{where}.role")
        messages.append({"role": role, "content": _content(f"{where}.content", item.get("content"))})
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str) or not item[key] and key != "arguments":
                raise BadRequest(f"{where}.{key}: must be a string", param=f"{where}.{key}")
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # one chat turn for the text and its calls
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str) or not item["call_id"]:
            raise BadRequest(f"{where}.call_id: must be a string", param=f"{where}.call_id")
        messages.append({"role": "tool", "tool_call_id": item["call_id"],
                         "content": _text_only(f"{where}.output", item.get("output"))})
    else:
        raise BadRequest(f"{where}.type: {kind!r} is not supported; use message, function_call or "
                         "function_call_output", param=f"{where}.type")


def _tools(tools: Any, params: dict[str, Any]) -> None:
    if not isinstance(tools, list):
        raise BadRequest("`tools` must be a list of tools", param="tools")
    functions = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise BadRequest(f"tools[{i}].name: a function tool needs a name", param=f"tools[{i}].name")
            if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
                raise BadRequest(f"tools[{i}].parameters: must be a JSON schema object",
                                 param=f"tools[{i}].parameters")
            fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            functions.append({"type": "function", "function": fn})
        elif kind in ("web_search", "web_search_preview"):
            params["web_search_options"] = {}  # LiteLLM maps it to Gemini's Google Search grounding
        else:
            raise BadRequest(f"tools[{i}].type: {kind!r} is not supported here; use function or web_search tools",
                             param=f"tools[{i}].type")
    if functions:
        params["tools"] = functions


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest("`tool_choice` must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}",
                     param="tool_choice")


def _text(text: Any, params: dict[str, Any]) -> None:
    if not isinstance(text, dict):
        raise BadRequest("`text` must be an object, e.g. {'format': {'type': 'json_object'}}", param="text")
    fmt = text.get("format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_schema":
            assert isinstance(fmt, dict)
            if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
                raise BadRequest("`text.format`: a json_schema format needs `name` and `schema`", param="text.format")
            spec = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
            params["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif kind == "json_object":
            params["response_format"] = {"type": "json_object"}
        elif kind != "text":
            raise BadRequest("`text.format.type` must be 'text', 'json_object' or 'json_schema'",
                             param="text.format")
    if text.get("verbosity") is not None:
        params["verbosity"] = text["verbosity"]


def parse_responses_request(body: Any, *, limit_messages: int | None, limit_content_chars: int | None,
                            previous: Stored | None = None, storing: bool = False) -> ResponsesRequest:
    """The chat request for a Responses body; ``previous`` is the stored response it continues (read by the
    handler), ``storing`` whether its answer will be stored."""
    body = check_top_level(body, KNOWN)
    for key, why in STATEFUL.items():
        if body.get(key) not in (None, False):
            raise BadRequest(why, param=key, code="unsupported_parameter")
    params = {k: body[k] for k in SAME_NAME if body.get(k) is not None}
    if body.get("max_output_tokens") is not None:
        params["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("tools") is not None:
        _tools(body["tools"], params)
    if body.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None:
        _text(body["text"], params)
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise BadRequest("`reasoning` must be an object, e.g. {'effort': 'low'}", param="reasoning")
        if reasoning.get("effort") is not None:
            params["reasoning_effort"] = reasoning["effort"]
    dropped = []
    for key, check in DROPPED.items():
        if body.get(key) is not None:
            problem = check(body[key])
            if problem:
                raise BadRequest(f"`{key}` {problem}"[:300], param=key)
            dropped.append(key)
    if body.get("store") and not storing:
        dropped.append("store")  # storage is off on this proxy
    context = previous.context() if previous is not None else []
    chat_body = {"model": body["model"], "messages": _messages(body, context), **params}
    if body.get("stream") is not None:
        chat_body["stream"] = body["stream"]
    try:
        chat = parse_chat_request(chat_body, limit_messages=limit_messages, limit_content_chars=limit_content_chars)
    except PayloadTooLarge as exc:
        over_count = limit_messages is not None and len(chat_body["messages"]) > limit_messages
        raise _too_large(exc, previous, "server.limit_messages" if over_count else "server.limit_content_chars"
                         ) from None
    except ProxyError as exc:  # the chat checks name chat parameters: say which Responses field it was
        if exc.param in _RESPONSES_NAME:
            exc.param = _RESPONSES_NAME[exc.param]
            exc.message = f"{exc.message} (from `{exc.param}`)"
        raise
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": previous.id if previous is not None else None,
        "reasoning": {"effort": (reasoning or {}).get("effort"), "summary": None},
        "store": storing,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }
    items = [*context, *stored.request_items(body["input"])] if storing else []
    return ResponsesRequest(chat.model, chat.messages, chat.stream, chat.params, chat.files, dropped,
                            response_id=_new_id("resp"), created_at=int(time.time()), echo=echo, items=items)


def _too_large(exc: PayloadTooLarge, previous: Stored | None, key: str) -> PayloadTooLarge:
    """The chat's size limits said in the Responses terms: which setting (``key``), and for a chain what to do."""
    if previous is None:
        return PayloadTooLarge(f"`input`: {exc.message} ({key})", param="input")
    return PayloadTooLarge(f"the conversation stored for previous_response_id '{previous.id}' and this `input` "
                           f"together are too long: {exc.message} ({key}); start a new chain: send what the "
                           "model still needs in `input`, without previous_response_id", param="previous_response_id")


# --- answer: chat → Responses ----------------------------------------------------------------------------

def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _response(req: ResponsesRequest, model: str, *, status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, finish_reason: str | None = None,
              error: dict[str, Any] | None = None) -> dict[str, Any]:
    incomplete = _INCOMPLETE.get(finish_reason or "")
    if incomplete and status == "completed":
        status = "incomplete"
    return {
        "id": req.response_id, "object": "response", "created_at": req.created_at, "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "model": model, "output": output, "usage": usage, "error": error,
        "incomplete_details": {"reason": incomplete} if status == "incomplete" else None,
        **req.echo,
    }


def _message_item(text: str, *, item_id: str, status: str = "completed", refusal: str | None = None
                  ) -> dict[str, Any]:
    part = {"type": "refusal", "refusal": refusal} if refusal else \
        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def _call_item(call: dict[str, Any], *, item_id: str, status: str = "completed") -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"type": "function_call", "id": item_id, "call_id": call.get("id") or _new_id("call"),
            "name": fn.get("name") or "", "arguments": fn.get("arguments") or "", "status": status}


def render_response(req: ResponsesRequest, completion: dict[str, Any]) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = []
    calls = message.get("tool_calls") or []
    if message.get("content") or message.get("refusal") or not calls:
        output.append(_message_item(message.get("content") or "", item_id=_new_id("msg"),
                                    refusal=message.get("refusal")))
    output += [_call_item(call, item_id=_new_id("fc")) for call in calls]
    return _response(req, completion["model"], status="completed", output=output,
                     usage=_usage(completion.get("usage")), finish_reason=choice.get("finish_reason"))


class ResponsesStream(StreamFormat):
    """Chat chunks in, Responses events out: response.created, then per output item ``output_item.added``,
    its deltas and its ``.done`` events, then response.completed (or response.failed)."""

    def __init__(self, req: ResponsesRequest, model: str) -> None:
        self.req, self.model = req, model
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # finished items, in output order
        self.text: dict[str, Any] | None = None  # the message item being streamed
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> function_call item being streamed
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.failed = False
        self.closing = b""  # the events that close the last items, once the stream has ended
        self.final: dict[str, Any] | None = None  # the Response as the last event carries it (and as stored)

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

    def _snapshot(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return _response(self.req, self.model, status=status, output=self.output, usage=_usage(self.usage),
                         finish_reason=self.finish_reason, error=error)

    def start(self) -> bytes:
        snapshot = self._snapshot("in_progress")
        return self._event("response.created", response=snapshot) + self._event("response.in_progress",
                                                                                 response=snapshot)

    def _index(self) -> int:
        return len(self.output) + (self.text is not None) + len(self.calls)

    def _open_text(self) -> bytes:
        self.text = _message_item("", item_id=_new_id("msg"), status="in_progress")
        self.text["output_index"] = self._index() - 1
        item = {**self.text, "content": []}
        item.pop("output_index")
        ids = {"item_id": self.text["id"], "output_index": self.text["output_index"]}
        return (self._event("response.output_item.added", output_index=ids["output_index"], item=item)
                + self._event("response.content_part.added", **ids, content_index=0,
                              part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))

    def _close_text(self) -> bytes:
        if self.text is None:
            return b""
        item, self.text = self.text, None
        index = item.pop("output_index")
        part = item["content"][0]
        item["status"] = "completed"
        self.output.append(item)
        ids = {"item_id": item["id"], "output_index": index}
        return (self._event("response.output_text.done", **ids, content_index=0, text=part["text"], logprobs=[])
                + self._event("response.content_part.done", **ids, content_index=0, part=part)
                + self._event("response.output_item.done", output_index=index, item=item))

    def _close_calls(self) -> bytes:
        out = b""
        for item in self.calls.values():
            index = item.pop("output_index")
            item["status"] = "completed"
            self.output.append(item)
            out += self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"])
            out += self._event("response.output_item.done", output_index=index, item=item)
        self.calls = {}
        return out

    def chunk(self, data: dict[str, Any]) -> bytes:
        out = b""
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # Responses have no `n`; only the first choice is ever asked for
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.calls:
                    out += self._close_calls()
                if self.text is None:
                    out += self._open_text()
                assert self.text is not None
                self.text["content"][0]["text"] += delta["content"]
                out += self._event("response.output_text.delta", item_id=self.text["id"],
                                   output_index=self.text["output_index"], content_index=0, delta=delta["content"],
                                   logprobs=[])
            for call in delta.get("tool_calls") or []:
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            out += self._close_text()
            item = _call_item({"id": call.get("id"), "function": {"name": fn.get("name")}}, item_id=_new_id("fc"),
                              status="in_progress")
            self.calls[index] = item
            item["output_index"] = self._index() - 1
            added = {k: v for k, v in item.items() if k != "output_index"}
            out += self._event("response.output_item.added", output_index=item["output_index"], item=added)
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=item["output_index"], delta=fn["arguments"])
        return out

    def error(self, err: ProxyError) -> bytes:
        self.failed = True
        out = self._close_text() + self._close_calls()
        out += self._event("error", code=err.code, message=err.message, param=err.param)
        return out + self._event("response.failed", response=self._snapshot(
            "failed", {"code": err.code or "server_error", "message": err.message}))

    def _finish(self) -> dict[str, Any]:
        if self.final is None:
            self.closing = self._close_text() + self._close_calls()
            self.final = self._snapshot("completed")
        return self.final

    async def complete(self) -> None:
        """Store the final Response, the very object the last event carries, before that event is sent."""
        if self.failed or self.req.store is None:
            return
        await stored.keep(self.req.owner, self.req.store, self._finish(), self.req.items, self.req.request_id)

    def end(self) -> bytes:
        if self.failed:
            return b""
        snapshot = self._finish()
        kind = "response.completed" if snapshot["status"] == "completed" else "response.incomplete"
        return self.closing + self._event(kind, response=snapshot)


class ResponsesHandler(ChatHandler):
    endpoint = "responses"

    async def load(self, request: Request, body: Any, request_id: str) -> ChatRequest:
        """Read the chain ``previous_response_id`` continues (and check the key's quota) before translating."""
        check_top_level(body, KNOWN)
        previous, storing = await stored.prepare(request, body)
        req = parse_responses_request(body, limit_messages=self.settings.server.limit_messages,
                                      limit_content_chars=self.settings.server.limit_content_chars,
                                      previous=previous, storing=storing)
        if storing:
            req.store, req.owner, req.request_id = stored.store_of(request), request.state.owner, request_id
        return req

    async def keep(self, request: Request, chat: ChatRequest, answer: dict[str, Any]) -> None:
        assert isinstance(chat, ResponsesRequest)
        if chat.store is not None:
            await stored.keep(chat.owner, chat.store, answer, chat.items, chat.request_id)

    def render(self, chat: ChatRequest, completion: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(chat, ResponsesRequest)
        return render_response(chat, completion)

    def stream_format(self, chat: ChatRequest, model_name: str) -> StreamFormat:
        assert isinstance(chat, ResponsesRequest)
        return ResponsesStream(chat, model_name)

    def param_name(self, name: str) -> str:
        return _RESPONSES_NAME.get(name, name)
