"""Submission folders: schema, naming, versions, hashes, partial results, sizes, paths, numbers.

Most tests start from a synthetic but internally consistent submission (``make_submission``): the
per-image table is random, and results.json is computed from it with the same bootstrap code and
written by the same writer as ``cellbench eval``, so each test can break exactly one thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench._version import __version__
from cellbench.data.layout import MOAS
from cellbench.metrics.bootstrap import bootstrap_mean, grouped_bootstrap
from cellbench.metrics.registry import per_image_names, set_fn_metrics
from cellbench.metrics.rewards import OVERALL_WEIGHTS, REWARD_NAMES, SUITE_VERSION
from cellbench.submission import validate_submission
from cellbench.submission.schema import SchemaDefinitionError, Validator, load_schema
from cellbench.submission.validate import (
    accepted_protocols,
    mean_tolerance,
    shipped_artifacts,
    validate_paths,
)
from tests.conftest import REPO, run_cli

FOLDER = "2026-01-15_toy-model"


def metadata(**changes) -> dict:
    doc = {
        "schema": "cellbench.submission/1",
        "model": {"name": "Toy model", "version": "1.0"},
        "kind": "model",
        "description": "a synthetic submission for tests",
        "authors": [{"name": "A. Researcher", "affiliation": "Somewhere"}],
        "contact": "a.researcher@example.org",
        "paper": "https://arxiv.org/abs/0000.00000",
        "code": "https://github.com/example/toy",
        "licence": "MIT",
        "training": {"dataset": "bbbc021-sim", "splits": ["train"]},
        "test_images_seen": False,
        "best_of_n": {"used": False, "n": 1},
        "compute": {"hardware": "1 CPU", "train_hours": 0.1, "generate_hours": 0.01},
    }
    doc.update(changes)
    return doc


def _per_image(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    compounds = [f"compound-{i}" for i in range(10)]
    rows = {
        "task_id": [f"t{i:012x}" for i in range(n)],
        "path": [f"t{i:012x}.npy" for i in range(n)],
        "compound": [compounds[i % 10] for i in range(n)],
    }
    values = {
        "moa": rng.uniform(0, 1, n),
        "nuc_in_cyto": rng.uniform(0.5, 1, n),
        **{r: -(rng.normal(0, 1.2, n) ** 2) for r in REWARD_NAMES[2:]},
    }
    values["roundness"][:3] = -25.0  # a few images without a nucleus
    values["overall"] = sum(OVERALL_WEIGHTS[r] * values[r] for r in REWARD_NAMES)
    values["moa_accuracy"] = (rng.uniform(0, 1, n) < values["moa"]).astype(float)
    rows.update(values)
    rows["true_moa"] = [MOAS[i % 12] for i in range(n)]
    rows["pixel_sha256"] = [hashlib.sha256(_image(i).tobytes()).hexdigest() for i in range(n)]
    return pd.DataFrame(rows)


def _image(i: int) -> np.ndarray:
    """The synthetic image of row ``i`` (its pixel hash is the table's)."""
    img = np.zeros((96, 96, 3), np.uint8)
    img[0, 0] = (i & 255, i >> 8, 7)
    img[10:20, 10:20, 1] = 200
    return img


def write_images(table: pd.DataFrame, folder: Path) -> Path:
    """The image folder behind a per-image table of :func:`_per_image` (``path`` per row)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(table["path"]):
        np.save(folder / rel, _image(i))
    return folder


def results_doc(table: pd.DataFrame) -> dict:
    """results.json for a per-image table, with the leaderboard's protocol and shipped artifacts."""
    proto = next(p for p in accepted_protocols() if p["dataset"] == "bbbc021-sim")
    art = shipped_artifacts("bbbc021-sim", "classical")
    n = len(table)
    moas = table["true_moa"].to_numpy().astype(str)
    lines = sorted(f"{t}\t{s}" for t, s in zip(table.task_id, table.pixel_sha256, strict=True))

    metric_names = per_image_names()

    def grouped(groups: np.ndarray) -> dict:
        out: dict = {}
        for m in metric_names:
            for g, est in grouped_bootstrap(table[m].to_numpy(), groups).items():
                out.setdefault(g, {})[m] = est.as_dict()
        return out

    metrics = {m: bootstrap_mean(table[m].to_numpy()).as_dict() for m in metric_names}
    for name, value in (("fid_o", 40.0), ("fid_c", 90.0), ("kid_o", 0.01), ("kid_c", 0.02)):
        metrics[name] = {"value": value, "n_gen": n, "n_real": n}
    reference = {m: {"value": 0.5, "ci": [0.4, 0.6], "n": n} for m in metric_names}
    reference.update({k: {"value": 1.0} for k in ("fid_o", "fid_c", "kid_o", "kid_c")})
    for s in set_fn_metrics():  # the set-level held-out metrics; the profile ones absent
        absent = "not computed: no morphology profile" if "gen_profile" in s.inputs else None
        metrics[s.name] = {"value": None if absent else 0.5, "n_gen": n, "n_real": n}
        reference[s.name] = {"value": None if absent else 0.9}
        if absent:
            metrics[s.name]["absent"] = reference[s.name]["absent"] = absent
    return {
        "schema": "cellbench.results/1",
        "complete": True,
        "partial": None,
        "cellbench_version": __version__,
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "command": "cellbench eval images --dataset bbbc021-sim --out results.json",
        "seed": 0,
        "dataset": {
            "name": "bbbc021-sim",
            "version": proto["dataset_version"],
            "simulated": True,
            "index_sha256": proto["index_sha256"],
        },
        "protocol": {
            "name": proto["name"],
            "version": proto["protocol_version"],
            "sha256": proto["protocol_sha256"],
            "n_tasks": proto["n_tasks"],
            "fid_real": "compounds",
            "built": True,
            "split": proto["split"],
            "seed": 0,
        },
        "images": {
            "layout": "task_id",
            "folder": "images",
            "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            "n_images": n,
            "n_tasks_covered": n,
            "n_tasks_expected": n,
            "missing_tasks": 0,
            "n_problems": 0,
            "problems": [],
        },
        "metric_suite_version": SUITE_VERSION,
        "segmenter": {"name": "classical", "version": "x"},
        "weights": {
            "classifier": art["classifier"],
            "inception": art["inception"],
            "segmenter": None,
        },
        "feature_network": None,
        "reference_stats_sha256": art["reference_stats"],
        "fid_computed": True,
        "metrics": metrics,
        "per_moa": grouped(moas),
        "per_compound": grouped(table["compound"].to_numpy()),
        "reference": {"description": "real", "metrics": reference, "per_moa": {}},
        "fid_detail": None,
        "overall_weights": OVERALL_WEIGHTS,
        "environment": {"device": "cpu"},
        "wall_time_s": 1.5,
    }


def make_submission(
    parent: Path, name: str = FOLDER, *, seed: int = 0, meta: dict | None = None
) -> Path:
    """A valid submission folder written with cellbench's own result writer."""
    from cellbench.results.builder import write_results

    n = next(p for p in accepted_protocols() if p["dataset"] == "bbbc021-sim")["n_tasks"]
    table = _per_image(n, seed)
    folder = parent / name
    folder.mkdir(parents=True)
    write_results(results_doc(table), table, None, folder / "results.json")
    (folder / "metadata.json").write_text(json.dumps(with_images(folder, table, meta), indent=2))
    return folder


def with_images(folder: Path, table: pd.DataFrame, meta: dict | None = None) -> dict:
    """Pack the images of ``table`` into ``folder/images.tar.xz``; the metadata naming them."""
    from cellbench.submission.archive import ARCHIVE_NAME, pack_images

    images = write_images(table, folder.parent / f".{folder.name}-images")
    digest = pack_images(images, folder / ARCHIVE_NAME)
    shutil.rmtree(images)
    size = (folder / ARCHIVE_NAME).stat().st_size
    return {
        **(meta or metadata()),
        "images": {"archive": ARCHIVE_NAME, "sha256": digest, "bytes": size},
    }


@pytest.fixture(scope="module")
def valid_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_submission(tmp_path_factory.mktemp("template"))


@pytest.fixture
def sub(valid_template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "submissions" / FOLDER
    shutil.copytree(valid_template, dest)
    return dest


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc, indent=2))


def codes(problems) -> list[str]:
    return [p.code for p in problems]


def only(problems, code: str) -> str:
    """The problems' text, after checking that every problem has ``code``."""
    assert problems, "expected at least one problem"
    assert set(codes(problems)) == {code}, [str(p) for p in problems]
    return "\n".join(str(p) for p in problems)


# ---------------------------------------------------------------------------------- valid input
def test_valid_submission_has_no_problem(sub: Path) -> None:
    assert validate_submission(sub) == []


def test_committed_reference_entries_are_valid() -> None:
    folders = sorted((REPO / "submissions").glob("*_*/results.json"))
    if not folders:
        pytest.skip("no reference entries committed yet (bench/pipelines/make_submissions.py)")
    for results in folders:
        doc = json.loads(results.read_text())
        problems = validate_submission(results.parent, require_current_suite=False)
        assert problems == [], [str(p) for p in problems]
        assert doc["dataset"]["name"] == "bbbc021-sim"


# -------------------------------------------------------------------------------- the metadata
def test_missing_metadata_field(sub: Path) -> None:
    edit_json(sub / "metadata.json", lambda d: d.pop("licence"))
    text = only(validate_submission(sub), "schema")
    assert "metadata.json: /: missing required field 'licence'" in text


def test_wrong_metadata_type(sub: Path) -> None:
    edit_json(sub / "metadata.json", lambda d: d.update(authors="A. Researcher"))
    text = only(validate_submission(sub), "schema")
    assert "/authors: must be array, got a string" in text


def test_boolean_is_not_a_number_and_unknown_fields_are_refused(sub: Path) -> None:
    def change(d: dict) -> None:
        d["best_of_n"]["n"] = True
        d["extra"] = 1

    edit_json(sub / "metadata.json", change)
    text = only(validate_submission(sub), "schema")
    assert "/best_of_n/n: must be integer, got a boolean" in text
    assert "unknown field 'extra'" in text


def test_best_of_n_must_be_consistent(sub: Path) -> None:
    edit_json(sub / "metadata.json", lambda d: d.update(best_of_n={"used": False, "n": 4}))
    assert "'used' must be true exactly when n > 1" in only(validate_submission(sub), "schema")


def test_best_of_n_must_match_the_scored_images(sub: Path) -> None:
    # results.json says the images were a best-of-4 selection; the metadata says plain sampling
    edit_json(sub / "results.json", lambda d: d.update(best_of_n=4))
    text = only(validate_submission(sub), "schema")
    assert "/best_of_n/n is 1 but results.json was scored from best-of-4 images" in text
    assert '"used": true, "n": 4' in text
    edit_json(sub / "metadata.json", lambda d: d.update(best_of_n={"used": True, "n": 4}))
    assert validate_submission(sub) == []


def test_links_must_be_http(sub: Path) -> None:
    edit_json(sub / "metadata.json", lambda d: d.update(code="javascript:alert(1)"))
    assert "/code:" in only(validate_submission(sub), "schema")


def test_invalid_json_duplicate_keys_and_nan(sub: Path) -> None:
    (sub / "metadata.json").write_text('{"schema": "a", "schema": "b"}')
    assert "duplicate key 'schema'" in only(validate_submission(sub), "json")
    (sub / "metadata.json").write_text('{"x": NaN}')
    assert "NaN is not a finite number" in only(validate_submission(sub), "json")
    (sub / "metadata.json").write_text('{"x": 1e999}')  # Python would read inf
    assert "1e999 is not a finite number" in only(validate_submission(sub), "json")
    (sub / "metadata.json").write_text("[" * 20_000 + "]" * 20_000)  # no RecursionError
    assert "nested 20000 levels deep" in only(validate_submission(sub), "json")


# -------------------------------------------------------------------------------------- naming
@pytest.mark.parametrize(
    "name",
    ["toy-model", "2026-13-45_toy", "2026-01-15", "2026-01-15_", "2026-01-15_a b", "2999-01-01_x"],
)
def test_folder_naming(sub: Path, name: str) -> None:
    renamed = sub.with_name(name)
    sub.rename(renamed)
    text = only(validate_submission(renamed), "naming")
    assert str(renamed) in text


# ------------------------------------------------------------------------- versions and hashes
def test_results_from_another_suite_version(sub: Path) -> None:
    edit_json(sub / "results.json", lambda d: d.update(metric_suite_version="0"))
    text = only(validate_submission(sub), "suite")
    assert f"metric suite version 0; the current suite is {SUITE_VERSION}" in text
    assert validate_submission(sub, require_current_suite=False) == []


@pytest.mark.parametrize(
    ("version", "word"), [("0.0.9", "older"), ("99.0.0", "newer"), ("dev", "older")]
)
def test_unsupported_cellbench_version(sub: Path, version: str, word: str) -> None:
    edit_json(sub / "results.json", lambda d: d.update(cellbench_version=version))
    problems = validate_submission(sub)
    if version == "dev":  # also fails the schema's version pattern
        assert "schema" in codes(problems)
    else:
        assert word in only(problems, "version")


def test_other_result_schema_is_refused(sub: Path) -> None:
    edit_json(sub / "results.json", lambda d: d.update(schema="someone-else/2"))
    assert "expected 'cellbench.results/1'" in only(validate_submission(sub), "schema")


def test_foreign_protocol_and_dataset_version(sub: Path) -> None:
    edit_json(sub / "results.json", lambda d: d["protocol"].update(sha256="ab" * 32))
    msg = only(validate_submission(sub), "protocol")
    assert "is none of the leaderboard's protocols" in msg
    assert "cellflux-iid `cellbench protocol --dataset bbbc021-sim --name cellflux-iid" in msg
    edit_json(sub / "results.json", lambda d: d["dataset"].update(index_sha256="cd" * 32))
    assert "is not the leaderboard's version" in only(validate_submission(sub), "protocol")


def test_locally_retrained_classifier_is_refused(sub: Path) -> None:
    edit_json(sub / "results.json", lambda d: d["weights"].update(classifier="ef" * 32))
    assert "weights/classifier" in only(validate_submission(sub), "artifact")


# ---------------------------------------------------------------------------- partial results
def test_shard_partial_result(sub: Path) -> None:
    edit_json(sub / "results.json", lambda d: d.update(partial={"shard": "1/4"}, complete=False))
    assert "--shard 1/4 part" in only(validate_submission(sub), "partial")


def test_limit_style_partial_result(sub: Path) -> None:
    def cut(d: dict) -> None:
        d["images"].update(n_tasks_covered=400, n_tasks_expected=420, missing_tasks=20)
        d["complete"] = False

    edit_json(sub / "results.json", cut)
    assert "images answer 400 of the protocol's 420 tasks" in only(
        validate_submission(sub), "partial"
    )


def test_results_without_fid(sub: Path) -> None:
    def no_fid(d: dict) -> None:
        d["fid_computed"] = False
        for k in ("fid_o", "fid_c", "kid_o", "kid_c"):
            d["metrics"].pop(k)

    edit_json(sub / "results.json", no_fid)
    assert "--no-fid" in only(validate_submission(sub), "partial")


def test_results_without_the_held_out_set_metrics(sub: Path) -> None:
    """A result of a cellbench without the set-level held-out metrics, or with one of the
    Inception-based ones absent though Inception ran, is partial; an absent profile metric (with
    its reason) is accepted."""
    names = [s.name for s in set_fn_metrics()]
    assert {"precision", "coverage", "retrieval_top1", "retrieval_map"} <= set(names)
    edit_json(sub / "results.json", lambda d: d["metrics"].pop("coverage"))
    text = only(validate_submission(sub), "partial")
    assert "has no held-out metric coverage (scored by an older cellbench)" in text

    def absent(d: dict) -> None:
        d["metrics"]["coverage"] = {
            "value": None,
            "n_gen": 1,
            "n_real": 1,
            "absent": "not computed: no Inception features",
        }
        d["metrics"]["recall"]["value"] = None  # null with no reason

    edit_json(sub / "results.json", absent)
    text = only(validate_submission(sub), "partial")
    assert "/metrics/coverage is absent (not computed: no Inception features)" in text
    assert "/metrics/recall/value is null with no reason given" in text


def test_image_problems_make_a_result_partial(sub: Path) -> None:
    edit_json(
        sub / "results.json", lambda d: (d["images"].update(n_problems=2), d.update(complete=False))
    )
    assert "2 image problem(s)" in only(validate_submission(sub), "partial")


# ----------------------------------------------------------------------------------- numbers
def test_hand_edited_overall_number(sub: Path) -> None:
    edit_json(
        sub / "results.json",
        lambda d: d["metrics"]["overall"].update(value=d["metrics"]["overall"]["value"] + 0.001),
    )
    text = only(validate_submission(sub), "numbers")
    assert "/metrics/overall/value" in text and "results.per_image.csv" in text


def test_hand_edited_per_compound_number(sub: Path) -> None:
    edit_json(
        sub / "results.json", lambda d: d["per_compound"]["compound-3"]["moa"].update(value=0.99)
    )
    assert "/per_compound/compound-3/moa/value" in only(validate_submission(sub), "numbers")


def test_hand_edited_per_image_table(sub: Path) -> None:
    table = pd.read_csv(sub / "results.per_image.csv")
    table.loc[0, "nuc_size"] = 0.0  # a better reward for one image, nothing else changed
    table.to_csv(sub / "results.per_image.csv", index=False, float_format="%.6g")
    text = only(validate_submission(sub), "numbers")
    assert "/metrics/nuc_size/value" in text


def test_table_must_match_the_image_hash(sub: Path) -> None:
    table = pd.read_csv(sub / "results.per_image.csv")
    table.loc[0, "pixel_sha256"] = "0" * 64
    table.to_csv(sub / "results.per_image.csv", index=False, float_format="%.6g")
    problems = validate_submission(sub)
    assert set(codes(problems)) == {"numbers", "images"}, [str(p) for p in problems]
    text = "\n".join(map(str, problems))
    assert "do not give the images sha256" in text
    assert "t000000000000.npy decodes to pixels whose sha256 is not" in text


def test_value_outside_its_interval(sub: Path) -> None:
    edit_json(sub / "results.json", lambda d: d["metrics"]["moa"].update(ci=[0.0, 0.01]))
    assert "outside its interval" in only(validate_submission(sub), "numbers")


def test_mean_tolerance_is_the_rounding_of_the_two_files() -> None:
    # %.6g keeps 6 significant digits: error <= 5e-6 |x|; the JSON keeps 6 decimals: <= 5e-7
    assert mean_tolerance([-4.0, -6.0]) == pytest.approx(5e-6 * 5 + 5e-7 + 1e-9)
    assert mean_tolerance([0.0]) < 1e-6


def test_missing_table_column(sub: Path) -> None:
    table = pd.read_csv(sub / "results.per_image.csv").drop(columns=["overall"])
    table.to_csv(sub / "results.per_image.csv", index=False)
    assert "lacks column(s) overall" in only(validate_submission(sub), "table")


# ------------------------------------------------------------------------------ sizes, paths
def test_200_mb_file_is_refused_without_reading_it(
    sub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = sub / "results.per_image.csv"
    big.unlink()
    with open(big, "wb") as fh:  # sparse: 200 MB on paper, no disk used
        fh.truncate(200 * 1024 * 1024)
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    problems = validate_submission(sub)
    assert str(big) not in opened
    text = "\n".join(map(str, problems))
    assert "results.per_image.csv: is 200.0 MB, over the 32.0 MB cap" in text
    assert "holds 200." in text  # the folder cap too
    assert set(codes(problems)) == {"size"}


def test_symlink_out_of_the_folder_is_refused(sub: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.move(sub / "results.json", outside)
    (sub / "results.json").symlink_to(outside)
    problems = validate_submission(sub)
    text = "\n".join(map(str, problems))
    assert "results.json: is a symbolic link" in text
    assert "path" in codes(problems)


def test_symlinked_submission_folder_is_refused(sub: Path, tmp_path: Path) -> None:
    link = tmp_path / "2026-01-16_link"
    link.symlink_to(sub)
    assert "is a symbolic link" in only(validate_submission(link), "path")


def test_sample_grid_path_must_stay_inside(sub: Path) -> None:
    edit_json(sub / "metadata.json", lambda d: d.update(sample_grid="../../etc/passwd.png"))
    assert "/sample_grid" in only(validate_submission(sub), "schema")
    edit_json(sub / "metadata.json", lambda d: d.update(sample_grid="grid.png"))
    assert "is not a file of this folder" in only(validate_submission(sub), "path")
    (sub / "grid.png").write_bytes(b"GIF89a not a png")
    assert "not a PNG or JPEG" in only(validate_submission(sub), "layout")
    (sub / "grid.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    assert validate_submission(sub) == []


def test_unexpected_files_and_subfolders(sub: Path) -> None:
    (sub / "train.py").write_text("print('hi')\n")
    (sub / "images").mkdir()
    text = only(validate_submission(sub), "layout")
    assert "train.py: unexpected file" in text and "sub-folders are not accepted" in text


def test_missing_files(sub: Path) -> None:
    (sub / "results.per_image.csv").unlink()
    assert "results.per_image.csv: is missing" in only(validate_submission(sub), "missing")


# --------------------------------------------------------------------------- merged numbers
def test_merged_numbers_must_not_change_folder_mode(sub: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    shutil.copytree(sub, merged / sub.name)
    assert validate_submission(sub, merged_dir=merged) == []
    edit_json(sub / "metadata.json", lambda d: d.update(description="fixed a typo"))
    assert validate_submission(sub, merged_dir=merged) == []  # metadata may be corrected
    edit_json(merged / sub.name / "results.json", lambda d: d["metrics"]["moa"].update(value=0.1))
    text = only(validate_submission(sub, merged_dir=merged), "merged")
    assert "numbers of an already-merged submission changed" in text


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def test_merged_numbers_must_not_change_git_mode(sub: Path) -> None:
    repo = sub.parent.parent
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "merge toy")
    # an already-merged entry may be stale (older suite) as long as it is unchanged
    assert validate_submission(sub, base="HEAD") == []
    table = pd.read_csv(sub / "results.per_image.csv")
    table.loc[1, "moa"] = 0.5
    table.to_csv(sub / "results.per_image.csv", index=False, float_format="%.6g")
    problems = validate_submission(sub, base="HEAD")
    assert (
        "per-image table of an already-merged submission changed (compared with HEAD)"
        in "\n".join(map(str, problems))
    )
    assert "merged" in codes(problems)
    problems = validate_submission(sub, base="no-such-ref")
    assert any(
        p.code == "merged" and "git ref 'no-such-ref' not found" in p.message for p in problems
    )


def test_removed_merged_submission_is_reported(sub: Path) -> None:
    root = sub.parent
    _git(root.parent, "init", "-q")
    _git(root.parent, "add", ".")
    _git(root.parent, "commit", "-q", "-m", "merge toy")
    shutil.rmtree(sub)
    found = validate_paths([root], base="HEAD")
    text = "\n".join(str(p) for ps in found.values() for p in ps)
    assert "merged submission was removed (present at HEAD)" in text


def test_stale_merged_entry_is_accepted_unchanged(sub: Path) -> None:
    edit_json(sub / "results.json", lambda d: d.update(metric_suite_version="0"))
    repo = sub.parent.parent
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "merged under suite 0")
    assert validate_submission(sub) != []  # a new submission must use the current suite
    assert validate_submission(sub, base="HEAD") == []  # a merged one may stay, unchanged


# -------------------------------------------------------------------------------------- CLI
def test_cli_one_line_per_problem_and_exit_code(sub: Path) -> None:
    ok = run_cli("submission", "validate", str(sub))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout == ""
    edit_json(sub / "metadata.json", lambda d: (d.pop("contact"), d.update(kind="robot")))
    bad = run_cli("submission", "validate", str(sub.parent))
    assert bad.returncode == 1
    lines = bad.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(str(sub / "metadata.json") + ": ") for line in lines)
    js = run_cli("submission", "validate", str(sub), "--json")
    doc = json.loads(js.stdout)
    assert js.returncode == 1 and doc["valid"] is False
    assert len(doc["submissions"][str(sub)]) == 2


# --------------------------------------------------------------------------- schema checker
def test_schema_checker_refuses_unknown_keywords() -> None:
    with pytest.raises(SchemaDefinitionError, match="unsupported keyword 'oneOf'"):
        Validator({"type": "object", "properties": {"a": {"oneOf": []}}})


def test_schema_checker_reports_every_problem_with_a_pointer() -> None:
    v = Validator(
        {
            "type": "object",
            "required": ["a", "b"],
            "properties": {"a/b": {"type": "integer", "minimum": 0}, "c": {"enum": [1, 2]}},
        }
    )
    found = v.problems({"a/b": -1, "c": 3})
    assert ("/", "missing required field 'a'") in found
    assert ("/a~1b", "must be >= 0, got -1") in found
    assert any(p == "/c" for p, _ in found)
    assert len(found) == 4


def test_published_schema_copies_match_the_package() -> None:
    for name in ("metadata", "results"):
        shipped = REPO / "cellbench" / "resources" / "schemas" / f"{name}.schema.json"
        copy = REPO / "submissions" / "schemas" / f"{name}.schema.json"
        assert copy.read_bytes() == shipped.read_bytes(), f"re-copy {shipped} to {copy}"
        assert load_schema(name)["$schema"].endswith("2020-12/schema")


def test_leaderboard_protocol_matches_the_shipped_classifier() -> None:
    card = json.loads(
        (REPO / "cellbench/resources/bbbc021-sim/classifier/classifier.json").read_text()
    )
    sim = [p for p in accepted_protocols() if p["dataset"] == "bbbc021-sim"]
    assert {p["index_sha256"] for p in sim} == {card["dataset_index_sha256"]}
    names = [p["name"] for p in sim if "suites" not in p]
    assert names == ["cellflux-iid", "cellflux-5120", "unseen"]  # every registered protocol


# ------------------------------------------------------------------------------ sample grid
def test_sample_grid_tiles_the_first_tasks_of_each_moa(mini_ds, tmp_path: Path) -> None:
    from PIL import Image

    from cellbench.protocol import build_protocol, write_protocol
    from cellbench.submission.grid import GAP, sample_grid

    table = build_protocol(mini_ds, split="test", seed=0)
    write_protocol(table, tmp_path / "protocol.csv")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    crops = {}
    for task in table["task_id"]:
        crops[task] = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        np.save(images / f"{task}.npy", crops[task])
    out = sample_grid(images, tmp_path / "protocol.csv", tmp_path / "grid.png", per_moa=2)
    grid = np.asarray(Image.open(out))
    moas = sorted(table["moa"].unique())
    assert grid.shape == (2 * (96 + GAP) + GAP, len(moas) * (96 + GAP) + GAP, 3)
    first = table[table["moa"] == moas[0]]["task_id"].iloc[0]
    assert np.array_equal(grid[GAP : GAP + 96, GAP : GAP + 96], crops[first])
    res = run_cli(
        "submission",
        "grid",
        str(tmp_path),
        "--protocol",
        str(tmp_path / "protocol.csv"),
        "--out",
        str(tmp_path / "g.png"),
    )
    assert res.returncode != 0 and "no image matched" in res.stderr


def _shipped_record() -> dict:
    from cellbench.artifacts.manifest import set_record
    from cellbench.artifacts.registry import shipped_set

    files = dict(shipped_set("bbbc021-sim")["files"])
    return set_record(
        {k: v for k, v in files.items() if k.startswith("classifier/") or "classical" in k}
    )


def test_artifact_set_record_is_checked_against_the_registry(sub: Path) -> None:
    record = _shipped_record()
    edit_json(sub / "results.json", lambda d: d.update(artifacts=record))
    assert validate_submission(sub) == []
    # a locally rebuilt classifier card: consistent record, but not a registered set
    other = {**record["files"], "classifier/classifier.json": "ab" * 32}
    from cellbench.artifacts.manifest import set_record

    edit_json(sub / "results.json", lambda d: d.update(artifacts=set_record(other)))
    msg = only(validate_submission(sub), "artifact")
    assert (
        "is not a registered set for bbbc021-sim: score with the artifacts cellbench ships" in msg
    )
    # a record whose digest does not match its files
    edit_json(sub / "results.json", lambda d: d.update(artifacts={**record, "sha256": "cd" * 32}))
    assert "/artifacts/sha256 is not the digest" in only(validate_submission(sub), "artifact")


def test_artifact_record_must_agree_with_the_recorded_hashes(sub: Path) -> None:
    record = _shipped_record()

    def change(d: dict) -> None:
        d["artifacts"] = record
        d["reference_stats_sha256"] = "ef" * 32

    edit_json(sub / "results.json", change)
    assert "disagree with /reference_stats_sha256" in only(validate_submission(sub), "artifact")


def test_overall_without_moa_is_refused(sub: Path) -> None:
    """A result whose overall lacks moa (--no-fid) says so and is never accepted for ranking."""

    def no_moa(d: dict) -> None:
        d["overall_comparable"] = False
        d["overall_components"] = [c for c in d.get("overall_weights", {}) if c != "moa"]

    edit_json(sub / "results.json", no_moa)
    assert "/overall_comparable is false" in only(validate_submission(sub), "partial")
