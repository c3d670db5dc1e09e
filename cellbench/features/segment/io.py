"""``cellbench segment``: label images and per-image features for a folder of images."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cellbench.errors import ImageError
from cellbench.images import IMAGE_SUFFIXES
from cellbench.io import atomic_path, atomic_write_bytes


def read_any_image(path: Path) -> np.ndarray:
    """A 1- or 3-channel image (any integer or float type) as HxWx3 uint8-compatible array."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB") if im.mode in ("RGBA", "P", "LA") else im)
    except Exception as exc:
        raise ImageError(f"unreadable image ({type(exc).__name__}: {exc})", path=path) from None
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

    src = Path(input)
    files = (
        [src]
        if src.is_file()
        else sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise ImageError("no PNG/TIFF/NPY images found", path=src, fix="pass a folder of images")
    be = get_backend(backend)
    out = Path(out)
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
