"""The default ``classical`` segmentation backend, version 3 (scikit-image, no weights).

Scale-aware nuclei, cells from the cytoplasm's own evidence (:mod:`.cells`), every step run once
per batch of crops.

Nuclei (:func:`segment_nuclei_stack`, a stack of 2-D DNA images of one size; :func:`segment_nuclei`
for one image of any size and dtype). Every length is a multiple of the nucleus radius ``r``, so
the same parameters serve 96x96 crops (nuclei 10-25 px across) and 1000-px fields (nuclei 6-100 px
across):

1. ``r`` is estimated per image (:func:`estimate_radii`) as the largest self-consistent scale: start
   from the largest radius the image allows (``max_radius``, 64 px, or a quarter of the longer
   side); remove the background at that scale (step 2), threshold at Otsu's level and measure the
   radius of what is found (1.2 x the median over blobs of the largest inscribed distance; touching
   nuclei do not inflate it, and 1.2 turns the inscribed radius of a typical elongated nucleus into
   the radius of the disk of the same area). A measurement within 0.8-1.25 x the candidate accepts
   it, unless (for candidates of 12 px or more) the measurement at half the candidate is below
   0.4 x its own (the blobs were background let in); a smaller one becomes the next candidate; a larger one or none halves it;
   without any agreement, the measurement closest in ratio to its candidate. Candidates above
   10 px are measured on the image block-averaged by a power of 2 (at least 5 px of radius left).
   Too small a scale breaks textured nuclei into bits, too large a one lets the background in;
   coming down from above stops at the first scale that explains its own measurement. Radii are
   rounded to a geometric grid (factor 2^(1/8)), so a batch of crops shares each filter pass among
   the crops of one radius;
2. smoothing (Gaussian, sigma max(0.1 r, 1 px)) and background removal: the image minus its
   morphological opening by a 4r-px square, blurred with sigma r (uneven illumination, tissue
   autofluorescence); for squares of 16 px or more the opening and the blur run on the minima of
   blocks of 1/8 the square's side, interpolated linearly back to every pixel;
3. foreground = above 0.6 x Otsu's threshold AND above ``local_fraction`` x the local maximum over
   a 2r-px square blurred with sigma 0.5 r (for squares of 8 px or more on the maxima of blocks
   of 1/4 the square's side, interpolated linearly): dim nuclei beside bright ones are kept, each
   with its own half-maximum-like border; holes are filled and blobs smaller than 0.15 pi r^2 (or 10 px) dropped;
4. touching nuclei are split by a watershed of -m seeded by its markers, the regional maxima
   (8-connected) of m quantised in steps of h = 0.05, where m = 0.5 x distance-to-background / r
   + 0.5 x intensity normalised to its 99th percentile (sigma 0.2 r): both the shape (necks) and
   the brightness (dark gaps) separate nuclei. The distance is measured within each image, whose
   edge is not background (an exact Euclidean transform, the ``edt`` package's values);
5. borders: each nucleus is grown by a watershed of the contrast into the pixels above 0.25 x
   Otsu's threshold and keeps the pixels above half its own mean contrast, so a dim nucleus gets
   a border as wide as its glow and a bright one on a blurred halo a border at its edge (the
   thresholds of step 3 are one level for a whole neighbourhood);
6. nuclei smaller than 0.15 pi r^2 (or 10 px), or whose peak contrast is below 3x the pixel noise
   (median absolute deviation of neighbour differences), are dropped;
7. the nuclei must have about the radius they were found at: where their median equal-area radius
   is below 0.9 r (crowded nuclei merged at too large a scale), steps 2-6 run again at that
   radius, until the nuclei agree (at most 3 times).

**Batches.** Filters run on the (N, H, W) stack with no smoothing across its first axis; the
steps that need a 2-D image (labelling, distance transform, reconstruction, watershed) run once on
the *strip*: the stack padded with one background pixel on every side and laid end to end, which
keeps every image's objects apart. A single image is a batch of one, so an image's labels do not
depend on the other images of its batch (tested), and shards merge exactly.

Cells (:func:`segment_stack`; cytoplasm = mean of every channel but DNA; the DNA channel itself for
a one-channel image): :func:`cellbench.features.segment.cells.segment_cells`, from the cytoplasm's
own evidence with the nuclei as one input among others (a cell with two nuclei counts once, a cell
body without a visible nucleus counts), every crop on its own in one compiled loop over the batch
(:func:`cellbench.features.segment.cells.segment_cells_stack`).

Per-image features (docs/scoring.md, :func:`features_from_masks` for one image,
:func:`stack_features` for a batch): ``nuc_count``, ``cell_count``, ``nuc_max_area`` and
``cell_max_area`` (pixels), ``roundness`` = mean over nuclei of 4 pi area / perimeter^2 clipped to
[0, 1], with scikit-image's perimeter estimator (4-connected border pixels; straight, diagonal and
corner steps weighted 1, sqrt(2) and (1 + sqrt(2)) / 2; see :func:`_perimeters`), and
``nuc_in_cyto`` = fraction of nucleus pixels inside the cytoplasm foreground. An image with no
nucleus gets roundness 0 and nuc_in_cyto 0; the reward layer gives it the clipped minimum.

**Compiled.** The filters, thresholds, distance transform, regional maxima, watersheds and per-label
reductions of the nucleus pass run as numba kernels (:mod:`._nucleus_kernels`), each giving bit for
bit what the scipy / scikit-image / numpy routine it replaced gives (same float operations in the
same order; the watershed the same heap with the same ties), so the labels equal those of the
pure scipy / scikit-image version (frozen in ``bench/perf/_classical_v3_ref.py``; tested on
simulated, real BBBC021 and DSB2018 images).

Accuracy and speed are in docs/benchmarks.md (``bench/studies/segment_f1.py``,
``bench/studies/segment_cv.py``, ``bench/perf/nucleus_pass_speed.py``,
``bench/perf/segment_speed.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellbench.errors import ImageError
from cellbench.features.segment import _nucleus_kernels as K
from cellbench.features.segment._feature_kernels import PERIMETER_WEIGHTS
from cellbench.features.segment.cells import segment_cells_stack

__all__ = [
    "BACKEND_NAME",
    "BACKEND_VERSION",
    "DEFAULT_PARAMS",
    "FEATURE_NAMES",
    "NucleusParams",
    "SegmentationResult",
    "StackSegmentation",
    "estimate_radii",
    "estimate_radius",
    "features_from_masks",
    "segment_batch",
    "segment_crop",
    "segment_nuclei",
    "segment_nuclei_stack",
    "segment_stack",
    "stack_features",
]

BACKEND_NAME = "classical"
#: bumped whenever outputs can change (reference statistics made with another version are refused);
#: version 1 (metric suite 1) used a fixed-fraction threshold and h-maxima on the distance alone;
#: version 2 estimated the radius bottom-up from six fixed candidates (30 px at most)
BACKEND_VERSION = "3"
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
class StackSegmentation:
    """A batch of segmentations: (N, H, W) nuclei and cells (int32, numbered 1..k in each image)
    and the (N, H, W) cytoplasm foreground."""

    nuclei: np.ndarray
    cells: np.ndarray
    cyto_mask: np.ndarray

    def __getitem__(self, i: int) -> SegmentationResult:
        return SegmentationResult(self.nuclei[i], self.cells[i], self.cyto_mask[i])


@dataclass(frozen=True)
class NucleusParams:
    """Parameters of :func:`segment_nuclei`; lengths are multiples of the nucleus radius ``r``.

    The defaults define ``BACKEND_VERSION`` "3".
    """

    #: nucleus radius in pixels; None estimates it per image (:func:`estimate_radii`)
    radius: float | None = None
    #: the estimate starts at min(max_radius, longer side / max_window) and never goes below min_radius
    max_radius: float = 64.0
    min_radius: float = 2.0
    max_window: float = 4.0
    #: a candidate c is accepted when its measurement e is within lo x c <= e <= hi x c
    consistency: tuple[float, float] = (0.8, 1.25)
    #: the radius is inscribed_factor x the median largest inscribed distance of the blobs ...
    inscribed_factor: float = 1.2
    #: ... above measure_fraction x Otsu's threshold
    measure_fraction: float = 1.0
    #: each candidate is measured on the image block-averaged by a power of 2 that leaves it at
    #: least measure_pixels px of radius
    measure_pixels: float = 5.0
    #: an agreeing candidate c is refused when the measurement at c / 2 is below max_jump x its
    #: own (the blobs at c were background let in)
    max_jump: float = 0.4
    #: at most this many candidates per image (then the last one)
    max_steps: int = 8
    #: ... checked only for candidates of at least this many px (below, the background square
    #: of a crop-sized image is too small to let background in as blobs)
    leak_min_radius: float = 12.0
    #: smoothing sigma = max(smooth x r, 1 px)
    smooth: float = 0.1
    #: background = opening by a (background x r)-px square, blurred with sigma r
    background: float = 4.0
    #: foreground: above otsu_fraction x Otsu's threshold of the background-free image ...
    otsu_fraction: float = 0.6
    #: ... and above local_fraction x the local maximum over a (local_window x r)-px square
    local_fraction: float = 0.35
    local_window: float = 2.0
    #: marker function = (1 - w) x distance / r + w x normalised intensity (sigma intensity_sigma r)
    intensity_weight: float = 0.5
    intensity_sigma: float = 0.2
    #: the distance transform is smoothed with sigma max(distance_sigma x r, 0.5 px)
    distance_sigma: float = 0.05
    #: h of the h-maxima markers (the marker function spans about 0..1)
    h: float = 0.05
    #: blobs and nuclei of at most max(min_area x pi r^2, 10 px) are dropped
    min_area: float = 0.15
    #: nuclei whose peak contrast is below snr x the pixel noise are dropped (0: keep all)
    snr: float = 3.0
    #: border refinement: each nucleus is grown by a watershed of the contrast into the pixels
    #: above refine_low x Otsu's threshold, then keeps the pixels above refine_fraction x its
    #: mean contrast (0: no refinement)
    refine_fraction: float = 0.5
    refine_low: float = 0.25
    #: with an estimated radius r, an image whose nuclei have a median equal-area radius below
    #: consistent_nuclei x r is segmented again at that radius (0: never), at most
    #: consistent_rounds times
    consistent_nuclei: float = 0.9
    consistent_rounds: int = 3


DEFAULT_PARAMS = NucleusParams()

#: radii are rounded to the grid 2^(k / RADIUS_GRID)
RADIUS_GRID = 8


def _round_radius(r: float) -> float:
    return float(2.0 ** (round(np.log2(r) * RADIUS_GRID) / RADIUS_GRID))


# ------------------------------------------------------------------------------------------------
# helpers on an (N, H, W) stack (each image on its own) and on its strip


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur within each image of a stack (edges repeated); for sigma > 3 px three box
    passes of the same variance. Compiled: scipy.ndimage's ``gaussian_filter`` and
    ``uniform_filter``, bit for bit (:mod:`._nucleus_kernels`)."""
    if sigma <= 3.0:
        return K.gauss_stack(x, sigma)
    width = 2 * round(np.sqrt(4.0 * sigma * sigma + 1.0) / 2.0) + 1
    for _ in range(3):
        x = K.uniform_stack(x, width)
    return x


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus its holes (4-connected background components not touching their image's
    border), each image of the stack on its own (compiled)."""
    return K.fill_holes_stack(mask)


def _strip(x: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N (H + 2), W + 2): each image padded with one zero pixel, laid end to end."""
    n, h, w = x.shape
    out = np.zeros((n, h + 2, w + 2), x.dtype)
    out[:, 1:-1, 1:-1] = x
    return out.reshape(-1, w + 2)


def _unstrip(s: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`_strip`."""
    return s.reshape(n, -1, s.shape[1])[:, 1:-1, 1:-1]


def _per_label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` per label 0..n (-inf where a label is absent)."""
    return K.label_max(values, labels, n)


def _edt(fg: np.ndarray) -> np.ndarray:
    """Distance of each foreground pixel to the nearest background pixel of its own image (the
    image's edge is not background), float32. One 3-D transform whose first axis is too coarse
    to matter; an image with no background pixel gets H + W everywhere."""
    return K.edt_stack(fg)


def _otsu_stack(x: np.ndarray, bins: int = 256) -> np.ndarray:
    """Otsu's threshold of each image of an (N, H, W) stack, over a ``bins``-bin histogram
    between the image's minimum and maximum (NaN for a constant image)."""
    return K.otsu_stack(x, bins)


def _contrast(x: np.ndarray, r: float, p: NucleusParams) -> np.ndarray:
    """Smoothed stack minus its background (opening by a square much wider than a nucleus)."""
    s = _gauss(x, max(p.smooth * r, 1.0))
    k = max(int(p.background * r), 3)
    return s - _background(s, k, r)


def _upsample(a: np.ndarray, b: int, h: int, w: int) -> np.ndarray:
    """Linear interpolation of a stack of block values (block centres at (j + 0.5) b - 0.5 px)
    back to (N, h, w) pixels; edges clamped."""

    def axis(size: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) / b - 0.5, 0.0, m - 1)
        i0 = np.minimum(pos.astype(np.intp), m - 1)
        i1 = np.minimum(i0 + 1, m - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    r0, r1, rw = axis(h, a.shape[1])
    c0, c1, cw = axis(w, a.shape[2])
    return K.upsample(a, r0, r1, rw, c0, c1, cw)


def _blocks(x: np.ndarray, b: int, reduce: str) -> np.ndarray:
    """Block minima or maxima of b x b px blocks of each image (edge blocks padded by the edge)."""
    return K.blocks(x, b, reduce == "max")


def _opening(s: np.ndarray, k: int) -> np.ndarray:
    """Morphological opening of each image by a k-px square (scipy's minimum then maximum filter,
    mode "reflect"; compiled)."""
    return K.minmax_stack(K.minmax_stack(s, k, False), k, True)


def _background(s: np.ndarray, k: int, r: float) -> np.ndarray:
    """Morphological opening of each image by a k-px square, blurred with sigma r; for k >= 16
    the opening and the blur run on the block minima of b = k // 8 px blocks (the opening by
    k / b blocks, the blur with sigma r / b), interpolated linearly back to every pixel."""
    b = k // 8
    if b < 2:
        return _gauss(_opening(s, k), r)
    kb = max(round(k / b), 1)
    m = _blocks(s, b, "min")
    return _upsample(_gauss(_opening(m, kb), r / b), b, s.shape[1], s.shape[2])


def _local_max(t: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """Maximum over a k-px square blurred with ``sigma``; for k >= 8 both on the block maxima of
    b = k // 4 px blocks, interpolated linearly back to every pixel."""
    b = k // 4
    if b < 2:
        return _gauss(K.minmax_stack(t, k, True), sigma)
    kb = max(round(k / b), 1)
    m = K.minmax_stack(_blocks(t, b, "max"), kb, True)
    return _upsample(_gauss(m, sigma / b), b, t.shape[1], t.shape[2])


# ------------------------------------------------------------------------------------------------
# nucleus radius


def _measure_radii(
    t: np.ndarray, r: float, fraction: float = 1.0, factor: float = 1.2
) -> np.ndarray:
    """Per image of a background-free stack ``t``, the radius of what Otsu's threshold finds
    (1.2 x the median over blobs of the largest inscribed distance; NaN where nothing is found)."""
    thr = _otsu_stack(t)
    fg = _fill_holes(t > fraction * np.nan_to_num(thr, nan=np.inf)[:, None, None])
    # per image, the median over blobs (of at least max(0.1 pi r^2, 8) px) of the largest
    # inscribed distance: the mean of the two middle values of the sorted list (compiled)
    return factor * 0.5 * K.blob_medians(fg, max(0.1 * np.pi * r * r, 8.0))


def _factor(c: float, p: NucleusParams) -> int:
    """Downsampling factor for measuring at candidate radius ``c``: the largest power of 2 that
    leaves at least ``p.measure_pixels`` px of radius."""
    f = 1
    while c / (2 * f) >= p.measure_pixels:
        f *= 2
    return f


def _downsample(x: np.ndarray, f: int) -> np.ndarray:
    """Block means of f x f pixels of each image of a stack (rows and columns beyond a multiple
    of f are dropped): numpy's ``x[:, :h f, :w f].reshape(n, h, f, w, f).mean((2, 4),
    dtype=float32)``, compiled (bit for bit, :func:`._nucleus_kernels.block_means`)."""
    _, h, w = x.shape
    if f == 1 or h < f or w < f:
        return x
    return K.block_means(x, f)


def _radii_and_contrast(
    x: np.ndarray, p: NucleusParams
) -> tuple[np.ndarray, list[tuple[float, np.ndarray, np.ndarray | None]]]:
    """Per image radius (:func:`estimate_radii`) and groups (radius, image indices, contrast
    stack, or None where the radius differs from the candidate that measured it) of the images
    accepted at one radius in one step (the nucleus pass reuses the contrast)."""
    n_img = x.shape[0]
    lo, hi = p.consistency
    r_min = _round_radius(max(p.min_radius, 1.0))
    start = _round_radius(max(min(p.max_radius, max(x.shape[1:]) / p.max_window), r_min))
    cand = np.full(n_img, start)
    out = np.full(n_img, np.nan)
    # the best disagreeing measurement so far (closest in ratio to its candidate), for images
    # where no candidate agrees
    best_err = np.full(n_img, np.inf)
    best = np.full(n_img, np.nan)
    reuse: list[tuple[float, np.ndarray, np.ndarray | None]] = []
    open_ = np.arange(n_img)
    for step in range(p.max_steps):
        if len(open_) == 0:
            break
        nxt = []
        for c in np.unique(cand[open_]):
            rows = open_[cand[open_] == c]
            f = _factor(c, p)
            t = _contrast(_downsample(x[rows], f), c / f, p)
            e = f * _measure_radii(t, c / f, p.measure_fraction, p.inscribed_factor)
            with np.errstate(invalid="ignore"):
                ok = (e >= lo * c) & (e <= hi * c) & (e <= p.max_radius)
                big = ~np.isfinite(e) | (e > hi * c) | (e > p.max_radius)
            # ... and the blobs persist at half the scale (no background let in at this one)
            half = _round_radius(c / 2.0)
            if ok.any() and half >= r_min and c >= p.leak_min_radius:
                fh = _factor(half, p)
                th = _contrast(_downsample(x[rows[ok]], fh), half / fh, p)
                eh = fh * _measure_radii(th, half / fh, p.measure_fraction, p.inscribed_factor)
                with np.errstate(invalid="ignore"):
                    leak = ~(eh >= p.max_jump * e[ok])
                big[np.flatnonzero(ok)[leak]] = True
                ok[np.flatnonzero(ok)[leak]] = False
            last = step == p.max_steps - 1
            done = ok | (c <= r_min) | last
            with np.errstate(invalid="ignore", divide="ignore"):
                err = np.where(np.isfinite(e), np.abs(np.log(e / c)), np.inf)
            better = err < best_err[rows]
            best_err[rows[better]] = err[better]
            best[rows[better]] = e[better]
            # an accepted candidate gives the radius it measured (on the grid); without one, the
            # best measurement seen, else the candidate
            fallback = np.where(np.isfinite(best[rows]), best[rows], c)
            final = np.array(
                [
                    _round_radius(max(v if a else b, r_min))
                    for v, a, b in zip(e, ok, fallback, strict=True)
                ]
            )
            out[rows[done]] = final[done]
            for fin in np.unique(final[done]):
                sel = done & (final == fin)
                reuse.append((float(fin), rows[sel], t[sel] if fin == c and f == 1 else None))
            todo = ~done
            # candidates only decrease: the next one is the measurement, or half (background)
            new = np.where(big, c / 2.0, np.nan_to_num(e, nan=c / 2.0))
            for i, v in zip(rows[todo], new[todo], strict=True):
                cand[i] = _round_radius(max(float(v), r_min))
            nxt.append(rows[todo])
        open_ = np.sort(np.concatenate(nxt)) if nxt else open_[:0]
    return out, reuse


def estimate_radii(stack: np.ndarray, params: NucleusParams = DEFAULT_PARAMS) -> np.ndarray:
    """Typical nucleus radius (pixels) of every image of an (N, H, W) stack, each on its own.

    The largest self-consistent scale, from the largest the image allows down (module docstring,
    step 1); nucleus radii from about 3 to 50 px are found (tests/test_segment.py).
    """
    x = np.asarray(stack, np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {x.shape}")
    return _radii_and_contrast(x, params)[0]


def estimate_radius(dna: np.ndarray, params: NucleusParams = DEFAULT_PARAMS) -> float:
    """:func:`estimate_radii` of one 2-D image."""
    x = np.asarray(dna, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    return float(estimate_radii(x[None], params)[0])


# ------------------------------------------------------------------------------------------------
# nuclei


def _noise_sigma(x: np.ndarray) -> np.ndarray:
    """Pixel noise per image: median absolute deviation of horizontal neighbour differences
    (every other row) / sqrt(2)."""
    if x.shape[2] < 2:
        return np.zeros(x.shape[0])
    # np.median(|d - np.median(d)|) of the differences d, counted when they are integers
    return 1.4826 * K.noise_mad(x).astype(np.float64) / np.sqrt(2.0)


def _image_of(strip_labels: np.ndarray, n: int, n_img: int) -> np.ndarray:
    """The image (0..N-1) of each label 0..n of a strip (index 0 and absent labels: 0)."""
    return K.image_of(strip_labels, n, n_img)


def _number_per_image(strip_labels: np.ndarray, keep: np.ndarray, n_img: int) -> np.ndarray:
    """Keep the strip's labels flagged in ``keep`` and number them 1..k within each image in the
    order of their strip labels; returns the (N, H, W) stack."""
    keep = keep.copy()
    keep[0] = False
    ids = np.flatnonzero(keep)
    lut = np.zeros(len(keep), np.int32)
    if len(ids):
        img = _image_of(strip_labels, len(keep) - 1, n_img)[ids]
        order = np.argsort(img, kind="stable")
        start = np.searchsorted(img[order], img[order], side="left")
        lut[ids[order]] = (np.arange(len(ids)) - start + 1).astype(np.int32)
    return _unstrip(lut[strip_labels], n_img)


def _nuclei_at(
    x: np.ndarray, t: np.ndarray, r: float, p: NucleusParams, noise: np.ndarray | None = None
) -> np.ndarray:
    """Nucleus labels of a stack whose images share the radius ``r`` (``t``: its contrast;
    ``noise``: :func:`_noise_sigma` of ``x``, computed here when None)."""
    n_img = x.shape[0]
    thr = _otsu_stack(t)
    thr = np.nan_to_num(thr, nan=np.inf)[:, None, None]
    local_max = _local_max(t, max(int(p.local_window * r), 3), 0.5 * r)
    # t > otsu_fraction x Otsu's level (inf for a flat image) and > local_fraction x local maximum
    fg = K.foreground(t, p.otsu_fraction * thr[:, 0, 0], p.local_fraction, local_max)
    min_size = max(p.min_area * np.pi * r * r, 10.0)
    # holes filled, then the 4-connected blobs of at most min_size px dropped
    fg = K.keep_large(_fill_holes(fg), min_size)
    if not fg.any():
        return np.zeros(x.shape, np.int32)
    dist = _edt(fg)
    if p.distance_sigma > 0:
        dist = _gauss(dist, max(p.distance_sigma * r, 0.5))
    # marker function = (1 - w) x dist / r + w x clip(intensity / its 99th percentile over the
    # image's foreground (0 where empty), 0, 1), with the intensity smoothed
    it, top = dist, np.zeros(n_img, np.float32)
    if p.intensity_weight > 0:
        it = _gauss(t, max(p.intensity_sigma * r, 0.5))
        top = K.masked_percentiles(it, fg, 99)
    # markers: regional maxima (8-connected) of the marker function quantised in steps of h, so
    # tops about h above their surroundings; -1 outside the foreground keeps images and blobs apart
    # (the strip of the marker function and its quantised strip, compiled, in numpy's precision)
    f, q = K.marker_strips(dist, it, top, fg, r, max(p.intensity_weight, 0.0), p.h)
    fg_s = _strip(fg)
    # (the regional maxima, 8-connected plateaus, numbered in raster order of the strip as
    # ndi.label numbers them; compiled)
    markers, _ = K.plateau_maxima(q, fg_s)
    labels = K.watershed_heap(f, markers, fg_s, negate=True)
    n = int(labels.max())
    if n == 0:
        return np.zeros(x.shape, np.int32)
    ts = _strip(t)
    if p.refine_fraction > 0:
        peak = K.label_means(ts, labels, n)  # mean contrast of each nucleus
        peak[0] = np.inf
        lo_s = _strip(t > p.refine_low * thr)
        grown = K.watershed_heap(ts, labels, lo_s | (labels > 0), negate=True)
        labels, sizes = K.keep_bright(ts, grown, peak, p.refine_fraction)
    else:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes > min_size
    if p.snr > 0:
        if noise is None:
            noise = _noise_sigma(x)
        peak = _per_label_max(ts, labels, n)
        img_of = _image_of(labels, n, n_img)
        keep &= ~((noise[img_of] > 0) & (peak < p.snr * noise[img_of]))
    return _number_per_image(labels, keep, n_img)


def segment_nuclei_stack(
    stack: np.ndarray, *, params: NucleusParams = DEFAULT_PARAMS
) -> np.ndarray:
    """Nucleus labels (N, H, W) int32 of an (N, H, W) stack of DNA images, each on its own
    (numbered 1..k in each image; the steps are in the module docstring)."""
    x = np.asarray(stack, np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack, got shape {x.shape}")
    out = np.zeros(x.shape, np.int32)
    if x.size == 0:
        return out
    flat = x.reshape(len(x), -1)
    # finite (a NaN or an infinity makes the maximum or the minimum not finite) and not flat
    hi, lo = flat.max(1), flat.min(1)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(hi) & np.isfinite(lo) & (hi - lo >= 1e-6)
    rows = np.flatnonzero(good)
    if len(rows) == 0:
        return out
    p = params
    if p.radius is not None:
        r = _round_radius(max(float(p.radius), 1.5))
        groups = [(r, np.arange(len(rows)), _contrast(x[rows], r, p))]
    else:
        groups = _radii_and_contrast(x[rows], p)[1]
    radius = np.zeros(len(x))
    # the pixel noise of each image, once (it does not depend on the radius)
    noise = _noise_sigma(x) if p.snr > 0 else np.zeros(len(x))
    for r, idx, t in groups:
        xs = x[rows[idx]]
        t = _contrast(xs, r, p) if t is None else t
        out[rows[idx]] = _nuclei_at(xs, t, r, p, noise[rows[idx]])
        radius[rows[idx]] = r
    if p.radius is None and p.consistent_nuclei > 0:
        # the nuclei found must have about the radius they were found at: where their median
        # equal-area radius is below consistent_nuclei x r (touching nuclei merged at too large
        # a scale), the image is segmented again at that radius, until it agrees (at most
        # consistent_rounds times)
        cur = rows
        for _ in range(p.consistent_rounds):
            found = _median_radius(out[cur])
            bad = found < p.consistent_nuclei * radius[cur]
            again = cur[bad]
            if len(again) == 0:
                break
            redo = np.array([_round_radius(max(v, p.min_radius)) for v in found[bad]])
            for r in np.unique(redo):
                idx = again[redo == r]
                out[idx] = _nuclei_at(x[idx], _contrast(x[idx], r, p), r, p, noise[idx])
                radius[idx] = r
            cur = again
    return out


def _median_radius(labels: np.ndarray) -> np.ndarray:
    """Per image of an (N, H, W) label stack, sqrt(median nucleus area / pi) (inf if none)."""
    return K.median_radii(labels)


def segment_nuclei(dna: np.ndarray, *, params: NucleusParams = DEFAULT_PARAMS) -> np.ndarray:
    """Nucleus instance labels (int32, 0 = background) of a 2-D DNA image of any size and dtype.

    The steps are in the module docstring; ``params.radius`` fixes the nucleus radius instead of
    estimating it per image.
    """
    x = np.asarray(dna, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    return segment_nuclei_stack(x[None], params=params)[0]


# ------------------------------------------------------------------------------------------------
# crops: nuclei, cells, cytoplasm


def _split_channels(images: np.ndarray, dna_channel: int) -> tuple[np.ndarray, np.ndarray]:
    """(DNA, cytoplasm signal) stacks of an (N, H, W, C), (N, H, W, 1) or (N, H, W) stack."""
    img = np.asarray(images)
    if img.ndim == 4 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3:
        return img, img.astype(np.float32)
    if img.ndim != 4:
        raise ImageError(
            f"expected an (N, H, W, C) or (N, H, W) stack of images, got shape {img.shape}",
            fix="stack crops of one size along a new first axis",
        )
    if not -img.shape[-1] <= dna_channel < img.shape[-1]:
        raise ImageError(
            f"dna_channel {dna_channel} is out of range for {img.shape[-1]} channels",
            fix="pass the index of the DNA channel (2 for actin, tubulin, DNA)",
        )
    dna_channel %= img.shape[-1]
    others = [k for k in range(img.shape[-1]) if k != dna_channel]
    cyto = img[..., others].astype(np.float32).mean(-1)
    return img[..., dna_channel], cyto


def _normalise(x: np.ndarray) -> np.ndarray:
    """Each image of a stack to [0, 1] between its 0.5 and 99.8 percentiles (0 if flat)."""
    lo, hi = np.percentile(x.reshape(len(x), -1), (0.5, 99.8), axis=1)
    span = hi - lo
    scale = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
    return np.clip((x - lo[:, None, None].astype(np.float32)) * scale[:, None, None], 0.0, 1.0)


def _cell_pass(cyto_src: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells and cytoplasm foreground of an (N, H, W) stack from its cytoplasm signal and nuclei:
    :func:`cellbench.features.segment.cells.segment_cells_stack`, each crop on its own in one
    compiled loop (the same cells as ``segment_cells`` crop by crop, tested)."""
    return segment_cells_stack(cyto_src, nuclei)


def segment_stack(
    images: np.ndarray, *, dna_channel: int = 2, params: NucleusParams = DEFAULT_PARAMS
) -> StackSegmentation:
    """Segment a stack of crops of one size: (N, H, W, C) (``dna_channel`` names DNA; the other
    channels are cytoplasm) or (N, H, W) (nuclei, and cells from the same channel)."""
    dna, cyto_src = _split_channels(images, dna_channel)
    nuclei = segment_nuclei_stack(dna, params=params)
    # ---- the cell pass: one call, cytoplasm signal + nucleus labels -> cells, cytoplasm mask ----
    cells, cyto_mask = _cell_pass(cyto_src, nuclei)
    return StackSegmentation(nuclei, cells.astype(np.int32), cyto_mask)


def segment_crop(
    image: np.ndarray, *, dna_channel: int = 2, params: NucleusParams = DEFAULT_PARAMS
) -> SegmentationResult:
    """Segment one crop: HxWxC (``dna_channel`` names DNA; the other channels are cytoplasm),
    or HxW / HxWx1 (nuclei, and cells from the same channel)."""
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ImageError(
            f"expected an HxW, HxWx1 or HxWxC image, got shape {img.shape}",
            fix="pass one image at a time (segment_batch takes a stack)",
        )
    return segment_stack(img[None], dna_channel=dna_channel, params=params)[0]


# ------------------------------------------------------------------------------------------------
# features

#: the code a neighbour adds to a border pixel's neighbourhood code when it is a border pixel of the
#: same object (the weights by code are ``_feature_kernels.PERIMETER_WEIGHTS``, shared with the
#: compiled features)
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
    return np.bincount(c[border], weights=PERIMETER_WEIGHTS[code[border]], minlength=n + 1)


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
        # summed in label order, as stack_features sums them (np.mean's pairwise sum can differ
        # in the last bit)
        roundness = float(np.bincount(np.zeros(len(rounds), np.intp), weights=rounds)[0])
        roundness /= len(rounds)
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


def stack_features(seg: StackSegmentation) -> np.ndarray:
    """(N, 6) features in FEATURE_NAMES order of a batch, the values of
    :func:`features_from_masks` image by image (tested), in one compiled loop
    (:mod:`cellbench.features.segment._feature_kernels`)."""
    from cellbench.features.segment._feature_kernels import features_stack

    nuclei = np.ascontiguousarray(seg.nuclei, np.int32)
    out = np.zeros((len(nuclei), len(FEATURE_NAMES)))
    if nuclei.size:
        features_stack(
            nuclei,
            np.ascontiguousarray(seg.cells, np.int32),
            np.ascontiguousarray(seg.cyto_mask, bool),
            PERIMETER_WEIGHTS,
            out,
        )
    return out


#: segment_batch segments this many crops at a time (one strip per chunk)
BATCH_CHUNK = 256


def segment_batch(
    images: np.ndarray,
    *,
    dna_channel: int = 2,
    params: NucleusParams = DEFAULT_PARAMS,
    profile: bool = False,
) -> np.ndarray:
    """(N, H, W, C) (or (N, H, W)) crops -> (N, 6) float64 features in FEATURE_NAMES order.

    The same features as :func:`segment_crop` and :func:`features_from_masks` one crop at a time,
    computed ``BATCH_CHUNK`` crops at a time. With ``profile``, (N, 6 + P): the features, then the
    morphology profile of the same masks (:func:`cellbench.features.profile.profile_stack`).
    """
    imgs = np.asarray(images)
    if imgs.ndim not in (3, 4):
        raise ImageError(
            f"expected an (N, H, W, C) or (N, H, W) stack of images, got shape {imgs.shape}",
            fix="stack crops of one size along a new first axis",
        )
    parts = []
    for start in range(0, len(imgs), BATCH_CHUNK):
        chunk = imgs[start : start + BATCH_CHUNK]
        seg = segment_stack(chunk, dna_channel=dna_channel, params=params)
        block = stack_features(seg)
        if profile:
            from cellbench.features.profile import profile_stack

            prof = profile_stack(chunk, seg.nuclei, seg.cells, dna_channel=dna_channel)
            block = np.concatenate([block, prof], axis=1)
        parts.append(block)
    if not parts:
        from cellbench.features.profile import profile_width

        n_ch = imgs.shape[-1] if imgs.ndim == 4 else 1
        return np.zeros((0, len(FEATURE_NAMES) + (profile_width(n_ch) if profile else 0)))
    return np.concatenate(parts)
