"""Compiled (numba) kernel of the morphology profile (:mod:`cellbench.features.profile`).

:func:`compartment_profile` measures every object of one compartment (nuclei or cells) of a batch
of segmentations and writes, per image, the mean over its objects of each measurement. The numpy /
scikit-image computation it is tested against is
:func:`cellbench.features.profile.compartment_profile_reference`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cellbench.features.segment._feature_kernels import add_perimeters, label_at

#: measurements per object that do not depend on a channel, then those of each channel
N_SHAPE = 6
N_PER_CHANNEL = 5
#: grey levels of the co-occurrence matrices (uint8 value >> 5)
LEVELS = 8


@njit(cache=True, nogil=True)
def compartment_profile(labels, images, chans, weights, out, col):  # pragma: no cover - compiled
    """Per-image means over the objects of ``labels`` (N, H, W) int32, into ``out[:, col:]``.

    Columns from ``col``: area, perimeter, form factor, eccentricity, major and minor axis length,
    then for each channel ``chans[k]`` of ``images`` (N, H, W, C) uint8: mean, standard deviation
    and integrated intensity (values / 255), co-occurrence contrast and inverse difference moment.
    ``weights`` are the perimeter weights of
    :data:`cellbench.features.segment._feature_kernels.PERIMETER_WEIGHTS`. An image without
    objects gets zeros. Returns nothing; the object count of image ``i`` is not written.
    """
    n_img, h, w = labels.shape
    nch = len(chans)
    border = np.zeros((h, w), np.bool_)
    for i in range(n_img):
        lab = labels[i]
        n = 0
        for y in range(h):
            for x in range(w):
                if lab[y, x] > n:
                    n = lab[y, x]
        area = np.zeros(n + 1)
        sy = np.zeros(n + 1)
        sx = np.zeros(n + 1)
        syy = np.zeros(n + 1)
        sxx = np.zeros(n + 1)
        sxy = np.zeros(n + 1)
        per = np.zeros(n + 1)
        s1 = np.zeros((n + 1, nch))
        s2 = np.zeros((n + 1, nch))
        glcm = np.zeros((n + 1, nch, LEVELS, LEVELS))
        for y in range(h):
            for x in range(w):
                c = lab[y, x]
                if c == 0:
                    border[y, x] = False
                    continue
                area[c] += 1.0
                sy[c] += y
                sx[c] += x
                syy[c] += y * y
                sxx[c] += x * x
                sxy[c] += y * x
                right = x + 1 < w and lab[y, x + 1] == c
                down = y + 1 < h and lab[y + 1, x] == c
                for k in range(nch):
                    v = images[i, y, x, chans[k]]
                    f = v / 255.0
                    s1[c, k] += f
                    s2[c, k] += f * f
                    q = v >> 5
                    if right:
                        q2 = images[i, y, x + 1, chans[k]] >> 5
                        glcm[c, k, q, q2] += 1.0
                        glcm[c, k, q2, q] += 1.0
                    if down:
                        q2 = images[i, y + 1, x, chans[k]] >> 5
                        glcm[c, k, q, q2] += 1.0
                        glcm[c, k, q2, q] += 1.0
                border[y, x] = (
                    label_at(lab, y - 1, x) != c
                    or label_at(lab, y + 1, x) != c
                    or label_at(lab, y, x - 1) != c
                    or label_at(lab, y, x + 1) != c
                )
        add_perimeters(lab, border, weights, per)
        width = N_SHAPE + N_PER_CHANNEL * nch
        acc = np.zeros(width)
        count = 0
        for c in range(1, n + 1):
            a = area[c]
            if a == 0:
                continue
            count += 1
            my = sy[c] / a
            mx = sx[c] / a
            cyy = syy[c] / a - my * my
            cxx = sxx[c] / a - mx * mx
            cxy = sxy[c] / a - my * mx
            half = (cyy + cxx) / 2.0
            root = np.sqrt(max((cyy - cxx) * (cyy - cxx) / 4.0 + cxy * cxy, 0.0))
            l1 = max(half + root, 0.0)
            l2 = max(half - root, 0.0)
            acc[0] += a
            acc[1] += per[c]
            acc[2] += 4.0 * np.pi * a / (per[c] * per[c]) if per[c] > 0 else 0.0
            acc[3] += np.sqrt(1.0 - l2 / l1) if l1 > 0 else 0.0
            acc[4] += 4.0 * np.sqrt(l1)
            acc[5] += 4.0 * np.sqrt(l2)
            for k in range(nch):
                base = N_SHAPE + N_PER_CHANNEL * k
                mean = s1[c, k] / a
                acc[base] += mean
                acc[base + 1] += np.sqrt(max(s2[c, k] / a - mean * mean, 0.0))
                acc[base + 2] += s1[c, k]
                total = 0.0
                for p in range(LEVELS):
                    for q in range(LEVELS):
                        total += glcm[c, k, p, q]
                contrast = 0.0
                idm = 0.0
                if total > 0:
                    for p in range(LEVELS):
                        for q in range(LEVELS):
                            g = glcm[c, k, p, q] / total
                            d = (p - q) * (p - q)
                            contrast += g * d
                            idm += g / (1.0 + d)
                else:
                    idm = 1.0
                acc[base + 3] += contrast
                acc[base + 4] += idm
        for j in range(width):
            out[i, col + j] = acc[j] / count if count > 0 else 0.0
