"""The house's layers, checked over the real import graph (docs/architecture.md draws them).

Every ``import`` and ``from ... import`` in the project's own packages is read with ``ast`` and resolved to the
module it loads: ``from proxy import services`` is the module ``proxy.services``, ``from . import x`` and
``from ..state import records`` are resolved against the importing module, ``import proxy.x as y`` is
``proxy.x``. Imports inside functions and ``TYPE_CHECKING`` blocks count as well: a lazy import back up is still
an arrow back up (it only hides the cycle from the interpreter). A grep for ``proxy.services`` would miss most
of these spellings; the resolved graph does not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "training", "proxy", "scripts", "tests")

# The top level, lowest first: a package may import those before it, never one after it.
TOP = ("router", "training", "proxy", "scripts")

# Inside proxy/, highest first. A module may import from its own group (its own package) and from any group
# below; groups on one line are siblings and do not import each other. proxy/__init__ (the version) sits under
# everything.
PROXY = (
    ("proxy.cli",),
    ("proxy.app", "proxy.report"),
    ("proxy.edge",),
    ("proxy.services",),
    ("proxy.documents", "proxy.routing", "proxy.upstream"),
    ("proxy.state",),
    ("proxy.request", "proxy.errors", "proxy.metrics", "proxy.settings", "proxy.tracing"),
    ("proxy",),
)

# The stand-in upstream (tests and `route-llm serve --demo`): a leaf that only the CLI imports, lazily.
DEMO = "proxy.demo"



@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    lazy: bool  # inside a function (or class body), not run when the module is imported
    line: int


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (None: a third-party or standard module)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        origin = ".".join([*base, *([node.module] if node.module else [])])
    else:
        origin = node.module or ""
    for alias in node.names:
        sub = f"{origin}.{alias.name}"
        yield sub if sub in MODULES else origin  # `from proxy import services` loads the module proxy.services


def _arrows_of(module: str, source: str, is_package: bool = False) -> Iterator[Arrow]:
    tree = ast.parse(source)

    def walk(node: ast.AST, lazy: bool) -> Iterator[Arrow]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in _targets(module, is_package, child):
                    target = _known(name)
                    if target is not None and target != module:
                        yield Arrow(module, target, lazy, child.lineno)
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
            yield from walk(child, inner)

    yield from walk(tree, False)


ARROWS = [a for name, path in sorted(MODULES.items())
          for a in _arrows_of(name, path.read_text(), path.name == "__init__.py")]


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _proxy_floor(module: str) -> tuple[int, str]:
    """The floor (0 = top) and the group (the longest matching prefix) of a module inside proxy/."""
    best: tuple[int, str] | None = None
    for floor, groups in enumerate(PROXY):
        for group in groups:
            if _in(module, group) and (best is None or len(group) > len(best[1])):
                best = (floor, group)
    assert best is not None, f"{module} sits on no floor of PROXY: add it to the test's house"
    return best


def _violation(a: Arrow) -> str | None:
    """Why an arrow breaks the house, or None."""
    src, dst = _top(a.source), _top(a.target)
    if src == "tests" or dst == "tests":
        return "scripts must not import tests" if src == "scripts" else None
    if src != dst:
        if TOP.index(dst) > TOP.index(src):
            return f"{src} sits below {dst} (router ← training ← proxy ← scripts)"
        return None
    if src != "proxy":
        return None
    if _in(a.target, DEMO) and not _in(a.source, DEMO):
        if a.source == "proxy.cli" and a.lazy:
            return None
        return "the stand-in (proxy.demo) is imported only by the CLI, inside the command that needs it"
    if _in(a.source, DEMO):
        return None if _in(a.target, DEMO) else "proxy.demo is a leaf: it imports nothing of the proxy"
    (sf, sg), (df, dg) = _proxy_floor(a.source), _proxy_floor(a.target)
    if df < sf:
        return f"{sg} (floor {sf}) imports {dg} above it (floor {df})"
    if df == sf and sg != dg:
        return f"{sg} and {dg} are siblings and do not import each other"
    return None


def _cycles(scope: str) -> list[list[str]]:
    """Strongly connected components with more than one module, among the modules under ``scope``."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES if _in(m, scope)}
    for a in ARROWS:
        if a.source in graph and a.target in graph:
            graph[a.source].add(a.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few hundred modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_every_spelling_of_an_import() -> None:
    """The resolver itself: without this, a parser that missed `from proxy import services` would pass all."""
    def resolved(source: str, module: str = "proxy.edge.routes", package: bool = False) -> list[str]:
        node = ast.parse(source).body[0]
        assert isinstance(node, (ast.Import, ast.ImportFrom))
        return [t for name in _targets(module, package, node) if (t := _known(name)) is not None]

    assert resolved("from proxy import services") == ["proxy.services"]
    assert resolved("from proxy import __version__") == ["proxy"]
    assert resolved("import proxy.settings as s") == ["proxy.settings"]
    assert resolved("from . import guard") == ["proxy.edge.guard"]
    assert resolved("from ..state import records") == ["proxy.state.records"]
    assert resolved("from .. import errors") == ["proxy.errors"]
    assert resolved("from .chat import parse_chat_request") == ["proxy.edge.chat"]
    assert resolved("from . import chat", module="proxy.edge", package=True) == ["proxy.edge.chat"]
    assert resolved("import json") == []
    arrows = list(_arrows_of("proxy.cli", "import proxy.errors\nif 1:\n    def f():\n        from proxy import app\n"))
    assert [(a.target, a.lazy) for a in arrows] == [("proxy.errors", False), ("proxy.app", True)]


def test_a_rule_breaking_arrow_is_caught() -> None:
    """Each rule, on a made-up arrow: up a floor, across siblings, into the stand-in, up the top level."""
    assert _violation(Arrow("proxy.state.records", "proxy.upstream.accounting", True, 1))
    assert _violation(Arrow("proxy.routing.decider", "proxy.edge.chat", False, 1))
    assert _violation(Arrow("proxy.documents.service", "proxy.services", True, 1))
    assert _violation(Arrow("proxy.upstream.calls", "proxy.routing.decider", False, 1))
    assert _violation(Arrow("proxy.app", "proxy.demo.standin", True, 1))
    assert _violation(Arrow("proxy.cli", "proxy.demo.standin", False, 1))
    assert _violation(Arrow("router.policy", "proxy.settings", True, 1))
    assert _violation(Arrow("training.data", "scripts.train_router", True, 1))
    assert _violation(Arrow("scripts.attack", "tests.standin", False, 1))
    assert _violation(Arrow("proxy.cli", "proxy.demo.standin", True, 1)) is None
    assert _violation(Arrow("proxy.edge.routes", "proxy.services", False, 1)) is None
    assert _violation(Arrow("proxy.routing.decider", "proxy.request", False, 1)) is None


@pytest.mark.parametrize("scope", ["proxy", "router", "training", "scripts"])
def test_no_import_cycles(scope: str) -> None:
    assert _cycles(scope) == []


def test_every_arrow_keeps_to_the_layers() -> None:
    broken = sorted(f"{a.source} -> {a.target} (line {a.line}): {why}" for a in ARROWS
                    if (why := _violation(a)) is not None)
    assert broken == []  # no exceptions: an arrow that must stay is a sign the house is drawn wrong


def test_only_the_edge_reads_the_shared_services() -> None:
    readers = {a.source for a in ARROWS if a.target == "proxy.services"}
    assert readers, "nothing imports proxy.services: the test reads the wrong graph"
    assert {r for r in readers if not (_in(r, "proxy.edge") or r in ("proxy.app", "proxy.cli"))} == set()


def test_the_stand_in_is_a_leaf_that_only_the_cli_starts() -> None:
    into = [a for a in ARROWS if _in(a.target, DEMO) and _top(a.source) == "proxy" and not _in(a.source, DEMO)]
    assert into, "nothing in proxy/ imports the stand-in: the test reads the wrong graph"
    assert {(a.source, a.lazy) for a in into} == {("proxy.cli", True)}
    assert [a for a in ARROWS if _in(a.source, DEMO) and not _in(a.target, DEMO) and _top(a.target) != "router"] == []


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md draws these layers and gives every module one line; a new module needs its line."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = sorted(str(path.relative_to(ROOT)) for name, path in MODULES.items()
                     if _top(name) in ("proxy", "router", "training") and path.name != "__init__.py"
                     and f"`{path.name}`" not in page)
    assert missing == []


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/helpers.py or a conftest; a test module imported by another runs its
    module-level set-up twice and couples two files that mirror different packages."""
    shared = sorted(f"{a.source} -> {a.target}" for a in ARROWS
                    if _top(a.source) == "tests" and a.target.rsplit(".", 1)[-1].startswith("test_"))
    assert shared == []
