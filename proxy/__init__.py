"""route-llm's HTTP proxy: OpenAI-compatible endpoints in front of a weak and a strong model."""

from __future__ import annotations

__version__ = "0.1.0"
