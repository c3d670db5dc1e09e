"""Cells from the cytoplasm channels' own evidence, with the nuclei as one input among others.

:func:`segment_cells` turns the cytoplasm stains (actin, tubulin, ...: every channel but DNA, in the
dataset card's order) and a nucleus label image into cell labels and the cytoplasm foreground:

1. the cytoplasm signal (mean of the cytoplasm channels) is put in *crop units*
   (:func:`cyto_levels`, one pair of levels per crop): 0 = the crop's background (0.5th
   percentile), 1 = Otsu's threshold of the crop's signal smoothed as in step 2. Every later step works in these
   units, so nothing depends on how many crops one call sees: a mosaic of crops, each in its own
   units, separated by gutters of 8 px or more (``valid`` False there), gives each crop the cells
   it gets alone: every filter is a weighted mean over crop pixels only, so neither the image
   border nor a gutter counts as anything;
2. foreground = the signal smoothed with sigma 1.5 px above 0.5, holes filled (the area under a
   nucleus enclosed by cytoplasm counts as cytoplasm); cells live in foreground or nuclei;
3. the marker function is the signal smoothed with sigma 2 px in which every nucleus is filled
   with the mean cytoplasm of a 2-px ring around it (stains are dimmer over a nucleus; filled,
   a nucleus is part of its cell's bright body instead of a hole in it), plus 0.05 x the distance to
   the background in px (shape: necks between touching cells);
4. seeds: every nucleus, and every h-maximum (h = 0.8) of the marker function farther than 4 px
   from any nucleus (a cell body whose nucleus is not visible: cut by the crop border, out of
   focus, or absent);
5. a watershed of the signal (smoothed with sigma 0.7 px, which keeps the dark lines between
   touching cells) grows the seeds inside foreground-or-nuclei;
6. two touching regions are one cell when the cytoplasm between their seeds shows no boundary,
   neither a dip nor a ridge (the bright cortex where two cells meet), and the seeds are close
   but apart. On the segment joining the two seeds' centres, the part outside both seeds must be
   between 1 sample and 8 px long (touching nuclei have no cytoplasm between them: the nuclei
   decide); the lowest value on the segment must be at least 0.95 x the lower of the values at the
   two centres, and the highest outside the seeds at most 1.15 x the higher (values of the marker
   function, whose nuclei are filled with the mean of their 2-px ring). Two nuclei side by side
   in one continuous cell body merge; two cells meeting at a dimmer or brighter border, or nuclei far apart, stay apart;
7. regions smaller than 200 px (about a typical nucleus of a 96x96 crop) are dropped.

So ``cell_count`` differs from ``nuc_count`` when the image says so: a cell with two nuclei counts
once, a cell body without a visible nucleus counts.

:func:`segment_cells` is the reference, written with scipy and scikit-image. The scoring path,
:func:`segment_cells_stack`, runs the same steps crop by crop in one compiled loop
(:mod:`cellbench.features.segment._cell_kernels`, numba) and gives the same cells (tested); its one
approximation is the watershed's queue (4096 levels over the crop's range instead of a heap), which
can hand a pixel to the other neighbour where two are within 1/4096 of that range.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

__all__ = [
    "DEFAULT_CELL_PARAMS",
    "CellParams",
    "cyto_levels",
    "segment_cells",
    "segment_cells_stack",
]


@dataclass(frozen=True)
class CellParams:
    """Parameters of :func:`segment_cells` (intensities in crop units, lengths in px)."""

    #: sigma of the smoothing before the foreground threshold
    fg_sigma: float = 1.5
    #: foreground = smoothed signal above this many crop units (1 = Otsu's threshold)
    fg_level: float = 0.5
    #: sigma of the marker function
    marker_sigma: float = 2.0
    #: marker function += distance_weight x distance to the background (px)
    distance_weight: float = 0.05
    #: h of the h-maxima that seed cells without a nucleus (crop units)
    h: float = 0.8
    #: cytoplasm-only seeds must be farther than this from every nucleus (px)
    seed_clearance: int = 4
    #: ring around a nucleus whose mean cytoplasm fills it (px)
    ring: int = 2
    #: sigma of the signal the watershed grows on
    watershed_sigma: float = 0.7
    #: two touching regions merge when the path between their seeds stays above this fraction
    merge_ratio: float = 0.95
    #: ... and the part of that path outside both seeds is at most this long (px; None: any)
    merge_gap: float | None = 8.0
    #: ... and nowhere between the seeds above this multiple of the higher end (None: no limit)
    ridge: float | None = 1.15
    #: points sampled on that path
    path_samples: int = 16
    #: regions smaller than this (px) are dropped
    min_area: float = 200.0


DEFAULT_CELL_PARAMS = CellParams()


def _otsu_rows(x: np.ndarray, bins: int = 256) -> np.ndarray:
    """Otsu's threshold of every row of an (N, P) array (NaN for a constant row)."""
    n = x.shape[0]
    flat = x.astype(np.float64)
    lo, hi = flat.min(1), flat.max(1)
    ok = hi - lo >= 1e-6
    step = np.where(ok, (hi - lo) / bins, 1.0)
    q = np.minimum(((flat - lo[:, None]) / step[:, None]).astype(np.intp), bins - 1)
    q += np.arange(n)[:, None] * bins
    hist = np.bincount(q.ravel(), minlength=n * bins).reshape(n, bins).astype(np.float64)
    centers = lo[:, None] + step[:, None] * (np.arange(bins) + 0.5)
    w0 = np.cumsum(hist, axis=1)
    w1 = w0[:, -1:] - w0
    m0 = np.cumsum(hist * centers, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[:, -1:] - m0) / w1) ** 2
    between = np.nan_to_num(between[:, :-1], nan=-1.0)
    thr = centers[np.arange(n), np.argmax(between, axis=1)]
    return np.where(ok, thr, np.nan)


def cyto_levels(
    signal: np.ndarray, params: CellParams = DEFAULT_CELL_PARAMS
) -> tuple[np.ndarray, np.ndarray]:
    """Per crop of an (N, H, W) stack of cytoplasm signals: (background, Otsu level), each (N,).

    Background = the 0.5th percentile; the Otsu level is Otsu's threshold of the crop smoothed with
    sigma ``params.fg_sigma`` (the in-crop weighted mean of step 1, the blur the foreground is
    thresholded on). A flat crop gets level = background + 1.
    """
    x = np.asarray(signal, np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {x.shape}")
    n = x.shape[0]
    lo = np.percentile(x.reshape(n, -1), 0.5, axis=1)
    sig = params.fg_sigma
    s = ndi.gaussian_filter(x, (0, sig, sig), mode="constant") / _edge_weight(x.shape[1:], sig)
    thr = _otsu_rows(s.reshape(n, -1))
    thr = np.where(np.isfinite(thr) & (thr > lo + 1e-6), thr, lo + 1.0)
    return lo, thr


@lru_cache(maxsize=16)
def _edge_weight(shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """The blur of an all-ones image of ``shape`` (0 outside): the weight of in-image pixels."""
    w = ndi.gaussian_filter(np.ones(shape, np.float32), sigma, mode="constant")
    w.flags.writeable = False
    return w


def _smooth(u: np.ndarray, sigma: float, valid: np.ndarray | None) -> np.ndarray:
    """Gaussian blur of the crop pixels only: a weighted mean over the pixels of ``valid`` (all
    pixels when None); what lies outside the image or in a gutter does not count."""
    if valid is None:
        return ndi.gaussian_filter(u, sigma, mode="constant") / _edge_weight(u.shape, sigma)
    v = valid.astype(np.float32)
    weight = ndi.gaussian_filter(v, sigma, mode="constant")
    return ndi.gaussian_filter(u * v, sigma, mode="constant") / np.maximum(weight, 1e-6) * v


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    bg, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    border = np.zeros(n + 1, bool)
    for edge in (bg[0], bg[-1], bg[:, 0], bg[:, -1]):
        border[edge] = True
    border[0] = False
    return ~border[bg]


def _centres(labels: np.ndarray, n: int) -> np.ndarray:
    """(n + 1, 2) centroids (row, col) of labels 0..n (NaN where absent)."""
    idx = labels.ravel()
    count = np.bincount(idx, minlength=n + 1).astype(np.float64)
    rows, cols = np.indices(labels.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack(
            [
                np.bincount(idx, weights=rows.ravel(), minlength=n + 1) / count,
                np.bincount(idx, weights=cols.ravel(), minlength=n + 1) / count,
            ],
            1,
        )


def _touching(labels: np.ndarray) -> np.ndarray:
    """Unique (a, b) pairs, a < b, of labels sharing a 4-connected border."""
    pairs = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], 1))
    both = np.concatenate(pairs)
    return np.unique(both, axis=0) if len(both) else both


def _merge(labels: np.ndarray, seeds: np.ndarray, f: np.ndarray, p: CellParams) -> np.ndarray:
    """Merge touching regions whose seeds are joined by a path without a boundary (step 6)."""
    pairs = _touching(labels)
    if len(pairs) == 0:
        return labels
    n = int(labels.max())
    centre = _centres(seeds, n)
    t = np.linspace(0.0, 1.0, p.path_samples)
    a, b = centre[pairs[:, 0]], centre[pairs[:, 1]]
    pts = a[:, None, :] + (b - a)[:, None, :] * t[None, :, None]  # (pairs, samples, 2)
    vals = ndi.map_coordinates(f, pts.reshape(-1, 2).T, order=1, mode="nearest")
    vals = vals.reshape(len(pairs), p.path_samples)
    ends = np.minimum(vals[:, 0], vals[:, -1])
    join = vals.min(1) >= p.merge_ratio * ends
    at = ndi.map_coordinates(seeds, pts.reshape(-1, 2).T, order=0, mode="nearest")
    at = at.reshape(len(pairs), p.path_samples)
    outside = (at != pairs[:, :1]) & (at != pairs[:, 1:])
    if p.merge_gap is not None:  # the seeds must also be close: the path outside both is short
        length = np.hypot(*(b - a).T)
        join &= outside.mean(1) * length <= p.merge_gap
    join &= outside.any(1)  # touching nuclei: no cytoplasm between them, the nuclei decide
    if p.ridge is not None:  # no bright line (a cell cortex) between the seeds either
        top = np.where(outside, vals, -np.inf).max(1)
        join &= top <= p.ridge * np.maximum(vals[:, 0], vals[:, -1])
    parent = np.arange(n + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs[join]:
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(k) for k in range(n + 1)])
    return roots[labels]


def segment_cells(
    cyto: np.ndarray,
    nuclei: np.ndarray,
    *,
    levels: tuple[np.ndarray | float, np.ndarray | float] | None = None,
    valid: np.ndarray | None = None,
    params: CellParams = DEFAULT_CELL_PARAMS,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell labels (int32, 0 = background, 1..k) and the cytoplasm foreground (bool).

    Args:
        cyto: HxW cytoplasm signal or HxWxK cytoplasm channels (averaged), any dtype.
        nuclei: HxW nucleus labels (0 = background).
        levels: (background, Otsu level) of the signal (:func:`cyto_levels`), each a number or an
            HxW map (a mosaic of crops: each tile filled with its crop's levels). Default: the
            levels of ``cyto`` as one crop.
        valid: for a mosaic, HxW bool, True on crop pixels and False in the gutters (at least
            8 px wide) between them; filters then use crop pixels only, so each crop gets the
            cells it gets alone. Default: every pixel is a crop pixel.
        params: the parameters (steps in the module docstring).
    """
    c = np.asarray(cyto, np.float32)
    if c.ndim == 3:
        c = c.mean(-1)
    nuc = np.asarray(nuclei)
    if c.ndim != 2 or nuc.shape != c.shape:
        raise ValueError(f"expected HxW(xK) cytoplasm and HxW nuclei, got {c.shape}, {nuc.shape}")
    p = params
    if levels is None:
        lo_, thr_ = cyto_levels(c[None], p)
        lo, thr = float(lo_[0]), float(thr_[0])
    else:
        lo, thr = levels
    with np.errstate(invalid="ignore", divide="ignore"):  # gutters of a mosaic may have thr == lo
        u = (c - lo) / (np.asarray(thr, np.float32) - lo)
    if valid is not None:
        u = np.where(valid, u, 0.0).astype(np.float32)
    fg = _fill_holes(_smooth(u, p.fg_sigma, valid) > p.fg_level)
    mask = fg | (nuc > 0)
    f = _smooth(u, p.marker_sigma, valid)
    n_nuc = int(nuc.max()) if nuc.size else 0
    near = np.zeros(c.shape, bool)
    if valid is not None:
        fg &= valid
        mask &= valid
    if n_nuc > 0:
        inside = nuc > 0
        grown = ndi.grey_dilation(nuc, size=(2 * p.ring + 1,) * 2)
        ring = (grown > 0) & ~inside
        total = np.bincount(grown[ring], weights=f[ring], minlength=n_nuc + 1)
        count = np.bincount(grown[ring], minlength=n_nuc + 1)
        fill = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
        f[inside] = np.maximum(f[inside], fill[nuc[inside]])
        width = 2 * p.seed_clearance + 1
        near = ndi.maximum_filter(inside, size=width) if p.seed_clearance > 0 else inside
    g = f
    if p.distance_weight:  # the image border counts as background, as a gutter does
        g = f + p.distance_weight * ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    # a frame of background (0) around the image, as a gutter is: a maximum's height is measured
    # against the background the same way alone and in a mosaic
    peaks = h_maxima(np.pad(g, 1), p.h)[1:-1, 1:-1].astype(bool)
    extra, _ = ndi.label(peaks & mask & ~near)
    seeds = nuc.astype(np.int32)
    seeds = np.where(extra > 0, extra + n_nuc, seeds)
    w = _smooth(u, p.watershed_sigma, valid)
    labels = watershed(-w, seeds, mask=mask)
    if p.merge_ratio > 0:
        labels = _merge(labels, seeds, f, p)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= p.min_area
    keep[0] = False
    lut = np.zeros(len(sizes), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels], fg


def segment_cells_stack(
    cyto: np.ndarray,
    nuclei: np.ndarray,
    *,
    params: CellParams = DEFAULT_CELL_PARAMS,
    n_levels: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`segment_cells` of every crop of a stack, compiled: (N, H, W) cell labels (int32,
    1..k per crop) and cytoplasm foreground (bool).

    Args:
        cyto: (N, H, W) cytoplasm signals or (N, H, W, K) cytoplasm channels (averaged).
        nuclei: (N, H, W) nucleus labels.
        params: the parameters (steps in the module docstring).
        n_levels: levels of the watershed's bucket queue (its one approximation: pixels whose
            values differ by less than 1/n_levels of the crop's range are flooded in the order
            they were reached).

    Each crop is segmented on its own (its result does not depend on the rest of the stack),
    by the kernels of :mod:`cellbench.features.segment._cell_kernels`.
    """
    from cellbench.features.segment import _cell_kernels as k

    c = np.asarray(cyto, np.float32)
    if c.ndim == 4:
        c = c.mean(-1)
    nuc = np.ascontiguousarray(nuclei, np.int32)
    if c.ndim != 3 or nuc.shape != c.shape:
        raise ValueError(f"expected (N, H, W(, K)) cytoplasm and (N, H, W) nuclei, got {c.shape}")
    if c.size == 0:
        return np.zeros(c.shape, np.int32), np.zeros(c.shape, bool)
    return run_cells_kernel(k, c, nuc, params, n_levels)


def run_cells_kernel(
    kernels: ModuleType,
    cyto: np.ndarray,
    nuclei: np.ndarray,
    params: CellParams,
    n_levels: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """``kernels.cells_stack`` on float32 (N, H, W) ``cyto`` and int32 ``nuclei`` with ``params``:
    (cells, foreground). ``kernels`` is :mod:`._cell_kernels`, or an earlier version of it
    (``bench/perf/cell_kernels_ab.py`` compares the two)."""
    p = params
    cells = np.zeros(cyto.shape, np.int32)
    fg = np.zeros(cyto.shape, bool)
    kernels.cells_stack(
        np.ascontiguousarray(cyto, np.float32),
        np.ascontiguousarray(nuclei, np.int32),
        kernels.gaussian_taps(p.fg_sigma),
        kernels.gaussian_taps(p.marker_sigma),
        kernels.gaussian_taps(p.watershed_sigma),
        float(p.fg_level),
        float(p.distance_weight),
        float(p.h),
        int(p.seed_clearance),
        int(p.ring),
        float(p.merge_ratio),
        -1.0 if p.merge_gap is None else float(p.merge_gap),
        -1.0 if p.ridge is None else float(p.ridge),
        int(p.path_samples),
        float(p.min_area),
        int(n_levels),
        cells,
        fg,
    )
    return cells, fg
