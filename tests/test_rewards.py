"""Reward definitions against hand-computed values; bootstrap; artifacts and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cellbench.errors import CellbenchError
from cellbench.metrics.bootstrap import bootstrap_mean, grouped_bootstrap
from cellbench.metrics.rewards import (
    OVERALL_WEIGHTS,
    REWARD_MIN,
    compute_rewards,
    overall_reward,
    zscore_reward,
)

REF = {
    "A": {
        "nuc_count": {"mean": 3.0, "std": 1.0},
        "cell_count": {"mean": 3.0, "std": 0.0},  # below the 0.25 floor
        "nuc_max_area": {"mean": 200.0, "std": 50.0},
        "cell_max_area": {"mean": 1000.0, "std": 100.0},
        "roundness": {"mean": 0.9, "std": 0.05},
    }
}


def test_zscore_reward_and_clip() -> None:
    assert zscore_reward(np.array([3.0]), 3.0, 1.0, 0.25)[0] == 0.0
    assert zscore_reward(np.array([5.0]), 3.0, 1.0, 0.25)[0] == -4.0
    assert zscore_reward(np.array([100.0]), 3.0, 1.0, 0.25)[0] == -25.0  # clipped at |z| = 5
    assert zscore_reward(np.array([3.5]), 3.0, 0.0, 0.25)[0] == -4.0  # floor: z = 0.5 / 0.25


def test_compute_rewards_hand_values() -> None:
    feats = {
        "nuc_count": np.array([4.0, 0.0]),
        "cell_count": np.array([3.0, 1.0]),
        "nuc_max_area": np.array([300.0, 0.0]),
        "cell_max_area": np.array([1000.0, 500.0]),
        "roundness": np.array([0.8, 0.0]),
        "nuc_in_cyto": np.array([0.75, 0.0]),
    }
    out = compute_rewards(feats, np.array([0.6, 0.1]), np.array(["A", "A"]), REF)
    assert out["nuc_count"][0] == pytest.approx(-1.0)
    assert out["cyto_count"][0] == 0.0
    assert out["nuc_size"][0] == pytest.approx(-4.0)
    assert out["cyto_size"][0] == 0.0
    assert out["roundness"][0] == pytest.approx(-4.0)
    assert out["nuc_in_cyto"][0] == 0.75
    expected = 5 * 0.6 + 2 * 0.75 - 4.0 - 4.0 + 0.0 - 1.0 + 0.0
    assert out["overall"][0] == pytest.approx(expected)
    # no nucleus: roundness takes the clipped minimum whatever the feature says
    assert out["roundness"][1] == REWARD_MIN == -25.0
    assert out["cyto_count"][1] == -25.0  # z = -2 / 0.25 = -8, clipped to -5
    assert set(OVERALL_WEIGHTS) == {
        "moa",
        "nuc_in_cyto",
        "roundness",
        "nuc_size",
        "cyto_size",
        "nuc_count",
        "cyto_count",
    }


def test_overall_without_classifier_leaves_moa_out() -> None:
    r = {k: np.array([1.0]) for k in OVERALL_WEIGHTS}
    r["moa"] = np.array([np.nan])
    assert overall_reward(r)[0] == pytest.approx(2.0 + 5.0)


def test_unknown_moa_in_reference_is_an_error() -> None:
    feats = {
        k: np.zeros(1)
        for k in (
            "nuc_count",
            "cell_count",
            "nuc_max_area",
            "cell_max_area",
            "roundness",
            "nuc_in_cyto",
        )
    }
    with pytest.raises(KeyError, match="no reference statistics"):
        compute_rewards(feats, None, np.array(["B"]), REF)


def test_bootstrap_is_seeded_and_sane() -> None:
    x = np.random.default_rng(0).normal(1.0, 1.0, 400)
    a, b = bootstrap_mean(x, seed=3), bootstrap_mean(x, seed=3)
    assert a == b
    assert a.ci_low < a.value < a.ci_high
    half = 1.96 * x.std() / np.sqrt(len(x))  # normal-theory half width; percentile CI is close
    assert (a.ci_high - a.ci_low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_mean(np.array([np.nan, 2.0]), seed=0).n == 1
    assert bootstrap_mean(np.array([]), seed=0).n == 0
    groups = grouped_bootstrap(np.array([1.0, 2.0, 3.0, 5.0]), np.array(["b", "a", "b", "a"]))
    assert list(groups) == ["a", "b"] and groups["a"].value == 3.5


def test_classifier_round_trip_and_tamper(tmp_path: Path) -> None:
    from cellbench.features.classifier import (
        load_classifier,
        predict_proba,
        save_classifier,
        train_head,
    )

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2048)).astype(np.float32)
    y = np.arange(60) % 12
    x[np.arange(60), y] += 6.0  # separable
    head = train_head(x, y, epochs=15, seed=0)
    digest = save_classifier(head, tmp_path / "clf", {"dataset": "test"})
    loaded, card = load_classifier(tmp_path / "clf")
    assert card["weights_sha256"] == digest and card["classes"][0] == "Actin disruptors"
    np.testing.assert_allclose(predict_proba(loaded, x), predict_proba(head, x))
    assert (predict_proba(loaded, x).argmax(1) == y).mean() > 0.9
    weights = tmp_path / "clf" / "classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(CellbenchError, match="do not match the sha256"):
        load_classifier(tmp_path / "clf")


def test_reference_file_checks(tmp_path: Path) -> None:
    from cellbench.features.reference import load_reference, save_reference
    from cellbench.metrics.rewards import SUITE_VERSION

    doc = {
        "schema": "cellbench.reference-stats/1",
        "metric_suite_version": SUITE_VERSION,
        "per_moa": REF,
        "segmenter": {"name": "classical", "version": "1"},
    }
    path = tmp_path / "ref.json"
    digest = save_reference(doc, path)
    loaded, d2 = load_reference(path, backend_identity={"name": "classical", "version": "1"})
    assert d2 == digest and loaded["per_moa"] == REF
    with pytest.raises(CellbenchError, match="made with segmenter"):
        load_reference(path, backend_identity={"name": "cellpose", "version": "x"})
    path.write_text(json.dumps({**doc, "metric_suite_version": "0"}))
    with pytest.raises(CellbenchError, match="metric suite 0"):
        load_reference(path)
    path.write_text("{not json")
    with pytest.raises(CellbenchError, match="unreadable reference statistics"):
        load_reference(path)


def test_cellpose_backend_explains_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cellbench.features.segment.backends import SEGMENTERS

    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(CellbenchError, match=r"cellpose|Cellpose weight"):
        SEGMENTERS.get("cellpose")()


def test_ls_metrics_json() -> None:
    from cellbench.metrics.rewards import SUITE_VERSION
    from tests.conftest import run_cli

    res = run_cli("ls", "metrics", "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert (
        rows["overall"]["higher_is_better"] is True and rows["fid_o"]["higher_is_better"] is False
    )
    assert all(r["version"] == SUITE_VERSION for r in rows.values())


def test_reference_build_and_classifier_train_commands(tmp_path: Path) -> None:
    """The commands that make a dataset's artifacts: reference statistics on a tiny simulated
    dataset, the classifier on the IMPA-format fixture."""
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.data.sim import write_sim_dataset
    from cellbench.features.reference import load_reference
    from cellbench.scoring.artifacts import find_artifact
    from tests.conftest import run_cli

    data = tmp_path / "data"
    write_sim_dataset(data / "bbbc021-sim", seed=0, scale="tiny")
    ds = open_dataset("bbbc021-sim", data)
    packaged = find_artifact(ds, "reference_classical.json")  # before: the shipped copy
    assert "resources" in str(packaged)
    res = run_cli("reference", "build", "--dataset", "bbbc021-sim", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    local = find_artifact(ds, "reference_classical.json")
    assert local == data / "bbbc021-sim" / "cellbench_artifacts" / "reference_classical.json"
    doc, _ = load_reference(local)
    assert set(doc["per_moa"]) == {"DMSO", *__import__("cellbench.data.layout").data.layout.MOAS}
    assert doc["dataset_index_sha256"] == ds.index_sha256
    # the classifier on the IMPA-format fixture (four flips per training crop make the tiny sim's
    # 168 train-iid crops a long subprocess on a busy 2-core machine)
    from tests.conftest import build_mini_dataset

    real = build_mini_dataset(tmp_path / "real" / "bbbc021")
    res = run_cli(
        "classifier",
        "train",
        "--dataset",
        "bbbc021",
        "--data-dir",
        str(real.parent),
        "--epochs",
        "3",
    )
    assert res.returncode == 0, res.stderr
    card = json.loads((real / "cellbench_artifacts" / "classifier" / "classifier.json").read_text())
    # train-iid / test-iid treated crops: cytochalasin D (a CellFlux unseen compound) left out
    assert card["n_train"] == 6 and card["test_metrics"]["n"] == 6
    assert card["training_compounds"]["Actin disruptors"] == []
    assert card["training"]["epochs"] == 3
