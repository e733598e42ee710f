"""Tests of the training package and the scripts that drive it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def script_main(name: str) -> Callable[[list[str]], None]:
    """The ``main`` of ``scripts/<name>.py`` (scripts are not a package; nothing imports them but tests)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main: Callable[[list[str]], None] = module.main
    return main
