"""The parsed chat request: one neutral value that every layer under the edge reads.

The edge parses and validates a body in its client's dialect (``proxy.edge.chat``, ``proxy.edge.responses``)
into a :class:`ChatRequest`; documents expands its :class:`FilePart` s and routing judges :func:`user_texts`.
Living here, below all of them, it lets those layers read the request without importing the edge that built
it. It imports nothing of the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FilePart:
    """A document attached to a user message, by stored id or inline base64."""

    message_index: int
    part_index: int
    file_id: str | None = None
    filename: str | None = None
    file_data: str | None = None


@dataclass
class ChatRequest:
    model: Any
    messages: list[dict[str, Any]]
    stream: bool
    params: dict[str, Any]
    files: list[FilePart] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # accepted, not forwarded (Responses-only parameters)

    @property
    def include_usage(self) -> bool:
        opts = self.params.get("stream_options") or {}
        return bool(opts.get("include_usage"))


def text_of(message: dict[str, Any]) -> str:
    """A message's text: the string content, or its text parts joined (file and image parts left out)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def user_texts(messages: list[dict[str, Any]], limit: int) -> list[str]:
    """The last ``limit`` user turns' texts, oldest first: what routing scores (the last one alone, or the
    conversation). Always at least one entry (an empty string when there is no user turn), so that the last
    entry is the turn a single-turn router judges."""
    texts = [text_of(m) for m in messages if m.get("role") == "user"][-limit:]
    return texts or [""]
