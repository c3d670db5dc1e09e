"""Compiled (numba) kernels of the nucleus pass of :mod:`cellbench.features.segment.classical`.

Each kernel gives, bit for bit, the result of the scipy / scikit-image routine it replaces (the
nucleus pass's labels are identical to those of the routines themselves, tested against a frozen
copy of the pure scipy / scikit-image pass in ``bench/perf/_classical_v3_ref.py``):

* :func:`gauss_stack`: ``scipy.ndimage.gaussian_filter(x, (0, s, s), mode="nearest")`` of a float32
  stack: the same taps (scipy's own ``_gaussian_kernel1d``), the same float64 sum in the same
  order (centre tap, then the symmetric pairs from the outermost in), the intermediate rounded to
  float32 between the two axes, rows (axis 1) first;
* :func:`uniform_stack`: ``scipy.ndimage.uniform_filter(x, (1, k, k), mode="nearest")``: a running
  float64 sum divided by k at every pixel, as scipy's;
* :func:`minmax_stack`: ``scipy.ndimage.minimum_filter`` / ``maximum_filter`` with ``size=(1, k,
  k)`` and scipy's default ``mode="reflect"`` (the window [i - k // 2, i + (k - 1) // 2]);
* :func:`edt_stack`: the exact Euclidean distance transform (Felzenszwalb and Huttenlocher's two
  passes on integer squared distances, so exactly the ``edt`` package's values), the image's edge
  not being background;
* :func:`watershed_heap`: ``skimage.segmentation.watershed(image, markers, mask=mask)`` (4-connected,
  no compactness): the same binary heap ordered by (value, age), the same sift-up and sift-down,
  the same neighbour order and ages, so ties are broken the same way;
* :func:`label_max`: the maximum of a float array per label.

No ``fastmath``: every float operation is the one numpy / scipy performs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# ------------------------------------------------------------------------------------------------
# linear filters


@njit(cache=True, nogil=True)
def _correlate_axis1(x, w, out):  # pragma: no cover - compiled
    """Symmetric correlation along axis 1 of (N, H, W), edge pixels repeated, float64 sums."""
    n, h, wd = x.shape
    r = (len(w) - 1) // 2
    acc = np.empty(wd)
    for i in range(n):
        for y in range(h):
            c = w[r]
            for j in range(wd):
                acc[j] = np.float64(x[i, y, j]) * c
            for t in range(r, 0, -1):
                a = min(max(y - t, 0), h - 1)
                b = min(max(y + t, 0), h - 1)
                wt = w[r - t]
                for j in range(wd):
                    acc[j] += (np.float64(x[i, a, j]) + np.float64(x[i, b, j])) * wt
            for j in range(wd):
                out[i, y, j] = acc[j]


@njit(cache=True, nogil=True)
def _correlate_axis2(x, w, out):  # pragma: no cover - compiled
    """Symmetric correlation along axis 2 of (N, H, W), edge pixels repeated, float64 sums."""
    n, h, wd = x.shape
    r = (len(w) - 1) // 2
    line = np.empty(wd + 2 * r)
    for i in range(n):
        for y in range(h):
            for j in range(wd + 2 * r):
                line[j] = x[i, y, min(max(j - r, 0), wd - 1)]
            for j in range(wd):
                c = j + r
                acc = line[c] * w[r]
                for t in range(r, 0, -1):
                    acc += (line[c - t] + line[c + t]) * w[r - t]
                out[i, y, j] = acc


def gaussian_weights(sigma: float) -> np.ndarray:
    """scipy.ndimage's Gaussian taps for ``sigma`` (truncate 4), float64."""
    from scipy.ndimage._filters import _gaussian_kernel1d

    return np.ascontiguousarray(_gaussian_kernel1d(sigma, 0, int(4.0 * sigma + 0.5))[::-1])


def gauss_stack(x: np.ndarray, sigma: float) -> np.ndarray:
    """``gaussian_filter(x, (0, sigma, sigma), mode="nearest")`` of a float32 (N, H, W) stack."""
    w = gaussian_weights(sigma)
    x = np.ascontiguousarray(x, np.float32)
    tmp = np.empty_like(x)
    out = np.empty_like(x)
    _correlate_axis1(x, w, tmp)
    _correlate_axis2(tmp, w, out)
    return out


@njit(cache=True, nogil=True)
def _uniform_line(line, size, out, n):  # pragma: no cover - compiled
    tmp = 0.0
    for k in range(size):
        tmp += line[k]
    out[0] = tmp / size
    for k in range(1, n):
        tmp += line[k + size - 1] - line[k - 1]
        out[k] = tmp / size


@njit(cache=True, nogil=True)
def _uniform_axis(x, size, axis, out):  # pragma: no cover - compiled
    n, h, w = x.shape
    length = h if axis == 1 else w
    other = w if axis == 1 else h
    s1 = size // 2
    line = np.empty(length + size - 1)
    o = np.empty(length)
    for i in range(n):
        for m in range(other):
            for j in range(length + size - 1):
                k = min(max(j - s1, 0), length - 1)
                line[j] = x[i, k, m] if axis == 1 else x[i, m, k]
            _uniform_line(line, size, o, length)
            for j in range(length):
                if axis == 1:
                    out[i, j, m] = o[j]
                else:
                    out[i, m, j] = o[j]


def uniform_stack(x: np.ndarray, size: int) -> np.ndarray:
    """``uniform_filter(x, (1, size, size), mode="nearest")`` of a float32 (N, H, W) stack."""
    x = np.ascontiguousarray(x, np.float32)
    tmp = np.empty_like(x)
    out = np.empty_like(x)
    _uniform_axis(x, size, 1, tmp)
    _uniform_axis(tmp, size, 2, out)
    return out


# ------------------------------------------------------------------------------------------------
# minimum and maximum filters


@njit(cache=True, nogil=True, inline="always")
def _reflect(j, n):  # pragma: no cover - compiled
    """scipy's "reflect" extension (d c b a | a b c d | d c b a ...) of index j into 0..n-1."""
    period = 2 * n
    j = j % period
    if j < 0:
        j += period
    return j if j < n else period - 1 - j


@njit(cache=True, nogil=True)
def _minmax_axis(x, size, axis, is_max, out):  # pragma: no cover - compiled
    n, h, w = x.shape
    length = h if axis == 1 else w
    other = w if axis == 1 else h
    s1 = size // 2
    line = np.empty(length + size - 1, x.dtype)
    for i in range(n):
        for m in range(other):
            for j in range(length + size - 1):
                k = _reflect(j - s1, length)
                line[j] = x[i, k, m] if axis == 1 else x[i, m, k]
            for j in range(length):
                v = line[j]
                for t in range(1, size):
                    u = line[j + t]
                    if is_max:
                        if u > v:
                            v = u
                    elif u < v:
                        v = u
                if axis == 1:
                    out[i, j, m] = v
                else:
                    out[i, m, j] = v


def minmax_stack(x: np.ndarray, size: int, is_max: bool) -> np.ndarray:
    """``maximum_filter`` (``is_max``) or ``minimum_filter`` of an (N, H, W) stack with
    ``size=(1, size, size)`` and scipy's default mode "reflect"."""
    x = np.ascontiguousarray(x)
    tmp = np.empty_like(x)
    out = np.empty_like(x)
    _minmax_axis(x, size, 1, is_max, tmp)
    _minmax_axis(tmp, size, 2, is_max, out)
    return out


# ------------------------------------------------------------------------------------------------
# distance transform


@njit(cache=True, nogil=True)
def _edt_stack(fg, big, out):  # pragma: no cover - compiled
    n, h, w = fg.shape
    inf = np.inf
    col = np.empty((h, w))
    v = np.zeros(w, np.intp)
    z = np.empty(w + 1)
    f1 = np.empty(w)
    for i in range(n):
        for x in range(w):
            last = -1
            for y in range(h):
                if not fg[i, y, x]:
                    last = y
                    col[y, x] = 0.0
                elif last < 0:
                    col[y, x] = inf
                else:
                    d = y - last
                    col[y, x] = d * d
            last = -1
            for y in range(h - 1, -1, -1):
                if not fg[i, y, x]:
                    last = y
                elif last >= 0:
                    d = last - y
                    if d * d < col[y, x]:
                        col[y, x] = d * d
        for y in range(h):
            for q in range(w):
                f1[q] = col[y, q]
            # lower envelope of the parabolas of the finite entries
            k = -1
            for q in range(w):
                if f1[q] == inf:
                    continue
                if k < 0:
                    k = 0
                    v[0] = q
                    z[0] = -inf
                    z[1] = inf
                    continue
                while True:
                    p = v[k]
                    s = ((f1[q] + q * q) - (f1[p] + p * p)) / (2.0 * q - 2.0 * p)
                    if s <= z[k]:
                        k -= 1
                        if k < 0:
                            break
                    else:
                        break
                k += 1
                v[k] = q
                z[k] = s if k > 0 else -inf
                z[k + 1] = inf
            if k < 0:
                for q in range(w):
                    out[i, y, q] = big if fg[i, y, q] else 0.0
                continue
            k = 0
            for q in range(w):
                while z[k + 1] < q:
                    k += 1
                p = v[k]
                d = (q - p) * (q - p) + f1[p]
                val = np.float32(np.sqrt(d)) if fg[i, y, q] else np.float32(0.0)
                out[i, y, q] = min(val, big)


def edt_stack(fg: np.ndarray) -> np.ndarray:
    """Distance of each foreground pixel of an (N, H, W) bool stack to the nearest background
    pixel of its own image (the edge is not background), float32, at most H + W."""
    fg = np.ascontiguousarray(fg, np.bool_)
    out = np.empty(fg.shape, np.float32)
    _edt_stack(fg, np.float32(fg.shape[1] + fg.shape[2]), out)
    return out


# ------------------------------------------------------------------------------------------------
# watershed


@njit(cache=True, nogil=True, inline="always")
def _smaller(val, age, a, b):  # pragma: no cover - compiled
    if val[a] != val[b]:
        return val[a] < val[b]
    return age[a] < age[b]


@njit(cache=True, nogil=True)
def _watershed(image, output, mask, offsets):  # pragma: no cover - compiled
    """scikit-image's heap watershed on raveled, padded arrays (``output`` holds the markers)."""
    size = image.size
    cap = size + 16
    hval = np.empty(cap)
    hage = np.empty(cap, np.int64)
    hidx = np.empty(cap, np.int64)
    items = 0
    age = 1
    for index in range(size):
        if output[index] == 0:
            continue
        # push (image[index], age 0)
        child = items
        hval[child] = image[index]
        hage[child] = 0
        hidx[child] = index
        items += 1
        while child > 0:
            parent = (child + 1) // 2 - 1
            if _smaller(hval, hage, child, parent):
                hval[child], hval[parent] = hval[parent], hval[child]
                hage[child], hage[parent] = hage[parent], hage[child]
                hidx[child], hidx[parent] = hidx[parent], hidx[child]
                child = parent
            else:
                break
    nn = len(offsets)
    while items > 0:
        elem = hidx[0]
        ev = hval[0]
        items -= 1
        if items > 0:
            hval[0] = hval[items]
            hage[0] = hage[items]
            hidx[0] = hidx[items]
            i = 0
            smallest = 0
            while True:
                left = 2 * i + 1
                right = 2 * i + 2
                if left < items:
                    if _smaller(hval, hage, left, i):
                        smallest = left
                    if right < items and _smaller(hval, hage, right, smallest):
                        smallest = right
                else:
                    break
                if smallest == i:
                    break
                hval[i], hval[smallest] = hval[smallest], hval[i]
                hage[i], hage[smallest] = hage[smallest], hage[i]
                hidx[i], hidx[smallest] = hidx[smallest], hidx[i]
                i = smallest
        for k in range(nn):
            nb = elem + offsets[k]
            if not mask[nb]:
                continue
            if output[nb]:
                continue
            age += 1
            output[nb] = output[elem]
            child = items
            # the cost of reaching a pixel is at least that of the pixel it is reached from
            hval[child] = max(image[nb], ev)
            hage[child] = age
            hidx[child] = nb
            items += 1
            while child > 0:
                parent = (child + 1) // 2 - 1
                if _smaller(hval, hage, child, parent):
                    hval[child], hval[parent] = hval[parent], hval[child]
                    hage[child], hage[parent] = hage[parent], hage[child]
                    hidx[child], hidx[parent] = hidx[parent], hidx[child]
                    child = parent
                else:
                    break


def watershed_heap(image: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers, mask=mask)`` of a 2-D image (int32)."""
    h, w = image.shape
    img = np.pad(np.asarray(image, np.float64), 1).ravel()
    msk = np.pad(np.asarray(mask, np.bool_), 1)
    out = np.pad(np.asarray(markers, np.int32), 1) * msk  # markers outside the mask dropped
    msk = msk.ravel()
    stride = w + 2
    offsets = np.array([-stride, -1, 1, stride], np.int64)
    _watershed(img, out.ravel(), msk, offsets)
    return out[1:-1, 1:-1].copy()


# ------------------------------------------------------------------------------------------------
# per-label reductions


@njit(cache=True, nogil=True)
def _label_max(values, labels, out):  # pragma: no cover - compiled
    for k in range(labels.size):
        lab = labels[k]
        if lab > 0:
            v = values[k]
            if v > out[lab]:
                out[lab] = v


def label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` per label 0..n, float64 (-inf where a label is absent; 0 skipped)."""
    out = np.full(n + 1, -np.inf)
    _label_max(np.ascontiguousarray(values).ravel(), np.ascontiguousarray(labels).ravel(), out)
    return out
