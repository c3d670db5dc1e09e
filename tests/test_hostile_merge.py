"""Hostile inputs of ``cellbench eval merge``, ``cellbench compare`` and ``cellbench regress``:
forged or damaged files are refused with one line naming the file, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cellbench.errors import CellbenchError
from cellbench.evaluation import evaluate, merge_shards
from cellbench.io import sha256_file
from cellbench.protocol import write_protocol
from tests.conftest import make_tiny_sim, run_cli


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    """Shards 1/2 and 2/2 (no Inception) of six tasks, run with a relative protocol path from
    the run folder and written to its ``sh/`` subfolder, as a user would."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("merge")
    ds, table = make_tiny_sim(root, mp)
    table = table.groupby("moa").head(1).head(6)
    write_protocol(table, root / "p6.csv")
    (root / "img").mkdir()
    for r in table.itertuples():
        np.save(root / "img" / f"{r.task_id}.npy", ds.load_crop(r.control_key))
    here = Path.cwd()
    os.chdir(root)
    try:
        for k in (1, 2):
            evaluate(
                "img",
                data_dir="data",
                protocol="p6.csv",
                fid=False,
                shard=f"{k}/2",
                out=f"sh/s{k}.json",
            )
    finally:
        os.chdir(here)
    yield {"root": root, "data": root / "data", "table": table}
    mp.undo()


def _forge(shards: dict, tmp_path: Path, edit: Callable[[dict], None]) -> list[Path]:
    """Copies of both shards in ``tmp_path/sh`` (the protocol beside them), shard 1 edited."""
    sh = tmp_path / "sh"
    shutil.copytree(shards["root"] / "sh", sh)
    shutil.copy(shards["root"] / "p6.csv", tmp_path / "p6.csv")
    doc = json.loads((sh / "s1.json").read_text())
    edit(doc)
    (sh / "s1.json").write_text(json.dumps(doc))
    return [sh / "s1.json", sh / "s2.json"]


def _drop_shard(d: dict) -> None:
    del d["partial"]["shard"]


def _drop_sha(d: dict) -> None:
    del d["partial"]["arrays_sha256"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(partial="1/2"), "/partial: must be object"),
        (lambda d: d["partial"].update(shard="a/b"), "/partial/shard"),
        (lambda d: d["partial"].update(shard=12), "/partial/shard"),
        (lambda d: d["partial"].update(shard="3/2"), "invalid partial.shard"),
        (_drop_shard, "missing required field 'shard'|shard"),
        (lambda d: d.update(images=None), "/images: must be object"),
        (lambda d: d.update(seed="0"), "/seed"),
        (lambda d: d["partial"].update(arrays_sha256=None), "arrays_sha256"),
        (_drop_sha, "records no arrays_sha256"),
    ],
)
def test_forged_shard_documents_are_refused(shards, tmp_path: Path, edit, match: str) -> None:
    parts = _forge(shards, tmp_path, edit)
    with pytest.raises(CellbenchError, match=match) as info:
        merge_shards(parts, data_dir=shards["data"], out=tmp_path / "m.json")
    assert info.value.path == str(parts[0])
    assert not (tmp_path / "m.json").exists()


def _rewrite_arrays(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrs = {k: z[k] for k in z.files}
    arrs.update(changes)
    arrs = {k: v for k, v in arrs.items() if v is not None}
    with open(path, "wb") as fh:
        np.savez(fh, **arrs)


def _seg(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return z["seg"]


def _n(path: Path) -> int:
    return len(_seg(path))


ARRAY_EDITS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:300]),
    "not an npz": lambda p: np.save(open(p, "wb"), np.zeros(3)),  # noqa: SIM115
    "unknown task ids": lambda p: _rewrite_arrays(p, task_ids=np.array(["nope"] * _n(p))),
    "tasks of the other shard": lambda p: _rewrite_arrays(
        p,
        task_ids=np.array(
            [str(t) for t in np.load(p.with_name("s2.arrays.npz"))["task_ids"]][:1] * _n(p)
        ),
    ),
    "seg rows": lambda p: _rewrite_arrays(p, seg=np.zeros((_n(p) + 1, 6))),
    "seg columns": lambda p: _rewrite_arrays(p, seg=np.zeros((_n(p), 5))),
    "seg text": lambda p: _rewrite_arrays(p, seg=np.array([["a"] * 6] * _n(p))),
    "seg NaN": lambda p: _rewrite_arrays(p, seg=np.full((_n(p), 6), np.nan)),
    "profile inf": lambda p: _rewrite_arrays(p, profile=np.full((_n(p), 40), np.inf)),
    "no seg": lambda p: _rewrite_arrays(p, seg=None),
    "problems": lambda p: _rewrite_arrays(p, problems=np.array('[{"path": 1}]')),
    "inception claimed": lambda p: _rewrite_arrays(
        p, has_inception=np.array(True), inception=np.zeros((_n(p), 2048), np.float32)
    ),
}


@pytest.mark.parametrize("damage", list(ARRAY_EDITS))
def test_damaged_shard_arrays_are_refused(shards, tmp_path: Path, damage: str) -> None:
    """Arrays whose sha256 the (forged) document records, but which no shard can have written."""
    parts = _forge(shards, tmp_path, lambda d: None)
    npz = tmp_path / "sh" / "s1.arrays.npz"
    ARRAY_EDITS[damage](npz)
    doc = json.loads(parts[0].read_text())
    doc["partial"]["arrays_sha256"] = sha256_file(npz)
    parts[0].write_text(json.dumps(doc))
    with pytest.raises(CellbenchError, match="shard arrays") as info:
        merge_shards(parts, data_dir=shards["data"], out=tmp_path / "m.json")
    assert info.value.path == str(npz)
    assert not (tmp_path / "m.json").exists()


def test_merge_cli_prints_one_line_for_a_forged_shard(shards, tmp_path: Path) -> None:
    parts = _forge(shards, tmp_path, lambda d: d["partial"].update(shard=12))
    proc = run_cli(
        "eval",
        "merge",
        *map(str, parts),
        "--data-dir",
        str(shards["data"]),
        "--out",
        str(tmp_path / "m.json"),
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(parts[0]) in proc.stderr
    assert not (tmp_path / "m.json").exists()


def test_merge_finds_a_relative_protocol_from_another_folder(
    shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shards store ``p6.csv`` relative to the folder eval ran in; merging from elsewhere
    finds it above the shards' folder, and the result equals the merge run from that folder."""
    root, data = shards["root"], shards["data"]
    monkeypatch.chdir(root)
    here = merge_shards(["sh/s1.json", "sh/s2.json"], data_dir=data)
    monkeypatch.chdir(tmp_path)
    there = merge_shards([root / "sh/s1.json", root / "sh/s2.json"], data_dir=data)
    assert there["protocol"] == here["protocol"]
    assert there["protocol"]["file"] == "p6.csv"
    for key in ("metrics", "per_moa", "per_compound", "images", "complete"):
        assert there[key] == here[key], key
    assert there["complete"] is True
    (tmp_path / "p6.csv").write_text("task_id\n")  # another file of that name: refused, named
    monkeypatch.chdir(tmp_path / "..")
    other = tmp_path / "other"
    shutil.copytree(root / "sh", other / "sh")
    shutil.copy(tmp_path / "p6.csv", other / "p6.csv")
    with pytest.raises(CellbenchError, match="protocol"):
        merge_shards([other / "sh/s1.json", other / "sh/s2.json"], data_dir=data)


@pytest.fixture(scope="module")
def merged(shards) -> Path:
    """The whole-run result of the two shards (``merged.json`` and its per-image CSV)."""
    out = shards["root"] / "merged.json"
    merge_shards(
        [shards["root"] / "sh/s1.json", shards["root"] / "sh/s2.json"],
        data_dir=shards["data"],
        out=out,
    )
    return out


@pytest.mark.parametrize("cell", ["inf", "NaN", "-1e999"])
def test_compare_refuses_a_per_image_csv_with_non_finite_values(
    merged: Path, tmp_path: Path, cell: str
) -> None:
    """With the CSV's digest removed from the document, its values are still checked."""
    doc = json.loads(merged.read_text())
    doc["per_image_sha256"] = None
    (tmp_path / "b.json").write_text(json.dumps(doc))
    lines = merged.with_name("merged.per_image.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("overall")] = cell
    lines[1] = ",".join(row)
    csv_path = tmp_path / "b.per_image.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    proc = run_cli("compare", str(merged), str(tmp_path / "b.json"), "--n-boot", "10")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(csv_path) in proc.stderr and "not a finite number" in proc.stderr


def _regress_copy(tmp_path: Path) -> Path:
    from cellbench.regress import default_folder

    dest = tmp_path / "regress"
    shutil.copytree(default_folder(), dest)
    return dest


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[]", "not a cellbench.regress/1 file"),
        ('{"schema": "cellbench.regress/1"}', "missing required field"),
        ("drop means", "'means'"),
        ("per_image string", "/per_image: must be object"),
        ("mean value string", "/means/moa/value"),
        ("ci of one", "/means/moa/ci"),
        ("fid_kid list", "/fid_kid"),
        ("NaN", "not a finite number"),
    ],
)
def test_regress_refuses_a_damaged_expected_file(tmp_path: Path, text: str, match: str) -> None:
    """Checked before any scoring, with one line naming the file and how to re-make it."""
    from cellbench.regress import run_regress

    folder = _regress_copy(tmp_path)
    path = folder / "expected.json"
    doc = json.loads(path.read_text())
    edits = {
        "drop means": lambda: doc.pop("means"),
        "per_image string": lambda: doc.update(per_image="x"),
        "mean value string": lambda: doc["means"]["moa"].update(value="0.3"),
        "ci of one": lambda: doc["means"]["moa"].update(ci=[0.1]),
        "fid_kid list": lambda: doc.update(fid_kid=[1.0]),
        "NaN": lambda: doc["fid_kid"].update(fid_o=float("nan")),
    }
    if text in edits:
        edits[text]()
        text = json.dumps(doc)
    path.write_text(text)
    with pytest.raises(CellbenchError, match=match) as info:
        run_regress(folder)
    assert info.value.path == str(path)
    assert "cellbench regress --update" in (info.value.fix or "")


def _csv_lines(n: int) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))

    return edit


@pytest.mark.parametrize(
    ("edit", "blamed", "match"),
    [
        (lambda p: p.write_text("x,y\n"), "images.csv", "no label, source, compound, moa"),
        (_csv_lines(1), "images.csv", "lists no image"),
        (
            lambda p: p.write_text(p.read_text().replace("Actin disruptors", "Nope", 1)),
            "images.csv",
            "line 2: moa 'Nope'",
        ),
        (_csv_lines(3), "images.npy", "holds 30 images but images.csv lists 2"),
    ],
)
def test_regress_blames_the_image_table(tmp_path: Path, edit, blamed: str, match: str) -> None:
    from cellbench.regress import load_set

    folder = _regress_copy(tmp_path)
    edit(folder / "images.csv")
    with pytest.raises(CellbenchError, match=match) as info:
        load_set(folder)
    assert info.value.path == str(folder / blamed)


def test_regress_cli_prints_one_line_for_a_damaged_set(tmp_path: Path) -> None:
    folder = _regress_copy(tmp_path)
    (folder / "expected.json").write_text("[]")
    proc = run_cli("regress", "--folder", str(folder))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(folder / "expected.json") in proc.stderr
    (folder / "expected.json").write_text(
        (_regress_copy(tmp_path / "b") / "expected.json").read_text()
    )
    (folder / "images.csv").write_text("x,y\n")
    proc = run_cli("regress", "--folder", str(folder))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(folder / "images.csv") in proc.stderr


def test_checked_merge_still_equals_the_unsharded_result(shards, merged: Path) -> None:
    """The checks change no number: the merge equals the unsharded run of the same tasks."""
    root = shards["root"]
    here = Path.cwd()
    os.chdir(root)
    try:
        whole = evaluate("img", data_dir="data", protocol="p6.csv", fid=False, out="whole.json")
    finally:
        os.chdir(here)
    doc = json.loads(merged.read_text())
    for key in ("metrics", "per_moa", "per_compound", "protocol", "images", "per_image_sha256"):
        assert doc[key] == whole[key], key
    assert doc["complete"] is True
