"""Hostile protocol CSVs and image names: each test fails without its defence.

A task_id that is not a safe file name (``../../escaped`` made ``generate`` write outside
``--out``), empty cells, a row whose compound, MoA, dose, batch or control disagrees with the
dataset (it changed scores), a header without rows, and a task answered both by ``<task>.npy``
and ``<task>_0.npy`` (scored twice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import ImageError, ProtocolError
from cellbench.evaluation import load_protocol_for
from cellbench.images import discover_images, load_images
from cellbench.protocol import (
    PROTOCOL_COLUMNS,
    build_protocol,
    check_against_dataset,
    read_protocol,
    write_protocol,
)
from tests.conftest import run_cli

REMAKE = "re-make the protocol with `cellbench protocol`"


@pytest.fixture
def table(mini_ds: BBBC021Dataset) -> pd.DataFrame:
    return build_protocol(mini_ds, "test", seed=0)


def _forged(table: pd.DataFrame, path: Path, row: int = 0, **cells: object) -> Path:
    forged = table.copy()
    for column, value in cells.items():
        forged[column] = forged[column].astype(object)
        forged.loc[row, column] = value
    forged.to_csv(path, index=False)
    return path


def _one_line_error(res, *parts: str) -> str:
    """A CLI refusal: exit 2, one line on stderr holding every part, no traceback."""
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- read_protocol
@pytest.mark.parametrize(
    "task_id", ["../../escaped", "a/b", "a\\b", "/etc/x", ".hidden", "..", "t 1", "t" * 129]
)
def test_unsafe_task_id_refused(table: pd.DataFrame, tmp_path: Path, task_id: str) -> None:
    path = _forged(table, tmp_path / "p.csv", row=1, task_id=task_id)
    with pytest.raises(ProtocolError) as err:
        read_protocol(path)
    assert "line 3" in err.value.message and "not a safe file name" in err.value.message
    assert err.value.path == str(path)


def test_real_task_ids_and_round_trip_pass(
    mini_ds: BBBC021Dataset, table: pd.DataFrame, tmp_path: Path
) -> None:
    write_protocol(table, tmp_path / "p.csv")
    back = read_protocol(tmp_path / "p.csv")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    check_against_dataset(back, mini_ds, tmp_path / "p.csv")
    ok = _forged(table, tmp_path / "ok.csv", task_id="my-task_1.v2")
    assert read_protocol(ok)["task_id"][0] == "my-task_1.v2"


def test_generate_refuses_a_traversing_task_id(mini_root: Path, table: pd.DataFrame) -> None:
    work = mini_root.parent / "work"
    (work / "out").mkdir(parents=True)
    proto = _forged(table, work / "trav.csv", task_id="../../escaped")
    res = run_cli(
        "generate", "identity", "--protocol", str(proto), "--dataset", "bbbc021",
        "--data-dir", str(mini_root), "--out", str(work / "out" / "gen"),
    )  # fmt: skip
    _one_line_error(res, "trav.csv", "line 2", "'../../escaped'", "not a safe file name")
    assert not list(mini_root.parent.rglob("escaped*"))
    assert not (work / "out" / "gen").exists()


def test_empty_cells_refused_naming_line_and_columns(table: pd.DataFrame, tmp_path: Path) -> None:
    proto = tmp_path / "short.csv"
    write_protocol(table.head(2), proto)
    with proto.open("a") as fh:
        fh.write("tx,a\n")
    with pytest.raises(ProtocolError) as err:
        read_protocol(proto)
    assert err.value.message == ("line 4 has empty cell(s): compound, dose, moa, batch, target_key")
    blank = _forged(table, tmp_path / "blank.csv", row=2, moa="  ")
    with pytest.raises(ProtocolError) as err:
        read_protocol(blank)
    assert err.value.message == "line 4 has empty cell(s): moa"
    nodose = _forged(table, tmp_path / "nodose.csv", row=0, dose="lots")
    with pytest.raises(ProtocolError, match="line 2: dose 'lots' is not a finite number"):
        read_protocol(nodose)
    folder = tmp_path / "imgs"
    folder.mkdir()
    check = run_cli("images", "check", str(folder), "--protocol", str(proto))
    _one_line_error(check, "short.csv", "line 4 has empty cell(s)")
    grid = run_cli(
        "submission", "grid", str(folder), "--protocol", str(proto), "--out",
        str(tmp_path / "g.png"),
    )  # fmt: skip
    _one_line_error(grid, "short.csv", "line 4 has empty cell(s)")
    assert not (tmp_path / "g.png").exists()


def test_header_only_protocol_has_no_tasks(mini_root: Path, tmp_path: Path) -> None:
    proto = tmp_path / "hdr.csv"
    proto.write_text(",".join(PROTOCOL_COLUMNS) + "\n")
    with pytest.raises(ProtocolError, match="protocol has no tasks"):
        read_protocol(proto)
    folder = tmp_path / "imgs"
    folder.mkdir()
    res = run_cli(
        "eval", str(folder), "--protocol", str(proto), "--dataset", "bbbc021",
        "--data-dir", str(mini_root), "--no-fid", "--out", str(tmp_path / "r.json"),
    )  # fmt: skip
    _one_line_error(res, "hdr.csv", "protocol has no tasks")
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------ against the dataset (eval)
def _refusal(mini_ds: BBBC021Dataset, path: Path) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        load_protocol_for(mini_ds, path, None, 0)
    assert err.value.path == str(path) and err.value.fix == REMAKE
    return err.value


@pytest.mark.parametrize(
    ("column", "value", "truth"),
    [
        ("compound", "nocodazole", "taxol"),
        ("moa", "Actin disruptors", "Microtubule stabilizers"),
        ("moa", "Bogus", "Microtubule stabilizers"),
        ("dose", 0.6, "0.3"),
        ("batch", "batch1", "batch0"),
    ],
)
def test_a_row_disagreeing_with_the_dataset_is_refused(
    mini_ds: BBBC021Dataset, table: pd.DataFrame, tmp_path: Path, column, value, truth
) -> None:
    row = int(np.flatnonzero((table["compound"] == "taxol") & (table["dose"] == 0.3))[0])
    task = table["task_id"][row]
    err = _refusal(mini_ds, _forged(table, tmp_path / "p.csv", row=row, **{column: value}))
    assert err.message.startswith(f"line {row + 2} (task_id {task}): {column} is ")
    assert str(value) in err.message and truth in err.message


def test_a_dmso_row_is_refused_before_the_moa_lookup(
    mini_ds: BBBC021Dataset, table: pd.DataFrame, tmp_path: Path
) -> None:
    """A3: a DMSO row (or its control crop as target) was a ValueError from MOAS.index."""
    err = _refusal(mini_ds, _forged(table, tmp_path / "a.csv", compound="DMSO", moa="DMSO"))
    assert "compound is 'DMSO'" in err.message
    control = table["control_key"][0]
    err = _refusal(
        mini_ds,
        _forged(table, tmp_path / "b.csv", compound="DMSO", moa="DMSO", dose=0, target_key=control),
    )
    assert f"target_key {control!r} is a control crop" in err.message


def test_control_key_must_be_a_same_batch_control(
    mini_ds: BBBC021Dataset, table: pd.DataFrame, tmp_path: Path
) -> None:
    treated = _refusal(
        mini_ds, _forged(table, tmp_path / "t.csv", control_key=table["target_key"][0])
    )
    assert "is not a control (DMSO) crop" in treated.message
    unknown = _refusal(mini_ds, _forged(table, tmp_path / "u.csv", control_key="Week9_nope_X"))
    assert "control_key 'Week9_nope_X' is not in dataset" in unknown.message
    idx = mini_ds.index
    other_batch = idx[idx["is_control"] & (idx["BATCH"] != table["batch"][0])]["SAMPLE_KEY"]
    moved = _refusal(mini_ds, _forged(table, tmp_path / "m.csv", control_key=other_batch.iloc[0]))
    assert "is of batch" in moved.message and f"batch is {table['batch'][0]!r}" in moved.message


def test_dose_compared_to_csv_precision(
    mini_ds: BBBC021Dataset, table: pd.DataFrame, tmp_path: Path
) -> None:
    row = int(np.flatnonzero(table["dose"] == 0.3)[0])
    near = _forged(table, tmp_path / "near.csv", row=row, dose="0.30000000001")
    check_against_dataset(read_protocol(near), mini_ds, near)
    far = _forged(table, tmp_path / "far.csv", row=row, dose="0.3001")
    with pytest.raises(ProtocolError, match=r"dose is 0\.3001,"):
        check_against_dataset(read_protocol(far), mini_ds, far)


def test_cli_eval_and_generate_blame_the_protocol(
    mini_root: Path, table: pd.DataFrame, tmp_path: Path
) -> None:
    """D2: an unknown control_key blamed the dataset (crop file missing), not the protocol."""
    proto = _forged(table, tmp_path / "ctl.csv", control_key="Week9_nope_X")
    common = ["--protocol", str(proto), "--dataset", "bbbc021", "--data-dir", str(mini_root)]
    (tmp_path / "imgs").mkdir()
    res = run_cli("eval", str(tmp_path / "imgs"), *common, "--out", str(tmp_path / "r.json"))
    line = _one_line_error(res, "ctl.csv", "control_key 'Week9_nope_X'", REMAKE)
    assert "crop file is missing" not in line
    assert not (tmp_path / "r.json").exists()
    res = run_cli("generate", "identity", *common, "--out", str(tmp_path / "gen"))
    _one_line_error(res, "ctl.csv", "control_key 'Week9_nope_X'", REMAKE)
    assert not (tmp_path / "gen").exists()


# ---------------------------------------------------------------------- plain + numbered names
def _crop(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, size=(96, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize("plain", ["task", "target"])
def test_plain_and_numbered_image_of_one_task_is_a_problem(
    table: pd.DataFrame, tmp_path: Path, plain: str
) -> None:
    tasks = list(table["task_id"])
    for i, t in enumerate(tasks):
        np.save(tmp_path / f"{t}.npy", _crop(i))
    if plain == "target":
        (tmp_path / f"{tasks[0]}.npy").rename(tmp_path / f"{table['target_key'][0]}.npy")
    np.save(tmp_path / f"{tasks[0]}_0.npy", _crop(99))
    found = discover_images(tmp_path, table)
    assert len(found.files[tasks[0]]) == 1  # scored once, not twice
    (problem,) = found.problems
    assert problem.task_id == tasks[0] and f"task {tasks[0]} already has" in problem.problem
    loaded = load_images(found)
    assert loaded.task_ids.count(tasks[0]) == 1
    with pytest.raises(ImageError, match="1 problem"):
        load_images(found, strict=True)


def test_numbered_images_alone_are_fine(table: pd.DataFrame, tmp_path: Path) -> None:
    t = table["task_id"][0]
    for k in range(3):
        np.save(tmp_path / f"{t}_{k}.npy", _crop(k))
    found = discover_images(tmp_path, table)
    assert found.problems == [] and len(found.files[t]) == 3


def test_cli_images_check_strict_fails_on_plain_and_numbered(
    table: pd.DataFrame, tmp_path: Path
) -> None:
    proto = tmp_path / "p.csv"
    write_protocol(table, proto)
    folder = tmp_path / "imgs"
    folder.mkdir()
    t = table["task_id"][0]
    np.save(folder / f"{t}.npy", _crop(0))
    np.save(folder / f"{t}_0.npy", _crop(1))
    res = run_cli("images", "check", str(folder), "--protocol", str(proto), "--strict")
    _one_line_error(res, f"{t}_0.npy", f"task {t} already has {t}.npy")
