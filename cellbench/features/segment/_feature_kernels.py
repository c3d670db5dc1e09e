"""Compiled (numba) kernel of the six per-image features of a batch of segmentations:
:func:`features_stack` gives, crop by crop in one loop, the values of
:func:`cellbench.features.segment.classical.features_from_masks` (the numpy reference, which it is
tested against: same sums in the same order, so the same float64 values)."""

from __future__ import annotations

import numpy as np
from numba import njit

#: weights of scikit-image's perimeter estimator by neighbourhood code: 1 for a border pixel,
#: + 2 per 4-neighbour and + 10 per diagonal neighbour that is a border pixel of the same object
PERIMETER_WEIGHTS = np.zeros(50)
PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2.0)
PERIMETER_WEIGHTS[[13, 23]] = (1.0 + np.sqrt(2.0)) / 2.0


@njit(cache=True, nogil=True)
def label_at(lab, y, x):  # pragma: no cover - compiled
    h, w = lab.shape
    if y < 0 or x < 0 or y >= h or x >= w:
        return 0
    return lab[y, x]


@njit(cache=True, nogil=True)
def add_perimeters(lab, border, weights, per):  # pragma: no cover - compiled
    """Add each object's perimeter (scikit-image's 4-connectivity estimator) to ``per[label]``:
    every border pixel of ``lab`` (``border``) weighted by :data:`PERIMETER_WEIGHTS` of its
    neighbourhood code, in raster order."""
    h, w = lab.shape
    for y in range(h):
        for x in range(w):
            if not border[y, x]:
                continue
            c = lab[y, x]
            code = 1
            for dy, dx, wt in (
                (-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2),
                (-1, -1, 10), (-1, 1, 10), (1, -1, 10), (1, 1, 10),
            ):  # fmt: skip
                yy = y + dy
                xx = x + dx
                if 0 <= yy < h and 0 <= xx < w and border[yy, xx] and lab[yy, xx] == c:
                    code += wt
            per[c] += weights[code]


@njit(cache=True, nogil=True)
def features_stack(nuclei, cells, cyto_mask, weights, out):  # pragma: no cover - compiled
    """(N, 6) features (nuc_count, cell_count, nuc_max_area, cell_max_area, roundness,
    nuc_in_cyto) of (N, H, W) nucleus and cell labels and cytoplasm foreground, into ``out``."""
    n_img, h, w = nuclei.shape
    border = np.zeros((h, w), np.bool_)
    for i in range(n_img):
        nuc = nuclei[i]
        cel = cells[i]
        n_nuc = 0
        n_cel = 0
        for y in range(h):
            for x in range(w):
                if nuc[y, x] > n_nuc:
                    n_nuc = nuc[y, x]
                if cel[y, x] > n_cel:
                    n_cel = cel[y, x]
        nuc_area = np.zeros(n_nuc + 1)
        cel_area = np.zeros(n_cel + 1)
        per = np.zeros(n_nuc + 1)
        n_in = 0
        n_in_cyto = 0
        for y in range(h):
            for x in range(w):
                c = nuc[y, x]
                nuc_area[c] += 1.0
                cel_area[cel[y, x]] += 1.0
                b = False
                if c > 0:
                    n_in += 1
                    if cyto_mask[i, y, x]:
                        n_in_cyto += 1
                    b = (
                        label_at(nuc, y - 1, x) != c
                        or label_at(nuc, y + 1, x) != c
                        or label_at(nuc, y, x - 1) != c
                        or label_at(nuc, y, x + 1) != c
                    )
                border[y, x] = b
        add_perimeters(nuc, border, weights, per)
        count = 0
        rsum = 0.0
        nmax = 0.0
        for k in range(1, n_nuc + 1):
            a = nuc_area[k]
            if a > 0:
                count += 1
                if a > nmax:
                    nmax = a
                rsum += min(4.0 * np.pi * a / (per[k] * per[k]), 1.0) if per[k] > 0 else 1.0
        ccount = 0
        cmax = 0.0
        for k in range(1, n_cel + 1):
            if cel_area[k] > 0:
                ccount += 1
                if cel_area[k] > cmax:
                    cmax = cel_area[k]
        out[i, 0] = count
        out[i, 1] = ccount
        out[i, 2] = nmax
        out[i, 3] = cmax
        if count > 0:
            out[i, 4] = rsum / count
            out[i, 5] = n_in_cyto / n_in
        else:
            out[i, 4] = 0.0
            out[i, 5] = 0.0
