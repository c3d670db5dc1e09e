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
* :func:`edt_stack`: the exact Euclidean distance transform (squared distances along the columns,
  then per pixel the least over its row, all integers, so exactly the ``edt`` package's values),
  the image's edge not being background;
* :func:`watershed_heap`: ``skimage.segmentation.watershed(image, markers, mask=mask)`` (4-connected,
  no compactness): the same binary heap ordered by (value, age) (for a float32 image each pair
  packed into one integer), the same sift-up and sift-down, the same neighbour order and ages, so
  ties are broken the same way;
* :func:`label_max`: the maximum of a float array per label.

No ``fastmath``: every float operation is the one numpy / scipy performs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# ------------------------------------------------------------------------------------------------
# linear filters


@njit(cache=True, nogil=True)
def _correlate_rows(x, w, out, acc):  # pragma: no cover - compiled
    """Symmetric correlation along axis 0 of (H, W), edge rows repeated: per pixel the float64
    sum centre tap first, then the symmetric pairs from the outermost in (scipy's order); whole
    rows at a time."""
    h, wd = x.shape
    r = (len(w) - 1) // 2
    for y in range(h):
        c = w[r]
        for j in range(wd):
            acc[j] = np.float64(x[y, j]) * c
        for t in range(r, 0, -1):
            a = min(max(y - t, 0), h - 1)
            b = min(max(y + t, 0), h - 1)
            wt = w[r - t]
            for j in range(wd):
                acc[j] += (np.float64(x[a, j]) + np.float64(x[b, j])) * wt
        for j in range(wd):
            out[y, j] = acc[j]


@njit(cache=True, nogil=True)
def _gauss_stack(x, w, out):  # pragma: no cover - compiled
    """Separable Gaussian of each image of (N, H, W): axis 1, rounded to float32, then axis 2
    (on the transposed image)."""
    n, h, wd = x.shape
    tmp = np.empty((h, wd), np.float32)
    tt = np.empty((wd, h), np.float32)
    ot = np.empty((wd, h), np.float32)
    acc = np.empty(max(h, wd))
    for i in range(n):
        _correlate_rows(x[i], w, tmp, acc)
        for y in range(h):
            for j in range(wd):
                tt[j, y] = tmp[y, j]
        _correlate_rows(tt, w, ot, acc)
        for y in range(h):
            for j in range(wd):
                out[i, y, j] = ot[j, y]


def gaussian_weights(sigma: float) -> np.ndarray:
    """scipy.ndimage's Gaussian taps for ``sigma`` (truncate 4), float64."""
    from scipy.ndimage._filters import _gaussian_kernel1d

    return np.ascontiguousarray(_gaussian_kernel1d(sigma, 0, int(4.0 * sigma + 0.5))[::-1])


def gauss_stack(x: np.ndarray, sigma: float) -> np.ndarray:
    """``gaussian_filter(x, (0, sigma, sigma), mode="nearest")`` of a float32 (N, H, W) stack."""
    w = gaussian_weights(sigma)
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _gauss_stack(x, w, out)
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
def _minmax_rows(x, size, is_max, out, buf):  # pragma: no cover - compiled
    """Minimum or maximum along axis 0 of (H, W) over [y - size // 2, y + (size - 1) // 2],
    scipy's "reflect" extension; whole rows at a time. Each step writes the other of two rows
    (``out[y]`` and the scratch ``buf``, starting where the last step lands in ``out[y]``):
    written in place, the select becomes a masked store, which is slow on AMD CPUs (3-4x)."""
    h, w = x.shape
    s1 = size // 2
    for y in range(h):
        cur = out[y] if (size - 1) % 2 == 0 else buf
        nxt = buf if (size - 1) % 2 == 0 else out[y]
        src = x[_reflect(y - s1, h)]
        for j in range(w):
            cur[j] = src[j]
        for t in range(1, size):
            src = x[_reflect(y - s1 + t, h)]
            if is_max:
                for j in range(w):
                    u = src[j]
                    v = cur[j]
                    nxt[j] = u if u > v else v
            else:
                for j in range(w):
                    u = src[j]
                    v = cur[j]
                    nxt[j] = u if u < v else v
            cur, nxt = nxt, cur


@njit(cache=True, nogil=True)
def _minmax_stack(x, size, is_max, out):  # pragma: no cover - compiled
    n, h, w = x.shape
    tmp = np.empty((h, w), x.dtype)
    tt = np.empty((w, h), x.dtype)
    ot = np.empty((w, h), x.dtype)
    buf = np.empty(max(h, w), x.dtype)
    for i in range(n):
        _minmax_rows(x[i], size, is_max, tmp, buf)
        for y in range(h):
            for j in range(w):
                tt[j, y] = tmp[y, j]
        _minmax_rows(tt, size, is_max, ot, buf)
        for y in range(h):
            for j in range(w):
                out[i, y, j] = ot[j, y]


def minmax_stack(x: np.ndarray, size: int, is_max: bool) -> np.ndarray:
    """``maximum_filter`` (``is_max``) or ``minimum_filter`` of an (N, H, W) stack with
    ``size=(1, size, size)`` and scipy's default mode "reflect"."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _minmax_stack(x, size, is_max, out)
    return out


# ------------------------------------------------------------------------------------------------
# distance transform


@njit(cache=True, nogil=True, inline="always")
def _nearest_sq(f1, q, w, best):  # pragma: no cover - compiled
    """min(best, min over p of (q - p)^2 + f1[p]) for the row ``f1`` of squared column distances
    (integers, or inf), searched outwards from q until (q - p)^2 reaches the best found: exact,
    and a few steps per pixel where blobs are small (the lower envelope of Felzenszwalb and
    Huttenlocher spends a division per pixel whatever their size)."""
    dmax = max(q, w - 1 - q)
    d = 1
    while d <= dmax:
        dd = np.float64(d * d)
        if dd >= best:
            break
        if q - d >= 0 and dd + f1[q - d] < best:
            best = dd + f1[q - d]
        if q + d < w and dd + f1[q + d] < best:
            best = dd + f1[q + d]
        d += 1
    return best


@njit(cache=True, nogil=True)
def _envelope_row(f1, fg, out, big, v, z):  # pragma: no cover - compiled
    """One row of the distance transform by the lower envelope of the parabolas of the finite
    entries of ``f1`` (Felzenszwalb and Huttenlocher): time linear in the row's length whatever
    the distances (``v``, ``z``: scratch of w and w + 1)."""
    w = len(f1)
    inf = np.inf
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
            out[q] = big if fg[q] else 0.0
        return
    k = 0
    for q in range(w):
        while z[k + 1] < q:
            k += 1
        p = v[k]
        d = (q - p) * (q - p) + f1[p]
        val = np.float32(np.sqrt(d)) if fg[q] else np.float32(0.0)
        out[q] = min(val, big)


@njit(cache=True, nogil=True)
def _edt_stack(fg, big, search_max, out):  # pragma: no cover - compiled
    """Distance transform of each image of ``fg`` (the edge is not background); a row whose
    squared column distances are all at most ``search_max`` is searched outwards pixel by pixel
    (:func:`_nearest_sq`, fast for small blobs), any other by the lower envelope
    (:func:`_envelope_row`, linear whatever the distances): the same values either way."""
    n, h, w = fg.shape
    inf = np.inf
    col = np.empty((h, w))
    last = np.empty(w, np.intp)
    v = np.zeros(w, np.intp)
    z = np.empty(w + 1)
    for i in range(n):
        # columns, all at once row by row: squared distance to the nearest background pixel
        # above, then below (inf where the column has none)
        for x in range(w):
            last[x] = -1
        for y in range(h):
            for x in range(w):
                if not fg[i, y, x]:
                    last[x] = y
                    col[y, x] = 0.0
                elif last[x] < 0:
                    col[y, x] = inf
                else:
                    d = y - last[x]
                    col[y, x] = d * d
        for x in range(w):
            last[x] = -1
        for y in range(h - 1, -1, -1):
            for x in range(w):
                if not fg[i, y, x]:
                    last[x] = y
                elif last[x] >= 0:
                    d = last[x] - y
                    if d * d < col[y, x]:
                        col[y, x] = d * d
        # rows: the least (q - p)^2 + col[p] of each foreground pixel (big where no pixel of the
        # image is background)
        for y in range(h):
            f1 = col[y]
            for q in range(w):
                if not fg[i, y, q]:
                    out[i, y, q] = 0.0
                    continue
                if f1[q] > search_max:  # the whole row by the envelope instead
                    _envelope_row(f1, fg[i, y], out[i, y], big, v, z)
                    break
                best = _nearest_sq(f1, q, w, f1[q])
                out[i, y, q] = big if best == inf else min(np.float32(np.sqrt(best)), big)


#: rows whose squared column distances reach above this are transformed by the lower envelope
#: (the outward search would take more than 32 steps per pixel)
EDT_SEARCH_MAX = 1024.0


def edt_stack(fg: np.ndarray, search_max: float = EDT_SEARCH_MAX) -> np.ndarray:
    """Distance of each foreground pixel of an (N, H, W) bool stack to the nearest background
    pixel of its own image (the edge is not background), float32, at most H + W
    (``search_max``: which rows take which of two exact methods, :func:`_edt_stack`)."""
    fg = np.ascontiguousarray(fg, np.bool_)
    out = np.empty(fg.shape, np.float32)
    _edt_stack(fg, np.float32(fg.shape[1] + fg.shape[2]), search_max, out)
    return out


# ------------------------------------------------------------------------------------------------
# watershed


@njit(cache=True, nogil=True, inline="always")
def _order_key(bits, i, flip):  # pragma: no cover - compiled
    """An unsigned integer in the order of the float32 value whose bits are ``bits[i] ^ flip``
    (flip = the sign bit: the negated value); -0 and +0 get the same key, as they compare equal."""
    b = np.uint64(bits[i]) ^ flip
    if (b & np.uint64(0x7FFFFFFF)) == 0:
        b = np.uint64(0)
    if b & np.uint64(0x80000000):
        return (~b) & np.uint64(0xFFFFFFFF)
    return b | np.uint64(0x80000000)


@njit(cache=True, nogil=True, inline="always")
def _sift_up(hkey, hidx, child, key, idx):  # pragma: no cover - compiled
    """Put (key, idx) at position ``child`` of the heap and move it up past every larger parent
    (the hole moves down; the same comparisons as swapping it up)."""
    while child > 0:
        parent = (child + 1) // 2 - 1
        if key < hkey[parent]:
            hkey[child] = hkey[parent]
            hidx[child] = hidx[parent]
            child = parent
        else:
            break
    hkey[child] = key
    hidx[child] = idx


@njit(cache=True, nogil=True)
def _watershed(image, negate, output, mask, offsets):  # pragma: no cover - compiled
    """scikit-image's heap watershed of the float32 ``image`` (of ``-image`` with ``negate``) on
    raveled arrays whose edge pixels are outside the mask (``output`` holds the markers).

    The heap's (value, age) pairs are packed into one integer each, the value's order key
    (:func:`_order_key`) above the age, so one integer comparison decides what scikit-image's two
    float / integer comparisons decide; the sift-up and sift-down compare the same elements in the
    same order (the moving element against its parent, against the smaller of its children), so
    the heap, and with it the order of ties, is scikit-image's.
    """
    bits = image.view(np.uint32)
    flip = np.uint64(0x80000000) if negate else np.uint64(0)
    cap = image.size + 16
    hkey = np.empty(cap, np.uint64)
    hidx = np.empty(cap, np.int64)
    items = 0
    age = 1
    for index in range(image.size):
        if output[index] == 0:
            continue
        # push (value, age 0)
        _sift_up(hkey, hidx, items, _order_key(bits, index, flip) << np.uint64(32), index)
        items += 1
    nn = len(offsets)
    while items > 0:
        elem = hidx[0]
        ev = hkey[0] >> np.uint64(32)
        items -= 1
        if items > 0:
            # the last element sifts down from the root
            key = hkey[items]
            idx = hidx[items]
            i = 0
            while True:
                left = 2 * i + 1
                if left >= items:
                    break
                smallest = i
                low = key
                if hkey[left] < low:
                    smallest = left
                    low = hkey[left]
                if left + 1 < items and hkey[left + 1] < low:
                    smallest = left + 1
                if smallest == i:
                    break
                hkey[i] = hkey[smallest]
                hidx[i] = hidx[smallest]
                i = smallest
            hkey[i] = key
            hidx[i] = idx
        for k in range(nn):
            nb = elem + offsets[k]
            if not mask[nb]:
                continue
            if output[nb]:
                continue
            age += 1
            output[nb] = output[elem]
            # the cost of reaching a pixel is at least that of the pixel it is reached from
            u = max(_order_key(bits, nb, flip), ev)
            _sift_up(hkey, hidx, items, (u << np.uint64(32)) | np.uint64(age), nb)
            items += 1


@njit(cache=True, nogil=True, inline="always")
def _smaller(val, age, a, b):  # pragma: no cover - compiled
    if val[a] != val[b]:
        return val[a] < val[b]
    return age[a] < age[b]


@njit(cache=True, nogil=True)
def _push(hval, hage, hidx, items, value, age, index):  # pragma: no cover - compiled
    child = items
    hval[child] = value
    hage[child] = age
    hidx[child] = index
    while child > 0:
        parent = (child + 1) // 2 - 1
        if _smaller(hval, hage, child, parent):
            hval[child], hval[parent] = hval[parent], hval[child]
            hage[child], hage[parent] = hage[parent], hage[child]
            hidx[child], hidx[parent] = hidx[parent], hidx[child]
            child = parent
        else:
            break


@njit(cache=True, nogil=True)
def _watershed_wide(image, sign, output, mask, offsets):  # pragma: no cover - compiled
    """:func:`_watershed` for float64 images: the heap holds (value, age) in two arrays and
    compares them as scikit-image does (the same heap, element for element)."""
    cap = image.size + 16
    hval = np.empty(cap)
    hage = np.empty(cap, np.int64)
    hidx = np.empty(cap, np.int64)
    items = 0
    age = 1
    for index in range(image.size):
        if output[index] != 0:
            _push(hval, hage, hidx, items, sign * image[index], 0, index)
            items += 1
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
            if not mask[nb] or output[nb]:
                continue
            age += 1
            output[nb] = output[elem]
            _push(hval, hage, hidx, items, max(sign * image[nb], ev), age, nb)
            items += 1


@njit(cache=True, nogil=True)
def _masked_markers(markers, mask, out):  # pragma: no cover - compiled
    """out = the markers inside the mask, 0 outside (int32; one pass instead of numpy's where and
    astype)."""
    for i in range(out.size):
        out[i] = markers[i] if mask[i] else 0


def watershed_heap(
    image: np.ndarray, markers: np.ndarray, mask: np.ndarray, *, negate: bool = False
) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers, mask=mask)`` of a 2-D float32 or float64
    image (int32), of ``-image`` with ``negate``. Where the mask is False all around the image's
    edge (a strip of padded images) no copy is padded: scikit-image's padding changes neither the
    order in which pixels are reached nor their ages."""
    dtype = np.asarray(image).dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"watershed_heap takes a float32 or float64 image, got {dtype}")
    mask = np.asarray(mask, np.bool_)
    edge_free = not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    if edge_free:
        img = np.ascontiguousarray(image)
        msk = np.ascontiguousarray(mask)
        out = np.empty(msk.shape, np.int32)
        _masked_markers(np.ascontiguousarray(markers).ravel(), msk.ravel(), out.ravel())
    else:
        img = np.pad(np.asarray(image), 1)
        msk = np.pad(mask, 1)
        out = np.pad(np.asarray(markers, np.int32), 1) * msk
    stride = out.shape[1]
    offsets = np.array([-stride, -1, 1, stride], np.int64)
    if dtype == np.float32 and img.size < 2**32:  # the ages fit below the value's key
        _watershed(img.ravel(), negate, out.ravel(), msk.ravel(), offsets)
    else:
        _watershed_wide(img.ravel(), -1.0 if negate else 1.0, out.ravel(), msk.ravel(), offsets)
    return out if edge_free else out[1:-1, 1:-1].copy()


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


# ------------------------------------------------------------------------------------------------
# binary masks and their components (4-connected unless said otherwise)


def fill_holes_stack(mask: np.ndarray) -> np.ndarray:
    """Each image of an (N, H, W) bool stack plus its holes (4-connected background components
    not touching the image's edge): the cell pass's run-based kernel
    (``_cell_kernels.fill_holes_stack``), called from Python so that no compiled function here
    depends on another file (numba's cache would not see that file change)."""
    from cellbench.features.segment import _cell_kernels as C

    mask = np.ascontiguousarray(mask, np.bool_)
    out = np.empty_like(mask)
    if mask.size:
        C.fill_holes_stack(mask, out, *C.run_scratch(*mask.shape[1:]))
    return out


@njit(cache=True, nogil=True)
def _components(m, comp, queue):  # pragma: no cover - compiled
    """4-connected components of the 2-D bool ``m`` into ``comp`` (1..k in raster order of their
    first pixel, 0 outside); returns k. ``queue``: scratch of m.size."""
    h, w = m.shape
    for y in range(h):
        for x in range(w):
            comp[y, x] = 0
    k = 0
    for y0 in range(h):
        for x0 in range(w):
            if not m[y0, x0] or comp[y0, x0] != 0:
                continue
            k += 1
            comp[y0, x0] = k
            queue[0] = y0 * w + x0
            head = 0
            tail = 1
            while head < tail:
                p = queue[head]
                head += 1
                y = p // w
                x = p - y * w
                if y > 0 and m[y - 1, x] and comp[y - 1, x] == 0:
                    comp[y - 1, x] = k
                    queue[tail] = p - w
                    tail += 1
                if y < h - 1 and m[y + 1, x] and comp[y + 1, x] == 0:
                    comp[y + 1, x] = k
                    queue[tail] = p + w
                    tail += 1
                if x > 0 and m[y, x - 1] and comp[y, x - 1] == 0:
                    comp[y, x - 1] = k
                    queue[tail] = p - 1
                    tail += 1
                if x < w - 1 and m[y, x + 1] and comp[y, x + 1] == 0:
                    comp[y, x + 1] = k
                    queue[tail] = p + 1
                    tail += 1
    return k


@njit(cache=True, nogil=True)
def _keep_large(mask, min_size, out):  # pragma: no cover - compiled
    n, h, w = mask.shape
    comp = np.empty((h, w), np.int64)
    queue = np.empty(h * w, np.int64)
    for i in range(n):
        k = _components(mask[i], comp, queue)
        size = np.zeros(k + 1, np.int64)
        for y in range(h):
            for x in range(w):
                size[comp[y, x]] += 1
        for y in range(h):
            for x in range(w):
                c = comp[y, x]
                out[i, y, x] = c > 0 and size[c] > min_size


def keep_large(mask: np.ndarray, min_size: float) -> np.ndarray:
    """The 4-connected components of each image of an (N, H, W) bool stack with more than
    ``min_size`` pixels."""
    mask = np.ascontiguousarray(mask, np.bool_)
    out = np.empty_like(mask)
    if mask.size:
        _keep_large(mask, float(min_size), out)
    return out


@njit(cache=True, nogil=True)
def _plateau_maxima(q, fg, labels, queue):  # pragma: no cover - compiled
    """Regional maxima of the 2-D int ``q`` (8-connected plateaus strictly above every 8-neighbour
    outside them, the image's edge not counting) that lie in ``fg``, numbered 1..k in raster order
    of their first pixel; returns k."""
    h, w = q.shape
    seen = np.zeros((h, w), np.bool_)
    for y in range(h):
        for x in range(w):
            labels[y, x] = 0
    k = 0
    for y0 in range(h):
        for x0 in range(w):
            if seen[y0, x0] or not fg[y0, x0]:
                continue
            v = q[y0, x0]
            seen[y0, x0] = True
            queue[0] = y0 * w + x0
            head = 0
            tail = 1
            is_max = True
            while head < tail:
                p = queue[head]
                head += 1
                y = p // w
                x = p - y * w
                for dy in range(-1, 2):
                    yy = y + dy
                    if yy < 0 or yy >= h:
                        continue
                    for dx in range(-1, 2):
                        xx = x + dx
                        if xx < 0 or xx >= w or (dy == 0 and dx == 0):
                            continue
                        u = q[yy, xx]
                        if u > v:
                            is_max = False
                        elif u == v and not seen[yy, xx]:
                            seen[yy, xx] = True
                            queue[tail] = yy * w + xx
                            tail += 1
            if is_max:
                k += 1
                for t in range(tail):
                    p = queue[t]
                    y = p // w
                    x = p - y * w
                    if fg[y, x]:
                        labels[y, x] = k
    return k


def plateau_maxima(q: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndi.label(local_maxima(q, connectivity=2, allow_borders=True) & fg, 8-connected)`` of a
    2-D int image whose plateaus in ``fg`` lie inside ``fg`` (int32 labels, count)."""
    q = np.ascontiguousarray(q)
    labels = np.empty(q.shape, np.int32)
    k = _plateau_maxima(q, np.ascontiguousarray(fg, np.bool_), labels, np.empty(q.size, np.int64))
    return labels, k


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a 2-D bool image (int64 labels 1..k in raster order, count)."""
    mask = np.ascontiguousarray(mask, np.bool_)
    comp = np.empty(mask.shape, np.int64)
    k = _components(mask, comp, np.empty(mask.size, np.int64))
    return comp, k


# ------------------------------------------------------------------------------------------------
# Otsu's threshold and interpolation


def otsu_stack(x: np.ndarray, bins: int = 256) -> np.ndarray:
    """Otsu's threshold of each image of an (N, H, W) stack (NaN for a constant image), equal
    to ``cells._otsu_rows`` of its rows: ``_cell_kernels.otsu_stack``, beside the cell pass's own
    Otsu, with which it shares the histogram (called from Python: no compiled function here
    depends on another file)."""
    from cellbench.features.segment import _cell_kernels as C

    x = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape[0])
    if x.size:
        C.otsu_stack(x, bins, out)
    return out


@njit(cache=True, nogil=True)
def _upsample(a, r0, r1, rw, c0, c1, cw, out):  # pragma: no cover - compiled
    """Rows then columns linear interpolation in float32, as numpy computes
    ``a[:, r0] * (1 - rw) + a[:, r1] * rw`` and then the same along the columns. The rows'
    result is kept transposed, so each output column is a sum of two whole rows of it
    (vectorised, no gathers), written transposed and turned back."""
    n = a.shape[0]
    h = len(r0)
    w = len(c0)
    m = a.shape[2]
    rows_t = np.empty((m, h), np.float32)
    out_t = np.empty((w, h), np.float32)
    one = np.float32(1.0)
    for i in range(n):
        for y in range(h):
            wy = rw[y]
            uy = one - wy
            for j in range(m):
                rows_t[j, y] = a[i, r0[y], j] * uy + a[i, r1[y], j] * wy
        for x in range(w):
            wx = cw[x]
            ux = one - wx
            s0 = rows_t[c0[x]]
            s1 = rows_t[c1[x]]
            o = out_t[x]
            for y in range(h):
                o[y] = s0[y] * ux + s1[y] * wx
        for y in range(h):
            for x in range(w):
                out[i, y, x] = out_t[x, y]


def upsample(a, r0, r1, rw, c0, c1, cw) -> np.ndarray:
    """Linear interpolation of a float32 (N, h, w) stack of block values at the given rows and
    columns (indices and float32 weights)."""
    a = np.ascontiguousarray(a, np.float32)
    out = np.empty((a.shape[0], len(r0), len(c0)), np.float32)
    _upsample(a, r0, r1, rw, c0, c1, cw, out)
    return out


@njit(cache=True, nogil=True)
def _middle_sum(vals, m):  # pragma: no cover - compiled
    """Lower + upper middle value of ``vals[:m]`` (m >= 1; twice the middle one for odd m)."""
    s = np.sort(vals[:m])
    return s[(m - 1) // 2] + s[m // 2]


@njit(cache=True, nogil=True)
def _blob_medians(fg, dist, min_size, out):  # pragma: no cover - compiled
    """Per image: the 4-connected blobs of ``fg`` with at least ``min_size`` px, the largest
    ``dist`` of each (float64), and out = lower + upper middle of their sorted values (NaN when
    there is none)."""
    n, h, w = fg.shape
    comp = np.empty((h, w), np.int64)
    queue = np.empty(h * w, np.int64)
    for i in range(n):
        k = _components(fg[i], comp, queue)
        size = np.zeros(k + 1, np.int64)
        top = np.full(k + 1, -np.inf)
        for y in range(h):
            for x in range(w):
                c = comp[y, x]
                if c > 0:
                    size[c] += 1
                    v = np.float64(dist[i, y, x])
                    if v > top[c]:
                        top[c] = v
        vals = np.empty(k)
        m = 0
        for c in range(1, k + 1):
            if size[c] >= min_size:
                vals[m] = top[c]
                m += 1
        if m == 0:
            out[i] = np.nan
            continue
        out[i] = _middle_sum(vals, m)


def blob_medians(fg: np.ndarray, min_size: float) -> np.ndarray:
    """Per image of an (N, H, W) bool stack, lower + upper middle value (float64) of the largest
    inscribed distances of its 4-connected blobs of at least ``min_size`` px (the distance to the
    nearest background pixel, the pixels around the image counting as background); NaN where
    there is none."""
    fg = np.ascontiguousarray(fg, np.bool_)
    n, h, w = fg.shape
    out = np.full(n, np.nan)
    if fg.size:
        padded = np.zeros((n, h + 2, w + 2), np.bool_)
        padded[:, 1:-1, 1:-1] = fg
        dist = np.ascontiguousarray(edt_stack(padded)[:, 1:-1, 1:-1])
        _blob_medians(fg, dist, float(min_size), out)
    return out


@njit(cache=True, nogil=True)
def _masked_percentiles(x, mask, q, out):  # pragma: no cover - compiled
    n, h, w = x.shape
    vals = np.empty(h * w, np.float32)
    for i in range(n):
        m = 0
        for y in range(h):
            for j in range(w):
                if mask[i, y, j]:
                    vals[m] = x[i, y, j]
                    m += 1
        if m == 0:
            continue
        s = np.sort(vals[:m])
        # numpy's "linear" method: virtual index (m - 1) q, float32 interpolation (weight cast
        # to float32), from the upper value when the weight is 0.5 or more
        v = (m - 1) * q
        lo = int(np.floor(v))
        if v >= m - 1:
            out[i] = s[m - 1]
            continue
        g = v - lo
        a = s[lo]
        b = s[lo + 1]
        d = b - a
        if g >= 0.5:
            out[i] = b - d * np.float32(1.0 - g)
        else:
            out[i] = a + d * np.float32(g)


def masked_percentiles(x: np.ndarray, mask: np.ndarray, percent: float) -> np.ndarray:
    """``np.percentile(x[i][mask[i]], percent)`` of each image of a float32 stack (float32; 0
    where the mask is empty)."""
    out = np.zeros(x.shape[0], np.float32)
    _masked_percentiles(
        np.ascontiguousarray(x, np.float32),
        np.ascontiguousarray(mask, np.bool_),
        np.true_divide(percent, 100),
        out,
    )
    return out


@njit(cache=True, nogil=True)
def _image_of(flat, per, out):  # pragma: no cover - compiled
    for k in range(flat.size):
        lab = flat[k]
        if lab > 0:
            out[lab] = k // per


def image_of(strip_labels: np.ndarray, n: int, n_img: int) -> np.ndarray:
    """The image (0..N-1) of each label 0..n of a strip of N images (0 for 0 and absent labels)."""
    out = np.zeros(n + 1, np.intp)
    _image_of(np.ascontiguousarray(strip_labels).ravel(), strip_labels.size // n_img, out)
    return out


# ------------------------------------------------------------------------------------------------
# pixel noise and block extrema


@njit(cache=True, nogil=True, inline="always")
def _kth_pair(count, m):  # pragma: no cover - compiled
    """The order statistics (m - 1) // 2 and m // 2 (0-based) of a histogram of m values."""
    lo_k = (m - 1) // 2
    hi_k = m // 2
    seen = 0
    a = -1
    b = -1
    for v in range(len(count)):
        seen += count[v]
        if a < 0 and seen > lo_k:
            a = v
        if seen > hi_k:
            b = v
            break
    return a, b


@njit(cache=True, nogil=True)
def _noise_mad(x, out, ok):  # pragma: no cover - compiled
    """Per image: the median absolute deviation (float32) of the horizontal neighbour differences
    of every other row, as numpy's ``median`` computes it (the mean of the two middle values in
    float32), by counting; only for images whose differences are integers below 2^15 (``ok``
    False otherwise)."""
    n, h, w = x.shape
    span = 1 << 15
    count = np.zeros(2 * span + 1, np.int64)
    count2 = np.zeros(4 * span + 1, np.int64)
    for i in range(n):
        ok[i] = w > 1
        lo = span
        hi = -span
        for y in range(0, h, 2):
            for j in range(w - 1):
                d = x[i, y, j + 1] - x[i, y, j]
                if d != np.floor(d) or abs(d) >= span:
                    ok[i] = False
                elif d < lo:
                    lo = int(d)
                if ok[i] and d > hi:
                    hi = int(d)
        if not ok[i]:
            continue
        for k in range(hi - lo + 1):
            count[k] = 0
        m = 0
        for y in range(0, h, 2):
            for j in range(w - 1):
                count[int(x[i, y, j + 1] - x[i, y, j]) - lo] += 1
                m += 1
        a, b = _kth_pair(count[: hi - lo + 1], m)
        fa = np.float32(a + lo)
        fb = np.float32(b + lo)
        med = (fa + fb) / np.float32(2.0) if m % 2 == 0 else fb
        # |d - med| are multiples of 0.5: count twice their value
        top = int(2 * max(abs(np.float32(lo) - med), abs(np.float32(hi) - med))) + 1
        for k in range(top):
            count2[k] = 0
        for v in range(hi - lo + 1):
            c = count[v]
            if c:
                e = abs(np.float32(v + lo) - med)
                count2[int(e * 2)] += c
        a, b = _kth_pair(count2[:top], m)
        ea = np.float32(a) / np.float32(2.0)
        eb = np.float32(b) / np.float32(2.0)
        out[i] = (ea + eb) / np.float32(2.0) if m % 2 == 0 else eb


def noise_mad(x: np.ndarray) -> np.ndarray:
    """``np.median(np.abs(d - np.median(d, 1)[:, None]), 1)`` (float32) of the horizontal
    neighbour differences d of every other row of each image of a float32 stack: counted where
    they are integers (images of integer values), numpy's ``median`` elsewhere."""
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[0]
    out = np.zeros(n, np.float32)
    ok = np.zeros(n, np.bool_)
    _noise_mad(x, out, ok)
    if not ok.all():
        rest = np.flatnonzero(~ok)
        d = np.diff(x[rest][:, ::2], axis=2).reshape(len(rest), -1)
        med = np.median(d, axis=1)
        out[rest] = np.median(np.abs(d - med[:, None]), axis=1)
    return out


@njit(cache=True, nogil=True)
def _blocks(x, b, is_max, out):  # pragma: no cover - compiled
    """Block minima or maxima: per block its first pixel, then the others in raster order, each
    taking the place of the one kept only when strictly smaller (larger); a row of blocks at a
    time, so the comparisons of neighbouring blocks vectorise."""
    n, h, w = x.shape
    hb, wb = out.shape[1], out.shape[2]
    v = np.empty(wb, x.dtype)
    cols = np.empty((b, wb), np.int64)
    for dx in range(b):
        for bx in range(wb):
            cols[dx, bx] = min(bx * b + dx, w - 1)
    for i in range(n):
        for by in range(hb):
            y0 = min(by * b, h - 1)
            for bx in range(wb):
                v[bx] = x[i, y0, cols[0, bx]]
            for dy in range(b):
                row = x[i, min(by * b + dy, h - 1)]
                for dx in range(b):
                    cx = cols[dx]
                    if is_max:
                        for bx in range(wb):
                            u = row[cx[bx]]
                            vv = v[bx]
                            v[bx] = u if u > vv else vv
                    else:
                        for bx in range(wb):
                            u = row[cx[bx]]
                            vv = v[bx]
                            v[bx] = u if u < vv else vv
            for bx in range(wb):
                out[i, by, bx] = v[bx]


def blocks(x: np.ndarray, b: int, is_max: bool) -> np.ndarray:
    """Minimum (or maximum) of every b x b block of each image of a stack, edge blocks padded by
    repeating the edge."""
    x = np.ascontiguousarray(x)
    n, h, w = x.shape
    out = np.empty((n, -(-h // b), -(-w // b)), x.dtype)
    _blocks(x, int(b), bool(is_max), out)
    return out


@njit(cache=True, nogil=True)
def _block_means(x, f, out, r):  # pragma: no cover - compiled
    n, h2, w2 = out.shape
    for i in range(n):
        for by in range(h2):
            for bx in range(w2):
                s = np.float32(0.0)
                for a in range(f):
                    row = x[i, by * f + a, bx * f : bx * f + f]
                    # one row of the block: numpy's float32 pairwise sum (sequential below 8
                    # values; 8 partial sums combined as a tree up to 128)
                    if f < 8:
                        t = np.float32(0.0)
                        for b in range(f):
                            t += row[b]
                    else:
                        for j in range(8):
                            r[j] = row[j]
                        b = 8
                        while b < f - (f % 8):
                            for j in range(8):
                                r[j] += row[b + j]
                            b += 8
                        t = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
                        while b < f:
                            t += row[b]
                            b += 1
                    s += t
                out[i, by, bx] = s / np.float32(f * f)


def block_means(x: np.ndarray, f: int) -> np.ndarray:
    """Means of the f x f blocks of each image of a float32 (N, H, W) stack (rows and columns
    beyond a multiple of f dropped), equal bit for bit to
    ``x[:, :h*f, :w*f].reshape(n, h, f, w, f).mean((2, 4), dtype=np.float32)``: per block, the
    float32 sum of each row of f values (numpy's pairwise order), the rows added in turn, divided
    by f * f. Above 128 values a row numpy splits its pairwise sum further: such blocks (never
    met by the radius estimate, whose f is at most 8) are left to numpy itself."""
    if f < 1:
        raise ValueError(f"block size {f} is below 1")
    x = np.ascontiguousarray(x, np.float32)
    n, h, w = x.shape
    h2, w2 = h // f, w // f
    if f > 128:
        return x[:, : h2 * f, : w2 * f].reshape(n, h2, f, w2, f).mean((2, 4), dtype=np.float32)
    out = np.empty((n, h2, w2), np.float32)
    _block_means(x, int(f), out, np.empty(8, np.float32))
    return out


@njit(cache=True, nogil=True)
def _median_radii(labels, out):  # pragma: no cover - compiled
    n, h, w = labels.shape
    for i in range(n):
        m = 0
        for y in range(h):
            for x in range(w):
                if labels[i, y, x] > m:
                    m = labels[i, y, x]
        area = np.zeros(m + 1, np.int64)
        for y in range(h):
            for x in range(w):
                area[labels[i, y, x]] += 1
        vals = np.empty(m)
        k = 0
        for j in range(1, m + 1):
            if area[j] > 0:
                vals[k] = area[j]
                k += 1
        if k == 0:
            out[i] = np.inf
            continue
        # numpy's median: the middle value, or the mean of the two middle ones (exact here)
        out[i] = np.sqrt(_middle_sum(vals, k) / 2.0 / np.pi)


def median_radii(labels: np.ndarray) -> np.ndarray:
    """Per image of an (N, H, W) label stack, sqrt(median nucleus area / pi) (inf if none), as
    ``np.sqrt(np.median(areas) / np.pi)`` of the positive pixel counts of labels 1..max."""
    out = np.empty(len(labels))
    _median_radii(np.ascontiguousarray(labels, np.int32), out)
    return out


# ------------------------------------------------------------------------------------------------
# foreground and border refinement (elementwise steps of the nucleus pass, fused)


@njit(cache=True, nogil=True)
def _foreground(t, otsu_level, lf, local_max, out):  # pragma: no cover - compiled
    n, h, w = t.shape
    for i in range(n):
        lev = otsu_level[i]
        for y in range(h):
            for x in range(w):
                v = t[i, y, x]
                out[i, y, x] = np.float64(v) > lev and v > lf * local_max[i, y, x]


def foreground(
    t: np.ndarray, otsu_level: np.ndarray, local_fraction: float, local_max: np.ndarray
) -> np.ndarray:
    """``(t > otsu_level[:, None, None]) & (t > local_fraction * local_max)`` of float32 stacks
    (the first comparison in float64, the second in float32, as numpy compares them)."""
    out = np.empty(t.shape, np.bool_)
    _foreground(
        np.ascontiguousarray(t, np.float32),
        np.ascontiguousarray(otsu_level, np.float64),
        np.float32(local_fraction),
        np.ascontiguousarray(local_max, np.float32),
        out,
    )
    return out


@njit(cache=True, nogil=True)
def _label_means(values, labels, n, out):  # pragma: no cover - compiled
    total = np.zeros(n + 1)
    count = np.zeros(n + 1, np.int64)
    for k in range(labels.size):
        lab = labels[k]
        total[lab] += np.float64(values[k])
        count[lab] += 1
    for lab in range(n + 1):
        out[lab] = total[lab] / max(count[lab], 1)


def label_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` per label 0..n (0 where absent), float64 sums in raster order, equal to
    ``np.bincount(labels, values) / np.maximum(np.bincount(labels), 1)``."""
    out = np.empty(n + 1)
    _label_means(np.ascontiguousarray(values).ravel(), np.ascontiguousarray(labels).ravel(), n, out)
    return out


@njit(cache=True, nogil=True)
def _keep_bright(values, grown, level, fraction, out, count):  # pragma: no cover - compiled
    for k in range(grown.size):
        g = grown[k]
        lab = g if np.float64(values[k]) >= fraction * level[g] else 0
        out[k] = lab
        count[lab] += 1


def keep_bright(
    values: np.ndarray, grown: np.ndarray, level: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """``np.where(values >= fraction * level[grown], grown, 0)`` (compared in float64) and the
    pixel count of each label 0..len(level) - 1 of the result."""
    out = np.empty(grown.shape, np.int32)
    count = np.zeros(len(level), np.int64)
    _keep_bright(
        np.ascontiguousarray(values).ravel(),
        np.ascontiguousarray(grown).ravel(),
        level,
        float(fraction),
        out.ravel(),
        count,
    )
    return out, count


# ------------------------------------------------------------------------------------------------
# the marker function of the nucleus pass and its quantised strip


@njit(cache=True, nogil=True)
def _marker_strips(dist, it, scale, r, w_dist, w_int, h, fg, f, q):  # pragma: no cover - compiled
    # r, w_dist and h are float32 or float64 scalars and f is float32 or float64, as numpy's
    # promotion makes them; w_int, it and scale are float32 (numpy computes w x inorm in float32)
    n, hh, ww = dist.shape
    for i in range(n):
        s = scale[i]
        base = i * (hh + 2) + 1
        for y in range(hh):
            row = base + y
            for x in range(ww):
                v = dist[i, y, x] / r
                if w_int != 0:
                    u = it[i, y, x] / s
                    u = min(max(u, np.float32(0.0)), np.float32(1.0))
                    v = w_dist * v + w_int * u
                f[row, x + 1] = v
                q[row, x + 1] = np.int32(np.floor(v / h)) if fg[i, y, x] else -1


def marker_strips(
    dist: np.ndarray,
    it: np.ndarray,
    top: np.ndarray,
    fg: np.ndarray,
    r: float,
    intensity_weight: float,
    h: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The marker function of the nucleus pass laid out as a strip, and its quantised strip:
    ``f = _strip((1 - w) * dist / r + w * clip(it / top_i, 0, 1))`` (``dist / r`` alone when
    ``w`` is 0; ``top_i`` <= 0 counts as infinite) and ``q = where(_strip(fg), floor(f / h), -1)``
    as int32, for float32 ``dist``, ``it`` and ``top``, every operation in the precision numpy
    gives it: float32 with a Python float ``r`` (the scalars rounded to float32), float64 from
    ``dist / r`` on with a numpy float64 ``r`` (the intensity term stays float32)."""
    n, hh, ww = dist.shape
    wide = np.result_type(np.float32, r) == np.float64
    real = np.float64 if wide else np.float32
    f = np.zeros((n * (hh + 2), ww + 2), real)
    q = np.full(f.shape, -1, np.int32)
    top = np.asarray(top, np.float32)
    scale = np.where(top > 0, top, np.float32(np.inf)).astype(np.float32)
    _marker_strips(
        np.ascontiguousarray(dist, np.float32),
        np.ascontiguousarray(it, np.float32),
        scale,
        real(r),
        real(1.0 - intensity_weight),
        np.float32(intensity_weight),
        real(h),
        np.ascontiguousarray(fg, np.bool_),
        f,
        q,
    )
    return f, q
