"""proxy/schema_instance.py: the value the demo stand-in answers with validates against the schema it was made
from (checked with ``jsonschema``, which LiteLLM depends on, and with pydantic for the models clients declare);
schemas it cannot satisfy raise SchemaError instead of yielding an invalid value."""

from __future__ import annotations

import datetime
import uuid
from enum import Enum
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from proxy.demo.schema_instance import SchemaError, minimal_instance


def _as_json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI subset in JSON Schema's spelling (lower-case types), for the validator."""
    if isinstance(schema, dict):
        return {k: v.lower() if k == "type" and isinstance(v, str) else _as_json_schema(v) for k, v in schema.items()}
    return [_as_json_schema(v) for v in schema] if isinstance(schema, list) else schema


def valid(schema: dict[str, Any]) -> Any:
    value = minimal_instance(schema, "demo")
    checked = _as_json_schema(schema)
    jsonschema.validators.validator_for(checked)(checked).validate(value)
    return value


@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "string"}, "demo"),
    ({"type": "integer"}, 1),
    ({"type": "number"}, 1.5),
    ({"type": "boolean"}, True),
    ({"type": "null"}, None),
    ({"type": ["null", "integer"]}, 1),  # a value rather than "nothing"
    ({"enum": ["b", "a"]}, "b"),
    ({"const": {"kind": "fixed"}}, {"kind": "fixed"}),
    ({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["b"]},
     {"b": 1}),  # minimal: the required properties only
    ({"type": "object", "properties": {"a": {"type": "string"}}}, {"a": "demo"}),  # none required: all, to show them
    ({"properties": {"n": {"type": "integer"}}, "required": ["n"]}, {"n": 1}),  # object without "type"
    ({"type": "array", "items": {"type": "integer"}}, [1]),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 0}, []),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}], "items": False}, ["demo", False]),
    ({"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 5}]}, 5),
    ({"oneOf": [{"type": "string", "format": "date"}, {"type": "integer"}]}, "2024-01-01"),
    ({"allOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]}, {"a": 1, "b": True}),
    ({"type": "integer", "minimum": 10, "maximum": 20}, 10),
    ({"type": "integer", "exclusiveMinimum": 10}, 11),
    ({"type": "integer", "maximum": -3}, -3),
    ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, 0.5),
    ({"type": "integer", "multipleOf": 7}, 7),
    ({"type": "number", "multipleOf": 0.25, "minimum": 2}, 2.0),
    ({"type": "string", "minLength": 10}, "demoxxxxxx"),
    ({"type": "string", "maxLength": 2}, "de"),
    ({"type": "string", "format": "email"}, "user@example.com"),
    ({"type": "OBJECT", "properties": {"x": {"type": "STRING", "nullable": True}}, "required": ["x"]},
     {"x": "demo"}),  # Gemini's OpenAPI subset, as LiteLLM forwards it
])
def test_instance_is_minimal_and_valid(schema: dict[str, Any], expected: Any) -> None:
    assert valid(schema) == expected


def test_refs_into_defs_and_definitions_resolve() -> None:
    schema = {"type": "object", "required": ["a", "b"],
              "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"$ref": "#/definitions/B~1x"}},
              "$defs": {"A": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}},
              "definitions": {"B/x": {"enum": ["only"]}}}
    assert valid(schema) == {"a": {"n": 1}, "b": "only"}


def test_unique_items_get_distinct_values() -> None:
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True}
    assert len(set(valid(schema))) == 3
    assert len(set(valid({**schema, "items": {"type": "integer", "multipleOf": 2}}))) == 3


def test_a_recursive_model_ends() -> None:
    class Node(BaseModel):
        name: str
        children: list[Node]

    value = valid(Node.model_json_schema())
    Node.model_validate(value)
    assert value["children"][0]["children"] == []  # the second visit of the same $ref stops the descent


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    postcode: str = Field(min_length=5, max_length=5)


class Person(BaseModel):
    """The shapes pydantic emits: $defs/$ref, enums, Literal (const/enum), Optional (anyOf with null), unions,
    nested lists of models, dicts, tuples, formats and numeric bounds."""

    name: str
    age: int = Field(ge=18, le=130)
    score: float = Field(gt=0, lt=1)
    colour: Colour
    kind: Literal["person"]
    nickname: str | None
    ident: int | str
    addresses: list[Address]
    home: Address
    tags: dict[str, int]
    pair: tuple[str, int]
    born: datetime.date
    seen: datetime.datetime
    id: uuid.UUID
    note: str = "optional with a default"


def test_pydantic_models_validate_the_instance() -> None:
    schema = Person.model_json_schema()
    assert "$defs" in schema  # the case under test: references into $defs
    value = valid(schema)
    person = Person.model_validate(value)
    assert person.kind == "person" and person.colour is Colour.RED and 18 <= person.age <= 130
    assert "note" not in value  # not required: left out


@pytest.mark.parametrize(("schema", "message"), [
    (False, "admits no value"),
    ("string", "not a schema"),
    ({"$ref": "#/$defs/Missing"}, "unresolvable reference"),
    ({"$ref": "https://example.com/schema.json"}, "only local references"),
    ({"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 1}, "minItems 3 exceeds maxItems 1"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "no number fits"),
    ({"type": "object", "required": ["next"], "properties": {"next": {"$ref": "#"}}}, "infinitely deep"),
])
def test_schemas_without_a_valid_value_raise(schema: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        minimal_instance(schema)
