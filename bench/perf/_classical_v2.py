"""Frozen copy of the `classical` segmenter version 2 (metric suite 2), kept only so that
bench/perf/segment_speed.py can time it side by side with version 3. Not used by cellbench.

The original docstring follows.

The default ``classical`` segmentation backend, version 2 (scikit-image, no weights).

Scale-aware nuclei, cells by a seeded watershed.

Nuclei (:func:`segment_nuclei`, one 2-D DNA image of any size and dtype). Every length is a multiple
of the nucleus radius ``r``, so the same parameters serve 96x96 crops (nuclei 10-25 px across) and
1000-px fields (nuclei 8-50 px across):

1. ``r`` is estimated from the image (:func:`estimate_radius`): for candidate radii 4, 6, 9, 13, 20
   and 30 px, the background is removed at the candidate's scale and the radius of what Otsu's
   threshold then finds is measured (1.2 x the median over blobs of the largest inscribed distance,
   which touching nuclei do not inflate); the answer is the measurement at the largest candidate
   that agrees with it (measurement within 0.8-1.5 x the candidate, and not a jump of more than
   2.5x over the next smaller candidate, which signals background leaking in);
2. smoothing (Gaussian, sigma max(0.1 r, 1 px)) and background removal: the image minus its
   morphological opening by a 4r-px square, blurred with sigma r (uneven illumination, tissue
   autofluorescence);
3. foreground = above 0.5 x Otsu's threshold AND above 0.35 x the local maximum over a 2r-px
   square: dim nuclei beside bright ones are kept, each with its own half-maximum-like border;
   holes are filled and blobs smaller than 0.15 pi r^2 (or 10 px) dropped;
4. touching nuclei are split by a watershed of -m seeded by the h-maxima (h = 0.02) of
   m = 0.4 x distance-to-background / r + 0.6 x intensity normalised to its 99th percentile
   (sigma 0.2 r): both the shape (necks) and the brightness (dark gaps) separate nuclei;
5. nuclei smaller than 0.15 pi r^2 (or 10 px), or whose peak contrast is below 3x the pixel noise
   (median absolute deviation of neighbour differences), are dropped.

On the 66 DSB2018 fluorescence images (``bench/studies/segment_f1.py``, 5,094 nuclei, sizes 256x256 to
1040x1388) this reaches a mean F1 of 0.851 at IoU 0.5 and 0.697 at IoU 0.75 (version 1: 0.773 /
0.517). The parameters are round values on flat optima chosen on those 66 images, never per image.

Speed (one process, 96x96x3 crops): about 150 crops/s with the per-image radius estimate, which
takes half the time; about 210-330 crops/s (as fast as version 1) with a fixed radius,
``NucleusParams(radius=...)``, e.g. one radius per dataset.

Cells (:func:`segment_crop`, cytoplasm = mean of every channel but DNA; the DNA channel itself for
a one-channel image): the signal is normalised (0.5 / 99.8 percentiles) and smoothed (sigma
1.5 px); the cytoplasm foreground is above half its Otsu threshold, holes filled (so the area
under a nucleus enclosed by cytoplasm counts as cytoplasm); cells are the seeded watershed of the
inverted signal inside (foreground or nuclei), seeded by the nuclei; foreground blobs holding no
nucleus become cells of their own if at least as large as the median nucleus.

Per-image features (docs/scoring.md, :func:`features_from_masks`): ``nuc_count``, ``cell_count``,
``nuc_max_area`` and ``cell_max_area`` (pixels), ``roundness`` = mean over nuclei of
4 pi area / perimeter^2 clipped to [0, 1], with scikit-image's perimeter estimator (4-connected
border pixels; straight, diagonal and corner steps weighted 1, sqrt(2) and (1 + sqrt(2)) / 2; see
:func:`_perimeters`), and ``nuc_in_cyto`` = fraction of nucleus pixels inside the cytoplasm
foreground. An image with no nucleus gets roundness 0 and nuc_in_cyto 0; the reward layer gives it
the clipped minimum.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from cellbench.errors import ImageError

__all__ = [
    "BACKEND_NAME",
    "BACKEND_VERSION",
    "DEFAULT_PARAMS",
    "FEATURE_NAMES",
    "NucleusParams",
    "SegmentationResult",
    "estimate_radii",
    "estimate_radius",
    "features_from_masks",
    "segment_batch",
    "segment_crop",
    "segment_nuclei",
]

BACKEND_NAME = "classical"
#: bumped whenever outputs can change (reference statistics made with another version are refused);
#: version 1 (metric suite 1) used a fixed-fraction threshold and h-maxima on the distance alone
BACKEND_VERSION = "2"
FEATURE_NAMES: tuple[str, ...] = (
    "nuc_count",
    "cell_count",
    "nuc_max_area",
    "cell_max_area",
    "roundness",
    "nuc_in_cyto",
)


@dataclass(frozen=True)
class SegmentationResult:
    """Instance labels of nuclei and cells (int32, 0 = background) and the cytoplasm foreground."""

    nuclei: np.ndarray
    cells: np.ndarray
    cyto_mask: np.ndarray


@dataclass(frozen=True)
class NucleusParams:
    """Parameters of :func:`segment_nuclei`; lengths are multiples of the nucleus radius ``r``.

    The defaults define ``BACKEND_VERSION`` "2".
    """

    #: nucleus radius in pixels; None estimates it per image (:func:`estimate_radius`)
    radius: float | None = None
    #: radii tried by the estimator (geometric, factor about 1.5)
    radius_candidates: tuple[float, ...] = (4.0, 6.0, 9.0, 13.0, 20.0, 30.0)
    #: candidates c with max_window x c wider than the image's longer side are not tried
    max_window: float = 4.0
    #: a candidate c agrees with its measurement e when lo x c <= e <= hi x c ...
    consistency: tuple[float, float] = (0.8, 1.5)
    #: ... and the measurement at the next smaller candidate is at least max_jump x e
    max_jump: float = 0.4
    #: smoothing sigma = max(smooth x r, 1 px)
    smooth: float = 0.1
    #: background = opening by a (background x r)-px square, blurred with sigma r
    background: float = 4.0
    #: foreground: above otsu_fraction x Otsu's threshold of the background-free image ...
    otsu_fraction: float = 0.5
    #: ... and above local_fraction x the local maximum over a (local_window x r)-px square
    local_fraction: float = 0.35
    local_window: float = 2.0
    #: marker function = (1 - w) x distance / r + w x normalised intensity (sigma intensity_sigma r)
    intensity_weight: float = 0.6
    intensity_sigma: float = 0.2
    #: the distance transform is smoothed with sigma max(distance_sigma x r, 0.5 px)
    distance_sigma: float = 0.05
    #: h of the h-maxima markers (the marker function spans about 0..1)
    h: float = 0.02
    #: blobs and nuclei of at most max(min_area x pi r^2, 10 px) are dropped
    min_area: float = 0.15
    #: nuclei whose peak contrast is below snr x the pixel noise are dropped (0: keep all)
    snr: float = 3.0


DEFAULT_PARAMS = NucleusParams()


# ------------------------------------------------------------------------------------------------
# helpers; each works on one 2-D image or on an (N, H, W) stack of images, each on its own


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur within each image; for sigma > 3 px three box passes of the same variance."""
    lead = (0,) * (x.ndim - 2)
    if sigma <= 3.0:
        return ndi.gaussian_filter(x, (*lead, sigma, sigma), mode="nearest")
    width = 2 * round(np.sqrt(4.0 * sigma * sigma + 1.0) / 2.0) + 1
    size = (*(1,) * len(lead), width, width)
    for _ in range(3):
        x = ndi.uniform_filter(x, size=size, mode="nearest")
    return x


def _planar(ndim: int) -> np.ndarray:
    """4-connectivity within each image, none across the images of a stack."""
    st = ndi.generate_binary_structure(2, 1)
    if ndim == 2:
        return st
    out = np.zeros((3, 3, 3), bool)
    out[1] = st
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus its holes: background components that do not touch the image border."""
    bg, n = ndi.label(~mask, structure=_planar(mask.ndim))
    if n == 0:
        return mask.copy()
    border = np.zeros(n + 1, bool)
    for edge in (bg[..., 0, :], bg[..., -1, :], bg[..., :, 0], bg[..., :, -1]):
        border[edge] = True
    border[0] = False  # label 0 is the mask itself
    return ~border[bg]


def _max_per_label(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` per label 0..n (0 where a label is absent)."""
    out = np.zeros(n + 1, np.float64)
    np.maximum.at(out, labels.ravel(), values.ravel())
    return out


def _contrast(x: np.ndarray, r: float, p: NucleusParams, cache: dict | None = None) -> np.ndarray:
    """Smoothed image minus its background (opening by a square much wider than a nucleus).

    ``cache`` keeps the smoothed image per sigma (radii up to 10 px all use sigma 1 px).
    """
    sigma = max(p.smooth * r, 1.0)
    s = None if cache is None else cache.get(sigma)
    if s is None:
        s = _gauss(x, sigma)
        if cache is not None:
            cache[sigma] = s
    k = max(int(p.background * r), 3)
    size = (*(1,) * (x.ndim - 2), k, k)
    bg = ndi.maximum_filter(ndi.minimum_filter(s, size=size), size=size)
    return s - _gauss(bg, r)


def _otsu_stack(x: np.ndarray, bins: int = 256) -> np.ndarray:
    """Otsu's threshold of each image of an (N, H, W) stack, over a ``bins``-bin histogram
    between the image's minimum and maximum (NaN for a constant image)."""
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
    """Otsu's threshold of one 2-D image (None for a constant image)."""
    thr = float(_otsu_stack(x[None])[0])
    return None if np.isnan(thr) else thr


# ------------------------------------------------------------------------------------------------
# nucleus radius


def _radii_at(stack: np.ndarray, candidate: float, p: NucleusParams, cache: dict) -> np.ndarray:
    """Per image of an (N, H, W) stack, the radius Otsu's foreground suggests once the background
    is removed at the scale of ``candidate`` (NaN where nothing is found).

    1.2 x the median over blobs of the largest inscribed distance: touching nuclei do not inflate
    it, and 1.2 turns the inscribed radius of a typical (elongated) nucleus into the radius of the
    disk of the same area.
    """
    n_img = stack.shape[0]
    out = np.full(n_img, np.nan)
    t = _contrast(stack, candidate, p, cache)
    thr = _otsu_stack(t)
    fg = _fill_holes(t > np.nan_to_num(thr, nan=np.inf)[:, None, None])
    comp, n = ndi.label(fg, structure=_planar(3))
    if n == 0:
        return out
    dist = np.zeros(fg.shape, np.float64)
    for i in range(n_img):  # 2-D transforms (a 3-D one is much slower)
        dist[i] = ndi.distance_transform_edt(fg[i])
    inscribed = _max_per_label(dist[fg], comp[fg], n)[1:]
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    owner = np.zeros(n + 1, np.intp)
    owner[comp.ravel()] = np.repeat(np.arange(n_img), comp[0].size)
    keep = sizes >= max(0.1 * np.pi * candidate**2, 8.0)
    owner, inscribed = owner[1:][keep], inscribed[keep]
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
    p = params
    n_img = x.shape[0]
    cands = [c for c in sorted(p.radius_candidates) if p.max_window * c <= max(x.shape[1:])]
    cands = cands or [min(p.radius_candidates)]
    lo, hi = p.consistency
    est = np.full((n_img, len(cands)), np.nan)
    done = np.zeros((n_img, len(cands)), bool)
    caches: dict[tuple[int, ...], dict] = {}

    def measure(rows: np.ndarray, k: int) -> np.ndarray:
        todo = rows[~done[rows, k]]
        if len(todo):
            cache = caches.setdefault(tuple(todo), {})
            est[todo, k] = _radii_at(x[todo], cands[k], p, cache)
            done[todo, k] = True
        return est[rows, k]

    out = np.full(n_img, np.nan)
    open_ = np.arange(n_img)
    # from the largest candidate down: the first that agrees with its measurement wins
    for k in range(len(cands) - 1, -1, -1):
        if len(open_) == 0:
            break
        e = measure(open_, k)
        with np.errstate(invalid="ignore"):
            agree = np.isfinite(e) & (e >= lo * cands[k]) & (e <= hi * cands[k])
        if k > 0 and agree.any():
            prev = measure(open_[agree], k - 1)
            with np.errstate(invalid="ignore"):
                jump = np.isfinite(prev) & (prev < p.max_jump * e[agree])
            agree[np.flatnonzero(agree)[jump]] = False
        out[open_[agree]] = e[agree]
        open_ = open_[~agree]
    # no agreeing candidate: the measurement closest (in ratio) to its candidate
    for k in range(len(cands)):
        measure(open_, k)
    c = np.asarray(cands, float)
    for i in open_:
        if np.isfinite(est[i]).any():
            with np.errstate(invalid="ignore", divide="ignore"):
                out[i] = est[i, np.nanargmin(np.abs(np.log(est[i] / c)))]
        else:
            out[i] = cands[0]
    return out


def estimate_radius(dna: np.ndarray, params: NucleusParams = DEFAULT_PARAMS) -> float:
    """Typical nucleus radius (pixels) of a 2-D DNA image, for any nucleus size.

    Each candidate radius c (``params.radius_candidates``, those no wider than the image allows)
    removes the background at its scale and measures the radius of what Otsu's threshold then
    finds. The answer is that measurement at the largest candidate it agrees with (measurement
    within ``params.consistency`` x c, and at most 1 / ``params.max_jump`` times the measurement
    at the next smaller candidate). Too small a candidate breaks textured nuclei into bits, too
    large a one lets the background in; the largest agreeing one avoids both. Without any
    agreeing candidate: the measurement closest (in ratio) to its candidate. Candidates are
    measured from the largest down, only as far as needed.
    """
    x = np.asarray(dna, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    return float(estimate_radii(x[None], params)[0])


# ------------------------------------------------------------------------------------------------
# nuclei


def _noise_sigma(x: np.ndarray) -> float:
    """Pixel noise: median absolute deviation of horizontal neighbour differences / sqrt(2)."""
    if x.shape[1] < 2:
        return 0.0
    d = np.diff(x, axis=1).ravel()
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _relabel(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the labels flagged in ``keep`` (indexed by label), renumbered 1..k in order."""
    keep = keep.copy()
    keep[0] = False
    lut = np.zeros(len(keep), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def segment_nuclei(dna: np.ndarray, *, params: NucleusParams = DEFAULT_PARAMS) -> np.ndarray:
    """Nucleus instance labels (int32, 0 = background) of a 2-D DNA image of any size and dtype.

    The steps are in the module docstring; ``params.radius`` fixes the nucleus radius instead of
    estimating it per image.
    """
    x = np.asarray(dna, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    empty = np.zeros(x.shape, np.int32)
    if x.size == 0 or not np.isfinite(x).all() or float(x.max()) - float(x.min()) < 1e-6:
        return empty
    p = params
    r = max(float(p.radius) if p.radius is not None else estimate_radius(x, p), 1.5)
    t = _contrast(x, r, p)
    thr = _otsu(t)
    if thr is None:
        return empty
    local_max = _gauss(ndi.maximum_filter(t, size=max(int(p.local_window * r), 3)), 0.5 * r)
    fg = (t > p.otsu_fraction * thr) & (t > p.local_fraction * local_max)
    min_size = max(p.min_area * np.pi * r * r, 10.0)
    comp, _ = ndi.label(_fill_holes(fg))
    fg = _relabel(comp, np.bincount(comp.ravel()) > min_size) > 0
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
    # markers and watershed on the foreground's bounding box only (the mask is empty outside)
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    f, m = marker_fn[box], fg[box]
    markers, _ = ndi.label(h_maxima(f, p.h) & m)
    labels = empty.copy()
    labels[box] = watershed(-f, markers, mask=m)
    n = int(labels.max())
    if n == 0:
        return empty
    keep = np.bincount(labels.ravel(), minlength=n + 1) > min_size
    noise = _noise_sigma(x)
    if noise > 0 and p.snr > 0:
        inside = labels > 0
        keep &= _max_per_label(t[inside], labels[inside], n) >= p.snr * noise
    return _relabel(labels, keep)


# ------------------------------------------------------------------------------------------------
# crops: nuclei, cells, cytoplasm


def _normalise(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img, np.float32)
    lo, hi = np.percentile(x, (0.5, 99.8))
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def cell_pass(cyto_src: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Version 2's cells and cytoplasm foreground: a watershed of the cytoplasm seeded by the
    nuclei inside its Otsu foreground, plus nucleus-free blobs at least a median nucleus large."""
    cyto = ndi.gaussian_filter(_normalise(cyto_src), 1.5)
    t = _otsu(cyto)
    cyto_mask = np.zeros(cyto.shape, bool) if t is None else _fill_holes(cyto > 0.5 * t)
    mask = cyto_mask | (nuclei > 0)
    cells = watershed(-cyto, nuclei, mask=mask)
    orphan = mask & (cells == 0)
    if orphan.any():
        comp, n = ndi.label(orphan)
        sizes = np.bincount(comp.ravel())
        nuc_sizes = np.bincount(nuclei.ravel())[1:]
        min_size = float(np.median(nuc_sizes)) if len(nuc_sizes) else 30.0
        next_id = int(cells.max()) + 1
        for k in range(1, n + 1):
            if sizes[k] >= min_size:
                cells[comp == k] = next_id
                next_id += 1
    return cells, cyto_mask


def _channels(image: np.ndarray, dna_channel: int) -> tuple[np.ndarray, np.ndarray]:
    """(DNA, cytoplasm signal) of an HxW, HxWx1 or HxWxC image."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return img, img
    if img.ndim != 3:
        raise ImageError(
            f"expected an HxW, HxWx1 or HxWxC image, got shape {img.shape}",
            fix="pass one image at a time (segment_batch takes a stack)",
        )
    if not -img.shape[-1] <= dna_channel < img.shape[-1]:
        raise ImageError(
            f"dna_channel {dna_channel} is out of range for {img.shape[-1]} channels",
            fix="pass the index of the DNA channel (2 for actin, tubulin, DNA)",
        )
    dna_channel %= img.shape[-1]
    others = [k for k in range(img.shape[-1]) if k != dna_channel]
    return img[..., dna_channel], img[..., others].astype(np.float32).mean(-1)


def segment_crop(
    image: np.ndarray, *, dna_channel: int = 2, params: NucleusParams = DEFAULT_PARAMS
) -> SegmentationResult:
    """Segment one crop: HxWxC (``dna_channel`` names DNA; the other channels are cytoplasm),
    or HxW / HxWx1 (nuclei, and cells from the same channel)."""
    dna, cyto_src = _channels(image, dna_channel)
    nuclei = segment_nuclei(dna, params=params)
    cells, cyto_mask = cell_pass(cyto_src, nuclei)
    return SegmentationResult(nuclei.astype(np.int32), cells.astype(np.int32), cyto_mask)


# ------------------------------------------------------------------------------------------------
# features

#: weights of scikit-image's perimeter estimator by neighbourhood code (see :func:`_perimeters`)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + np.sqrt(2.0)) / 2.0
_NEIGHBOURS = (
    (-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2),
    (-1, -1, 10), (-1, 1, 10), (1, -1, 10), (1, 1, 10),
)  # fmt: skip


def _perimeters(labels: np.ndarray, n: int) -> np.ndarray:
    """Perimeter of every label 0..n, equal to ``skimage.measure.regionprops(...).perimeter``.

    scikit-image's estimator: a border pixel has a 4-neighbour outside its object; it adds 1,
    sqrt(2) or (1 + sqrt(2)) / 2 according to which of its 8 neighbours are border pixels of the
    same object (straight, diagonal or corner step of the contour). All labels at once.
    """
    lab = np.pad(labels, 1)
    c = lab[1:-1, 1:-1]
    border = (c > 0) & (
        (lab[:-2, 1:-1] != c) | (lab[2:, 1:-1] != c) | (lab[1:-1, :-2] != c) | (lab[1:-1, 2:] != c)
    )
    b = np.pad(np.where(border, c, 0), 1)
    code = border.astype(np.intp)
    h, w = c.shape
    for dy, dx, weight in _NEIGHBOURS:
        code += weight * ((b[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] == c) & border)
    return np.bincount(c[border], weights=_PERIMETER_WEIGHTS[code[border]], minlength=n + 1)


def features_from_masks(seg: SegmentationResult) -> dict[str, float]:
    """The six per-image features of one segmentation (definitions in the module docstring)."""
    nuclei = np.asarray(seg.nuclei)
    n_nuc = int(nuclei.max()) if nuclei.size else 0
    nuc_area = np.bincount(nuclei.ravel(), minlength=n_nuc + 1)[1:]
    present = nuc_area > 0
    cell_area = np.bincount(np.asarray(seg.cells).ravel())[1:]
    cell_area = cell_area[cell_area > 0]
    if present.any():
        per = _perimeters(nuclei, n_nuc)[1:][present]
        area = nuc_area[present].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rounds = np.where(per > 0, np.minimum(4.0 * np.pi * area / per**2, 1.0), 1.0)
        inside = nuclei > 0
        roundness = float(np.mean(rounds))
        nuc_in_cyto = float(np.count_nonzero(inside & seg.cyto_mask) / np.count_nonzero(inside))
        nuc_max = float(area.max())
    else:
        roundness, nuc_in_cyto, nuc_max = 0.0, 0.0, 0.0
    return {
        "nuc_count": float(np.count_nonzero(present)),
        "cell_count": float(len(cell_area)),
        "nuc_max_area": nuc_max,
        "cell_max_area": float(cell_area.max()) if len(cell_area) else 0.0,
        "roundness": roundness,
        "nuc_in_cyto": nuc_in_cyto,
    }


#: segment_batch estimates the nucleus radii of this many crops at a time
BATCH_CHUNK = 64


def segment_batch(
    images: np.ndarray, *, dna_channel: int = 2, params: NucleusParams = DEFAULT_PARAMS
) -> np.ndarray:
    """(N, H, W, C) (or (N, H, W)) crops -> (N, 6) float64 features in FEATURE_NAMES order.

    The same features as :func:`segment_crop` one crop at a time; the nucleus radii are estimated
    for a chunk of crops at once, which is faster.
    """
    imgs = np.asarray(images)
    if imgs.ndim not in (3, 4):
        raise ImageError(
            f"expected an (N, H, W, C) or (N, H, W) stack of images, got shape {imgs.shape}",
            fix="stack crops of one size along a new first axis",
        )
    out = np.zeros((len(imgs), len(FEATURE_NAMES)))
    for start in range(0, len(imgs), BATCH_CHUNK):
        chunk = imgs[start : start + BATCH_CHUNK]
        dna = np.stack([_channels(img, dna_channel)[0] for img in chunk])
        radii = (
            estimate_radii(dna, params)
            if params.radius is None
            else np.full(len(chunk), params.radius)
        )
        for i, (img, r) in enumerate(zip(chunk, radii, strict=True)):
            seg = segment_crop(img, dna_channel=dna_channel, params=replace(params, radius=r))
            f = features_from_masks(seg)
            out[start + i] = [f[k] for k in FEATURE_NAMES]
    return out


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        description="The frozen classical v2 segmenter (a module imported by segment_speed.py)."
    ).parse_args()
