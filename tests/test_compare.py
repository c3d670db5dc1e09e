"""``cellbench compare``: paired per-task differences of two real ``cellbench eval`` results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.compare import compare_results, paired_differences, read_task_values
from cellbench.errors import CellbenchError
from cellbench.evaluation import evaluate
from cellbench.metrics.bootstrap import bootstrap_mean
from cellbench.protocol import write_protocol
from tests.conftest import make_tiny_sim, run_cli

MORPHOLOGY = ("roundness", "nuc_size", "cyto_size", "nuc_count", "cyto_count")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two results on one tiny protocol (no Inception pass): `identity` and noise images."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("compare")
    data = root / "data"
    ds, table = make_tiny_sim(root, mp)
    write_protocol(table, root / "protocol.csv")
    out = {"root": root}
    rng = np.random.default_rng(0)
    makers = {
        "identity": lambda r: ds.load_crop(r.control_key),
        "noise": lambda r: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
    }
    for name, make in makers.items():
        folder = root / name
        folder.mkdir()
        for r in table.itertuples():
            np.save(folder / f"{r.task_id}.npy", make(r))
        evaluate(folder, "bbbc021-sim", data_dir=data, seed=0, fid=False, out=root / f"{name}.json")
        out[name] = root / f"{name}.json"
    yield out
    mp.undo()


def _direct(a: Path, b: Path, metric: str, n_boot: int) -> tuple[float, float, float, int]:
    """B - A of one metric straight from the two per-image CSVs, with its bootstrap by hand."""
    ta = pd.read_csv(a.with_suffix(".per_image.csv")).groupby("task_id")[metric].mean()
    tb = pd.read_csv(b.with_suffix(".per_image.csv")).groupby("task_id")[metric].mean()
    d = (tb - ta.reindex(tb.index)).dropna().sort_index().to_numpy()
    idx = np.random.default_rng(0).integers(0, len(d), size=(n_boot, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi), len(d)


#: the set-level held-out metrics computed without Inception (from the morphology profile)
PROFILE_SET = {
    "profile_shift_corr",
    "profile_energy",
    "retrieval_top1_profile",
    "retrieval_top5_profile",
    "retrieval_map_profile",
}


def test_cli_compare_json_matches_a_direct_computation(results: dict[str, Path]) -> None:
    a, b = results["identity"], results["noise"]
    res = run_cli("compare", str(a), str(b), "--json", "--n-boot", "500")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    n_tasks = len(pd.read_csv(results["root"] / "protocol.csv"))
    assert doc["n_tasks"] == {"a": n_tasks, "b": n_tasks, "shared": n_tasks}
    assert doc["bootstrap"] == {"n_boot": 500, "seed": 0, "level": 0.95}
    # no Inception pass: no moa and no moa_accuracy (overall is summed without moa); no FID; of
    # the set-level held-out metrics only those of the morphology profile (no Inception needed)
    assert list(doc["paired"]) == ["overall", "nuc_in_cyto", *MORPHOLOGY]
    assert set(doc["set_level"]) == PROFILE_SET
    for metric, est in doc["paired"].items():
        mean, lo, hi, n = _direct(a, b, metric, 500)
        assert est["n"] == n == n_tasks, metric
        assert est["value"] == pytest.approx(mean, abs=1e-6), metric
        assert est["ci"] == pytest.approx([lo, hi], abs=1e-6), metric
    # noise scores far below the controls: the whole interval of B - A lies below zero
    assert doc["paired"]["overall"]["ci"][1] < -1.0 and doc["paired"]["roundness"]["ci"][1] < 0


def test_cli_compare_table_and_self_comparison(results: dict[str, Path]) -> None:
    res = run_cli("compare", str(results["identity"]), str(results["noise"]), "--n-boot", "200")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"A: {results['identity']}" and lines[1] == f"B: {results['noise']}"
    assert "shared tasks" in lines[2] and "95% paired bootstrap (200 resamples, seed 0)" in lines[2]
    rows = {ln.split()[0]: ln.split() for ln in lines[4:]}
    assert set(rows) == {"overall", "nuc_in_cyto", *MORPHOLOGY, *PROFILE_SET}
    want = compare_results(results["identity"], results["noise"], n_boot=200)["paired"]
    assert float(rows["nuc_count"][1]) == pytest.approx(want["nuc_count"]["value"], abs=5e-4)
    same = compare_results(results["noise"], results["noise"])["paired"]
    assert all(e["value"] == 0 and e["ci"] == [0, 0] for e in same.values())


def _copy(src: Path, dest: Path, edit=None, *, with_csv: bool = True) -> Path:
    doc = json.loads(src.read_text())
    if edit is not None:
        edit(doc)
    dest.write_text(json.dumps(doc))
    if with_csv:
        shutil.copyfile(src.with_suffix(".per_image.csv"), dest.with_suffix(".per_image.csv"))
    return dest


def test_mismatched_or_unreadable_results_are_refused(
    results: dict[str, Path], tmp_path: Path
) -> None:
    a = results["identity"]

    def refused(b: Path, match: str) -> str:
        with pytest.raises(CellbenchError, match=match) as err:
            compare_results(a, b)
        assert str(err.value).startswith(f"{b}: "), err.value  # names the file
        return str(err.value)

    def set_in(*keys: str, value: object):
        def edit(doc: dict) -> None:
            target = doc
            for k in keys[:-1]:
                target = target[k]
            target[keys[-1]] = value

        return edit

    other_ds = _copy(a, tmp_path / "ds.json", set_in("dataset", "name", value="bbbc021"))
    assert "bbbc021 (index" in refused(other_ds, "different dataset")
    other_index = _copy(a, tmp_path / "idx.json", set_in("dataset", "index_sha256", value="0" * 64))
    refused(other_index, "different dataset")
    other_proto = _copy(a, tmp_path / "p.json", set_in("protocol", "sha256", value="f" * 64))
    assert "ffffffffffff here" in refused(other_proto, "different protocol")
    other_set = _copy(a, tmp_path / "a.json", set_in("artifacts", "sha256", value="e" * 64))
    assert "eeeeeeeeeeee here" in refused(other_set, "different artifact set")
    old_suite = _copy(a, tmp_path / "s.json", set_in("metric_suite_version", value="1"))
    refused(old_suite, "different metric suite version")
    shard = _copy(a, tmp_path / "sh.json", set_in("partial", value={"shard": "1/2"}))
    refused(shard, r"--shard 1/2 result")
    not_result = _copy(a, tmp_path / "nr.json", set_in("schema", value="something/else"))
    refused(not_result, "not a cellbench eval result")
    (tmp_path / "bad.json").write_text("{ not json")
    refused(tmp_path / "bad.json", "unreadable result file")
    refused(tmp_path / "absent.json", "cannot read the result file")
    # the per-image CSV beside the result is what is paired
    no_csv = _copy(a, tmp_path / "nocsv.json", with_csv=False)
    with pytest.raises(CellbenchError, match="no per-image CSV") as err:
        compare_results(a, no_csv)
    assert str(tmp_path / "nocsv.per_image.csv") in str(err.value)
    # the command prints it as one line, exit 2, no traceback
    res = run_cli("compare", str(a), str(other_proto))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(other_proto) in res.stderr


def test_paired_differences_pair_tasks_and_average_images(tmp_path: Path) -> None:
    csv_a = tmp_path / "a.per_image.csv"
    csv_a.write_text("task_id,path,overall,moa\nt1,x,1.0,0.5\nt2,x,2.0,\nt3,x,3.0,0.1\n")
    csv_b = tmp_path / "b.per_image.csv"  # two images for t1 (their mean counts), no t3, a t4
    csv_b.write_text(
        "task_id,path,overall,moa\nt1,x,4.0,0.9\nt1,y,2.0,0.7\nt2,x,1.0,0.2\nt4,x,9.0,1\n"
    )
    a, b = read_task_values(csv_a), read_task_values(csv_b)
    assert b["t1"] == {"overall": 3.0, "moa": pytest.approx(0.8)} and "moa" not in a["t2"]
    got = paired_differences(a, b, ("overall", "moa", "roundness"), seed=3, n_boot=300)
    assert set(got) == {"overall", "moa"}  # roundness is in neither file
    want = bootstrap_mean(np.array([3.0 - 1.0, 1.0 - 2.0]), seed=3, n_boot=300)
    assert got["overall"] == want and got["overall"].n == 2
    assert got["moa"].n == 1 and got["moa"].value == pytest.approx(0.3)  # only t1 has moa in both
    (tmp_path / "c.per_image.csv").write_text("task_id,overall\nt1,abc\n")
    with pytest.raises(CellbenchError, match="line 2: overall is 'abc'"):
        read_task_values(tmp_path / "c.per_image.csv")
