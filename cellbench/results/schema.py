"""The published JSON Schema of the result document, generated from its types.

``cellbench/resources/schemas/results.schema.json`` (and its copy ``submissions/schemas/``) is
:func:`result_schema` written out; a test checks that the committed file equals the generated one.
After a change to :mod:`cellbench.results.document` or to the metric registry, rewrite it with::

    python -m cellbench.results.schema          # rewrite the committed files
    python -m cellbench.results.schema --check  # exit 1 when they differ from the types

Only the keywords that :mod:`cellbench.submission.schema` checks are generated.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from cellbench.results import document as d

SCHEMA_ID = (
    "https://github.com/cellbench/cellbench/blob/main/cellbench/resources/schemas/"
    "results.schema.json"
)
_PLAIN = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


class _Generator:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            base, *meta = typing.get_args(tp)
            return self._annotated(base, meta)
        if tp is Any:
            return {}
        if tp in _PLAIN:
            return {"type": _PLAIN[tp]}
        if typing.is_typeddict(tp):
            if tp in d.NAMED_OBJECTS:
                return self._named(d.NAMED_OBJECTS[tp], lambda: self._object(tp))
            return self._object(tp)
        if origin is typing.Literal:
            values = list(typing.get_args(tp))
            return {"const": values[0]} if len(values) == 1 else {"enum": values}
        if origin in (typing.Union, types.UnionType):
            return self._union([self.schema(a) for a in typing.get_args(tp)])
        if origin is list:
            (item,) = typing.get_args(tp)
            return {"type": "array", "items": self.schema(item)}
        if origin is dict:
            _, value = typing.get_args(tp)
            sub = self.schema(value)
            return {"type": "object", **({"additionalProperties": sub} if sub else {})}
        raise TypeError(f"no JSON Schema for {tp!r}")

    def _annotated(self, base: Any, meta: list[Any]) -> dict[str, Any]:
        out = None
        for m in meta:
            if isinstance(m, d.MetricMap):
                out = self._metric_map(m)
        if out is None:
            out = self.schema(base)
        for m in meta:
            if isinstance(m, d.Rule):
                out = {**out, **m.keywords}
        for m in meta:
            if isinstance(m, d.Named):
                body = out
                return self._named(m.name, lambda body=body: body)
        return out

    def _named(self, name: str, make: Any) -> dict[str, Any]:
        if name not in self.defs:
            self.defs[name] = None  # reserve the name (and the order) before the body
            self.defs[name] = make()
        return {"$ref": f"#/$defs/{name}"}

    def _object(self, tp: Any) -> dict[str, Any]:
        hints = typing.get_type_hints(tp, include_extras=True)
        props = {name: self.schema(_strip_required(h)) for name, h in hints.items()}
        out: dict[str, Any] = {"type": "object"}
        doc = (tp.__doc__ or "").strip().split("\n")[0]
        if doc:
            out["description"] = doc
        required = [n for n in hints if n in tp.__required_keys__]
        if required:
            out["required"] = required
        if props:
            out["properties"] = props
        if tp not in d.OPEN_OBJECTS:
            out["additionalProperties"] = False
        return out

    def _metric_map(self, m: d.MetricMap) -> dict[str, Any]:
        from cellbench.metrics.registry import specs

        self.schema(d.Estimate)  # publish the entry schemas under $defs
        self.schema(d.Distance)
        self.schema(d.ReferenceDistance)
        props, required = {}, []
        for s in specs():
            if s.per_image:
                props[s.name] = {"$ref": f"#/$defs/{m.per_image}"}
                if m.require:
                    required.append(s.name)
            elif m.set_level is not None:
                props[s.name] = {"$ref": f"#/$defs/{m.set_level}"}
        out: dict[str, Any] = {"type": "object"}
        if required:
            out["required"] = required
        out["properties"] = props
        out["additionalProperties"] = False
        return out

    @staticmethod
    def _union(members: list[dict[str, Any]]) -> dict[str, Any]:
        null = {"type": "null"}
        others = [m for m in members if m != null]
        if len(others) == 1 and len(members) == 2 and isinstance(others[0].get("type"), str):
            # X | None as one "type" list; X's other keywords do not apply to null
            return {**others[0], "type": [others[0]["type"], "null"]}
        if all(set(m) == {"type"} and isinstance(m["type"], str) for m in members):
            return {"type": [m["type"] for m in members]}
        return {"anyOf": members}


def _strip_required(tp: Any) -> Any:
    while typing.get_origin(tp) in (d.NotRequired, typing.Required):
        (tp,) = typing.get_args(tp)
    return tp


def result_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`cellbench.results.document.ResultDocument` (registry included)."""
    gen = _Generator()
    body = gen.schema(d.ResultDocument)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"cellbench result document (results.json), schema {d.RESULT_SCHEMA}",
        "description": (
            "What `cellbench eval --out results.json` and `cellbench eval merge` write. Generated "
            "from cellbench/results/document.py and the metric registry by "
            "`python -m cellbench.results.schema`; do not edit by hand."
        ),
        **{k: v for k, v in body.items() if k != "description"},
        "$defs": gen.defs,
    }


def result_problems(doc: Any) -> list[tuple[str, str]]:
    """Every violation of ``doc`` against :func:`result_schema`, as ``(json_pointer, message)``.

    The schema is generated from the current registry, which the committed file equals (tested).
    """
    from cellbench.submission.schema import Validator

    return Validator(result_schema()).problems(doc)


def schema_text() -> str:
    """:func:`result_schema` as the committed file's text."""
    return json.dumps(result_schema(), indent=2, ensure_ascii=False) + "\n"


def schema_paths(repo: Path | None = None) -> list[Path]:
    """The shipped schema file and, in a source checkout, the ``submissions/schemas/`` copy."""
    pkg = Path(__file__).resolve().parents[1]
    paths = [pkg / "resources" / "schemas" / "results.schema.json"]
    copy = (repo or pkg.parent) / "submissions" / "schemas"
    if copy.is_dir():
        paths.append(copy / "results.schema.json")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Rewrite the committed schema files (``--check``: only say whether they are current)."""
    parser = argparse.ArgumentParser(prog="python -m cellbench.results.schema")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    text = schema_text()
    stale = [p for p in schema_paths() if not p.is_file() or p.read_text("utf-8") != text]
    if args.check:
        for p in stale:
            print(f"out of date: {p} (run `python -m cellbench.results.schema`)")
        return 1 if stale else 0
    from cellbench.io import atomic_write_text

    for p in stale:
        atomic_write_text(p, text)
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
