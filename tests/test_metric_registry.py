"""Adding a metric is one registry entry plus one function (CONTRIBUTING.md, "Adding a metric").

A toy per-image metric is registered for the duration of each test and must show up in the result
JSON (means, groups, per-image table, schema), the ``cellbench eval`` table and the leaderboard page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.metrics.registry import (
    METRICS,
    MetricSpec,
    PerImageInputs,
    lower_is_better,
    per_image_names,
    registered,
    spec,
)

TOY = MetricSpec(
    name="toy_nuclei",
    label="Toy nuclei",
    family="reward",
    higher_is_better=True,
    digits=3,
    needs="segmentation features",
    summary="nucleus count / 10 (a test metric)",
    kind="per_image",
    function="tests.test_metric_registry:toy_nuclei",
)


def toy_nuclei(inputs: PerImageInputs) -> np.ndarray:
    """The toy metric: one value per image from the segmentation features."""
    return inputs.features["nuc_count"] / 10.0


@pytest.fixture
def toy():
    assert TOY.name not in METRICS
    with registered(TOY) as s:
        yield s
    assert TOY.name not in METRICS


def test_registry_entries_carry_everything_consumers_need() -> None:
    overall, fid = spec("overall"), spec("fid_o")
    assert (overall.family, overall.higher_is_better, overall.kind, overall.digits) == (
        "reward",
        True,
        "suite",
        2,
    )
    assert (fid.family, fid.higher_is_better, fid.kind, fid.label) == (
        "distance",
        False,
        "set",
        "FID_o",
    )
    assert lower_is_better() == {"fid_o", "fid_c", "kid_o", "kid_c"}
    assert per_image_names()[-2:] == ("overall", "moa_accuracy")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import make_tiny_sim

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("toy")
    ds, table = make_tiny_sim(root, mp)
    (root / "identity").mkdir()
    for r in table.itertuples():
        np.save(root / "identity" / f"{r.task_id}.npy", ds.load_crop(r.control_key))
    yield root
    mp.undo()


def test_toy_metric_in_the_result_json_and_the_eval_table(toy, tiny: Path) -> None:
    from cellbench.cli.scoring import results_markdown, results_rows
    from cellbench.evaluation import evaluate
    from cellbench.results.schema import result_problems
    from cellbench.submission.schema import validate as committed_schema_problems

    out = tiny / "toy.json"
    doc = evaluate(tiny / "identity", data_dir=tiny / "data", fid=False, out=out)
    assert json.loads(out.read_text()) == doc
    table = pd.read_csv(tiny / "toy.per_image.csv")
    np.testing.assert_allclose(table["toy_nuclei"], table["feat_nuc_count"] / 10.0, atol=1e-6)
    est = doc["metrics"]["toy_nuclei"]
    assert est["n"] == len(table) and est["value"] == pytest.approx(
        table["feat_nuc_count"].mean() / 10.0, abs=1e-6
    )
    assert est["ci"][0] <= est["value"] <= est["ci"][1]
    assert all("toy_nuclei" in g for g in doc["per_moa"].values())
    assert all("toy_nuclei" in g for g in doc["per_compound"].values())
    assert "toy_nuclei" in doc["reference"]["metrics"]
    # the schema is generated from the registry: it knows the toy metric, the committed file not
    assert result_problems(doc) == []
    assert ("/metrics", "unknown field 'toy_nuclei'") in committed_schema_problems(doc, "results")
    row = next(r for r in results_rows(doc) if r[0] == "toy_nuclei")
    assert (
        row[1] == "↑" and row[2] == f"{est['value']:.3f} [{est['ci'][0]:.3f}, {est['ci'][1]:.3f}]"
    )
    md = results_markdown(doc)
    assert re.search(rf"^\| toy_nuclei +\| +↑ +\| +{re.escape(row[2])} +\|", md, re.M), md


def test_toy_metric_on_the_leaderboard_page(toy, tmp_path: Path) -> None:
    from cellbench.leaderboard import build_leaderboard
    from cellbench.results.builder import write_results
    from cellbench.submission import validate_submission
    from cellbench.submission.validate import accepted_protocols
    from tests.test_submission import _per_image, metadata, results_doc

    n = next(p for p in accepted_protocols() if p["dataset"] == "bbbc021-sim")["n_tasks"]
    table = _per_image(n, 0)
    table.insert(table.columns.get_loc("pixel_sha256"), "toy_nuclei", np.linspace(0.1, 0.9, n))
    folder = tmp_path / "submissions" / "2026-01-15_toy-model"
    folder.mkdir(parents=True)
    write_results(results_doc(table), table, None, folder / "results.json")
    (folder / "metadata.json").write_text(json.dumps(metadata(), indent=2))
    assert validate_submission(folder) == []
    build_leaderboard(tmp_path / "submissions", tmp_path / "site", stamp="S")
    html = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r'>Toy nuclei <span class="dir"[^>]*>↑<', html)
    value = json.loads((folder / "results.json").read_text())["metrics"]["toy_nuclei"]["value"]
    assert f">{value:.3f}<" in html


def test_a_set_metric_the_builder_cannot_compute_is_refused_at_registration() -> None:
    """A set-level entry other than fid_kid_summary's distances fails when registered, not
    in the middle of an evaluation; an unknown kind likewise."""
    from dataclasses import replace

    from cellbench.metrics.registry import DISTANCE_FUNCTION, register_metric

    swd = replace(TOY, name="swd", kind="set", function="tests.test_metric_registry:toy_nuclei")
    with pytest.raises(ValueError, match=r"only the .* distances"):
        register_metric(swd)
    with pytest.raises(ValueError, match=r"only the .* distances"):
        register_metric(replace(swd, function=DISTANCE_FUNCTION))  # not one of its fields
    with pytest.raises(ValueError, match="unknown kind"):
        register_metric(replace(TOY, kind="pairwise"))
    assert "swd" not in METRICS and TOY.name not in METRICS
