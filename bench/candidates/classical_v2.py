"""Candidate nucleus segmenter ("classical v2"), kept for evaluation; not the default.

Measured on 2026-11-21 with `python bench/segment_f1.py --candidate bench/candidates/classical_v2.py`
(66 DSB2018 images): mean F1 0.851 at IoU 0.5 and 0.697 at IoU 0.75, against 0.773 / 0.517 for the
default classical v1. It is about 3x slower (66 crops/s in one process on the 2-core machine), and
its parameters were chosen on the same 66 images, so before it can replace v1 it needs: a speed-up
to keep `cellbench eval` above 200 images/s, a check on held-out nuclei images, a metric suite
version bump and a rebuild of the shipped reference statistics.

Differences from v1: the nucleus radius is estimated from several candidate radii with a
self-consistency check; background removal by a morphological opening; foreground = above a
fraction of Otsu and a fraction of the local maximum; markers are h-maxima of a mix of the
normalised distance transform and the smoothed intensity; objects below a noise-based contrast are
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from cellbench.segment.classical import _drop_small, _normalise  # noqa: F401


@dataclass(frozen=True)
class NucleusParams:
    """Parameters of :func:`segment_nuclei` (all relative to the nucleus radius ``r``).

    The defaults define ``BACKEND_VERSION``; they were chosen on the 66 DSB2018 fluorescence
    images (``bench/segment_f1.py``) as round values on flat optima, never per image.
    """

    #: nucleus radius in pixels; ``None`` estimates it from the image (:func:`estimate_radius`)
    radius: float | None = None
    #: radii tried by the estimator (geometric, factor about 1.5)
    radius_candidates: tuple[float, ...] = (4.0, 6.0, 9.0, 13.0, 20.0, 30.0)
    #: a candidate c is self-consistent when its estimate lies in [lo, hi] x c
    consistency: tuple[float, float] = (0.8, 1.5)
    #: ... and its estimate at the next smaller candidate is at least max_jump x its own
    max_jump: float = 0.4
    #: smoothing sigma = max(smooth x r, 1 px)
    smooth: float = 0.1
    #: background = morphological opening with a (background x r)-px square, blurred by sigma r
    background: float = 4.0
    #: foreground: above otsu_fraction x Otsu of the background-subtracted image ...
    otsu_fraction: float = 0.5
    #: ... and above local_fraction x the local maximum over a (local_window x r)-px square
    local_fraction: float = 0.35
    local_window: float = 2.0
    #: marker function = (1 - w) x distance / r + w x normalised intensity (sigma intensity_sigma r)
    intensity_weight: float = 0.6
    intensity_sigma: float = 0.2
    #: the distance transform is smoothed with sigma max(distance_sigma x r, 0.5 px)
    distance_sigma: float = 0.05
    #: h of the h-maxima markers (on the marker function, whose range is about 0..1)
    h: float = 0.02
    #: objects smaller than min_area x pi r^2 (and 10 px) are dropped
    min_area: float = 0.15
    #: objects whose peak contrast is below snr x the pixel noise are dropped
    snr: float = 3.0


DEFAULT_PARAMS = NucleusParams()


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D image, or of each image of an (N, H, W) stack.

    For sigma > 3 px: three passes of a box filter of the same variance (O(1) per pixel).
    """
    lead = (0,) * (x.ndim - 2)
    if sigma <= 3.0:
        return ndi.gaussian_filter(x, (*lead, sigma, sigma), mode="nearest")
    width = 2 * round(np.sqrt(4.0 * sigma * sigma + 1.0) / 2.0) + 1
    for _ in range(3):
        x = ndi.uniform_filter(x, size=(*(1,) * len(lead), width, width), mode="nearest")
    return x


def _planar(ndim: int) -> np.ndarray:
    """4-connectivity within each image of a 2-D image or (N, H, W) stack, none across images."""
    st = ndi.generate_binary_structure(2, 1)
    if ndim == 2:
        return st
    out = np.zeros((3, 3, 3), bool)
    out[1] = st
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus the background components that do not touch the border (per image)."""
    bg, n = ndi.label(~mask, structure=_planar(mask.ndim))
    if n == 0:
        return mask.copy()
    border = np.zeros(n + 1, bool)
    for edge in (bg[..., 0, :], bg[..., -1, :], bg[..., :, 0], bg[..., :, -1]):
        border[edge] = True
    border[0] = False  # label 0 = the mask itself
    return ~border[bg]


def _max_per_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` over each label 1..n (index 0 = background, 0 where empty)."""
    out = np.zeros(n + 1, np.float64)
    np.maximum.at(out, labels.ravel(), values.ravel())
    return out


def _contrast_image(x: np.ndarray, r: float, p: NucleusParams) -> np.ndarray:
    """Smoothed image minus its background (opening by a square much wider than a nucleus).

    ``x`` is one 2-D image or an (N, H, W) stack (each image on its own).
    """
    s = _gauss(x, max(p.smooth * r, 1.0))
    k = max(int(p.background * r), 3)
    size = (*(1,) * (x.ndim - 2), k, k)
    bg = ndi.maximum_filter(ndi.minimum_filter(s, size=size), size=size)
    return s - _gauss(bg, r)


def _otsu_stack(x: np.ndarray, bins: int = 256) -> np.ndarray:
    """Otsu's threshold of each image of an (N, H, W) stack (NaN for a constant image).

    Computed over a ``bins``-bin histogram between each image's minimum and maximum.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64)
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


def _otsu(x: np.ndarray) -> float | None:
    """Otsu's threshold of one image (None for a constant image)."""
    thr = float(_otsu_stack(x[None])[0])
    return None if np.isnan(thr) else thr


def _radii_at(stack: np.ndarray, candidate: float, p: NucleusParams) -> np.ndarray:
    """Per image of an (N, H, W) stack: the radius Otsu's foreground suggests when the background
    is removed at the scale of ``candidate`` (NaN where nothing is found).

    1.2 x the median over components of the largest inscribed distance: touching nuclei do not
    inflate it, and 1.2 turns the inscribed radius of a typical (elongated) nucleus into the
    radius of the disk of the same area.
    """
    n_img = stack.shape[0]
    out = np.full(n_img, np.nan)
    t = _contrast_image(stack, candidate, p)
    thr = _otsu_stack(t)
    fg = _fill_holes(t > np.nan_to_num(thr, nan=np.inf)[:, None, None])
    comp, n = ndi.label(fg, structure=_planar(3))
    if n == 0:
        return out
    dist = np.zeros(fg.shape, np.float64)
    for i in range(n_img):  # 2-D transforms: much faster than one 3-D transform
        dist[i] = ndi.distance_transform_edt(fg[i])
    inscribed = _max_per_label(dist[fg], comp[fg], n)[1:]
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    owner = np.zeros(n + 1, np.intp)
    owner[comp.ravel()] = np.repeat(np.arange(n_img), comp[0].size)
    owner = owner[1:]
    keep = sizes >= max(0.1 * np.pi * candidate**2, 8.0)
    owner, inscribed = owner[keep], inscribed[keep]
    order = np.argsort(owner, kind="stable")
    owner, inscribed = owner[order], inscribed[order]
    bounds = np.searchsorted(owner, np.arange(n_img + 1))
    for i in range(n_img):
        if bounds[i + 1] > bounds[i]:
            out[i] = 1.2 * float(np.median(inscribed[bounds[i] : bounds[i + 1]]))
    return out


def estimate_radii(stack: np.ndarray, params: NucleusParams = DEFAULT_PARAMS) -> np.ndarray:
    """:func:`estimate_radius` of every image of an (N, H, W) stack (the same values, faster)."""
    x = np.asarray(stack, np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {x.shape}")
    cands = [c for c in params.radius_candidates if 4 * c <= max(x.shape[1:])]
    cands = cands or [min(params.radius_candidates)]
    c = np.asarray(cands, float)
    est = np.stack([_radii_at(x, cand, params) for cand in cands], axis=1)  # (N, n_cands)
    lo, hi = params.consistency
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(est) & (est >= lo * c) & (est <= hi * c)
        # a jump of the measurement by more than 1 / max_jump from one candidate to the next
        # means the background window let background (or merged clusters) into the foreground
        prev = np.concatenate([np.full((len(x), 1), np.nan), est[:, :-1]], axis=1)
        ok &= ~(np.isfinite(prev) & (prev < params.max_jump * est))
    out = np.full(len(x), float(cands[0]))
    for i in range(len(x)):
        if ok[i].any():
            out[i] = est[i, np.flatnonzero(ok[i])[-1]]
        elif np.isfinite(est[i]).any():
            out[i] = est[i, np.nanargmin(np.abs(np.log(est[i] / c)))]
    return out


def estimate_radius(dna: np.ndarray, params: NucleusParams = DEFAULT_PARAMS) -> float:
    """Typical nucleus radius (pixels) of a 2-D DNA image, for any nucleus size.

    Every candidate radius c (no wider than a quarter of the image) removes the background at
    its scale and measures the radius of what Otsu then finds; the answer is that measurement at
    the largest self-consistent candidate (measurement within ``params.consistency`` x c, and
    not more than 1 / ``params.max_jump`` times the measurement at the next smaller candidate).
    Too small a candidate breaks textured nuclei into bits, too large a one lets the background
    in; the largest consistent one avoids both.
    """
    x = np.asarray(dna, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    return float(estimate_radii(x[None], params)[0])


def _noise_sigma(x: np.ndarray) -> float:
    """Pixel noise from the median absolute deviation of horizontal neighbour differences."""
    if x.shape[1] < 2:
        return 0.0
    d = np.diff(x, axis=1).ravel()
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _relabel_sequential(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    keep = keep.copy()
    keep[0] = False
    lut = np.zeros(len(keep), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def segment_nuclei(dna: np.ndarray, *, params: NucleusParams = DEFAULT_PARAMS) -> np.ndarray:
    """Nucleus instance labels (int32, 0 = background) of a 2-D DNA image of any size and dtype.

    See the module docstring for the steps. ``params.radius`` fixes the nucleus radius instead of
    estimating it.
    """
    x = np.asarray(dna, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    empty = np.zeros(x.shape, np.int32)
    if x.size == 0 or float(x.max()) - float(x.min()) < 1e-6:
        return empty
    p = params
    r = float(p.radius) if p.radius is not None else estimate_radius(x, p)
    r = max(r, 1.5)
    t = _contrast_image(x, r, p)
    thr = _otsu(t)
    if thr is None:
        return empty
    local_max = _gauss(ndi.maximum_filter(t, size=max(int(p.local_window * r), 3)), 0.5 * r)
    fg = (t > p.otsu_fraction * thr) & (t > p.local_fraction * local_max)
    typical = np.pi * r * r
    min_size = max(p.min_area * typical, 10.0)
    comp, n = ndi.label(_fill_holes(fg))
    fg = _relabel_sequential(comp, np.bincount(comp.ravel()) > min_size) > 0
    if not fg.any():
        return empty
    dist = ndi.distance_transform_edt(fg)
    if p.distance_sigma > 0:
        dist = _gauss(dist, max(p.distance_sigma * r, 0.5))
    marker_fn = dist / r
    if p.intensity_weight > 0:
        it = _gauss(t, max(p.intensity_sigma * r, 0.5))
        top = float(np.percentile(it[fg], 99))
        inorm = np.clip(it / top, 0.0, 1.0) if top > 0 else np.zeros_like(it)
        marker_fn = (1.0 - p.intensity_weight) * marker_fn + p.intensity_weight * inorm
    # markers and watershed on the foreground's bounding box only: outside it the mask is empty
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    f, m = marker_fn[box], fg[box]
    markers, _ = ndi.label(h_maxima(f, p.h) & m)
    labels = empty.copy()
    labels[box] = watershed(-f, markers, mask=m)
    n = int(labels.max())
    if n == 0:
        return empty
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes > min_size
    noise = _noise_sigma(x)
    if noise > 0 and p.snr > 0:
        inside = labels > 0
        keep &= _max_per_label(t[inside], labels[inside], n) >= p.snr * noise
    return _relabel_sequential(labels, keep)
