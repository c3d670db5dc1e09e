"""``cellbench regress``: the committed reference images keep their scores, and a moved metric fails."""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cellbench import regress
from cellbench.metrics.rewards import SUITE_VERSION

FOLDER = regress.default_folder()


@pytest.fixture(scope="module")
def baseline() -> dict:
    """One real scoring of the committed set, with the Inception features it computed."""
    from cellbench.scoring import Scorer

    captured: list[np.ndarray] = []
    original = Scorer.inception_features

    def capture(self, images, on_progress=None):
        out = original(self, images, on_progress)
        captured.append(out.copy())
        return out

    Scorer.inception_features = capture  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        got = regress.score_set(FOLDER)
        seconds = time.perf_counter() - started
    finally:
        Scorer.inception_features = original  # type: ignore[method-assign]
    return {"got": got, "inception": captured, "seconds": seconds}


def _copy_set(tmp_path: Path) -> Path:
    dest = tmp_path / "regress"
    shutil.copytree(FOLDER, dest)
    return dest


def test_committed_set_is_consistent() -> None:
    data = regress.load_set(FOLDER)
    assert len(data["images"]) == len(data["images_table"]) >= 24 + len(regress.DAMAGES)
    assert len(data["real"]) == len(data["real_table"]) >= 24
    damaged = [r for r in data["images_table"] if r["label"].split(":")[0] in regress.DAMAGES]
    assert len(damaged) == len(regress.DAMAGES)
    assert (FOLDER / "NOTE.md").is_file()
    expected = json.loads((FOLDER / "expected.json").read_text())
    assert expected["metric_suite_version"] == SUITE_VERSION, (
        "the metric suite version changed: run `cellbench regress --update` and commit "
        "tests/regress/expected.json"
    )


@pytest.mark.slow
def test_committed_set_passes(baseline: dict) -> None:
    expected = json.loads((FOLDER / "expected.json").read_text())
    n, moved = regress.compare(expected, baseline["got"])
    assert moved == [], "\n".join(map(str, moved))
    per_image = sum(len(v) for v in expected["per_image"].values())
    assert n == per_image + 3 * 9 + 4 + len(expected["held_out"])
    assert baseline["got"]["inputs"] == expected["inputs"]
    # a blank image has no nucleus: the clipped minimum on roundness, as docs/scoring.md says
    labels = expected["labels"]
    blank = next(i for i, label in enumerate(labels) if label.startswith("blank:"))
    assert expected["per_image"]["roundness"][blank] == -25.0


@pytest.mark.slow
def test_a_perturbed_metric_fails_through_the_pipeline(
    baseline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change a real metric definition (the z clip of suite 1+): regress names what moved."""
    from cellbench.features import inception
    from cellbench.metrics import rewards
    from cellbench.scoring import Scorer

    # reuse the baseline's Inception features (and skip the network's start-up optimisation):
    # segmentation, rewards, means and FID/KID run for real, only the rewards' definition changes
    features = iter(baseline["inception"])
    monkeypatch.setattr(Scorer, "inception_features", lambda self, images, p=None: next(features))
    monkeypatch.setattr(inception, "optimize_inception", lambda module, **kw: module)
    monkeypatch.setattr(rewards, "Z_CLIP", 4.0)
    report = regress.run_regress(FOLDER)
    assert not report.ok
    moved = {m.metric for m in report.moved}
    assert "roundness" in moved and "overall" in moved
    assert not any(m.startswith("feature:") for m in moved)  # segmentation did not change
    assert "fid_o" not in moved
    text = "\n".join(report.lines())
    assert "REGRESSION" in text and "roundness [image" in text and "-25 -> -16" in text
    assert "metric suite version bump" in text


@pytest.mark.slow  # uses the baseline scoring
def test_an_edited_expected_number_fails(
    baseline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy_set(tmp_path)
    path = folder / "expected.json"
    doc = json.loads(path.read_text())
    doc["per_image"]["nuc_size"][3] += 2e-6  # just beyond the 1e-6 tolerance
    doc["fid_kid"]["fid_o"] *= 1.0011  # just beyond 1e-3 relative
    doc["means"]["moa"]["value"] += 5e-5  # within the 1e-4 tolerance: not reported
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(regress, "score_set", lambda f: copy.deepcopy(baseline["got"]))
    report = regress.run_regress(folder)
    assert not report.ok
    assert sorted((m.metric, m.where.split(" ")[0]) for m in report.moved) == [
        ("fid_o", "set"),
        ("nuc_size", "image"),
    ]
    assert "nuc_size [image 3 " in "\n".join(report.lines())


@pytest.mark.slow  # uses the baseline scoring
def test_suite_version_mismatch_asks_for_update(
    baseline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy_set(tmp_path)
    doc = json.loads((folder / "expected.json").read_text())
    doc["metric_suite_version"] = "0"
    (folder / "expected.json").write_text(json.dumps(doc))
    monkeypatch.setattr(regress, "score_set", lambda f: copy.deepcopy(baseline["got"]))
    report = regress.run_regress(folder)
    assert not report.ok and "cellbench regress --update" in "\n".join(report.lines())
    # --update rewrites the file; the next run passes
    assert regress.run_regress(folder, update=True).updated
    assert regress.run_regress(folder).ok


def test_tolerances_are_stated_in_the_expected_file() -> None:
    expected = json.loads((FOLDER / "expected.json").read_text())
    assert expected["tolerances"] == regress.TOLERANCES


@pytest.mark.slow  # uses the baseline scoring
def test_cli_reports_the_moved_metric(
    baseline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's output and exit code (in-process, re-using the baseline scoring)."""
    from typer.testing import CliRunner

    from cellbench.cli.main import app

    folder = _copy_set(tmp_path)
    doc = json.loads((folder / "expected.json").read_text())
    doc["means"]["cyto_count"]["value"] -= 0.01
    (folder / "expected.json").write_text(json.dumps(doc))
    monkeypatch.setattr(regress, "score_set", lambda f: copy.deepcopy(baseline["got"]))
    res = CliRunner().invoke(app, ["regress", "--folder", str(folder)])
    assert res.exit_code == 1, res.output
    assert "cyto_count [mean]" in res.output and "moved +0.01" in res.output
    assert "metric suite version bump" in res.output
    res = CliRunner().invoke(app, ["regress", "--folder", str(FOLDER), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ok"] is True and report["moved"] == [] and report["n_compared"] > 400
