"""Bringing other crops to the 96x96 uint8 convention of the IMPA BBBC021 crops."""

from __future__ import annotations

import numpy as np
from skimage.transform import resize


def to_uint8_crop(
    img: np.ndarray,
    out_size: int = 96,
    *,
    order: tuple[int, int, int] = (0, 1, 2),
    percentiles: tuple[float, float] = (0.1, 99.9),
) -> np.ndarray:
    """Resize an HxWx3 crop of any dtype to ``out_size`` and rescale each channel to uint8.

    Args:
        img: HxWx3 array (e.g. 68x68 uint16 CellProfiler crops).
        out_size: output side (96 for the IMPA convention).
        order: output channel k is input channel ``order[k]`` (e.g. (2, 1, 0) turns
            (DNA, tubulin, actin) into (actin, tubulin, DNA)).
        percentiles: per channel, per crop, these percentiles map to 0 and 255.
    """
    x = np.asarray(img, np.float64)[..., list(order)]
    x = resize(x, (out_size, out_size, 3), order=1, anti_aliasing=True, preserve_range=True)
    out = np.zeros(x.shape, np.uint8)
    for k in range(3):
        lo, hi = np.percentile(x[..., k], percentiles)
        if hi > lo:
            out[..., k] = np.clip((x[..., k] - lo) / (hi - lo) * 255.0, 0, 255).round()
    return out
