"""Size of a submission's image archive in candidate lossless formats (docs/leaderboard.md).

    .venv/bin/python bench/archive_size.py --images DIR [--images DIR2 ...]

For each image folder (one ``<task_id>.npy`` per task, as ``cellbench generate`` writes them):
a plain tar of the ``.npy`` files, a tar of PNGs, a tar of lossless WebPs, one compressed ``.npz``,
tar.gz and tar.xz of the ``.npy`` files (the format ``cellbench submission pack`` writes) and tar.xz
of PNGs. Every re-encoding is checked to decode to the same pixels. Sizes in MB (10^6 bytes).
"""

from __future__ import annotations

import argparse
import io
import lzma
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _tar(blobs: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in blobs:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _encode(a: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    opts = {"optimize": True} if fmt == "PNG" else {"lossless": True, "quality": 100, "method": 0}
    Image.fromarray(a).save(buf, format=fmt, **opts)
    data = buf.getvalue()
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (back == a).all(), f"{fmt} is not lossless here"
    return data


def measure(folder: Path) -> dict[str, float]:
    from cellbench.submission.archive import pack_images

    files = sorted(folder.glob("*.npy"))
    arrays = [np.load(f) for f in files]
    npy = _tar([(f.name, f.read_bytes()) for f in files])
    t0 = time.perf_counter()
    pngs = [(f.stem + ".png", _encode(a, "PNG")) for f, a in zip(files, arrays, strict=True)]
    webps = [(f.stem + ".webp", _encode(a, "WEBP")) for f, a in zip(files, arrays, strict=True)]
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.stack(arrays), task_ids=np.array([f.stem for f in files]))
    packed = folder.parent / f".{folder.name}.tar.xz"
    pack_images(folder, packed)
    out = {
        "raw pixels": sum(a.nbytes for a in arrays),
        "tar npy": len(npy),
        "tar png": len(_tar(pngs)),
        "tar webp (lossless)": len(_tar(webps)),
        "npz (compressed)": len(buf.getvalue()),
        "tar.gz npy": len(zlib.compress(npy, 9)),
        "tar.xz npy (submission pack)": packed.stat().st_size,
        "tar.xz png": len(lzma.compress(_tar(pngs), preset=9)),
    }
    packed.unlink()
    print(f"{folder}: {len(files)} images ({time.perf_counter() - t0:.1f} s)")
    return {k: v / 1e6 for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", action="append", required=True, type=Path)
    args = p.parse_args(argv)
    for folder in args.images:
        for k, v in measure(folder).items():
            print(f"  {k:30s} {v:7.2f} MB")


if __name__ == "__main__":
    main()
