"""Input tokens counted offline, for ``POST /v1/messages/count_tokens``.

LiteLLM's ``token_counter`` uses the model's own tokenizer where LiteLLM ships one and its bundled default
(tiktoken's cl100k, packaged with LiteLLM, so nothing is downloaded) otherwise, as for Gemini models: an estimate
there, which is what the endpoint can promise without calling the provider.
"""

from __future__ import annotations

from typing import Any

import litellm


def count_input_tokens(model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """Tokens of a chat request's messages and tools for ``model`` (a LiteLLM model string). Synchronous and
    CPU-bound: call it in a thread. Images count as LiteLLM's default size, so no image URL is ever fetched."""
    return int(litellm.token_counter(model=model, messages=messages, tools=tools,  # type: ignore[arg-type]
                                     use_default_image_token_count=True))
