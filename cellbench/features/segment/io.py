"""``cellbench segment``: label images and per-image features for a folder of images."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cellbench.errors import ImageError
from cellbench.images import IMAGE_SUFFIXES, decode_image
from cellbench.io import atomic_path, atomic_write_bytes, check_out_folder, not_regular_file


def read_any_image(path: Path) -> np.ndarray:
    """A 1- or 3-channel image (any integer or float type) as HxWx3 uint8-compatible array.

    Read by :func:`cellbench.images.decode_image`, so an image whose header says it would decode
    past :data:`cellbench.images.MAX_DECODED_BYTES`, or a 16-bit colour PNG, is refused before
    any pixel is decoded."""
    arr = decode_image(path)  # header checked before decoding: size, 16-bit colour PNG
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageError(f"shape {arr.shape} is not HxW, HxWx1 or HxWx3", path=path)
    if not np.isfinite(arr).all():
        raise ImageError("image has NaN or infinite values", path=path)
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (
            np.zeros(arr.shape, np.uint8)
            if hi <= lo
            else ((arr - lo) / (hi - lo) * 255).round().astype(np.uint8)
        )
    return arr


def segment_folder(
    input: str | Path,
    out: str | Path,
    *,
    backend: str = "classical",
    dna_channel: int = 2,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Segment every image; write ``<stem>_nuclei.tif``, ``<stem>_cells.tif`` and ``features.csv``."""
    import tifffile

    from cellbench.features.segment.backends import get_backend
    from cellbench.features.segment.classical import features_from_masks

    if dna_channel not in (0, 1, 2):
        raise ImageError(
            f"--dna-channel {dna_channel} is not a channel of a 3-channel image",
            fix="pass 0, 1 or 2 (default 2)",
        )
    src = Path(input)
    if not src.exists():
        raise ImageError("no such image or folder", path=src, fix="pass a folder of images")
    files = (
        sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if src.is_dir()
        else [src]
    )
    for path in files:  # a FIFO or device would block the reader: refuse it before any work
        why = not_regular_file(path)
        if why is not None:
            raise ImageError(why, path=path, fix="pass regular image files only")
    if not files:
        raise ImageError("no PNG/TIFF/NPY images found", path=src, fix="pass a folder of images")
    out = Path(out)
    check_out_folder(out)
    if src.is_dir() and out.resolve() == src.resolve():
        raise ImageError(
            "--out is the input folder: the label images would be read as input next time",
            path=out,
            fix="name another folder",
        )
    be = get_backend(backend)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(files):
        img = read_any_image(path)
        seg = be.segment(img, dna_channel=dna_channel)
        for name, labels in (("nuclei", seg.nuclei), ("cells", seg.cells)):
            buf = io.BytesIO()
            tifffile.imwrite(buf, labels.astype(np.uint16))
            atomic_write_bytes(out / f"{path.stem}_{name}.tif", buf.getvalue())
        rows.append({"image": path.name, **features_from_masks(seg)})
        if on_progress is not None:
            on_progress(i + 1, len(files))
    table = pd.DataFrame(rows, columns=["image", *be.feature_names])
    table.insert(1, "backend", f"{be.name}-{be.version}")
    with atomic_path(out / "features.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6g")
    return len(files)
