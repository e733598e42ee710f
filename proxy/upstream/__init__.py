"""Upstream: LiteLLM calls with retries and fallback along the tier list, and model prices.

Per-request accounting reads what this layer returns and lives in the edge (``proxy.edge.accounting``).
"""
