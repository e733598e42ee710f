"""Upstream: LiteLLM calls with retries and fallback along the tier list, model prices, per-request accounting."""
