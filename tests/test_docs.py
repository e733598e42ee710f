"""The documentation stays true to the code: every config key is in the reference with the error the loader
really gives for its bad value, the README stays a front page, and no page of the site is left out of its nav.

The site itself is built by ``.ci/run`` (``mkdocs build --strict``), not here: it needs the ``[docs]`` extra.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.settings import ConfigError, ModelSettings, ModelsSettings, Settings, settings_from_dict
from tests.conftest import ROOT

DOCS = ROOT / "docs"
CONFIG = ROOT / "proxy" / "config.yaml"
REFERENCE = DOCS / "configuration.md"
README_LINES = 200
# How the reference spells keys under a name the operator chooses, and the name the checks below use for it.
PLACEHOLDERS = {"models": ("<tier>", "weak"), "aliases": ("<name>", "auto-cheap")}


def documented_name(path: tuple[str, ...]) -> str:
    """``models.weak.timeout`` -> ``models.<tier>.timeout``; ``aliases.auto-cheap`` -> ``aliases.<name>``."""
    parts = list(path)
    if len(parts) > 1 and parts[0] in PLACEHOLDERS:
        parts[1] = PLACEHOLDERS[parts[0]][0]
    return ".".join(parts)


def yaml_keys(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of a YAML mapping, through inner mappings and lists of mappings (``models`` as a list:
    ``models.0.name``); a list of numbers (``router.shares``) is a value, not keys."""
    items: Any = ()
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        items = enumerate(node)
    for key, value in items:
        path = (*prefix, str(key))
        yield path
        yield from yaml_keys(value, path)


def settings_keys(cls: Any = Settings, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key the loader accepts, from the settings dataclasses (keys the bundled file leaves out too)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        path, tp = (*prefix, f.name), hints[f.name]
        yield path
        if tp is ModelsSettings:
            yield from settings_keys(ModelSettings, (*path, "weak"))
        elif typing.get_origin(tp) is dict:
            yield from settings_keys(typing.get_args(tp)[1], (*path, "auto-cheap"))
        elif dataclasses.is_dataclass(tp):
            yield from settings_keys(tp, path)


def key_rows(text: str) -> dict[str, list[str]]:
    """The rows of the reference's key tables (four columns, a key first), by key."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        key = re.fullmatch(r"`([\w.<>-]+)`", cells[0]) if line.startswith("|") and len(cells) == 4 else None
        if key:
            rows[key.group(1)] = cells
    return rows


def reference_rows(text: str | None = None) -> list[tuple[str, str, str]]:
    """(key, bad value, message) from the key tables' last column: `` `value` → `message` ``."""
    rows: list[tuple[str, str, str]] = []
    for key, cells in key_rows(REFERENCE.read_text(encoding="utf-8") if text is None else text).items():
        error = re.fullmatch(r"`(.+?)` → `(.+)`", cells[-1])
        if error:
            rows.append((key, error.group(1), error.group(2)))
    return rows


@pytest.mark.parametrize("config", [CONFIG, ROOT / "deploy" / "config.three-tiers.yaml"], ids=["bundled", "three-tiers"])
def test_every_key_of_the_shipped_configs_is_in_the_reference(config: Path) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    paths = {documented_name(path) for path in yaml_keys(yaml.safe_load(config.read_text(encoding="utf-8")))}
    missing = sorted(p for p in paths if f"`{p}`" not in text)
    assert not missing, f"keys of {config.name} missing from docs/configuration.md: {missing}"


def test_every_key_the_loader_accepts_is_in_the_reference() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    missing = sorted({documented_name(p) for p in settings_keys()} - {m for m in re.findall(r"`([\w.<>-]+)`", text)})
    assert not missing, f"settings keys missing from docs/configuration.md: {missing}"


def test_the_key_walk_sees_nested_keys_and_placeholders() -> None:
    """Guards the two walks above: a walk that found nothing would pass them."""
    walked = {documented_name(p) for p in yaml_keys(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))}
    assert {"models.<tier>.timeout", "aliases.<name>.strong_share", "feedback.limit_store_bytes"} <= walked
    as_list = {documented_name(p) for p in yaml_keys(yaml.safe_load("models: [{name: a}, {name: b}]\n"
                                                                     "router: {shares: [0.5, 0.5]}"))}
    assert as_list == {"models", "models.<tier>", "models.<tier>.name", "router", "router.shares"}
    assert {"router.thresholds", "models.<tier>.api_base"} <= {documented_name(p) for p in settings_keys()}


def test_every_key_in_the_reference_has_its_bad_value_and_error() -> None:
    """Each row of a key table names a bad value and the message; a row without one is a gap."""
    keyed = set(key_rows(REFERENCE.read_text(encoding="utf-8")))
    assert sorted(keyed - {key for key, _, _ in reference_rows()}) == []
    assert len(keyed) >= 60


def _with(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """The bundled config with one key set: placeholders become a real tier and alias of the bundled file."""
    out = copy.deepcopy(data)
    parts = key.split(".")
    if len(parts) > 1 and parts[0] in PLACEHOLDERS:
        parts[1] = PLACEHOLDERS[parts[0]][1]
    node = out
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return out


@pytest.mark.parametrize(("key", "bad", "message"), reference_rows(), ids=[row[0] for row in reference_rows()])
def test_the_documented_error_is_the_one_the_loader_gives(key: str, bad: str, message: str) -> None:
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    settings_from_dict(data)  # the bundled file itself loads, so the error below is the bad value's
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(_with(data, key, yaml.safe_load(bad)))
    assert str(caught.value) == message


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_readme_links_point_at_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t}
    assert targets, "the README links into docs/"
    missing = sorted(t for t in targets if t and not (ROOT / t).exists())
    assert not missing, missing


def nav_pages(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from nav_pages(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from nav_pages(value)


def test_every_page_is_in_the_site_nav_and_every_nav_entry_is_a_page() -> None:
    nav = list(nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert sorted(pages - set(nav)) == [], "pages no reader can reach from the nav"
    assert sorted(set(nav) - pages) == [], "nav entries without a page"
    assert len(nav) == len(set(nav)), "a page listed twice"


def test_the_site_builds_offline_with_warnings_as_errors() -> None:
    """What the build promises: no fonts or scripts fetched from elsewhere, and a strict build in CI."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["theme"]["font"] is False and "analytics" not in config.get("extra", {})
    assert config["docs_dir"] == "docs" and config["strict"] is True
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    build = next(i for i, line in enumerate(ci) if line.startswith("mkdocs build --strict"))
    assert build < next(i for i, line in enumerate(ci) if line.startswith("python -m pytest"))


def test_reference_rows_are_read_from_the_key_tables_only() -> None:
    """The row parser takes a key row's bad value and message, and skips prose and two-column tables."""
    text = ("| `a.b` | `1` | x | `0` → `a.b: must be positive` |\n| mistake | message |\n"
            "| `ENV` | what it does |\n| `a.c` | `1` | y | not checked |\nprose with `a.d` | in it\n")
    assert set(key_rows(text)) == {"a.b", "a.c"}
    assert reference_rows(text) == [("a.b", "0", "a.b: must be positive")]


# --- the API against the code ----------------------------------------------------------------------------
# Endpoints, headers and error codes must be documented: on docs/api.md, or on the page of the feature that
# adds them (docs/api.md says so), so a feature's branch does not have to edit the API page to pass.

PROXY = ROOT / "proxy"
PATH_PARAMETER = re.compile(r"\{\w+(:\w+)?\}")  # {model_id:path}, {file_id}


def _served_endpoints() -> set[str]:
    """``METHOD /path`` for every route of the app, path parameters written ``{id}`` as the page writes them."""
    from starlette.routing import Route

    from proxy.app import create_app
    from proxy.settings import load_settings

    app = create_app(load_settings(CONFIG))  # the route table only: the lifespan (router, stores) does not run
    return {f"{method} {PATH_PARAMETER.sub('{id}', route.path)}"
            for route in app.routes if isinstance(route, Route)
            for method in route.methods or () if method != "HEAD"}


def _documented() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md")))


def _source() -> str:
    """The serving code's text (the test double that stands in for Gemini is not the API)."""
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(PROXY.rglob("*.py"))
                     if "standin" not in p.name and "demo" not in p.parts)


def test_every_endpoint_the_app_serves_is_documented() -> None:
    text = _documented()
    served = _served_endpoints()
    assert {"POST /v1/chat/completions", "GET /v1/files/{id}/content", "POST /admin/reload"} <= served
    missing = sorted(e for e in served if f"`{e}`" not in text)
    assert not missing, f"endpoints in no page of docs/ (docs/api.md lists them): {missing}"


def test_every_route_llm_header_the_code_sends_is_documented() -> None:
    text = _documented()
    headers = set(re.findall(r"x-route-llm-[a-z-]*[a-z]", _source()))
    assert {"x-route-llm-tier", "x-route-llm-router-version", "x-route-llm-documents"} <= headers
    missing = sorted(h for h in headers if f"`{h}`" not in text)
    assert not missing, f"headers in no page of docs/ (docs/api.md lists them): {missing}"


def test_every_error_code_the_code_names_is_documented() -> None:
    """Codes written out in the code (``code="..."``, ``code = "..."``); the ones built from a closed set of
    reasons (``upstream_<reason>``, ``pdf_<reason>``) are listed on the API page with their reasons."""
    text = _documented()
    codes = set(re.findall(r"""\bcode\s*=\s*["']([a-z_]+)["']""", _source()))
    assert {"model_not_found", "storage_quota_exceeded", "shutting_down"} <= codes
    missing = sorted(c for c in codes if f"`{c}`" not in text)
    assert not missing, f"error codes in no page of docs/ (docs/api.md lists them): {missing}"
