"""Compiled (numba) kernels of the cell pass: :func:`cells_stack` runs every step of
:func:`cellbench.features.segment.cells.segment_cells` on each crop of a stack, one crop at a time
in one compiled loop, with scratch buffers shared by the crops.

The steps and their definitions are those of ``cells.py`` (the scipy / scikit-image reference,
which this module is tested against); what differs is how they are computed:

* background and Otsu levels: a heap selection of the 0.5th percentile, Otsu's threshold over
  256 bins of the blurred signal (as ``cells.cyto_levels``);
* Gaussian blurs: separable, taps of ``scipy.ndimage`` (truncate 4), float32 sums (scipy's are
  float64: values agree to about 1e-7), zero outside the crop divided by the blur of the crop's
  indicator (the in-crop weighted mean);
* hole filling: union-find over the background's runs of each row, the components touching the
  crop's edge kept (4-connected);
* distance to the background: exact Euclidean (Felzenszwalb and Huttenlocher's two passes);
* h-maxima (8-connected; the crop framed by one pixel of 0), decided only at the local maxima
  that can seed a cell (in the mask, clear of the nuclei): each floods the pixels less than h
  below it until it meets a higher pixel (removed) or runs out (kept), which is the residue test
  of ``skimage.morphology.h_maxima`` (a plateau kept when the level v at which it first meets a
  higher one satisfies value - v >= h; the global maximum is kept);
* watershed (4-connected, labels given when a pixel is queued, as scikit-image's): a bucket queue of
  4096 levels over the crop's range instead of a binary heap, so pixels whose values differ by less
  than 1/4096 of that range are flooded first come first served;
* merging and the size filter: per crop, as the reference.

No ``fastmath``: the float results do not depend on the CPU's vector width. Nothing here depends on the other crops of the stack: a crop gets the same cells alone.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def gaussian_taps(sigma: float) -> np.ndarray:
    """The 1-D Gaussian taps scipy.ndimage uses (radius int(4 sigma + 0.5), normalised), float32."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return (phi / phi.sum()).astype(np.float32)


@njit(cache=True, nogil=True)
def _blur(u, taps, weight, acc, pad, out):  # pragma: no cover - compiled
    """In-crop weighted Gaussian mean of ``u`` (H, W): zero outside the crop, divided by
    ``weight`` (the blur of the crop's indicator). Columns, then rows, each pass a sum of shifted
    rows (vectorised); float32 sums (scipy sums in float64: the results agree to about 1e-7).
    ``acc`` (2 W) and ``pad`` (W + len(taps)) are scratch."""
    h, w = u.shape
    nt = len(taps)
    rad = (nt - 1) // 2
    for x in range(rad):
        pad[x] = 0.0
        pad[rad + w + x] = 0.0
    col = acc[:w]
    row = acc[w : 2 * w]
    for y in range(h):
        for x in range(w):
            col[x] = 0.0
        for k in range(max(0, y - rad) - y, min(h - 1, y + rad) - y + 1):
            t = taps[k + rad]
            src = u[y + k]
            for x in range(w):
                col[x] += t * src[x]
        for x in range(w):
            pad[x + rad] = col[x]
            row[x] = 0.0
        for k in range(nt):
            t = taps[k]
            for x in range(w):
                row[x] += t * pad[x + k]
        for x in range(w):
            out[y, x] = row[x] / weight[y, x]


@njit(cache=True, nogil=True)
def _edge_weights(n, taps):  # pragma: no cover - compiled
    """Blur of a length-n line of ones with zero outside (per position)."""
    rad = (len(taps) - 1) // 2
    out = np.zeros(n)
    for i in range(n):
        s = 0.0
        for k in range(max(0, i - rad) - i, min(n - 1, i + rad) - i + 1):
            s += taps[k + rad]
        out[i] = s
    return out


@njit(cache=True, nogil=True)
def _weight(h, w, taps):  # pragma: no cover - compiled
    """The blur of an h x w crop's indicator (zero outside), float32."""
    wr = _edge_weights(h, taps)
    wc = _edge_weights(w, taps)
    out = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            out[y, x] = np.float32(wr[y] * wc[x])
    return out


@njit(cache=True, nogil=True)
def _fill_holes(m, o, rs, re, rrow, parent, edge):  # pragma: no cover - compiled
    """o = m (H, W bool) plus its holes: background pixels not 4-connected to the edge through
    background. Union-find over the background's runs of each row (a run joins the runs of the
    row above that share a column); a component is marked when one of its runs touches the
    edge, and the runs of unmarked components are filled. Scratch: ``rs``, ``re``, ``parent``
    (int64) and ``edge`` (bool) of one entry per run (at most H ceil(W / 2)), ``rrow`` (H + 1)."""
    h, w = m.shape
    k = 0
    prev0 = 0  # the runs of the row above: prev0 .. prev1 - 1
    prev1 = 0
    for y in range(h):
        cur0 = k
        x = 0
        while x < w:
            if m[y, x]:
                x += 1
                continue
            s = x
            while x < w and not m[y, x]:
                x += 1
            rs[k] = s
            re[k] = x - 1
            parent[k] = k
            edge[k] = y == 0 or y == h - 1 or s == 0 or x == w
            k += 1
        j = prev0
        for r in range(cur0, k):
            while j < prev1 and re[j] < rs[r]:
                j += 1
            jj = j
            while jj < prev1 and rs[jj] <= re[r]:
                a = _find(parent, r)
                b = _find(parent, jj)
                if a < b:
                    parent[b] = a
                    edge[a] = edge[a] or edge[b]
                elif b < a:
                    parent[a] = b
                    edge[b] = edge[a] or edge[b]
                jj += 1
        rrow[y] = cur0
        prev0 = cur0
        prev1 = k
    rrow[h] = k
    for y in range(h):
        for x in range(w):
            o[y, x] = True
        for r in range(rrow[y], rrow[y + 1]):
            if edge[_find(parent, r)]:
                for x in range(rs[r], re[r] + 1):
                    o[y, x] = False


@njit(cache=True, nogil=True)
def fill_holes_stack(mask, out, rs, re, rrow, parent, edge):  # pragma: no cover - compiled
    """:func:`_fill_holes` of each image of an (N, H, W) stack (the nucleus pass's hole filling:
    one implementation for both passes, called from Python there)."""
    for i in range(mask.shape[0]):
        _fill_holes(mask[i], out[i], rs, re, rrow, parent, edge)


@njit(cache=True, nogil=True)
def run_scratch(h, w):  # pragma: no cover - compiled
    """Scratch arrays of :func:`_fill_holes` for H x W images: rs, re, rrow, parent, edge."""
    runs = h * ((w + 1) // 2) + 1
    return (
        np.empty(runs, np.int64),
        np.empty(runs, np.int64),
        np.empty(h + 1, np.int64),
        np.empty(runs, np.int64),
        np.empty(runs, np.bool_),
    )


@njit(cache=True, nogil=True)
def _edt_framed(mask, out, col, v, z, f1):  # pragma: no cover - compiled
    """Euclidean distance of each pixel of ``mask`` (H, W) to the nearest background pixel, the
    pixels just outside the crop counting as background; 0 on the background."""
    h, w = mask.shape
    inf = 1e20
    # columns: squared distance to the nearest background pixel in the column (frame at -1 and h)
    for x in range(w):
        last = -1
        for y in range(h):
            if not mask[y, x]:
                last = y
                col[y, x] = 0.0
            else:
                d = y - last
                col[y, x] = d * d
        last = h
        for y in range(h - 1, -1, -1):
            if not mask[y, x]:
                last = y
            else:
                d = last - y
                if d * d < col[y, x]:
                    col[y, x] = d * d
    # rows: lower envelope of parabolas, frame pixels at -1 and w are background (value 0)
    n = w + 2
    for y in range(h):
        for i in range(n):
            if i == 0 or i == n - 1:
                f1[i] = 0.0
            else:
                f1[i] = col[y, i - 1]
        k = 0
        v[0] = 0
        z[0] = -inf
        z[1] = inf
        for q in range(1, n):
            while True:
                p = v[k]
                s = ((f1[q] + q * q) - (f1[p] + p * p)) / (2.0 * q - 2.0 * p)
                if s <= z[k]:
                    k -= 1
                else:
                    break
            k += 1
            v[k] = q
            z[k] = s
            z[k + 1] = inf
        k = 0
        for q in range(1, n - 1):
            while z[k + 1] < q:
                k += 1
            p = v[k]
            d = (q - p) * (q - p) + f1[p]
            out[y, q - 1] = np.sqrt(d) if mask[y, q - 1] else 0.0


@njit(cache=True, nogil=True, inline="always")
def _find(parent, x):  # pragma: no cover - compiled
    """Root of x, halving the path on the way."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, nogil=True, inline="always")
def _can_seed(mask, inside, clearance, y, x):  # pragma: no cover - compiled
    """Whether pixel (y, x) may seed a cell of its own: in the mask, and no nucleus pixel within
    ``clearance`` (square window; 0: the pixel itself)."""
    if not mask[y, x]:
        return False
    hh, ww = mask.shape
    for yy in range(max(0, y - clearance), min(hh, y + clearance + 1)):
        for xx in range(max(0, x - clearance), min(ww, x + clearance + 1)):
            if inside[yy, xx]:
                return False
    return True


@njit(cache=True, nogil=True)
def _h_peaks(g, wp, h, mask, inside, clearance, out, queue, seen):  # pragma: no cover - compiled
    """The h-maxima (8-connected) of the framed image ``g`` (Hp x wp, raveled, float64) at the
    pixels that can seed a cell: ``out`` (bool, raveled) is scikit-image's ``h_maxima`` at every
    pixel (H x W, inside the frame) that :func:`_can_seed`, and False everywhere else.

    A regional maximum of value m is kept unless a path of pixels with m - value < h leads from
    it to a pixel higher than m: the level where it first meets a higher one, v, then has
    m - v < h (scikit-image's residue test; m - value is computed as that test computes it, so
    rounding is the same). So each candidate that is a local maximum floods that set from
    itself until it meets a higher pixel (removed) or exhausts it (kept), and its plateau (equal
    values, 8-connected) takes the verdict. ``queue``, ``seen``: scratch of len(g) (int64;
    ``seen`` holds the number of the last flood that reached a pixel, -1 once decided)."""
    n = len(g)
    hp = n // wp
    hh, ww = mask.shape
    lo = g[0]
    hi = g[0]
    for i in range(n):
        out[i] = False
        seen[i] = 0
        v = g[i]
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    if h > hi - lo:
        return  # no maximum rises h above the rest
    stamp = 0
    for y in range(hh):
        for x in range(ww):
            if not mask[y, x] or inside[y, x]:
                continue
            c = (y + 1) * wp + x + 1
            if seen[c] < 0:
                continue  # decided with its plateau
            m = g[c]
            if (
                m < g[c - 1]
                or m < g[c + 1]
                or m < g[c - wp]
                or m < g[c + wp]
                or m < g[c - wp - 1]
                or m < g[c - wp + 1]
                or m < g[c + wp - 1]
                or m < g[c + wp + 1]
            ):
                continue  # below a neighbour: no maximum
            if not _can_seed(mask, inside, clearance, y, x):
                continue  # near a nucleus: its verdict is not needed
            # flood from c through every q with m - g[q] < h until a pixel above m is met
            stamp += 1
            seen[c] = stamp
            queue[0] = c
            head = 0
            tail = 1
            higher = False
            while head < tail and not higher:
                p = queue[head]
                head += 1
                py = p // wp
                px = p - py * wp
                for yy in range(max(py - 1, 0), min(py + 1, hp - 1) + 1):
                    for xx in range(max(px - 1, 0), min(px + 1, wp - 1) + 1):
                        q = yy * wp + xx
                        if seen[q] == stamp:
                            continue
                        gq = g[q]
                        if gq > m:
                            higher = True
                        elif m - gq < h:
                            seen[q] = stamp
                            queue[tail] = q
                            tail += 1
            # the plateau of c shares the verdict, and is decided
            stamp += 1
            seen[c] = stamp
            queue[0] = c
            head = 0
            tail = 1
            while head < tail:
                p = queue[head]
                head += 1
                py = p // wp
                px = p - py * wp
                if not higher and 0 < py <= hh and 0 < px <= ww:
                    out[p] = _can_seed(mask, inside, clearance, py - 1, px - 1)
                for yy in range(max(py - 1, 0), min(py + 1, hp - 1) + 1):
                    for xx in range(max(px - 1, 0), min(px + 1, wp - 1) + 1):
                        q = yy * wp + xx
                        if seen[q] != stamp and g[q] == m:
                            seen[q] = stamp
                            queue[tail] = q
                            tail += 1
            # -1: decided (a later flood may pass over it and overwrite that: it is then
            # decided again, the same way)
            for t in range(tail):
                seen[queue[t]] = -1


@njit(cache=True, nogil=True)
def _watershed(w, width, seeds, mask, labels, bucket_head, bucket_tail, link):  # pragma: no cover
    """Watershed of -w (raveled rows of ``width``) from ``seeds`` inside ``mask`` (4-connected):
    a pixel takes the label of the pixel that queues it. Bucket queue of len(bucket_head) levels
    between the extremes of w; a pixel lower than the level being flooded joins that level."""
    n = len(w)
    nb = len(bucket_head)
    wmax = -np.inf
    wmin = np.inf
    for i in range(n):
        labels[i] = seeds[i]
        link[i] = -1
        if mask[i] or seeds[i] > 0:
            if w[i] > wmax:
                wmax = w[i]
            if w[i] < wmin:
                wmin = w[i]
    scale = (nb - 1) / (wmax - wmin) if wmax > wmin else 0.0
    for b in range(nb):
        bucket_head[b] = -1
        bucket_tail[b] = -1
    for i in range(n):
        if seeds[i] > 0:
            b = min(max(int((wmax - w[i]) * scale), 0), nb - 1)
            if bucket_tail[b] < 0:
                bucket_head[b] = i
            else:
                link[bucket_tail[b]] = i
            bucket_tail[b] = i
    cur = 0
    while cur < nb:
        p = bucket_head[cur]
        if p < 0:
            cur += 1
            continue
        bucket_head[cur] = link[p]
        if link[p] < 0:
            bucket_tail[cur] = -1
        y = p // width
        x = p - y * width
        lab = labels[p]
        for d in range(4):
            if d == 0:
                if y == 0:
                    continue
                q = p - width
            elif d == 1:
                if x == 0:
                    continue
                q = p - 1
            elif d == 2:
                if x == width - 1:
                    continue
                q = p + 1
            else:
                q = p + width
                if q >= n:
                    continue
            if labels[q] != 0 or not mask[q]:
                continue
            labels[q] = lab
            b = min(max(int((wmax - w[q]) * scale), cur), nb - 1)
            link[q] = -1
            if bucket_tail[b] < 0:
                bucket_head[b] = q
            else:
                link[bucket_tail[b]] = q
            bucket_tail[b] = q


@njit(cache=True, nogil=True)
def _bilinear(f, y, x):  # pragma: no cover - compiled
    h, w = f.shape
    y = min(max(y, 0.0), h - 1.0)
    x = min(max(x, 0.0), w - 1.0)
    y0 = min(int(np.floor(y)), h - 1)
    x0 = min(int(np.floor(x)), w - 1)
    y1 = min(y0 + 1, h - 1)
    x1 = min(x0 + 1, w - 1)
    fy = y - y0
    fx = x - x0
    top = f[y0, x0] * (1.0 - fx) + f[y0, x1] * fx
    bot = f[y1, x0] * (1.0 - fx) + f[y1, x1] * fx
    return top * (1.0 - fy) + bot * fy


@njit(cache=True, nogil=True)
def _merge(labels, seeds, f, n, samples, ratio, gap, ridge, parent):  # pragma: no cover
    """Step 6 of cells.py: union of touching regions whose seeds are joined without a boundary;
    ``parent`` (n + 1) ends holding each label's root (the smallest label of its group)."""
    h, w = labels.shape
    cnt = np.zeros(n + 1)
    sy = np.zeros(n + 1)
    sx = np.zeros(n + 1)
    for y in range(h):
        for x in range(w):
            s = seeds[y, x]
            if s > 0:
                cnt[s] += 1.0
                sy[s] += y
                sx[s] += x
    for k in range(n + 1):
        parent[k] = k
        if cnt[k] > 0:
            sy[k] /= cnt[k]
            sx[k] /= cnt[k]
    # touching pairs (a < b), 4-connected, each once, in increasing order of (a, b)
    codes = np.empty(2 * h * w, np.int64)
    m = 0
    for y in range(h):
        for x in range(w):
            a = labels[y, x]
            if a == 0:
                continue
            for d in range(2):
                if d == 0:
                    if x + 1 >= w:
                        continue
                    b = labels[y, x + 1]
                else:
                    if y + 1 >= h:
                        continue
                    b = labels[y + 1, x]
                if b == 0 or b == a:
                    continue
                codes[m] = np.int64(min(a, b)) * (n + 1) + max(a, b)
                m += 1
    pairs = np.unique(codes[:m])
    vals = np.empty(samples)
    for code in pairs:
        lo = code // (n + 1)
        hi = code - lo * (n + 1)
        ay, ax, by, bx = sy[lo], sx[lo], sy[hi], sx[hi]
        n_out = 0
        top = -np.inf
        for k in range(samples):
            t = k / (samples - 1)
            py = ay + (by - ay) * t
            px = ax + (bx - ax) * t
            vals[k] = _bilinear(f, py, px)
            iy = min(max(int(np.floor(py + 0.5)), 0), h - 1)
            ix = min(max(int(np.floor(px + 0.5)), 0), w - 1)
            s = seeds[iy, ix]
            if s != lo and s != hi:
                n_out += 1
                if vals[k] > top:
                    top = vals[k]
        if n_out == 0:
            continue  # touching nuclei: no cytoplasm between them, the nuclei decide
        ends = min(vals[0], vals[samples - 1])
        low = vals[0]
        for k in range(samples):
            if vals[k] < low:
                low = vals[k]
        if low < ratio * ends:
            continue
        if gap >= 0.0:
            length = np.hypot(by - ay, bx - ax)
            if n_out / samples * length > gap:
                continue
        if ridge >= 0.0 and top > ridge * max(vals[0], vals[samples - 1]):
            continue
        ri = _find(parent, lo)
        rj = _find(parent, hi)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    for k in range(n + 1):
        parent[k] = _find(parent, k)


@njit(cache=True, nogil=True, inline="always")
def _bin_counts(values, lo, step, hist, bins_of, part):  # pragma: no cover - compiled
    """hist[b] (float64) = how many of the 1-D ``values`` fall in bin b, the bin of v being
    int((v - lo) / step) in float64, clipped to the bins. Every value's bin first (the divisions
    and the int32 conversions vectorise), then four partial counts (consecutive values in one
    bin do not wait on each other's increment). Scratch: ``bins_of`` (len(values) int32),
    ``part`` (4 x len(hist) int64)."""
    bins = len(hist)
    for k in range(len(values)):
        bins_of[k] = np.int32((np.float64(values[k]) - lo) / step)
    part[:] = 0
    for k in range(len(values)):
        part[k & 3, min(max(bins_of[k], 0), bins - 1)] += 1
    for b in range(bins):
        hist[b] = np.float64(part[0, b] + part[1, b] + part[2, b] + part[3, b])


@njit(cache=True, nogil=True)
def _levels(c, b, work, hist, bins_of, part):  # pragma: no cover - compiled
    """(background, Otsu level) of a crop: the 0.5th percentile of ``c`` (linear between order
    statistics, as numpy's) and Otsu's threshold of its blur ``b`` over ``len(hist)`` bins between
    b's extremes; a flat crop (or a level not above the background) gets background + 1.
    Scratch: ``work`` (H W float32), ``bins_of`` (H W int32), ``part`` (4 x len(hist) int64)."""
    h, w = c.shape
    n = h * w
    pos = 0.005 * (n - 1)
    i0 = int(np.floor(pos))
    frac = pos - i0
    # the i0 + 2 smallest values: a max-heap in ``work`` (the order statistics i0 and i0 + 1)
    m = min(i0 + 2, n)
    size = 0
    for y in range(h):
        for x in range(w):
            v = c[y, x]
            if size < m:
                j = size
                size += 1
                while j > 0 and work[(j - 1) // 2] < v:
                    work[j] = work[(j - 1) // 2]
                    j = (j - 1) // 2
                work[j] = v
            elif v < work[0]:
                j = 0
                while True:
                    left = 2 * j + 1
                    if left >= m:
                        break
                    big = left
                    if left + 1 < m and work[left + 1] > work[left]:
                        big = left + 1
                    if work[big] <= v:
                        break
                    work[j] = work[big]
                    j = big
                work[j] = v
    # work[0] is the largest kept (order statistic m - 1); the next largest is one of its children
    if m == i0 + 2:
        a1 = np.float64(work[0])
        a0 = -np.inf
        for j in (1, 2):
            if j < m and work[j] > a0:
                a0 = np.float64(work[j])
        if m == 1:
            a0 = a1
    else:
        a0 = np.float64(work[0])
        a1 = a0
    lo = a0 + (a1 - a0) * frac if frac < 0.5 else a1 - (a1 - a0) * (1.0 - frac)
    bmin = np.inf
    bmax = -np.inf
    for y in range(h):
        for x in range(w):
            v = np.float64(b[y, x])
            if v < bmin:
                bmin = v
            if v > bmax:
                bmax = v
    thr = np.nan
    bins = len(hist)
    if bmax - bmin >= 1e-6:
        step = (bmax - bmin) / bins
        _bin_counts(b.ravel(), bmin, step, hist, bins_of, part)
        total_w = 0.0
        total_m = 0.0
        for j in range(bins):
            total_w += hist[j]
            total_m += hist[j] * (bmin + step * (j + 0.5))
        w0 = 0.0
        m0 = 0.0
        best = -np.inf
        for j in range(bins - 1):
            centre = bmin + step * (j + 0.5)
            w0 += hist[j]
            m0 += hist[j] * centre
            w1 = total_w - w0
            if w0 > 0.0 and w1 > 0.0:
                d = m0 / w0 - (total_m - m0) / w1
                between = w0 * w1 * d * d
            else:
                between = -1.0
            if between > best:
                best = between
                thr = centre
    if not (thr > lo + 1e-6):
        thr = lo + 1.0
    return lo, thr


@njit(cache=True, nogil=True)
def otsu_stack(x, bins, out):  # pragma: no cover - compiled
    """``cells._otsu_rows`` of every image of (N, H, W) float32: the same float64 operations in
    the same order (histogram between min and max, sequential cumulative sums, first maximum)."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    size = flat.shape[1]
    hist = np.empty(bins)
    centers = np.empty(bins)
    qs = np.empty(size, np.int32)
    part = np.zeros((4, bins), np.int64)
    for i in range(n):
        row = flat[i]
        lo = np.float64(row[0])
        hi = lo
        for k in range(size):
            v = np.float64(row[k])
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        if not hi - lo >= 1e-6:
            out[i] = np.nan
            continue
        step = (hi - lo) / bins
        _bin_counts(row, lo, step, hist, qs, part)
        for b in range(bins):
            centers[b] = lo + step * (b + 0.5)
        w_total = 0.0
        m_total = 0.0
        for b in range(bins):
            w_total += hist[b]
            m_total += hist[b] * centers[b]
        w0 = 0.0
        m0 = 0.0
        best = -np.inf
        arg = 0
        for b in range(bins - 1):
            w0 += hist[b]
            m0 += hist[b] * centers[b]
            w1 = w_total - w0
            d = m0 / w0 - (m_total - m0) / w1
            between = w0 * w1 * (d * d)
            if np.isnan(between):
                between = -1.0
            if between > best:
                best = between
                arg = b
        out[i] = centers[arg]


@njit(cache=True, nogil=True)
def cells_stack(
    cyto,
    nuclei,
    taps_fg,
    taps_marker,
    taps_ws,
    fg_level,
    distance_weight,
    h,
    clearance,
    ring,
    ratio,
    gap,
    ridge,
    samples,
    min_area,
    n_levels,
    cells,
    fg_out,
):  # pragma: no cover - compiled
    """The cell pass of cells.py on each crop of ``cyto`` (N, H, W, float32: the cytoplasm signal)
    with nucleus labels ``nuclei`` (N, H, W); writes ``cells`` (int32, 1..k per crop) and
    ``fg_out`` (bool, the cytoplasm foreground)."""
    n_img, hh, ww = cyto.shape
    npx = hh * ww
    hp, wp = hh + 2, ww + 2
    nf = hp * wp
    acc = np.empty(2 * ww, np.float32)
    pad = np.zeros(ww + 64, np.float32)
    ui = np.empty((hh, ww), np.float32)
    blur_c = np.empty((hh, ww), np.float32)
    work = np.empty(npx, np.float32)
    hist = np.empty(256)
    bins_of = np.empty(npx, np.int32)
    part = np.empty((4, 256), np.int64)
    s_fg = np.empty((hh, ww), np.float32)
    f = np.empty((hh, ww), np.float32)
    s_ws = np.empty((hh, ww), np.float32)
    fg0 = np.empty((hh, ww), np.bool_)
    fg = np.empty((hh, ww), np.bool_)
    mask = np.empty((hh, ww), np.bool_)
    inside = np.empty((hh, ww), np.bool_)
    queue = np.empty(npx, np.int64)
    run_s, run_e, run_row, run_parent, run_edge = run_scratch(hh, ww)
    dist = np.empty((hh, ww))
    col = np.empty((hh, ww))
    env_v = np.empty(wp + 1, np.int64)
    env_z = np.empty(wp + 2)
    env_f = np.empty(wp + 1)
    g = np.zeros(nf)
    peaks = np.zeros(nf, np.bool_)
    pix = np.empty(nf, np.int64)
    seen = np.empty(nf, np.int64)
    seeds = np.empty((hh, ww), np.int32)
    extra = np.empty((hh, ww), np.int32)
    labels = np.empty((hh, ww), np.int32)
    rowmax = np.empty((hh, ww), np.int32)
    grown_row = np.empty(ww, np.int32)
    b_head = np.empty(n_levels, np.int64)
    b_tail = np.empty(n_levels, np.int64)
    link = np.empty(npx, np.int64)
    w_fg = _weight(hh, ww, taps_fg)
    w_mk = _weight(hh, ww, taps_marker)
    w_ws = _weight(hh, ww, taps_ws)
    for i in range(n_img):
        ci = cyto[i]
        nuc = nuclei[i]
        # 1. crop units: 0 = background, 1 = Otsu's level of the blurred signal
        _blur(ci, taps_fg, w_fg, acc, pad, blur_c)
        lo, thr = _levels(ci, blur_c, work, hist, bins_of, part)
        lo32 = np.float32(lo)
        span = np.float32(thr - lo)
        for y in range(hh):
            for x in range(ww):
                ui[y, x] = (ci[y, x] - lo32) / span
                s_fg[y, x] = (blur_c[y, x] - lo32) / span
        # 2. foreground: blur (sigma fg) above fg_level, holes filled; cells live in fg | nuclei
        for y in range(hh):
            for x in range(ww):
                fg0[y, x] = s_fg[y, x] > fg_level
        _fill_holes(fg0, fg, run_s, run_e, run_row, run_parent, run_edge)
        n_nuc = 0
        for y in range(hh):
            for x in range(ww):
                inside[y, x] = nuc[y, x] > 0
                mask[y, x] = fg[y, x] or inside[y, x]
                fg_out[i, y, x] = fg[y, x]
                if nuc[y, x] > n_nuc:
                    n_nuc = nuc[y, x]
        # 3. marker function: blur (sigma marker), nuclei filled with their ring's mean
        _blur(ui, taps_marker, w_mk, acc, pad, f)
        if n_nuc > 0:
            total = np.zeros(n_nuc + 1)
            cnt = np.zeros(n_nuc + 1)
            # grown = the largest label within `ring` px (square window): rows, then columns,
            # each as a maximum of shifted rows (vectorised)
            for y in range(hh):
                for x in range(ww):
                    rowmax[y, x] = nuc[y, x]
                for d in range(1, ring + 1):
                    for x in range(d, ww):
                        rowmax[y, x] = max(rowmax[y, x], nuc[y, x - d])
                    for x in range(ww - d):
                        rowmax[y, x] = max(rowmax[y, x], nuc[y, x + d])
            for y in range(hh):
                for x in range(ww):
                    grown_row[x] = rowmax[y, x]
                for yy in range(max(0, y - ring), min(hh, y + ring + 1)):
                    for x in range(ww):
                        grown_row[x] = max(grown_row[x], rowmax[yy, x])
                for x in range(ww):
                    k = grown_row[x]
                    if k > 0 and not inside[y, x]:
                        total[k] += f[y, x]
                        cnt[k] += 1.0
            for y in range(hh):
                for x in range(ww):
                    k = nuc[y, x]
                    if k > 0 and cnt[k] > 0:
                        fill = total[k] / cnt[k]
                        if fill > f[y, x]:
                            f[y, x] = np.float32(fill)
        # g = f + distance_weight x distance to the background, framed by one pixel of 0
        if distance_weight != 0.0:
            _edt_framed(mask, dist, col, env_v, env_z, env_f)
        for y in range(hh):
            for x in range(ww):
                d = distance_weight * dist[y, x] if distance_weight != 0.0 else 0.0
                g[(y + 1) * wp + x + 1] = np.float64(f[y, x]) + d
        # 4. seeds: nuclei, and h-maxima in the mask farther than `clearance` from every nucleus
        # (the h-maxima decided only where a seed can come from)
        _h_peaks(g, wp, h, mask, inside, clearance if n_nuc > 0 else 0, peaks, pix, seen)
        for y in range(hh):
            for x in range(ww):
                extra[y, x] = -1 if peaks[(y + 1) * wp + x + 1] else 0
        # label the extra seeds (4-connected) in raster order after the nuclei
        n_seed = n_nuc
        for y in range(hh):
            for x in range(ww):
                if extra[y, x] != -1:
                    continue
                n_seed += 1
                extra[y, x] = n_seed
                head_q = 0
                tail_q = 1
                queue[0] = y * ww + x
                while head_q < tail_q:
                    p = queue[head_q]
                    head_q += 1
                    py = p // ww
                    px = p - py * ww
                    for d in range(4):
                        qy = py + (-1, 1, 0, 0)[d]
                        qx = px + (0, 0, -1, 1)[d]
                        if 0 <= qy < hh and 0 <= qx < ww and extra[qy, qx] == -1:
                            extra[qy, qx] = n_seed
                            queue[tail_q] = qy * ww + qx
                            tail_q += 1
        for y in range(hh):
            for x in range(ww):
                seeds[y, x] = extra[y, x] if extra[y, x] > 0 else nuc[y, x]
        # 5. watershed of the lightly blurred signal inside fg | nuclei
        _blur(ui, taps_ws, w_ws, acc, pad, s_ws)
        _watershed(
            s_ws.ravel(), ww, seeds.ravel(), mask.ravel(), labels.ravel(), b_head, b_tail, link
        )
        # 6. merging, 7. size filter, numbered 1..k in the order of the smallest merged label
        roots = np.arange(n_seed + 1)
        if ratio > 0.0 and n_seed > 1:
            _merge(labels, seeds, f, n_seed, samples, ratio, gap, ridge, roots)
        area = np.zeros(n_seed + 1)
        for y in range(hh):
            for x in range(ww):
                lab = labels[y, x]
                if lab > 0:
                    area[roots[lab]] += 1.0
        lut = np.zeros(n_seed + 1, np.int32)
        k = 0
        for r in range(1, n_seed + 1):
            if roots[r] == r and area[r] >= min_area:
                k += 1
                lut[r] = k
        for y in range(hh):
            for x in range(ww):
                lab = labels[y, x]
                cells[i, y, x] = lut[roots[lab]] if lab > 0 else 0
