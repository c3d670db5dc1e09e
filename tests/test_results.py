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


def test_results_table_as_markdown(capsys) -> None:
    from cellbench.cli.scoring import print_results_table

    doc = json.loads((REPO / "submissions/2026-11-21_identity/results.json").read_text())
    print_results_table(doc, "markdown")
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "metric",
        "",
        "model",
        "real reference",
    ]
    # header, rule; "rewards" heading, 7 rewards and overall; "held-out metrics" heading,
    # moa_accuracy and 4 distances (a result without the set_fn metrics shows none of them)
    assert len(lines) == 2 + 1 + 8 + 1 + 5
    assert lines[2].startswith("| **rewards**") and lines[11].startswith("| **held-out metrics**")
    o, ref = doc["metrics"]["overall"], doc["reference"]["metrics"]["overall"]
    overall = [c.strip() for c in lines[2 + 8].strip("|").split("|")]
    assert overall == [
        "overall",
        "↑",
        f"{o['value']:.2f} [{o['ci'][0]:.2f}, {o['ci'][1]:.2f}]",
        f"{ref['value']:.2f} [{ref['ci'][0]:.2f}, {ref['ci'][1]:.2f}]",
    ]
    fid = [c.strip() for c in lines[2 + 11].strip("|").split("|")]
    assert fid[:3] == ["fid_o", "↓", f"{doc['metrics']['fid_o']['value']:.2f}"]
    assert fid[3].endswith("(split half)")
