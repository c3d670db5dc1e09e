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
    GROUPS,
    METRICS,
    MetricSpec,
    PerImageInputs,
    SetInputs,
    SetValue,
    lower_is_better,
    per_image_names,
    registered,
    spec,
    specs,
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


TOY_SET = MetricSpec(
    name="toy_cover",
    label="Toy cover",
    family="coverage",
    higher_is_better=True,
    digits=3,
    needs="compound labels",
    summary="fraction of the real compounds that have a generated image (a test metric)",
    kind="set_fn",
    function="tests.test_metric_registry:toy_set",
)
TOY_SET_INC = MetricSpec(
    name="toy_inc_mean",
    label="Toy inc",
    family="distance",
    higher_is_better=False,
    digits=4,
    needs="Inception features",
    summary="mean generated Inception feature (a test metric)",
    kind="set_fn",
    function="tests.test_metric_registry:toy_set",
    inputs=("gen_inception", "real_inception"),
)
TOY_CALLS: list[int] = []


def toy_set(inputs: SetInputs) -> dict[str, SetValue]:
    """Two toy set-level metrics from one function (called once per evaluation)."""
    TOY_CALLS.append(inputs.n_gen)
    cover = len(set(inputs.compounds)) / len(set(inputs.real_compounds))
    out = {"toy_cover": SetValue(cover, {"n_compounds": np.int64(len(set(inputs.compounds)))})}
    if inputs.gen_inception is not None:
        out["toy_inc_mean"] = SetValue(float(inputs.gen_inception.mean()))
    return out


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
    assert lower_is_better() >= {"fid_o", "fid_c", "kid_o", "kid_c"}
    assert per_image_names()[-2:] == ("overall", "moa_accuracy")
    # two groups: the seven rewards and overall, which a generator may train on; the rest held out
    rewards = [s.name for s in specs() if s.group == "rewards"]
    assert rewards == [
        "moa",
        "nuc_in_cyto",
        "roundness",
        "nuc_size",
        "cyto_size",
        "nuc_count",
        "cyto_count",
        "overall",
    ]
    assert {s.group for s in specs()} == set(GROUPS)
    assert spec("moa_accuracy").group == spec("fid_o").group == "held-out"


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
    from tests.test_submission import _per_image, results_doc, with_images

    n = next(p for p in accepted_protocols() if p["dataset"] == "bbbc021-sim")["n_tasks"]
    table = _per_image(n, 0)
    table.insert(table.columns.get_loc("pixel_sha256"), "toy_nuclei", np.linspace(0.1, 0.9, n))
    folder = tmp_path / "submissions" / "2026-01-15_toy-model"
    folder.mkdir(parents=True)
    write_results(results_doc(table), table, None, folder / "results.json")
    # a current-suite submission carries its images
    (folder / "metadata.json").write_text(json.dumps(with_images(folder, table), indent=2))
    assert validate_submission(folder) == []
    build_leaderboard(tmp_path / "submissions", tmp_path / "site", stamp="S")
    html = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r'>Toy nuclei <span class="dir"[^>]*>↑<', html)
    value = json.loads((folder / "results.json").read_text())["metrics"]["toy_nuclei"]["value"]
    assert f">{value:.3f}<" in html
    # the columns under two group headings: the 8 rewards, then every held-out metric
    from cellbench.leaderboard.build import columns

    n_held = sum(1 for c in columns() if c.group == "held-out")
    assert n_held == len(specs()) - 8
    assert re.search(
        r'<th scope="colgroup" colspan="8" class="group rewards" data-group="rewards">'
        r'<span class="group-label">rewards</span>',
        html,
    )
    assert re.search(
        rf'<th scope="colgroup" colspan="{n_held}" class="group held-out" data-group="held-out" '
        r'title="[^"]+"><span class="group-label">held-out metrics</span>',
        html,
    )
    first, *_ = re.findall(r'data-key="([a-z_0-9]+)"', html)
    assert first == "overall"  # the ranking metric leads the rewards
    # an absent held-out metric: a dash whose title gives the reason
    assert 'title="not computed: no morphology profile">–<' in html


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


def test_a_set_fn_metric_in_the_json_the_table_and_absent_without_its_inputs(tiny: Path) -> None:
    """Two ``set_fn`` entries of one function: computed once, written with n_gen/n_real, its
    split-half reference and its detail; the one needing Inception is absent under --no-fid,
    with the reason, in the JSON and the table; the table shows the two groups in order."""
    import importlib

    from cellbench.cli.scoring import results_groups, results_markdown
    from cellbench.evaluation import evaluate
    from cellbench.results.schema import result_problems

    calls = importlib.import_module("tests.test_metric_registry").TOY_CALLS  # what METRICS calls
    calls.clear()
    with registered(TOY_SET), registered(TOY_SET_INC):
        doc = evaluate(tiny / "identity", data_dir=tiny / "data", fid=False, out=tiny / "s.json")
        assert result_problems(doc) == []
        md = results_markdown(doc)
        groups = results_groups(doc)
    n = doc["images"]["n_images"]
    assert len(calls) == 2 and calls[0] == n and 0 < calls[1] < n  # model, then the split half
    cover = doc["metrics"]["toy_cover"]
    assert cover == {"value": 1.0, "n_gen": n, "n_real": cover["n_real"]} and cover["n_real"] > 0
    assert doc["reference"]["metrics"]["toy_cover"] == {"value": 1.0}
    assert doc["set_detail"]["toy_cover"]["n_compounds"] == len(
        set(pd.read_csv(tiny / "s.per_image.csv")["compound"])
    )
    inc = doc["metrics"]["toy_inc_mean"]
    assert inc["value"] is None and inc["absent"] == "not computed: no Inception features"
    assert "toy_inc_mean" not in doc["set_detail"]
    assert [g for g, _ in groups] == ["rewards", "held-out metrics"]
    held = {r[0]: r for r in groups[1][1]}
    assert held["toy_inc_mean"][2] == "absent (not computed: no Inception features)"
    assert held["toy_cover"][2] == "1.000" and held["toy_cover"][3] == "1.000 (split half)"
    assert md.index("**rewards**") < md.index("| overall") < md.index("**held-out metrics**")
    assert md.index("**held-out metrics**") < md.index("| toy_cover")
    assert doc["metric_groups"]["rewards"][-1] == "overall"
    assert doc["metric_groups"]["held-out"][-2:] == ["toy_cover", "toy_inc_mean"]


def test_a_set_fn_function_must_return_every_metric_it_is_registered_for() -> None:
    from dataclasses import replace

    from cellbench.metrics.registry import compute_set

    inputs = SetInputs(
        compounds=np.array(["a", "b"]),
        moas=np.array(["m", "m"]),
        real_compounds=np.array(["a", "b", "c"]),
        real_moas=np.array(["m", "m", "m"]),
        seed=0,
        gen_inception=np.zeros((2, 3)),
        real_inception=np.zeros((3, 3)),
    )
    other = replace(TOY_SET, name="toy_other")  # a third name the function does not return
    with registered(TOY_SET), registered(TOY_SET_INC), registered(other):
        with pytest.raises(ValueError, match=r"toy_other.*mapping with a SetValue"):
            compute_set(("toy_cover", "toy_inc_mean", "toy_other"), inputs)
        got = compute_set(("toy_cover", "toy_inc_mean"), inputs)
    assert got["toy_cover"].value == pytest.approx(2 / 3) and got["toy_inc_mean"].value == 0.0
    # an empty side (a split half of compounds with one real image each): absent, not called
    with registered(TOY_SET), registered(TOY_SET_INC):
        none = compute_set(("toy_cover",), replace(inputs, real_compounds=np.array([], str)))
    assert none["toy_cover"].absent == "not computed: no real images"


def test_set_inputs_split_half_and_bad_registrations() -> None:
    from dataclasses import replace

    from cellbench.metrics.registry import register_metric

    real = np.array(["a"] * 5 + ["b"] * 4 + ["c"])
    feats = np.arange(10.0)[:, None]
    inputs = SetInputs(
        compounds=np.array(["a"]),
        moas=np.array(["m"]),
        real_compounds=real,
        real_moas=np.array(["m"] * 10),
        seed=3,
        gen_inception=np.zeros((1, 1)),
        real_inception=feats,
    )
    half = inputs.split_half()
    assert sorted(half.compounds) == ["a", "a", "b", "b"]  # c (one image) left out
    assert sorted(half.real_compounds) == ["a", "a", "a", "b", "b"]
    rows = np.concatenate([half.gen_inception[:, 0], half.real_inception[:, 0]])
    assert sorted(rows) == list(range(9))  # every image of a and b, once
    assert list(real[half.gen_inception[:, 0].astype(int)]) == list(half.compounds)
    assert inputs.absent(("gen_profile",)) == "not computed: no morphology profile"
    with pytest.raises(ValueError, match="inputs"):
        register_metric(replace(TOY_SET, inputs=("gen_pixels",)))
    with pytest.raises(ValueError, match="inputs"):
        register_metric(replace(TOY, inputs=("gen_inception",)))  # inputs are for set_fn only
    with pytest.raises(ValueError, match="unknown group"):
        register_metric(replace(TOY, group="training"))
    assert "toy_cover" not in METRICS and TOY.name not in METRICS


def test_the_entry_page_table_of_held_out_metrics_per_moa() -> None:
    from cellbench.leaderboard.build import held_out_per_moa

    assert held_out_per_moa({"set_detail": None}) is None
    doc = {
        "set_detail": {
            "retrieval_map": {"per_moa": {"M1": 0.25, "M2": 0.75}},
            "coverage": {"per_moa": {"M1": {"value": 0.5, "n_gen": 6, "n_real": 7}}},
            "retrieval_top1": {"rank": {"a": 1}},  # no per-MoA values: no column
        }
    }
    table = held_out_per_moa(doc)
    assert [c.key for c in table["columns"]] == ["coverage", "retrieval_map"]  # registry order
    assert [r["name"] for r in table["rows"]] == ["M1", "M2"]
    assert [c.text for c in table["rows"][0]["cells"]] == ["0.500", "0.250"]
    assert table["rows"][0]["cells"][0].title == "n_gen = 6, n_real = 7"
    assert [c.text for c in table["rows"][1]["cells"]] == ["–", "0.750"]
