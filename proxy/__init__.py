"""route-llm's HTTP proxy: OpenAI-compatible endpoints in front of a weak and a strong model."""

from __future__ import annotations

# The one place the version is written: the package metadata reads it (pyproject.toml, dynamic version), and
# `route-llm --version`, GET /health/live and the route_llm_info metric report it (tests/test_version.py).
__version__ = "0.1.0"
