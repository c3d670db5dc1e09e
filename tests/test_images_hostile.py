"""Hostile image input: decompression bombs, 16-bit colour PNG, links out of the image folder.

Each test fails if its defence is removed: the bomb files are tiny on disk but their headers
(written by hand: PNG IHDR, TIFF tags, ``.npy`` header) claim huge images, and a spy on every
decoder (Pillow, tifffile, numpy) proves that none of them is decoded; the 16-bit PNG holds values
whose high bytes form a valid 8-bit image, which the old reading (Pillow keeps the high byte) let
through.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image, ImageFile

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import ImageError
from cellbench.images import (
    MAX_DECODED_BYTES,
    decode_image,
    discover_images,
    load_images,
    read_folder_image,
    read_image,
)
from cellbench.protocol import build_protocol, write_protocol
from tests.conftest import run_cli


# ------------------------------------------------------------------------------ crafted files
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, depth: int = 8, colour: int = 2, rows: bytes = b"") -> bytes:
    """A PNG whose IHDR says ``width`` x ``height``; its IDAT holds only ``rows`` (compressed)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(rows or b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png16(arr: np.ndarray) -> bytes:
    """An exact 16-bit PNG of a uint16 (H, W) or (H, W, 3) array (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    return png_bytes(w, h, 16, colour, rows)


def tiff_bytes(width: int, height: int, samples: int = 3, bits: int = 8) -> bytes:
    """A little-endian TIFF whose tags say ``width`` x ``height``; one tiny deflate strip."""
    strip = zlib.compress(b"\0" * 64)
    tags = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, bits),
        (259, 3, 8),  # deflate
        (262, 3, 2 if samples == 3 else 1),
        (273, 4, 0),  # strip offset, filled below
        (277, 3, samples),
        (278, 4, height),
        (279, 4, len(strip)),
    ]
    data_at = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = data_at if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + b"\0\0\0\0" + strip


def npy_bytes(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """An ``.npy`` header claiming ``shape``, followed by a few bytes."""
    from numpy.lib import format as npy

    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


#: (file name, bytes, the dimensions the one-line refusal names); every one is tiny on disk
BOMBS = [
    ("png-100k.png", png_bytes(100_000, 100_000), "100000x100000x3 uint8"),
    # under Pillow's own DecompressionBombError threshold (only a warning there)
    ("png-10k.png", png_bytes(10_000, 10_000), "10000x10000x3 uint8"),
    ("png-tall.png", png_bytes(96, 1_000_000), "1000000x96x3 uint8"),
    ("png-grey16.png", png_bytes(12_000, 12_000, 16, 0), "12000x12000 uint16"),
    ("png-rgba.png", png_bytes(9_000, 9_000, 8, 6), "9000x9000x4 uint8"),
    # 1 byte per pixel on disk's terms, 3 once its palette is applied
    ("png-palette.png", png_bytes(10_000, 10_000, 8, 3), "10000x10000x3 uint8"),
    ("tif-100k.tif", tiff_bytes(100_000, 100_000), "100000x100000x3 uint8"),
    ("tif-20k.tiff", tiff_bytes(20_000, 20_000), "20000x20000x3 uint8"),
    ("tif-grey16.tif", tiff_bytes(12_000, 12_000, 1, 16), "12000x12000 uint16"),
    ("npy-100k.npy", npy_bytes((100_000, 100_000, 3)), "100000x100000x3 uint8"),
    ("npy-f8.npy", npy_bytes((6_000, 6_000), "<f8"), "6000x6000 float64"),
]


def _crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (96, 96, 3), dtype=np.uint8)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple]:
    """Every decode of a test file attempted, by Pillow, tifffile or numpy; an oversized one fails
    the test instead of running (the spy never lets a bomb allocate)."""
    calls: list[tuple] = []
    pil_load, tif_asarray, npy_read = (
        ImageFile.ImageFile.load,
        tifffile.TiffFile.asarray,
        np.lib.format.read_array,
    )

    def spy_pil(self, *a, **k):
        calls.append(("PIL", self.size))
        assert self.size[0] * self.size[1] <= 96 * 96, f"Pillow decoded {self.size}"
        return pil_load(self, *a, **k)

    def spy_tif(self, *a, **k):
        calls.append(("TIFF", self.series[0].shape))
        assert np.prod(self.series[0].shape) <= 96 * 96 * 3, f"tifffile decoded {self.series}"
        return tif_asarray(self, *a, **k)

    def spy_npy(fp, *a, **k):
        if str(tmp_path) in str(getattr(fp, "name", "")):  # not scikit-image's own .npy files
            calls.append(("NPY", fp.name))
        assert "npy-" not in str(getattr(fp, "name", "")), f"numpy decoded {fp}"
        return npy_read(fp, *a, **k)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_pil)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", spy_tif)
    monkeypatch.setattr(np.lib.format, "read_array", spy_npy)
    return calls


def _refusal(message: str, name: str, dims: str) -> None:
    assert name in message and dims in message, message
    assert f"over the limit of {MAX_DECODED_BYTES // 2**20} MiB per image" in message
    assert "refused before decoding" in message and "\n" not in message


@pytest.fixture
def protocol(mini_ds: BBBC021Dataset) -> pd.DataFrame:
    return build_protocol(mini_ds, "test", 0)


# ------------------------------------------------------------------------------------- bombs
@pytest.mark.parametrize(("name", "data", "dims"), BOMBS, ids=[b[0] for b in BOMBS])
def test_bomb_refused_from_its_header(tmp_path: Path, decoded, name, data, dims) -> None:
    """read_image (eval, images check, the grid) and decode_image (segment) both refuse it."""
    path = tmp_path / name
    path.write_bytes(data)
    assert path.stat().st_size < 1000
    for read in (read_image, decode_image):
        with pytest.raises(ImageError) as err:
            read(path)
        _refusal(str(err.value), name, dims)
    assert decoded == []


def test_limit_is_on_the_decoded_size_not_the_format(tmp_path: Path, decoded) -> None:
    """Just under the limit is decoded (and then refused for its shape by read_image, or read
    by decode_image); just over is refused unread, whatever the format."""
    side = int((MAX_DECODED_BYTES // 3) ** 0.5)  # side * side * 3 <= limit
    over = side + 1
    (tmp_path / "over.npy").write_bytes(npy_bytes((over, over, 3)))
    with pytest.raises(ImageError, match="refused before decoding"):
        decode_image(tmp_path / "over.npy")
    np.save(tmp_path / "under.npy", np.zeros((2, 2), np.uint8))
    assert decode_image(tmp_path / "under.npy").shape == (2, 2)
    # a crop of the wrong size is refused from the header too, before decoding
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"shape \(200, 200, 3\).*from the file's header"):
        read_image(tmp_path / "big.png")
    assert decoded == [("NPY", str(tmp_path / "under.npy"))]


def test_bombs_in_a_folder_are_problems_and_good_images_still_read(
    tmp_path: Path, protocol: pd.DataFrame, decoded
) -> None:
    """The path of `cellbench eval` and `cellbench images check` (discover + load_images)."""
    tasks = list(protocol["task_id"])
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(_crop(0)).save(folder / f"{tasks[0]}.png")
    tifffile.imwrite(folder / f"{tasks[1]}.tif", _crop(1))
    np.save(folder / f"{tasks[2]}.npy", _crop(2))
    bombs = {}
    for i, (name, data, dims) in enumerate(BOMBS):
        path = folder / f"{tasks[3 + i % 5]}_{i}{Path(name).suffix}"  # image i of a task
        path.write_bytes(data)
        bombs[path.name] = dims
    loaded = load_images(discover_images(folder, protocol))
    assert loaded.task_ids == tasks[:3]
    assert np.array_equal(loaded.images, np.stack([_crop(0), _crop(1), _crop(2)]))
    by_file = {Path(p.path).name: p.problem for p in loaded.problems}
    assert set(by_file) == set(bombs)
    for name, dims in bombs.items():
        _refusal(f"{name}: {by_file[name]}", name, dims)
    with pytest.raises(ImageError, match="refused before decoding"):
        load_images(discover_images(folder, protocol), strict=True)
    assert {kind for kind, _ in decoded} == {"PIL", "TIFF", "NPY"}  # the good ones were read


def test_sample_grid_refuses_a_bomb(tmp_path: Path, protocol: pd.DataFrame, decoded) -> None:
    from cellbench.submission.grid import sample_grid

    proto = tmp_path / "p.csv"
    write_protocol(protocol, proto)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, data, dims in BOMBS:
        task = protocol["task_id"][0]
        path = folder / f"{task}{Path(name).suffix}"
        for old in folder.iterdir():
            old.unlink()
        path.write_bytes(data)
        with pytest.raises(ImageError) as err:
            sample_grid(folder, proto, tmp_path / "grid.png", per_moa=1)
        _refusal(str(err.value), path.name, dims)
    assert decoded == [] and not (tmp_path / "grid.png").exists()


def test_segment_refuses_a_bomb(tmp_path: Path, decoded) -> None:
    from cellbench.features.segment.io import segment_folder

    for name, data, dims in BOMBS:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError) as err:
            segment_folder(tmp_path / name, tmp_path / "out")
        _refusal(str(err.value), name, dims)
    assert decoded == []


def test_cli_images_check_and_grid_refuse_a_bomb(tmp_path: Path, protocol: pd.DataFrame) -> None:
    """The real commands: one line naming the file, its dimensions and the limit."""
    proto = tmp_path / "p.csv"
    write_protocol(protocol, proto)
    folder = tmp_path / "imgs"
    folder.mkdir()
    tasks = list(protocol["task_id"])
    for i, t in enumerate(tasks[1:], start=1):
        np.save(folder / f"{t}.npy", _crop(i))
    (folder / f"{tasks[0]}.png").write_bytes(png_bytes(100_000, 100_000))
    res = run_cli("images", "check", str(folder), "--protocol", str(proto))
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [x for x in res.stdout.splitlines() if f"{tasks[0]}.png" in x]
    assert len(lines) == 1
    _refusal(lines[0], f"{tasks[0]}.png", "100000x100000x3 uint8")
    grid = run_cli(
        "submission", "grid", str(folder), "--protocol", str(proto), "--out",
        str(tmp_path / "g.png"), "--per-moa", "1",
    )  # fmt: skip
    assert grid.returncode == 2 and "Traceback" not in grid.stderr
    assert len(grid.stderr.strip().splitlines()) == 1
    _refusal(grid.stderr.strip(), f"{tasks[0]}.png", "100000x100000x3 uint8")
    assert not (tmp_path / "g.png").exists()


# ----------------------------------------------------------------------------------- 16 bits
def _high_byte_image() -> np.ndarray:
    """uint16 values whose high bytes alone are a valid, non-constant 8-bit crop."""
    return _crop(7).astype(np.uint16) * 256 + 255


def test_16_bit_rgb_png_is_refused_not_cut_to_its_high_byte(tmp_path: Path, decoded) -> None:
    path = tmp_path / "rgb16.png"
    path.write_bytes(png16(_high_byte_image()))
    # what the old reading gave: Pillow's 8-bit RGB of the high bytes, a valid-looking crop
    with Image.open(path) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), _crop(7))
    decoded.clear()
    for read in (read_image, decode_image):
        with pytest.raises(ImageError, match=r"16-bit RGB \(16 bits per channel\).*high byte"):
            read(path)
    assert decoded == []


def test_16_bit_grey_png_is_refused_by_eval_and_read_exactly_by_segment(tmp_path: Path) -> None:
    grey = _high_byte_image()[..., 0]
    path = tmp_path / "grey16.png"
    path.write_bytes(png16(grey))
    with pytest.raises(ImageError, match=r"PNG mode is I;16 \(16-bit grey\), expected 8-bit RGB"):
        read_image(path)
    got = decode_image(path)
    assert got.dtype == np.uint16 and np.array_equal(got, grey)


def test_16_bit_tiff_and_npy_are_read_exactly_or_refused(tmp_path: Path) -> None:
    """TIFF and .npy keep their 16-bit values: accepted only when every value is an 8-bit one."""
    for suffix, write in ((".tif", tifffile.imwrite), (".npy", np.save)):
        exact = tmp_path / f"exact{suffix}"
        write(exact, _crop(3).astype(np.uint16))
        assert np.array_equal(read_image(exact), _crop(3))
        wide = tmp_path / f"wide{suffix}"
        write(wide, _high_byte_image())
        with pytest.raises(
            ImageError, match=r"uint16 values in \[\d+, 65535\] cannot become uint8"
        ):
            read_image(wide)
        assert decode_image(wide).dtype == np.uint16


# ------------------------------------------------------------------------------------- links
def _save(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_crop(seed)).save(path)


def test_links_out_of_the_folder_refused_in_every_layout(
    tmp_path: Path, protocol: pd.DataFrame
) -> None:
    """Task-named files (flat, indexed, by target key), compound folders (nested), the manifest's
    rows and the manifest itself: a link that resolves outside is a problem naming its target;
    a link inside the folder is read."""
    p = protocol.reset_index(drop=True)
    t = list(p["task_id"])
    outside = tmp_path / "outside"
    _save(outside / "secret.png", 9)
    secret = outside / "secret.png"
    target = f"symbolic link points outside the image folder (to {secret})"

    flat = tmp_path / "flat"
    _save(flat / f"{t[0]}.png", 0)
    (flat / f"{t[1]}.png").symlink_to(secret)
    (flat / f"{t[2]}_0.png").symlink_to(os.path.relpath(secret, flat))  # relative link
    (flat / f"{p.loc[3, 'target_key']}.png").symlink_to(secret)
    (flat / "hop").mkdir()
    (flat / "hop" / "x.png").symlink_to(secret)
    (flat / f"{t[4]}.png").symlink_to(flat / "hop" / "x.png")  # a link to a link that leaves
    (flat / f"{t[5]}.png").symlink_to(flat / f"{t[0]}.png")  # inside: read
    found = discover_images(flat, protocol)
    assert sorted(found.files) == sorted([t[0], t[5]])
    problems = {Path(q.path).name: q.problem for q in found.problems}
    for name in (f"{t[1]}.png", f"{t[2]}_0.png", f"{p.loc[3, 'target_key']}.png", f"{t[4]}.png"):
        assert problems[name] == target

    folders = tmp_path / "folders"
    compound = p.loc[0, "compound"].replace("/", "_")
    _save(folders / compound / f"{t[0]}.png", 0)
    nested = p.loc[p["compound"] == p.loc[0, "compound"]].reset_index(drop=True)
    (folders / compound / f"{nested.loc[1, 'task_id']}.png").symlink_to(secret)
    loaded = load_images(discover_images(folders, protocol))
    assert loaded.task_ids == [t[0]]
    assert [q.problem for q in loaded.problems] == [target]

    man = tmp_path / "man"
    _save(man / "a.png", 0)
    (man / "b.png").symlink_to(secret)
    (man / "manifest.csv").write_text(f"task_id,path\n{t[0]},a.png\n{t[1]},b.png\n")
    found = discover_images(man, protocol)
    assert list(found.files) == [t[0]]
    assert [q.problem for q in found.problems] == [target.replace("symbolic link", "path")]
    (outside / "manifest.csv").write_text(f"task_id,path\n{t[0]},a.png\n")
    (man / "manifest.csv").unlink()
    (man / "manifest.csv").symlink_to(outside / "manifest.csv")
    with pytest.raises(ImageError, match=r"manifest: symbolic link points outside .*manifest\.csv"):
        discover_images(man, protocol)


def test_link_loops_and_dangling_links_are_problems(tmp_path: Path, protocol: pd.DataFrame) -> None:
    t = list(protocol["task_id"])
    folder = tmp_path / "imgs"
    _save(folder / f"{t[0]}.png", 0)
    (folder / f"{t[1]}.png").symlink_to(folder / f"{t[1]}.png")  # a loop: no traceback
    (folder / f"{t[2]}.png").symlink_to("nowhere.png")
    found = discover_images(folder, protocol)
    assert list(found.files) == [t[0]]
    problems = {Path(q.path).name: q.problem for q in found.problems}
    assert problems == {
        f"{t[1]}.png": "symbolic link loop",
        f"{t[2]}.png": "symbolic link to nowhere.png, which does not exist",
    }


def test_a_file_swapped_for_a_link_after_discovery_is_not_read(
    tmp_path: Path, protocol: pd.DataFrame, decoded
) -> None:
    """Reading re-checks where a matched file leads (load_images and the grid read this way)."""
    t0 = protocol["task_id"][0]
    folder = tmp_path / "imgs"
    _save(folder / f"{t0}.png", 0)
    _save(tmp_path / "outside.png", 1)
    found = discover_images(folder, protocol)
    (folder / f"{t0}.png").unlink()
    (folder / f"{t0}.png").symlink_to(tmp_path / "outside.png")
    loaded = load_images(found)
    assert loaded.task_ids == [] and "points outside the image folder" in loaded.problems[0].problem
    with pytest.raises(ImageError, match="points outside"):
        read_folder_image(folder / f"{t0}.png", folder)
    assert decoded == []


def test_generation_record_may_not_leave_the_folder(tmp_path: Path) -> None:
    from cellbench.errors import CellbenchError
    from cellbench.generation import GENERATION_FILE, read_generation_record

    folder = tmp_path / "imgs"
    folder.mkdir()
    (tmp_path / "record.json").write_text("{}")
    (folder / GENERATION_FILE).symlink_to(tmp_path / "record.json")
    with pytest.raises(CellbenchError, match="symbolic link that leads outside"):
        read_generation_record(folder)


# ----------------------------------------------------------------------------- images check
def test_images_check_exits_1_when_a_task_has_no_image(
    tmp_path: Path, protocol: pd.DataFrame
) -> None:
    proto = tmp_path / "p.csv"
    write_protocol(protocol, proto)
    folder = tmp_path / "imgs"
    folder.mkdir()
    tasks = list(protocol["task_id"])
    for i, t in enumerate(tasks):
        np.save(folder / f"{t}.npy", _crop(i))
    ok = run_cli("images", "check", str(folder), "--protocol", str(proto))
    assert ok.returncode == 0, ok.stdout
    (folder / f"{tasks[-1]}.npy").unlink()  # every file good, one task without an image
    for extra in ((), ("--json",)):
        res = run_cli("images", "check", str(folder), "--protocol", str(proto), *extra)
        assert res.returncode == 1, res.stdout
        if extra:
            report = json.loads(res.stdout)
            assert report["missing_tasks"] == 1 and report["problems"] == []
        else:
            assert "1 tasks without an image; 0 problem(s)" in res.stdout
