"""The optional sample grid of a submission: generated crops, one column per MoA."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellbench.errors import CellbenchError
from cellbench.io import atomic_path, check_out_file

GAP = 2  # pixels between crops
CROP = 96  # a crop's side in pixels
#: the image formats a submission's sample grid may have (metadata.schema.json /sample_grid), by
#: file name suffix
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def sample_grid(
    images: str | Path, protocol: str | Path, out: str | Path, *, per_moa: int = 3
) -> Path:
    """Write an image of the first ``per_moa`` answered tasks of each MoA (protocol order), as
    PNG or JPEG by the suffix of ``out`` (:data:`GRID_FORMATS`; any other suffix is refused).

    Columns are the MoAs in alphabetical order, rows the tasks; crops are shown as 8-bit RGB with
    the stains as R, G, B, as the metrics see them. Returns ``out``.

    Every crop is read as ``cellbench eval`` reads it (:func:`cellbench.images.read_folder_image`:
    the header checked before decoding, links out of the folder refused).
    """
    from cellbench.images import discover_images, read_folder_image
    from cellbench.protocol import read_protocol

    if per_moa < 1:
        raise CellbenchError("--per-moa must be at least 1")
    check_out_file(out, fix="name the image file to write (.png, or .jpg)")
    fmt = GRID_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise CellbenchError(
            f"--out must end in {', '.join(GRID_FORMATS)} (the sample grid formats a submission "
            "accepts)",
            path=out,
            fix="name a .png file (lossless), or .jpg",
        )
    table = read_protocol(protocol)
    found = discover_images(images, table)
    by_task = dict(zip(table["task_id"], table["moa"], strict=True))
    columns: dict[str, list[Path]] = {}
    for task in table["task_id"]:
        paths = found.files.get(task)
        if paths:
            picked = columns.setdefault(by_task[task], [])
            if len(picked) < per_moa:
                picked.append(sorted(paths)[0])
    if not columns:
        raise CellbenchError(
            "no image matched a task of the protocol",
            path=images,
            fix="run `cellbench images check`",
        )
    moas = sorted(columns)
    cells = {
        (i, j): (read_folder_image(path, found.folder, allow_constant=True), path)
        for j, moa in enumerate(moas)
        for i, path in enumerate(columns[moa])
    }
    out = Path(out)
    write_image(tile_crops(cells, per_moa, len(moas)), out, fmt=fmt)
    return out


def tile_crops(
    cells: dict[tuple[int, int], tuple[np.ndarray, str | Path]], n_rows: int, n_cols: int
) -> np.ndarray:
    """A white uint8 canvas of ``n_rows`` x ``n_cols`` crop slots, ``GAP`` pixels apart and around,
    with each ``(row, col): (crop, source)`` of ``cells`` in its slot. A crop that is not 96x96x3
    is refused, naming its ``source``."""
    size = CROP
    canvas = np.full((n_rows * (size + GAP) + GAP, n_cols * (size + GAP) + GAP, 3), 255, np.uint8)
    for (i, j), (crop, source) in cells.items():
        if crop.shape != (size, size, 3):
            raise CellbenchError(f"expected a 96x96x3 crop, got {crop.shape}", path=source)
        y, x = GAP + i * (size + GAP), GAP + j * (size + GAP)
        canvas[y : y + size, x : x + size] = crop
    return canvas


def write_image(canvas: np.ndarray, out: Path, *, fmt: str = "PNG") -> None:
    """Write ``canvas`` as an optimised PNG (or ``fmt`` "JPEG", quality 95), atomically (same
    pixels, same bytes)."""
    from PIL import Image

    with atomic_path(out, suffix=out.suffix) as tmp:
        Image.fromarray(canvas).save(tmp, format=fmt, optimize=True, quality=95)
