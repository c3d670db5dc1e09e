"""Checks of an in-memory image batch and its MoA labels before they are scored.

A batch is either uint8 channels-last ``(B, 96, 96, 3)`` in ``[0, 255]`` or floating point
channels-first ``(B, 3, 96, 96)`` in a declared ``value_range`` (default ``(-1, 1)``, the range the
baselines' networks work in). Anything else is refused with a :class:`CellbenchError` that names the
fix: a wrong shape or dtype, non-finite values, values outside the declared range, and a float
batch whose pixels all lie in the upper half of the default range (what ``[0, 1]`` images passed
as ``[-1, 1]`` look like: cell crops always have dark background pixels). Silently rescaling such
a batch moved the ``moa`` reward from 0.04 to 0.29 in a trial.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cellbench.data.layout import CROP_SIZE, MOAS
from cellbench.errors import CellbenchError

#: how far (as a fraction of the range's width) values may stray outside the declared range
#: before the batch is refused; values within it are clipped, as the conversion to uint8 does
RANGE_SLACK = 0.02
#: the range a float batch is read in when none is declared
DEFAULT_FLOAT_RANGE = (-1.0, 1.0)
_SHAPE_HELP = (
    f"pass uint8 (B, {CROP_SIZE}, {CROP_SIZE}, 3) or float (B, 3, {CROP_SIZE}, {CROP_SIZE}) images"
)


def as_numpy(images: Any) -> np.ndarray:
    """A numpy view of a numpy array or torch tensor (bfloat16/float16 tensors as float32)."""
    if isinstance(images, np.ndarray):
        return images
    if hasattr(images, "detach") and hasattr(images, "dtype"):  # a torch tensor
        import torch

        t = images.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.to(torch.float32)
        return t.numpy()
    raise CellbenchError(
        f"images are a {type(images).__name__}, not an array",
        fix="pass a numpy array or a torch tensor",
    )


def check_crops(images: Any, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Validate a batch and return it as uint8 ``(B, 96, 96, 3)`` crops.

    Args:
        images: uint8 ``(B, 96, 96, 3)`` or float ``(B, 3, 96, 96)``, numpy or torch.
        value_range: ``(low, high)`` of the pixel values; default ``(0, 255)`` for uint8 and
            ``(-1, 1)`` for floats. Floats are mapped to uint8 by
            ``round((x - low) * 255 / (high - low))``, clipped to ``[0, 255]``.
    """
    arr = as_numpy(images)
    kind = arr.dtype.kind
    if arr.dtype != np.uint8 and kind != "f":
        raise CellbenchError(
            f"images have dtype {arr.dtype}",
            fix="pass uint8 images in [0, 255] (e.g. images.astype(np.uint8)) "
            "or floats in [-1, 1] (or with value_range=(low, high))",
        )
    if arr.ndim != 4:
        raise CellbenchError(f"images have shape {tuple(arr.shape)}, not a batch", fix=_SHAPE_HELP)
    if len(arr) == 0:
        raise CellbenchError("the batch holds no image", fix="pass at least one image")
    if kind == "u":
        if arr.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
            hint = "; uint8 batches are channels-last" if arr.shape[1] == 3 else ""
            raise CellbenchError(
                f"uint8 images have shape {tuple(arr.shape)}{hint}", fix=_SHAPE_HELP
            )
        if value_range is not None and tuple(value_range) != (0, 255):
            raise CellbenchError(
                f"uint8 images cannot be in value_range={tuple(value_range)}",
                fix="leave value_range out for uint8 images (they are in [0, 255])",
            )
        return np.ascontiguousarray(arr)
    if arr.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
        hint = "; float batches are channels-first" if arr.shape[-1] == 3 else ""
        raise CellbenchError(f"float images have shape {tuple(arr.shape)}{hint}", fix=_SHAPE_HELP)
    x = arr.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise CellbenchError(
            f"{int((~np.isfinite(x)).sum())} image values are NaN or infinite",
            fix="score finite images only",
        )
    lo, hi = DEFAULT_FLOAT_RANGE if value_range is None else (float(v) for v in value_range)
    if not hi > lo:
        raise CellbenchError(
            f"value_range=({lo:g}, {hi:g}) is empty", fix="pass value_range=(low, high), low < high"
        )
    vmin, vmax = float(x.min()), float(x.max())
    slack = RANGE_SLACK * (hi - lo)
    if vmin < lo - slack or vmax > hi + slack:
        guess = "(0, 255)" if vmax > 2.0 else "(0, 1)" if vmin >= 0 else "(-1, 1)"
        raise CellbenchError(
            f"image values span [{vmin:.4g}, {vmax:.4g}], outside the declared range "
            f"[{lo:g}, {hi:g}]",
            fix=f"pass value_range=(low, high) with the range of these images, e.g. {guess}",
        )
    if value_range is None and vmin >= (lo + hi) / 2:
        raise CellbenchError(
            f"no pixel of the batch is below {(lo + hi) / 2:g} (values span [{vmin:.4g}, "
            f"{vmax:.4g}]): these look like images in [0, 1], read as [-1, 1]",
            fix="pass value_range=(0, 1) for [0, 1] images, or value_range=(-1, 1) to score "
            "them as [-1, 1]",
        )
    scaled = np.rint((x - np.float32(lo)) * np.float32(255.0 / (hi - lo)))
    return np.ascontiguousarray(np.moveaxis(np.clip(scaled, 0, 255).astype(np.uint8), 1, -1))


def check_moas(moas: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    """The true MoA of each of ``n`` images as a str array; refuse a wrong length or unknown name."""
    if isinstance(moas, str):
        raise CellbenchError(
            f"moas is one string ({moas!r}), not one name per image",
            fix=f"pass a list of {n} MoA names, e.g. [{moas!r}] * {n}",
        )
    names = np.asarray(moas).astype(str)
    if names.ndim != 1 or len(names) != n:
        raise CellbenchError(
            f"{names.size} MoA name(s) for {n} image(s)", fix="pass one MoA name per image"
        )
    unknown = sorted(set(names.tolist()) - set(MOAS))
    if unknown:
        from cellbench.registry import suggest

        hint = str(suggest(unknown[0], MOAS, "MoA"))
        raise CellbenchError(
            f"{len(unknown)} unknown MoA name(s): {hint}",
            fix="use the names in cellbench.data.layout.MOAS (controls, DMSO, have no MoA reward)",
        )
    return names
