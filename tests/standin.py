"""The Gemini stand-in ships in the package (``proxy.demo.standin``: ``route-llm standin`` or
``python -m proxy.demo.standin``); this name stays for the tests that import it. Not a script: run as
``python tests/standin.py``, ``proxy`` would resolve to ``tests/proxy``."""

from __future__ import annotations

from proxy.demo.standin import Fault, Recorded, StandIn, StandInServer, build_app, free_port, main, serve

__all__ = ["Fault", "Recorded", "StandIn", "StandInServer", "build_app", "free_port", "main", "serve"]
