"""LiteLLM's answers reduced to OpenAI's chat-completion shape.

LiteLLM's objects carry fields of its own and of the provider (``vertex_ai_grounding_metadata``,
``provider_specific_fields``, ``thinking_blocks``, a ``cost`` inside streamed usage, token counts by
modality) and give each streamed chunk a new id. A client written against OpenAI should see what OpenAI
sends, so the proxy keeps OpenAI's fields only, by allow-list: a new LiteLLM field then stays out
instead of leaking until someone notices.
"""

from __future__ import annotations

from typing import Any

_COMPLETION = ("id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier")
_CHOICE = ("index", "message", "delta", "finish_reason", "logprobs")
_MESSAGE = ("role", "content", "refusal", "tool_calls", "function_call", "annotations", "audio")
# A tool call in a whole message has no ``index``; in a stream's delta the index says which call a piece extends.
_TOOL_CALL = {"message": ("id", "type", "function"), "delta": ("index", "id", "type", "function")}
_FUNCTION = ("name", "arguments")
_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details")
_USAGE_DETAILS = {
    "prompt_tokens_details": ("audio_tokens", "cached_tokens"),
    "completion_tokens_details": ("accepted_prediction_tokens", "audio_tokens", "reasoning_tokens",
                                  "rejected_prediction_tokens"),
}


def _keep(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: data[k] for k in keys if k in data}


def _tool_call(call: Any, part: str) -> Any:
    if not isinstance(call, dict):
        return call
    out = _keep(call, _TOOL_CALL[part])
    if isinstance(out.get("function"), dict):
        out["function"] = _keep(out["function"], _FUNCTION)
    return out


def usage(data: dict[str, Any]) -> dict[str, Any]:
    out = _keep(data, _USAGE)
    for name, keys in _USAGE_DETAILS.items():
        if isinstance(out.get(name), dict):
            out[name] = _keep(out[name], keys)
    return out


def completion(data: dict[str, Any], model: str) -> dict[str, Any]:
    """A chat completion or one stream chunk, with OpenAI's fields only and ``model`` as the client sees it."""
    out = _keep(data, _COMPLETION)
    out["model"] = model
    choices = []
    for choice in out.get("choices") or []:
        c = _keep(choice, _CHOICE)
        for part in ("message", "delta"):
            if isinstance(c.get(part), dict):
                c[part] = _keep(c[part], _MESSAGE)
                if isinstance(c[part].get("tool_calls"), list):
                    c[part]["tool_calls"] = [_tool_call(call, part) for call in c[part]["tool_calls"]]
        choices.append(c)
    out["choices"] = choices
    if isinstance(out.get("usage"), dict):
        out["usage"] = usage(out["usage"])
    return out


class ChunkIds:
    """One id and one ``created`` for every chunk of a completion, as OpenAI sends them.

    LiteLLM's Gemini stream gives chunks different ids; clients that group chunks by id (or assert that
    they match) would see several completions.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None

    def apply(self, chunk: dict[str, Any]) -> dict[str, Any]:
        if self.id is None:
            self.id, self.created = chunk.get("id"), chunk.get("created")
        chunk["id"], chunk["created"] = self.id, self.created
        return chunk
