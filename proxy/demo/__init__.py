"""The Gemini API stand-in: the upstream of the tests and of ``route-llm serve --demo``.

A leaf: it imports nothing of the proxy, and only the CLI imports it, inside the commands that start it
(``serve --demo``, ``standin``), so nothing on the request path loads it (tests/test_layers.py checks both).
"""
