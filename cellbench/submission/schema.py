"""A small, strict JSON Schema (draft 2020-12 subset) checker that reports every problem.

cellbench publishes its submission schemas as ordinary JSON Schema files
(``cellbench/resources/schemas/``), so any validator can read them. Inside cellbench they are
checked by this module instead of the ``jsonschema`` package, which would add a compiled
dependency (``rpds-py``) for a few keywords. The keywords supported are listed in
:data:`KEYWORDS`; a schema using any other keyword is refused when loaded (never silently
ignored), so a schema and this checker cannot drift apart unnoticed.

Each problem is returned as ``(pointer, message)`` where ``pointer`` is a JSON pointer into the
document (``/metrics/overall/value``).
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

#: keywords this checker understands; annotation-only keywords are accepted and ignored
KEYWORDS: frozenset[str] = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "anyOf",
        "$ref",
        "$defs",
    }
)
ANNOTATIONS: frozenset[str] = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "examples", "default", "format"}
)

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "number": (int, float),
    "integer": (int,),
}


class SchemaDefinitionError(ValueError):
    """A schema file uses a keyword this checker does not implement (a bug in cellbench)."""


def _type_ok(value: Any, name: str) -> bool:
    if name in ("number", "integer") and isinstance(value, bool):
        return False  # JSON booleans are not numbers
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def _check_keywords(schema: Any, where: str = "#") -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaDefinitionError(f"{where}: a schema must be an object or a boolean")
    for key, sub in schema.items():
        if key not in KEYWORDS and key not in ANNOTATIONS:
            raise SchemaDefinitionError(f"{where}: unsupported keyword {key!r}")
        if key in ("properties", "$defs"):
            for name, s in sub.items():
                _check_keywords(s, f"{where}/{key}/{name}")
        elif key in ("items", "additionalProperties"):
            _check_keywords(sub, f"{where}/{key}")
        elif key == "anyOf":
            for i, s in enumerate(sub):
                _check_keywords(s, f"{where}/anyOf/{i}")
        elif key == "type":
            names = sub if isinstance(sub, list) else [sub]
            bad = [n for n in names if n not in _TYPES]
            if bad:
                raise SchemaDefinitionError(f"{where}: unknown type {bad[0]!r}")
        elif key == "$ref" and not str(sub).startswith("#/$defs/"):
            raise SchemaDefinitionError(f"{where}: only local '#/$defs/NAME' references")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


class Validator:
    """Check documents against one schema (keywords verified when constructed)."""

    def __init__(self, schema: dict):
        _check_keywords(schema)
        self.schema = schema

    def problems(self, doc: Any) -> list[tuple[str, str]]:
        """Every violation as ``(json_pointer, message)``, in document order."""
        out: list[tuple[str, str]] = []
        self._visit(self.schema, doc, "", out)
        return out

    def _resolve(self, ref: str) -> Any:
        name = ref[len("#/$defs/") :]
        try:
            return self.schema["$defs"][name]
        except KeyError:
            raise SchemaDefinitionError(f"unresolved reference {ref!r}") from None

    def _visit(self, schema: Any, value: Any, ptr: str, out: list[tuple[str, str]]) -> None:
        where = ptr or "/"
        if schema is True:
            return
        if schema is False:
            out.append((where, "is not allowed here"))
            return
        if "$ref" in schema:
            self._visit(self._resolve(schema["$ref"]), value, ptr, out)
        if "anyOf" in schema:
            if not any(not self._sub(s, value, ptr) for s in schema["anyOf"]):
                out.append((where, f"{_describe(value)} matches none of the allowed forms"))
            return
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_type_ok(value, n) for n in names):
                out.append((where, f"must be {' or '.join(names)}, got {_describe(value)}"))
                return
        if "const" in schema and value != schema["const"]:
            out.append((where, f"must be {json.dumps(schema['const'])}, got {json.dumps(value)}"))
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(json.dumps(v) for v in schema["enum"])
            out.append((where, f"must be one of {allowed}, got {json.dumps(value)[:80]}"))
        if isinstance(value, str):
            self._string(schema, value, where, out)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                out.append((where, f"must be >= {schema['minimum']}, got {value}"))
            if "maximum" in schema and value > schema["maximum"]:
                out.append((where, f"must be <= {schema['maximum']}, got {value}"))
        elif isinstance(value, list):
            if "minItems" in schema and len(value) < schema["minItems"]:
                out.append((where, f"needs at least {schema['minItems']} item(s)"))
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                out.append((where, f"allows at most {schema['maxItems']} item(s)"))
            if "items" in schema:
                for i, item in enumerate(value):
                    self._visit(schema["items"], item, f"{ptr}/{i}", out)
        elif isinstance(value, dict):
            self._object(schema, value, ptr, out)

    def _sub(self, schema: Any, value: Any, ptr: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        self._visit(schema, value, ptr, found)
        return found

    @staticmethod
    def _string(schema: dict, value: str, where: str, out: list[tuple[str, str]]) -> None:
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append((where, f"must have at least {schema['minLength']} character(s)"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append((where, f"must have at most {schema['maxLength']} characters"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append((where, f"{json.dumps(value)[:80]} does not match {schema['pattern']}"))

    def _object(self, schema: dict, value: dict, ptr: str, out: list[tuple[str, str]]) -> None:
        where = ptr or "/"
        for name in schema.get("required", []):
            if name not in value:
                out.append((where, f"missing required field {name!r}"))
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            child = f"{ptr}/{_escape(name)}"
            if name in props:
                self._visit(props[name], item, child, out)
            elif extra is False:
                out.append((where, f"unknown field {name!r}"))
            elif isinstance(extra, dict):
                self._visit(extra, item, child, out)


def first_problem(found: list[tuple[str, str]]) -> str:
    """``pointer: message`` of the first of ``found`` (non-empty), plus how many more there are."""
    ptr, msg = found[0]
    more = f" and {len(found) - 1} more problem(s)" if len(found) > 1 else ""
    return f"{ptr}: {msg}{more}"


@cache
def load_schema(name: str) -> dict:
    """A schema shipped in ``cellbench/resources/schemas/`` (``NAME.schema.json``)."""
    text = (
        resources.files("cellbench") / "resources" / "schemas" / f"{name}.schema.json"
    ).read_text(encoding="utf-8")
    schema = json.loads(text)
    _check_keywords(schema)
    return schema


def validate(doc: Any, name: str) -> list[tuple[str, str]]:
    """Problems of ``doc`` against the shipped schema ``name`` (``metadata`` or ``results``)."""
    return Validator(load_schema(name)).problems(doc)
