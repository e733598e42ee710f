"""A small value that validates against a JSON schema: what the Gemini stand-in (``proxy/demo/standin.py``) puts in a
tool call's arguments and in a structured-output answer, so that clients which validate what they get back
(LangChain's ``with_structured_output``, pydantic models, the SDKs' ``parse`` helpers) accept the demo's answers.

It reads JSON Schema as OpenAI's clients and pydantic write it (``$ref`` into ``$defs``/``definitions``,
``anyOf``/``oneOf``/``allOf``, ``const``, ``enum``, ``prefixItems``, the numeric and length bounds) and the
OpenAPI subset LiteLLM hands to Gemini (upper-case type names, ``nullable``). The value is minimal: the required
properties (all of them when a schema names none as required, so that a bare declaration still gets filled),
the fewest array items allowed (at least one, to show the item's shape), the first ``enum``/``anyOf``/``oneOf``
choice. A string ``pattern`` is not honoured (that needs a regex inverter); every other keyword above is.
"""

from __future__ import annotations

import math
from typing import Any

# Values for the string formats pydantic emits (datetime, date, time, timedelta, EmailStr, AnyUrl, UUID, IPs).
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00Z", "duration": "P1D",
    "email": "user@example.com", "idn-email": "user@example.com", "uri": "https://example.com/",
    "url": "https://example.com/", "iri": "https://example.com/", "uri-reference": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1",
    "hostname": "example.com",
}
# Past this nesting depth (or on the second visit of a ``$ref`` within one branch), only what the schema
# requires is generated and arrays stay as short as allowed, so that recursive models (a tree of nodes) end.
_MAX_DEPTH = 16


class SchemaError(ValueError):
    """A schema the generator cannot satisfy (an unresolvable ``$ref``, contradictory bounds)."""


def minimal_instance(schema: Any, text: str = "text") -> Any:
    """A value valid under ``schema``; ``text`` is the content of free-form strings."""
    return _Generator(schema, text).value(schema, depth=0, seen=())


class _Generator:
    def __init__(self, root: Any, text: str) -> None:
        self.root = root
        self.text = text

    def value(self, schema: Any, *, depth: int, seen: tuple[str, ...], variant: int = 0) -> Any:
        if depth > 4 * _MAX_DEPTH:
            raise SchemaError("the schema requires an infinitely deep value")
        if schema is True or schema is None or schema == {}:
            return self._string({}, variant)
        if schema is False:
            raise SchemaError("the schema `false` admits no value")
        if not isinstance(schema, dict):
            raise SchemaError(f"not a schema: {type(schema).__name__}")
        if isinstance(schema.get("$ref"), str):
            ref = schema["$ref"]
            target = self._resolve(ref)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}  # 2020-12 lets keywords sit beside $ref
            merged = _merge([target, siblings]) if siblings else target
            return self.value(merged, depth=depth + 1, seen=(*seen, ref), variant=variant)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][min(variant, len(schema["enum"]) - 1)]
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            parts = [self._resolve(p["$ref"]) if isinstance(p, dict) and "$ref" in p else p for p in schema["allOf"]]
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self.value(_merge([*parts, rest]), depth=depth + 1, seen=seen, variant=variant)
        for key in ("anyOf", "oneOf"):
            choices = schema.get(key)
            if isinstance(choices, list) and choices:
                rest = {k: v for k, v in schema.items() if k != key}
                choice = _first_not_null(choices)
                return self.value(_merge([rest, choice]) if rest else choice, depth=depth + 1, seen=seen,
                                  variant=variant)
        kind = _kind(schema)
        if kind == "object":
            return self._object(schema, depth, seen)
        if kind == "array":
            return self._array(schema, depth, seen)
        if kind == "integer":
            return self._number(schema, integer=True, variant=variant)
        if kind == "number":
            return self._number(schema, integer=False, variant=variant)
        if kind == "boolean":
            return variant % 2 == 0
        if kind == "null":
            return None
        return self._string(schema, variant)

    def _resolve(self, ref: str) -> Any:
        """A local reference (``#/$defs/Name``, ``#/definitions/Name``, any JSON pointer into the root)."""
        if not ref.startswith("#"):
            raise SchemaError(f"only local references are resolved: {ref!r}")
        node = self.root
        for raw in ref[1:].lstrip("/").split("/") if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"unresolvable reference {ref!r}")
        return node

    def _object(self, schema: dict[str, Any], depth: int, seen: tuple[str, ...]) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        required = schema.get("required")
        deep = depth > _MAX_DEPTH or len(seen) != len(set(seen))
        if isinstance(required, list):
            names = [n for n in required if isinstance(n, str)]
        else:
            names = [] if deep else list(properties)
        result: dict[str, Any] = {}
        for name in names:
            sub = properties.get(name, schema.get("additionalProperties", {}))
            result[name] = self.value(sub if isinstance(sub, dict) else {}, depth=depth + 1, seen=seen)
        extra = schema.get("additionalProperties", {})
        for i in range(_count(schema, "minProperties") - len(result)):
            result[f"key{i}"] = self.value(extra if isinstance(extra, dict) else {}, depth=depth + 1, seen=seen)
        return result

    def _array(self, schema: dict[str, Any], depth: int, seen: tuple[str, ...]) -> list[Any]:
        prefix = schema.get("prefixItems")
        if not isinstance(prefix, list):
            prefix = []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-2019 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        deep = depth > _MAX_DEPTH or len(seen) != len(set(seen))
        low = _count(schema, "minItems")
        high = schema.get("maxItems") if isinstance(schema.get("maxItems"), int) else None
        count = max(low, len(prefix), 0 if deep else 1)
        if isinstance(high, int):
            count = min(count, high)
        if count < low:
            raise SchemaError(f"minItems {low} exceeds maxItems {high}")
        result = []
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            # distinct items, for uniqueItems: each one is generated as a different variant
            result.append(self.value(sub if isinstance(sub, dict) else {}, depth=depth + 1, seen=seen, variant=i))
        return result

    def _number(self, schema: dict[str, Any], *, integer: bool, variant: int) -> int | float:
        low, high = _bound(schema, "minimum", "exclusiveMinimum"), _bound(schema, "maximum", "exclusiveMaximum")
        step = schema.get("multipleOf") if isinstance(schema.get("multipleOf"), (int, float)) else None
        unit = step or 1
        # the smallest value the bounds allow, or the usual 1 / 1.5 when they allow it; variants step upwards
        value: float = 1 if integer else 1.5
        if low is not None:
            floor, is_open = low
            if value < floor or (is_open and value <= floor):
                value = floor + (unit if is_open and (integer or step) else 0.5 if is_open else 0)
        value += variant * unit
        if step:
            k = math.ceil(value / step - 1e-9)
            # the first multiple that also passes a plain float division check (value / step is whole)
            value = next((m * step for m in range(k, k + 64) if (m * step / step).is_integer()), k * step)
        if integer:
            value = math.ceil(value - 1e-9) if not step else value
        if high is not None:
            ceiling, is_open = high
            if value > ceiling or (is_open and value >= ceiling):
                if low is not None and not integer and not step:
                    value = (low[0] + ceiling) / 2  # between two bounds, open or not
                else:
                    value = ceiling - (unit if is_open else 0)
                if step:
                    value = math.floor(value / step + 1e-9) * step
        if low is not None and (value < low[0] or (low[1] and value <= low[0])):
            raise SchemaError("no number fits between the schema's bounds")
        return int(value) if integer else float(value)

    def _string(self, schema: dict[str, Any], variant: int) -> str:
        value = _FORMATS.get(str(schema.get("format", "")), self.text)
        if variant:
            value = f"{value} {variant}" if value == self.text else value
        low, high = schema.get("minLength"), schema.get("maxLength")
        if isinstance(low, int) and len(value) < low:
            value = value + "x" * (low - len(value))
        if isinstance(high, int) and len(value) > high:
            value = value[:high]
        return value


def _count(schema: dict[str, Any], key: str) -> int:
    value = schema.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> tuple[float, bool] | None:
    """One side's bound as (value, open?): draft 6+ numbers, or draft 4's boolean flag beside the inclusive key."""
    flag = schema.get(exclusive)
    limit = schema.get(inclusive)
    if isinstance(flag, bool):
        return (limit, flag) if isinstance(limit, (int, float)) else None
    if isinstance(flag, (int, float)):
        if isinstance(limit, (int, float)) and limit > flag:
            return limit, False
        return flag, True
    return (limit, False) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else None


def _kind(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [str(k).lower() for k in kind]
        kind = next((k for k in named if k != "null"), named[0] if named else None)
    if isinstance(kind, str):
        return kind.lower()
    if "properties" in schema or "additionalProperties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _first_not_null(choices: list[Any]) -> Any:
    """The first choice that is not just ``null``: the demo answers with a value, not with "nothing"."""
    for choice in choices:
        if not (isinstance(choice, dict) and choice.get("type") in ("null", "NULL")):
            return choice
    return choices[0]


def _merge(parts: list[Any]) -> dict[str, Any]:
    """allOf as one schema: properties and required lists joined, other keywords from the last part naming them."""
    merged: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                properties.update(value)
            elif key == "required" and isinstance(value, list):
                required += [n for n in value if n not in required]
            else:
                merged[key] = value
    if properties:
        merged["properties"] = properties
    if required or any(isinstance(p, dict) and "required" in p for p in parts):
        merged["required"] = required
    return merged
