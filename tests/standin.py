"""The Gemini stand-in now ships in the package (``proxy.demo.standin``, ``route-llm standin``); this name stays
for the tests and scripts that import it or run it as ``python tests/standin.py``."""

from __future__ import annotations

from proxy.demo.standin import Fault, Recorded, StandIn, StandInServer, build_app, free_port, main, serve

__all__ = ["Fault", "Recorded", "StandIn", "StandInServer", "build_app", "free_port", "main", "serve"]

if __name__ == "__main__":
    main()
