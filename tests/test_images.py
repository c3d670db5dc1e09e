"""Reading a generator's images: the three layouts and every malformed file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import ImageError
from cellbench.images import (
    ImageSet,
    check_image_array,
    compound_folder_name,
    discover_images,
    load_images,
    one_image_per_task,
    read_image,
)
from cellbench.protocol import build_protocol


@pytest.fixture
def protocol(mini_ds: BBBC021Dataset) -> pd.DataFrame:
    return build_protocol(mini_ds, "test", 0)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty image folder (``tmp_path`` also holds the mini dataset)."""
    return tmp_path / "generated"


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (96, 96, 3), dtype=np.uint8)


def test_formats_round_trip(tmp_path: Path) -> None:
    a = _img()
    Image.fromarray(a).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", a)
    np.save(tmp_path / "a.npy", a)
    for name in ("a.png", "a.tif", "a.npy"):
        assert np.array_equal(read_image(tmp_path / name), a)


def test_task_id_layout_with_several_per_task(tmp_path: Path, protocol: pd.DataFrame) -> None:
    t0, t1 = protocol["task_id"][:2]
    Image.fromarray(_img(1)).save(tmp_path / f"{t0}.png")
    np.save(tmp_path / f"{t1}_0.npy", _img(2))
    np.save(tmp_path / f"{t1}_1.npy", _img(3))
    found = discover_images(tmp_path, protocol)
    assert found.layout == "task_id"
    loaded = load_images(found)
    assert loaded.task_ids == [t0, t1, t1]
    assert loaded.images.shape == (3, 96, 96, 3)
    assert len(loaded.missing) == len(protocol) - 2
    assert loaded.problems == []
    bad_n = load_images(found, n_per_task=1)
    assert any("has 2 images, expected 1" in p.problem for p in bad_n.problems)


def test_manifest_layout_and_escape(tmp_path: Path, protocol: pd.DataFrame) -> None:
    (tmp_path / "imgs").mkdir()
    folder = tmp_path / "imgs"
    np.save(folder / "x.npy", _img())
    (tmp_path / "secret.npy").write_bytes(b"")
    t0, t1, t2 = protocol["task_id"][:3]
    (folder / "manifest.csv").write_text(
        f"task_id,path\n{t0},x.npy\n{t1},../secret.npy\n{t2},x.npy\nnot-a-task,x.npy\n"
    )
    found = discover_images(folder, protocol)
    assert found.layout == "manifest"
    assert list(found.files) == [t0]
    messages = [p.problem for p in found.problems]
    assert f"path points outside the image folder (to {tmp_path / 'secret.npy'})" in messages
    assert "file listed more than once" in messages
    assert any("not in the protocol" in m for m in messages)
    assert all("manifest.csv" in p.path for p in found.problems)


def _pixels_by_task(found: ImageSet) -> dict[str, np.ndarray]:
    """Each matched task's pixels (one image per task)."""
    loaded = load_images(found)
    assert len(set(loaded.task_ids)) == len(loaded.task_ids)
    return dict(zip(loaded.task_ids, loaded.images, strict=True))


def _save(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_img(seed)).save(path)


def _assert_own_pixels(found: ImageSet, protocol: pd.DataFrame, tasks: list[str]) -> None:
    """Exactly ``tasks`` were matched, each to the image written for it (seed = protocol row)."""
    got = _pixels_by_task(found)
    assert sorted(got) == sorted(tasks)
    row = {t: i for i, t in enumerate(protocol["task_id"])}
    for t in tasks:
        assert np.array_equal(got[t], _img(row[t])), t


def test_compound_folders_of_task_ids(out: Path, protocol: pd.DataFrame) -> None:
    for i, (task, compound) in enumerate(
        zip(protocol["task_id"], protocol["compound"], strict=True)
    ):
        _save(out / compound_folder_name(compound) / f"{task}.png", i)
    (out / "taxoll").mkdir()
    found = discover_images(out, protocol)
    assert found.layout == "compound-folders"
    _assert_own_pixels(found, protocol, list(protocol["task_id"]))
    assert [p.problem for p in found.problems] == [
        "folder name is not a compound of the protocol; did you mean taxol?"
    ]


def test_cellflux_layout_by_target_key(out: Path, protocol: pd.DataFrame) -> None:
    # CellFlux: fid_samples/epoch-<N>/<CPD_NAME>/<target SAMPLE_KEY>.png, trt2ctrl_idx.json beside
    epoch = out / "fid_samples" / "epoch-3"
    for i, (key, compound) in enumerate(
        zip(protocol["target_key"], protocol["compound"], strict=True)
    ):
        _save(epoch / compound / f"{key}.png", i)  # "cytochalasin D/" as CellFlux names it
    (out / "fid_samples" / "trt2ctrl_idx.json").write_text("{}")
    found = discover_images(epoch, protocol)
    assert found.layout == "compound-folders"
    assert found.problems == [] and found.missing == []
    _assert_own_pixels(found, protocol, list(protocol["task_id"]))
    # the folder above the epoch folder is named as the mistake it is
    above = discover_images(out / "fid_samples", protocol)
    assert [Path(p.path).name for p in above.problems] == ["trt2ctrl_idx.json", "epoch-3"]
    assert "CellFlux epoch folder" in above.problems[1].problem
    assert len(above.missing) == len(protocol)


def test_target_keys_with_npy_suffix_and_flat(out: Path, protocol: pd.DataFrame) -> None:
    # an index whose SAMPLE_KEY ends in .npy gives CellFlux files <key>.npy.png; flat folders too
    for i, key in enumerate(protocol["target_key"]):
        _save(out / f"{key}.npy.png", i)
    found = discover_images(out, protocol)
    assert found.layout == "task_id" and found.problems == []
    _assert_own_pixels(found, protocol, list(protocol["task_id"]))


def test_nested_mevinolin_lovastatin_folder(out: Path, protocol: pd.DataFrame) -> None:
    proto = protocol.copy()
    proto.loc[proto["compound"] == "nocodazole", "compound"] = "mevinolin/lovastatin"
    for i, (key, compound) in enumerate(zip(proto["target_key"], proto["compound"], strict=True)):
        _save(out / compound / f"{key}.png", i)  # CellFlux: os.makedirs makes mevinolin/lovastatin
    assert (out / "mevinolin" / "lovastatin").is_dir()
    found = discover_images(out, proto)
    assert found.problems == [] and found.missing == []
    _assert_own_pixels(found, proto, list(proto["task_id"]))
    # the flat spelling cellbench suggests reads the same
    (out / "mevinolin").rename(out / "mv")
    (out / "mv" / "lovastatin").rename(out / compound_folder_name("mevinolin/lovastatin"))
    (out / "mv").rmdir()
    flat = discover_images(out, proto)
    assert flat.problems == [] and flat.missing == []
    _assert_own_pixels(flat, proto, list(proto["task_id"]))


def test_phendiff_layout(out: Path, protocol: pd.DataFrame) -> None:
    # PhenDiff: <target class>/<source image name>_to_<target class>.png; the source is the control
    for i, (control, compound) in enumerate(
        zip(protocol["control_key"], protocol["compound"], strict=True)
    ):
        _save(out / compound / f"{control}_to_{compound}.png", i)
    found = discover_images(out, protocol)
    # taxol's two batch-0 tasks share their control: one file name for two tasks, refused
    shared = protocol[(protocol["compound"] == "taxol") & (protocol["batch"] == "batch0")]
    assert len(shared) == 2 and shared["control_key"].nunique() == 1
    (problem,) = found.problems
    assert Path(problem.path).name == f"{shared['control_key'].iloc[0]}_to_taxol.png"
    assert all(t in problem.problem for t in shared["task_id"])
    assert sorted(found.missing) == sorted(shared["task_id"])
    rest = [t for t in protocol["task_id"] if t not in set(shared["task_id"])]
    for t in rest:  # written in protocol order, so the shared control's file holds the later image
        assert found.files[t][0].name.endswith(
            f"_to_{protocol.set_index('task_id').loc[t, 'compound']}.png"
        )
    got = _pixels_by_task(found)
    row = {t: i for i, t in enumerate(protocol["task_id"])}
    assert sorted(got) == sorted(rest)
    assert all(np.array_equal(got[t], _img(row[t])) for t in rest)


def test_compound_folder_names_that_fit_no_single_task(out: Path, protocol: pd.DataFrame) -> None:
    proto = protocol.copy()
    t = list(proto["task_id"])
    proto.loc[5, "target_key"] = proto.loc[4, "target_key"]  # two taxol tasks, one target key
    noc = proto.loc[proto["compound"] == "nocodazole"].index[0]
    _save(out / "taxol" / "img0.png", 0)  # a name that says nothing: never dealt by order
    _save(out / "taxol" / f"{proto.loc[4, 'target_key']}.png", 1)  # shared target key
    _save(out / "taxol" / f"{proto.loc[noc, 'target_key']}.png", 2)  # nocodazole's key
    _save(out / "taxol" / f"{t[noc]}.png", 3)  # nocodazole's task id
    _save(out / "taxol" / "Week9_99999_X_1.png", 4)  # no such key
    _save(out / "taxol" / f"{t[6]}.png", 6)  # the one good file
    proto.loc[7, "target_key"] = proto.loc[6, "target_key"] + "_1"  # <key>_1: a key, or image 1?
    _save(out / "taxol" / f"{proto.loc[7, 'target_key']}.png", 7)
    found = discover_images(out, proto)
    assert list(found.files) == [t[6]]
    by_file = {Path(p.path).name: p.problem for p in found.problems}
    assert len(by_file) == 6
    assert "ambiguous name" in by_file[f"{proto.loc[7, 'target_key']}.png"]
    assert "never by order" in by_file["img0.png"]
    assert f"fits 2 tasks ({t[4]}, {t[5]})" in by_file[f"{proto.loc[4, 'target_key']}.png"]
    assert "is of a nocodazole task, not of taxol" in by_file[f"{proto.loc[noc, 'target_key']}.png"]
    assert "is of a nocodazole task, not of taxol" in by_file[f"{t[noc]}.png"]
    assert "neither a task_id nor a target key of a taxol task" in by_file["Week9_99999_X_1.png"]


def test_links_leaving_the_folder_are_refused(tmp_path: Path, protocol: pd.DataFrame) -> None:
    t = list(protocol["task_id"])
    outside = tmp_path / "outside"
    _save(outside / "secret.png", 9)
    imgs = tmp_path / "imgs"
    _save(imgs / f"{t[0]}.png", 0)
    (imgs / f"{t[1]}.png").symlink_to(outside / "secret.png")
    (imgs / f"{t[2]}.png").symlink_to(imgs / f"{t[0]}.png")  # a link inside the folder is read
    found = discover_images(imgs, protocol)
    assert list(found.files) == [t[0], t[2]]
    assert [(Path(p.path).name, p.problem) for p in found.problems] == [
        (f"{t[1]}.png", f"symbolic link points outside the image folder (to {outside}/secret.png)")
    ]
    folders = tmp_path / "folders"
    _save(folders / "nocodazole" / f"{protocol.loc[2, 'target_key']}.png", 2)
    (folders / "taxol").symlink_to(outside, target_is_directory=True)
    (folders / "again").symlink_to(folders, target_is_directory=True)  # a loop back to the top
    found = discover_images(folders, protocol)
    assert list(found.files) == [t[2]]
    assert [(Path(p.path).name, p.problem) for p in found.problems] == [
        ("taxol", f"symbolic link points outside the image folder (to {outside})"),
        ("again", "folder reached twice through a link"),
    ]


def test_bad_files_reported_and_good_ones_kept(tmp_path: Path, protocol: pd.DataFrame) -> None:
    t = list(protocol["task_id"])
    np.save(tmp_path / f"{t[0]}.npy", _img())  # good
    good_png = tmp_path / "full.png"
    Image.fromarray(_img(5)).save(good_png)
    (tmp_path / f"{t[1]}.png").write_bytes(good_png.read_bytes()[:200])  # truncated PNG
    good_png.unlink()
    np.save(tmp_path / f"{t[2]}.npy", _img())
    (tmp_path / f"{t[2]}.npy").write_bytes(
        (tmp_path / f"{t[2]}.npy").read_bytes()[:150]
    )  # truncated npy
    np.save(tmp_path / f"{t[3]}.npy", np.zeros((3, 96, 96), np.uint8))  # channels first
    np.save(tmp_path / f"{t[4]}.npy", np.full((96, 96, 3), 7, np.uint8))  # constant
    nan = _img().astype(np.float32)
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / f"{t[5]}.npy", nan)
    Image.fromarray(_img()).convert("L").save(tmp_path / f"{t[6]}.png")  # greyscale PNG
    np.save(tmp_path / f"{t[7]}.npy", _img().astype(np.float32) / 255)  # lossy float
    (tmp_path / "notes.txt").write_text("hi")
    loaded = load_images(discover_images(tmp_path, protocol))
    assert loaded.task_ids == [t[0], t[4]]  # the constant image is reported but kept
    by_file = {Path(p.path).name: p.problem for p in loaded.problems}
    assert "unreadable or truncated" in by_file[f"{t[1]}.png"]
    assert "unreadable or truncated" in by_file[f"{t[2]}.npy"]
    assert "channels first?" in by_file[f"{t[3]}.npy"]
    assert "constant value" in by_file[f"{t[4]}.npy"]
    assert "NaN" in by_file[f"{t[5]}.npy"]
    assert "mode is L" in by_file[f"{t[6]}.png"]
    assert "without loss" in by_file[f"{t[7]}.npy"]
    assert "unsupported file type" in by_file["notes.txt"]
    with pytest.raises(ImageError, match="problem"):
        load_images(discover_images(tmp_path, protocol), strict=True)


def test_duplicate_task_files(tmp_path: Path, protocol: pd.DataFrame) -> None:
    t0 = protocol["task_id"][0]
    np.save(tmp_path / f"{t0}.npy", _img())
    Image.fromarray(_img()).save(tmp_path / f"{t0}.png")
    found = discover_images(tmp_path, protocol)
    assert len(found.files[t0]) == 1
    assert any("duplicate" in p.problem for p in found.problems)


def test_lossless_conversions_accepted() -> None:
    a = _img()
    assert np.array_equal(check_image_array(a.astype(np.float64)), a)
    assert np.array_equal(check_image_array(a.astype(np.uint16)), a)
    with pytest.raises(ImageError, match="without loss"):
        check_image_array(a.astype(np.uint16) * 2)
    with pytest.raises(ImageError, match="not an image type"):
        check_image_array(a > 100)


def test_missing_folder(tmp_path: Path, protocol: pd.DataFrame) -> None:
    with pytest.raises(ImageError, match="image folder not found"):
        discover_images(tmp_path / "nope", protocol)


def test_one_image_per_task_in_protocol_order(tmp_path: Path, protocol: pd.DataFrame) -> None:
    sub = protocol.head(3)
    t0, t1, t2 = sub["task_id"]
    np.save(tmp_path / f"{t2}.npy", _img(2))  # written first, still stacked last
    np.save(tmp_path / f"{t0}.npy", _img(0))
    np.save(tmp_path / f"{t1}_0.npy", _img(1))
    np.save(tmp_path / f"{t1}_1.npy", _img(5))  # several images: the first is taken
    got = one_image_per_task(tmp_path, sub)
    assert got.shape == (3, 96, 96, 3)
    assert all(np.array_equal(got[i], _img(s)) for i, s in enumerate((0, 1, 2)))
    (tmp_path / f"{t2}.npy").write_bytes(b"not an image")  # unreadable counts as missing
    with pytest.raises(ImageError, match=rf"1 task\(s\) have no usable image \(first: {t2}\)") as e:
        one_image_per_task(tmp_path, sub)
    assert e.value.path == str(tmp_path)
