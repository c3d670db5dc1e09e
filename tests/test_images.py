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
    assert "path points outside the image folder" in messages
    assert "file listed more than once" in messages
    assert any("not in the protocol" in m for m in messages)
    assert all("manifest.csv" in p.path for p in found.problems)


def test_compound_folder_layout(tmp_path: Path, protocol: pd.DataFrame) -> None:
    for compound in protocol["compound"].unique():
        d = tmp_path / compound_folder_name(compound)
        d.mkdir()
        n = int((protocol["compound"] == compound).sum())
        for i in range(n):
            np.save(d / f"img{i}.npy", _img(i))
    (tmp_path / "taxoll").mkdir()
    found = discover_images(tmp_path, protocol)
    assert found.layout == "compound-folders"
    assert found.missing == []
    assert found.n_files == len(protocol)
    assert any("did you mean taxol" in p.problem for p in found.problems)
    by_task = dict(zip(protocol["task_id"], protocol["compound"], strict=True))
    for task, paths in found.files.items():
        assert all(compound_folder_name(by_task[task]) == p.parent.name for p in paths)


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
