"""The result vocabulary: the committed JSON Schema is the one generated from the typed document."""

from __future__ import annotations

import json

from cellbench.results.schema import main, result_schema, schema_paths, schema_text
from tests.conftest import REPO


def test_committed_schema_equals_the_generated_one() -> None:
    paths = schema_paths(REPO)
    assert [p.relative_to(REPO).as_posix() for p in paths] == [
        "cellbench/resources/schemas/results.schema.json",
        "submissions/schemas/results.schema.json",
    ]
    for p in paths:
        assert p.read_text("utf-8") == schema_text(), "run `python -m cellbench.results.schema`"
    assert main(["--check"]) == 0


def test_schema_covers_every_field_and_closes_the_document() -> None:
    s = result_schema()
    for key in ("best_of_n", "generation", "feature_network", "overall_weights", "merged_from"):
        assert key in s["properties"], key
    assert s["additionalProperties"] is False
    assert s["properties"]["dataset"]["additionalProperties"] is False
    assert s["properties"]["metrics"]["additionalProperties"] is False
    assert "additionalProperties" not in s["properties"]["environment"]  # an open record
    assert s["$defs"]["estimate"]["required"] == ["value", "ci", "n"]


def test_committed_submissions_validate_against_the_generated_schema() -> None:
    from cellbench.results.schema import result_problems

    files = sorted((REPO / "submissions").glob("*/results.json"))
    assert len(files) >= 8
    for f in files:
        assert result_problems(json.loads(f.read_text())) == [], f
