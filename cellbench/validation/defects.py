"""Controlled defects for validating the metrics: each one damages crops in one known way.

Every defect is a pure, seeded function ``(crops, severity, rng, **context) -> crops``:

* ``crops``: uint8 array (N, H, W, 3) in the dataset's channel order (``dna_channel`` names DNA);
* ``severity`` in [0, 1]: 0 returns the crops unchanged, 1 is the strongest damage;
* ``rng``: a :class:`numpy.random.Generator`. Every random choice (which nucleus, which direction,
  where a copy goes) is drawn the same way whatever the severity, so with the same seed a higher
  severity damages the *same* objects more: the damage is nested across severities;
* context keywords: ``dna_channel``, ``segs`` (the crops' segmentations, computed here with the
  ``classical`` backend when not given) and, for the defects that need more than the crops
  (:attr:`DefectSpec.context`), ``moas`` / ``donors`` / ``donor_moas`` (``moa_swap``),
  ``compounds`` / ``donors`` / ``donor_compounds`` (``compound_swap``), ``controls``
  (``phenotype_erase``) and ``train_donors`` (``training_copies``).

Object defects work on the real segmentation masks: a nucleus (or cell) is erased by filling its
dilated mask with pixels drawn from the crop's own background, and re-drawn moved, stretched,
warped or scaled by inverse mapping of the original pixels (bilinear), composited with ``max`` so
that a pasted object never darkens what it lands on.

==================  ============  =================================================================
defect              aimed at      severity 1 means
==================  ============  =================================================================
nucleus_outside     nuc_in_cyto   every nucleus moved (the shortest way) fully out of the cytoplasm
nucleus_stretch     roundness     every nucleus stretched to a 3:1 ellipse, area kept
nucleus_irregular   roundness     every nucleus boundary warped by 3-5 lobes of +/-50% radius
nucleus_grow        nuc_size      every nucleus scaled x1.6 (area x2.56)
nucleus_shrink      nuc_size      every nucleus scaled x0.55 (area x0.30)
cell_grow           cyto_size     every cell's cytoplasm scaled x1.5 about its nucleus (area x2.25)
cell_shrink         cyto_size     every cell's cytoplasm scaled x0.6 about its nucleus (area x0.36)
nucleus_duplicate   nuc_count     4 copies of the crop's nuclei added (4 x severity on average)
nucleus_remove      nuc_count     every image keeps one nucleus (fraction of images = severity)
cell_duplicate      cyto_count    3 copies of whole cells (cytoplasm + nucleus) added
cell_remove         cyto_count    every image keeps one cell (fraction of images = severity)
cell_two_nuclei     nuc_count     one cell per image gets a second nucleus beside its own (fraction
                                  of images = severity); cyto_count should stay
cell_no_nucleus     nuc_count     one cell per image loses its nucleus (fraction of images =
                                  severity); cyto_count should stay
moa_swap            moa           every image replaced by a crop of another MoA (fraction = severity)
blur                FID/KID       Gaussian blur, sigma 3 px
noise               FID/KID       additive Gaussian noise, sd 40 grey levels
intensity_shift     FID/KID       +100 grey levels on every channel (clipped)
channel_swap        FID/KID       DNA and the first other channel exchanged (a blend below 1)
pure_noise          FID/KID       every image replaced by uniform noise (fraction = severity)
mode_collapse       recall,       the set collapses onto N^(1-severity) of its own images (1 image at
                    coverage      severity 1: the same image for every task)
compound_swap       retrieval     every image of a compound replaced by another compound's crop
                                  (fraction of compounds = severity)
phenotype_erase     profile shift images replaced by DMSO controls of other tasks (fraction =
                                  severity)
training_copies     memorisation  images replaced by training crops (fraction = severity)
==================  ============  =================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

__all__ = [
    "DEFECTS",
    "DefectSpec",
    "apply_defect",
    "blur",
    "cell_duplicate",
    "cell_grow",
    "cell_no_nucleus",
    "cell_remove",
    "cell_shrink",
    "cell_two_nuclei",
    "channel_swap",
    "compound_swap",
    "intensity_shift",
    "moa_swap",
    "mode_collapse",
    "noise",
    "nucleus_duplicate",
    "nucleus_grow",
    "nucleus_irregular",
    "nucleus_outside",
    "nucleus_remove",
    "nucleus_shrink",
    "nucleus_stretch",
    "phenotype_erase",
    "pure_noise",
    "segment_all",
    "training_copies",
]

HALO = 2  # px of dilation around an object mask: the blurred rim of a nucleus or cell goes with it


# ------------------------------------------------------------------------------------ helpers
def segment_all(crops: np.ndarray, *, dna_channel: int = 2, backend: str = "classical") -> list:
    """The segmentation (``SegmentationResult``) of every crop with a registered backend."""
    from cellbench.features.segment.backends import get_backend

    seg = get_backend(backend)
    return [seg.segment(c, dna_channel=dna_channel) for c in crops]


def _check(crops: np.ndarray, severity: float) -> np.ndarray:
    arr = np.asarray(crops)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 crops (N, H, W, 3), got {arr.dtype} {arr.shape}")
    if not 0.0 <= float(severity) <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return arr


def _segs(crops: np.ndarray, segs: Sequence | None, dna_channel: int) -> Sequence:
    if segs is None:
        return segment_all(crops, dna_channel=dna_channel)
    if len(segs) != len(crops):
        raise ValueError(f"{len(segs)} segmentations for {len(crops)} crops")
    return segs


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= r * r


def _dilate(mask: np.ndarray, r: int = HALO) -> np.ndarray:
    """``mask`` dilated by the disk of radius ``r`` (``ndi.binary_dilation`` with ``_disk(r)``),
    computed as "within r of a mask pixel" by the exact distance transform: the same pixels
    (integer squared distances against r^2), in time independent of r (a 56-px disk took 1.2 s
    per 96x96 mask as a structuring element)."""
    if r <= 0:
        return mask.copy()
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    return ndi.distance_transform_edt(~mask) <= r


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    cy, cx = ndi.center_of_mass(mask)
    return float(cy), float(cx)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _copies(rng: np.random.Generator, n: int, severity: float, most: int) -> np.ndarray:
    """floor(severity x most + u_i) per image, u_i uniform [0, 1) (stochastic rounding)."""
    u = rng.random(n)
    return np.minimum(np.floor(severity * most + u), most).astype(int)


def _affected(rng: np.random.Generator, n: int, severity: float) -> np.ndarray:
    """The first round(severity x n) images of a random order (nested across severities)."""
    return rng.permutation(n)[: _round_half_up(severity * n)]


class _Background:
    """Draws fill values per channel from a crop's own background pixels."""

    def __init__(self, img: np.ndarray, objects: np.ndarray):
        self.img = img
        outside = ~_dilate(objects, 3)
        self.pools = []
        for c in range(img.shape[-1]):
            vals = img[..., c][outside]
            if vals.size < 50:  # no background left in the crop: its darkest tenth stands in
                ch = img[..., c].ravel()
                vals = ch[ch <= np.percentile(ch, 10)]
            self.pools.append(vals.astype(np.float32))

    def fill(self, out: np.ndarray, region: np.ndarray, channels: Sequence[int], rng) -> None:
        n = int(region.sum())
        for c in channels:
            out[..., c][region] = rng.choice(self.pools[c], size=n)


def _corr(field: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``out[dy + H - 1, dx + W - 1] = sum(field[y + dy, x + dx] * footprint[y, x])``: the overlap
    of ``footprint`` moved by (dy, dx) with ``field`` (outside the crop counts as 0), for every
    shift |dy| < H, |dx| < W. Computed by FFT on the footprint's bounding box."""
    h, w = field.shape
    out = np.zeros((2 * h - 1, 2 * w - 1))
    rows, cols = np.flatnonzero(footprint.any(1)), np.flatnonzero(footprint.any(0))
    if len(rows) == 0:
        return out
    r0, c0 = rows[0], cols[0]
    box = footprint[r0 : rows[-1] + 1, c0 : cols[-1] + 1].astype(np.float64)
    bh, bw = box.shape
    full = fftconvolve(field.astype(np.float64), box[::-1, ::-1], "full")
    out[h - r0 - bh : 2 * h - 1 - r0, w - c0 - bw : 2 * w - 1 - c0] = full
    return np.rint(out)


def _shifted(mask: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """``mask`` moved by (dy, dx); what leaves the crop is lost (no wrap-around)."""
    dy, dx = shift
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _shift_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    dy, dx = np.mgrid[-(h - 1) : h, -(w - 1) : w]
    return dy, dx


def _choose_shift(
    footprint: np.ndarray,
    *,
    hard: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    soft: tuple[np.ndarray, np.ndarray] | None = None,
    min_in_crop: float = 0.9,
    rng: np.random.Generator | None = None,
) -> tuple[int, int] | None:
    """A shift (dy, dx) for an object.

    ``hard``: (field, object footprint) pairs that must not overlap after the shift; ``soft``:
    one pair whose overlap is minimised. Among the shifts keeping ``min_in_crop`` of
    ``footprint`` inside the crop and satisfying ``hard``, those with the least ``soft`` overlap
    are kept; ``rng`` picks one at random, else the shortest is taken. None if no shift is valid.
    """
    area = float(footprint.sum())
    ok = _corr(np.ones_like(footprint), footprint) >= min_in_crop * area
    for field, fp in hard:
        ok &= _corr(field, fp) < 0.5
    if not ok.any():
        return None
    dy, dx = _shift_grid(footprint.shape)
    if soft is not None:
        cost = _corr(*soft)
        ok &= cost <= cost[ok].min() + 0.01 * area
    cand = np.flatnonzero(ok)
    if rng is not None:
        pick = cand[rng.integers(len(cand))]
    else:
        d2 = dy.ravel()[cand] ** 2 + dx.ravel()[cand] ** 2
        pick = cand[np.argmin(d2)]
    return int(dy.ravel()[pick]), int(dx.ravel()[pick])


InvMap = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _paste(
    out: np.ndarray,
    src: np.ndarray,
    mask: np.ndarray,
    src_center: tuple[float, float],
    dst_center: tuple[float, float],
    inv_map: InvMap | None,
    channels: Sequence[int],
) -> None:
    """Draw ``src``'s pixels under ``mask`` (soft edge) into ``out``, mapped about the centres.

    Output pixel p takes the source pixel ``src_center + inv_map(p - dst_center)`` (bilinear);
    composited as ``(1 - a) out + a max(out, src)`` with a the mapped mask.
    """
    h, w = mask.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    oy, ox = yy - dst_center[0], xx - dst_center[1]
    if inv_map is not None:
        oy, ox = inv_map(oy, ox)
    coords = np.stack([src_center[0] + oy, src_center[1] + ox])
    alpha = ndi.map_coordinates(mask.astype(np.float32), coords, order=1, cval=0.0)
    hit = alpha > 0.02
    if not hit.any():
        return
    a = alpha[hit]
    sub = coords[:, hit]
    for c in channels:
        val = ndi.map_coordinates(src[..., c], sub, order=1, mode="nearest")
        cur = out[..., c][hit]
        out[..., c][hit] = (1 - a) * cur + a * np.maximum(cur, val)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _objects(labels: np.ndarray) -> list[int]:
    return [int(k) for k in np.unique(labels) if k != 0]


def _other_channels(dna_channel: int) -> list[int]:
    return [c for c in range(3) if c != dna_channel]


# ------------------------------------------------------------------------------ nucleus defects
def _nucleus_warp(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    make_map: Callable[[np.random.Generator, float], InvMap],
    *,
    dna_channel: int,
    segs: Sequence | None,
) -> np.ndarray:
    """Erase every nucleus and draw it back through ``make_map(rng, severity)`` about its centre."""
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    out = crops.copy()
    for i, (img, seg) in enumerate(zip(crops, segs, strict=True)):
        ids = _objects(seg.nuclei)
        maps = [make_map(rng, severity) for _ in ids]  # drawn whatever the severity
        if severity == 0 or not ids:
            continue
        src = img.astype(np.float32)
        work = src.copy()
        bg = _Background(img, seg.nuclei > 0)
        masks = [_dilate(seg.nuclei == k) for k in ids]
        bg.fill(work, np.any(masks, axis=0), [dna_channel], rng)
        for k, m, inv in zip(ids, masks, maps, strict=True):
            c = _centroid(seg.nuclei == k)
            _paste(work, src, m, c, c, inv, [dna_channel])
        out[i] = _to_uint8(work)
    return out


def nucleus_stretch(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """Stretch every nucleus along a random axis to aspect ratio 1 + 2 severity, area kept."""

    def make(r: np.random.Generator, s: float) -> InvMap:
        theta = r.uniform(0, np.pi)
        a = np.sqrt(1.0 + 2.0 * s)
        cos, sin = np.cos(theta), np.sin(theta)

        def inv(oy: np.ndarray, ox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            u = cos * ox + sin * oy  # along the axis: shrink by a when mapping back
            v = -sin * ox + cos * oy
            u, v = u / a, v * a
            return sin * u + cos * v, cos * u - sin * v

        return inv

    return _nucleus_warp(crops, severity, rng, make, dna_channel=dna_channel, segs=segs)


def nucleus_irregular(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """Warp every nucleus boundary into 3-5 lobes: radius x (1 + 0.5 severity sin(k theta + phi)).

    The warp is divided by sqrt(1 + A^2 / 2) so that the area stays the same on average.
    """

    def make(r: np.random.Generator, s: float) -> InvMap:
        k = int(r.integers(3, 6))
        phi = r.uniform(0, 2 * np.pi)
        amp = 0.5 * s
        norm = np.sqrt(1.0 + amp * amp / 2.0)

        def inv(oy: np.ndarray, ox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            theta = np.arctan2(oy, ox)
            f = (1.0 + amp * np.sin(k * theta + phi)) / norm
            return oy / f, ox / f

        return inv

    return _nucleus_warp(crops, severity, rng, make, dna_channel=dna_channel, segs=segs)


def _scale_map(f: float) -> InvMap:
    def inv(oy: np.ndarray, ox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return oy / f, ox / f

    return inv


def nucleus_grow(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """Scale every nucleus about its centre by 1 + 0.6 severity (area x2.56 at severity 1)."""
    return _nucleus_warp(
        crops,
        severity,
        rng,
        lambda r, s: _scale_map(1.0 + 0.6 * s),
        dna_channel=dna_channel,
        segs=segs,
    )


def nucleus_shrink(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """Scale every nucleus about its centre by 1 - 0.45 severity (area x0.30 at severity 1)."""
    return _nucleus_warp(
        crops,
        severity,
        rng,
        lambda r, s: _scale_map(1.0 - 0.45 * s),
        dna_channel=dna_channel,
        segs=segs,
    )


def nucleus_outside(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """Move every nucleus ``severity`` of the way along the shortest shift that puts it fully
    outside the cytoplasm foreground (keeping 80% of it in the crop; where no such shift exists,
    the one leaving the least of it in the cytoplasm). Nuclei are placed in random order, each
    avoiding the places taken by the ones before."""
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    out = crops.copy()
    for i, (img, seg) in enumerate(zip(crops, segs, strict=True)):
        ids = [k for k in _objects(seg.nuclei)]
        order = rng.permutation(len(ids))
        cyto = _dilate(seg.cyto_mask, 1)
        taken = np.zeros_like(cyto)
        moves = []
        for j in order:
            k = ids[j]
            m = seg.nuclei == k
            shift = _choose_shift(
                m,
                hard=[(taken, _dilate(m))],
                soft=(cyto, m),
                min_in_crop=0.8,
            )
            if shift is None:
                continue
            moves.append((k, shift))
            taken |= _shifted(_dilate(m, 4), shift)
        if severity == 0 or not moves:
            continue
        src = img.astype(np.float32)
        work = src.copy()
        bg = _Background(img, seg.nuclei > 0)
        masks = {k: _dilate(seg.nuclei == k) for k, _ in moves}
        bg.fill(work, np.any(list(masks.values()), axis=0), [dna_channel], rng)
        for k, (dy, dx) in moves:
            c = _centroid(seg.nuclei == k)
            d = (c[0] + severity * dy, c[1] + severity * dx)
            _paste(work, src, masks[k], c, d, None, [dna_channel])
        out[i] = _to_uint8(work)
    return out


def nucleus_duplicate(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
    max_copies: int = 4,
) -> np.ndarray:
    """Add about severity x ``max_copies`` copies of the crop's nuclei, each at a random free
    place (not touching another nucleus; inside the cytoplasm where possible).

    Image i gets floor(severity x ``max_copies`` + u_i) copies, u_i uniform in [0, 1) and fixed
    per image: exactly ``max_copies`` at severity 1, severity x ``max_copies`` on average, and
    never fewer at a higher severity."""
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    n_adds = _copies(rng, len(crops), severity, max_copies)
    out = crops.copy()
    for i, (img, seg) in enumerate(zip(crops, segs, strict=True)):
        n_add = n_adds[i]
        ids = _objects(seg.nuclei)
        if not ids:
            continue
        occupied = _dilate(seg.nuclei > 0, 3)
        plan = []
        for _ in range(max_copies):  # every placement drawn whatever the severity
            k = ids[int(rng.integers(len(ids)))]
            m = seg.nuclei == k
            shift = _choose_shift(
                m,
                hard=[(occupied, m)],
                soft=(~seg.cyto_mask, m),
                min_in_crop=0.95,
                rng=rng,
            )
            if shift is None:
                continue
            plan.append((k, shift))
            occupied |= _shifted(_dilate(m, 3), shift)
        if n_add == 0 or not plan:
            continue
        src = img.astype(np.float32)
        work = src.copy()
        for k, (dy, dx) in plan[:n_add]:
            m = seg.nuclei == k
            c = _centroid(m)
            _paste(work, src, _dilate(m), c, (c[0] + dy, c[1] + dx), None, [dna_channel])
        out[i] = _to_uint8(work)
    return out


def nucleus_remove(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """In round(severity x N) random images, erase every nucleus but one (a random one stays).

    The severity is the fraction of images affected: removing one nucleus of a crop with more
    nuclei than its MoA's mean moves the count *towards* the mean, so a per-image ladder would
    first improve the two-sided -z^2 reward; the full defect does not.
    """
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    hit = _affected(rng, len(crops), severity)
    keep = rng.random(len(crops))
    out = crops.copy()
    for i in hit:
        img, seg = crops[i], segs[i]
        ids = _objects(seg.nuclei)
        if len(ids) < 2:
            continue
        stay = ids[int(keep[i] * len(ids))]
        gone = (seg.nuclei > 0) & (seg.nuclei != stay)
        work = img.astype(np.float32)
        fill = _dilate(gone) & ~(seg.nuclei == stay)
        _Background(img, seg.nuclei > 0).fill(work, fill, [dna_channel], rng)
        out[i] = _to_uint8(work)
    return out


# --------------------------------------------------------------------------------- cell defects
def _cell_centres(seg) -> dict[int, tuple[float, float]]:
    """Per cell: the centre of its nucleus (the largest overlapping one), else of the cell."""
    out = {}
    for k in _objects(seg.cells):
        cm = seg.cells == k
        nuc = seg.nuclei[cm]
        nuc = nuc[nuc > 0]
        if nuc.size:
            out[k] = _centroid(seg.nuclei == np.bincount(nuc).argmax())
        else:
            out[k] = _centroid(cm)
    return out


def _cell_scale(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    factor: float,
    *,
    dna_channel: int,
    segs: Sequence | None,
) -> np.ndarray:
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    cyto_ch = _other_channels(dna_channel)
    out = crops.copy()
    if severity == 0:
        return out
    inv = _scale_map(factor)
    for i, (img, seg) in enumerate(zip(crops, segs, strict=True)):
        centres = _cell_centres(seg)
        if not centres:
            continue
        src = img.astype(np.float32)
        work = src.copy()
        bg = _Background(img, seg.cyto_mask | (seg.cells > 0))
        masks = {k: _dilate(seg.cells == k) for k in centres}
        bg.fill(work, np.any(list(masks.values()), axis=0), cyto_ch, rng)
        for k, c in centres.items():
            _paste(work, src, masks[k], c, c, inv, cyto_ch)
        out[i] = _to_uint8(work)
    return out


def cell_grow(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """Scale every cell's cytoplasm (not its nucleus) by 1 + 0.5 severity about its nucleus."""
    return _cell_scale(
        crops, severity, rng, 1.0 + 0.5 * severity, dna_channel=dna_channel, segs=segs
    )


def cell_shrink(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """Scale every cell's cytoplasm (not its nucleus) by 1 - 0.4 severity about its nucleus."""
    return _cell_scale(
        crops, severity, rng, 1.0 - 0.4 * severity, dna_channel=dna_channel, segs=segs
    )


def cell_duplicate(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
    max_copies: int = 3,
) -> np.ndarray:
    """Add about severity x ``max_copies`` copies of whole cells (all channels), each at a random
    place where its nucleus touches no other nucleus and the cell overlaps other cells least
    (copies per image as in :func:`nucleus_duplicate`)."""
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    n_adds = _copies(rng, len(crops), severity, max_copies)
    out = crops.copy()
    for i, (img, seg) in enumerate(zip(crops, segs, strict=True)):
        n_add = n_adds[i]
        centres = _cell_centres(seg)
        with_nucleus = [k for k in centres if (seg.nuclei[seg.cells == k] > 0).any()]
        if not with_nucleus:
            continue
        nuc_occupied = _dilate(seg.nuclei > 0, 3)
        cell_occupied = seg.cells > 0
        plan = []
        for _ in range(max_copies):
            k = with_nucleus[int(rng.integers(len(with_nucleus)))]
            cm = seg.cells == k
            nm = cm & (seg.nuclei > 0)
            shift = _choose_shift(
                cm,
                hard=[(nuc_occupied, nm)],
                soft=(cell_occupied, cm),
                min_in_crop=0.6,
                rng=rng,
            )
            if shift is None:
                continue
            plan.append((k, shift))
            nuc_occupied |= _shifted(_dilate(nm, 3), shift)
            cell_occupied |= _shifted(cm, shift)
        if n_add == 0 or not plan:
            continue
        src = img.astype(np.float32)
        work = src.copy()
        for k, (dy, dx) in plan[:n_add]:
            cm = seg.cells == k
            c = _centroid(cm)
            _paste(work, src, _dilate(cm), c, (c[0] + dy, c[1] + dx), None, [0, 1, 2])
        out[i] = _to_uint8(work)
    return out


def cell_remove(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """In round(severity x N) random images, erase every cell but one, cytoplasm and nucleus
    (the severity is the fraction of images affected, as in :func:`nucleus_remove`)."""
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    hit = _affected(rng, len(crops), severity)
    keep = rng.random(len(crops))
    out = crops.copy()
    for i in hit:
        img, seg = crops[i], segs[i]
        ids = _objects(seg.cells)
        if len(ids) < 2:
            continue
        stay = ids[int(keep[i] * len(ids))]
        gone_cells = (seg.cells > 0) & (seg.cells != stay)
        # a nucleus goes with the cell holding most of it
        nuc_ids = [k for k in _objects(seg.nuclei) if gone_cells[seg.nuclei == k].mean() > 0.5]
        gone = gone_cells | np.isin(seg.nuclei, nuc_ids)
        kept = (seg.cells == stay) & ~np.isin(seg.nuclei, nuc_ids)
        work = img.astype(np.float32)
        fill = _dilate(gone) & ~kept
        _Background(img, seg.cyto_mask | (seg.cells > 0)).fill(work, fill, [0, 1, 2], rng)
        out[i] = _to_uint8(work)
    return out


def _nucleated_cells(seg) -> list[tuple[int, int]]:
    """(cell, nucleus) pairs: every cell with the nucleus holding most of its nuclear pixels,
    when at least half of that nucleus lies in the cell."""
    out = []
    for k in _objects(seg.cells):
        cm = seg.cells == k
        nuc = seg.nuclei[cm]
        nuc = nuc[nuc > 0]
        if nuc.size:
            j = int(np.bincount(nuc).argmax())
            if cm[seg.nuclei == j].mean() >= 0.5:
                out.append((k, j))
    return out


def cell_two_nuclei(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """In round(severity x N) random images, one cell gets a second nucleus: a copy of its own
    nucleus (DNA channel only) placed beside it (3 to 6 px apart, as the two nuclei of a
    binucleate cell), wholly inside that cell's cytoplasm, 2 px or more inside its border and
    touching no other nucleus. The cells stay as they are: ``nuc_count`` rises by one,
    ``cell_count`` should not move. Images with no cell where a copy fits are left as they are.
    """
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    hit = set(_affected(rng, len(crops), severity).tolist())
    out = crops.copy()
    for i, (img, seg) in enumerate(zip(crops, segs, strict=True)):
        pairs = _nucleated_cells(seg)
        order = rng.permutation(len(pairs))  # drawn whatever the severity
        occupied = _dilate(seg.nuclei > 0, 3)
        plan = None
        for o in order:
            k, j = pairs[o]
            m = seg.nuclei == j
            room = ndi.binary_erosion(seg.cells == k, structure=_disk(2))
            # beside the first nucleus: the copy's far side at most 2 r + 6 px from it
            reach = _dilate(m, round(2.0 * np.sqrt(m.sum() / np.pi)) + 6)
            shift = _choose_shift(
                m, hard=[(occupied, m), (~room | ~reach, m)], min_in_crop=1.0, rng=rng
            )
            if shift is not None:
                plan = (j, shift)
                break
        if i not in hit or plan is None:
            continue
        j, (dy, dx) = plan
        m = seg.nuclei == j
        c = _centroid(m)
        work = img.astype(np.float32)
        dst = (c[0] + dy, c[1] + dx)
        _paste(work, img.astype(np.float32), _dilate(m), c, dst, None, [dna_channel])
        out[i] = _to_uint8(work)
    return out


def cell_no_nucleus(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    dna_channel: int = 2,
    segs: Sequence | None = None,
) -> np.ndarray:
    """In round(severity x N) random images, one cell loses its nucleus: the nucleus's DNA is
    filled with the crop's own background, the cytoplasm channels are kept. ``nuc_count`` falls by
    one, ``cell_count`` should not move."""
    crops = _check(crops, severity)
    segs = _segs(crops, segs, dna_channel)
    hit = _affected(rng, len(crops), severity)
    pick = rng.random(len(crops))
    out = crops.copy()
    for i in hit:
        img, seg = crops[i], segs[i]
        pairs = _nucleated_cells(seg)
        if not pairs:
            continue
        _, j = pairs[int(pick[i] * len(pairs))]
        gone = seg.nuclei == j
        work = img.astype(np.float32)
        fill = _dilate(gone) & ~((seg.nuclei > 0) & ~gone)
        _Background(img, seg.nuclei > 0).fill(work, fill, [dna_channel], rng)
        out[i] = _to_uint8(work)
    return out


# ------------------------------------------------------------------------------ image defects
def moa_swap(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    moas: Sequence[str],
    donors: np.ndarray,
    donor_moas: Sequence[str],
) -> np.ndarray:
    """Replace round(severity x N) random images by a random donor crop of another MoA."""
    crops = _check(crops, severity)
    moas = np.asarray(moas).astype(str)
    donor_moas = np.asarray(donor_moas).astype(str)
    if len(moas) != len(crops) or len(donor_moas) != len(donors):
        raise ValueError("moa_swap needs one MoA per crop and per donor")
    hit = _affected(rng, len(crops), severity)
    picks = np.full(len(crops), -1)
    for i in range(len(crops)):  # one draw per image whatever the severity
        other = np.flatnonzero(donor_moas != moas[i])
        if len(other):
            picks[i] = other[rng.integers(len(other))]
    out = crops.copy()
    for i in hit:
        if picks[i] >= 0:
            out[i] = donors[picks[i]]
    return out


def blur(crops: np.ndarray, severity: float, rng: np.random.Generator, **_: Any) -> np.ndarray:
    """Gaussian blur of every channel, sigma 3 x severity px."""
    crops = _check(crops, severity)
    if severity == 0:
        return crops.copy()
    sigma = 3.0 * severity
    return _to_uint8(ndi.gaussian_filter(crops.astype(np.float32), (0, sigma, sigma, 0)))


def noise(crops: np.ndarray, severity: float, rng: np.random.Generator, **_: Any) -> np.ndarray:
    """Additive Gaussian noise of standard deviation 40 x severity grey levels (clipped)."""
    crops = _check(crops, severity)
    z = rng.standard_normal(crops.shape, dtype=np.float32)
    if severity == 0:
        return crops.copy()
    return _to_uint8(crops.astype(np.float32) + 40.0 * severity * z)


def intensity_shift(
    crops: np.ndarray, severity: float, rng: np.random.Generator, **_: Any
) -> np.ndarray:
    """Add 100 x severity grey levels to every channel (clipped at 255)."""
    crops = _check(crops, severity)
    if severity == 0:
        return crops.copy()
    return _to_uint8(crops.astype(np.float32) + 100.0 * severity)


def channel_swap(
    crops: np.ndarray, severity: float, rng: np.random.Generator, *, dna_channel: int = 2, **_: Any
) -> np.ndarray:
    """Blend towards the image with DNA and the first other channel exchanged (full at 1)."""
    crops = _check(crops, severity)
    if severity == 0:
        return crops.copy()
    other = _other_channels(dna_channel)[0]
    perm = list(range(3))
    perm[dna_channel], perm[other] = other, dna_channel
    x = crops.astype(np.float32)
    return _to_uint8((1 - severity) * x + severity * x[..., perm])


def pure_noise(
    crops: np.ndarray, severity: float, rng: np.random.Generator, **_: Any
) -> np.ndarray:
    """Replace round(severity x N) random images by uniform noise."""
    crops = _check(crops, severity)
    hit = _affected(rng, len(crops), severity)
    fake = rng.integers(0, 256, size=crops.shape, dtype=np.uint8)
    out = crops.copy()
    out[hit] = fake[hit]
    return out


def mode_collapse(
    crops: np.ndarray, severity: float, rng: np.random.Generator, **_: Any
) -> np.ndarray:
    """Collapse the set onto round(N^(1 - severity)) of its own images: those are kept (the first
    of a random order, so the kept set is nested across severities) and every other image becomes
    a copy of one of them (severity 1: one image for every task)."""
    crops = _check(crops, severity)
    n = len(crops)
    order, u = rng.permutation(n), rng.random(n)  # drawn whatever the severity
    m = max(1, min(n, _round_half_up(n ** (1.0 - severity))))
    kept = order[:m]
    out = crops.copy()
    others = order[m:]
    out[others] = crops[kept[np.minimum((u[others] * m).astype(int), m - 1)]]
    return out


def compound_swap(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    compounds: Sequence[str],
    donors: np.ndarray,
    donor_compounds: Sequence[str],
) -> np.ndarray:
    """Every image of round(severity x C) of the C compounds replaced by a random donor crop of
    the next compound in a random cycle over the compounds (so no compound keeps its own)."""
    crops = _check(crops, severity)
    compounds = np.asarray(compounds).astype(str)
    donor_compounds = np.asarray(donor_compounds).astype(str)
    if len(compounds) != len(crops) or len(donor_compounds) != len(donors):
        raise ValueError("compound_swap needs one compound per crop and per donor")
    names = np.unique(compounds)
    cycle = names[rng.permutation(len(names))]
    partner = {a: b for a, b in zip(cycle, np.roll(cycle, -1), strict=True)}
    swapped = (
        set(cycle[: _round_half_up(severity * len(names))].tolist()) if len(names) > 1 else set()
    )
    picks = np.full(len(crops), -1)
    for i in range(len(crops)):  # one draw per image whatever the severity
        pool = np.flatnonzero(donor_compounds == partner[compounds[i]])
        if len(pool):
            picks[i] = pool[rng.integers(len(pool))]
    out = crops.copy()
    for i in range(len(crops)):
        if compounds[i] in swapped and picks[i] >= 0:
            out[i] = donors[picks[i]]
    return out


def phenotype_erase(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    controls: np.ndarray,
) -> np.ndarray:
    """Replace round(severity x N) random images by a control (DMSO) crop of another task: the
    drug's phenotype is gone, and the image is not its own task's input."""
    crops = _check(crops, severity)
    if len(controls) != len(crops):
        raise ValueError("phenotype_erase needs one control crop per crop")
    hit = _affected(rng, len(crops), severity)
    keys = [c.tobytes() for c in controls]
    picks = np.arange(len(crops))
    for i in range(len(crops)):  # one draw per image whatever the severity
        others = [j for j in range(len(crops)) if keys[j] != keys[i]]
        if others:
            picks[i] = others[rng.integers(len(others))]
    out = crops.copy()
    out[hit] = controls[picks[hit]]
    return out


def training_copies(
    crops: np.ndarray,
    severity: float,
    rng: np.random.Generator,
    *,
    train_donors: np.ndarray,
) -> np.ndarray:
    """Replace round(severity x N) random images by random crops of the training split."""
    crops = _check(crops, severity)
    if len(train_donors) == 0:
        raise ValueError("training_copies needs training crops")
    hit = _affected(rng, len(crops), severity)
    picks = rng.integers(len(train_donors), size=len(crops))  # drawn whatever the severity
    out = crops.copy()
    out[hit] = train_donors[picks[hit]]
    return out


# --------------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class DefectSpec:
    """A defect, the metric(s) it is aimed at, and what its severity means."""

    name: str
    fn: Callable[..., np.ndarray]
    targets: tuple[str, ...]
    summary: str
    uses_masks: bool = True
    #: context keywords the defect needs beyond the crops (donor crops, controls, ...)
    context: tuple[str, ...] = ()
    #: metrics the defect should leave where they are (reported beside the targets)
    steady: tuple[str, ...] = ()

    @property
    def needs_donors(self) -> bool:
        """True when the defect needs more than the crops themselves (not run on real crops)."""
        return bool(self.context)


def _spec(fn, targets, summary, **kw) -> DefectSpec:
    return DefectSpec(fn.__name__, fn, tuple(targets), summary, **kw)


_FID = ("fid_o", "kid_o")
DEFECTS: dict[str, DefectSpec] = {
    s.name: s
    for s in (
        _spec(nucleus_outside, ["nuc_in_cyto"], "nuclei moved out of the cytoplasm"),
        _spec(nucleus_stretch, ["roundness"], "nuclei stretched to up to 3:1"),
        _spec(nucleus_irregular, ["roundness"], "nucleus boundaries warped into lobes"),
        _spec(nucleus_grow, ["nuc_size"], "nuclei scaled up to x1.6"),
        _spec(nucleus_shrink, ["nuc_size"], "nuclei scaled down to x0.55"),
        _spec(cell_grow, ["cyto_size"], "cytoplasm scaled up to x1.5"),
        _spec(cell_shrink, ["cyto_size"], "cytoplasm scaled down to x0.6"),
        _spec(nucleus_duplicate, ["nuc_count"], "up to 4 extra nuclei"),
        _spec(nucleus_remove, ["nuc_count"], "all nuclei but one erased, in a fraction of images"),
        _spec(cell_duplicate, ["cyto_count"], "up to 3 extra whole cells"),
        _spec(cell_remove, ["cyto_count"], "all cells but one erased, in a fraction of images"),
        _spec(
            cell_two_nuclei,
            ["nuc_count"],
            "a second nucleus in one cell, in a fraction of images (cyto_count steady)",
            steady=("cyto_count",),
        ),
        _spec(
            cell_no_nucleus,
            ["nuc_count"],
            "one cell's nucleus erased, in a fraction of images (cyto_count steady)",
            steady=("cyto_count",),
        ),
        _spec(
            moa_swap,
            ["moa"],
            "images replaced by another MoA's",
            uses_masks=False,
            context=("moas", "donors", "donor_moas"),
        ),
        _spec(blur, _FID, "Gaussian blur up to sigma 3 px", uses_masks=False),
        _spec(noise, _FID, "Gaussian noise up to sd 40", uses_masks=False),
        _spec(intensity_shift, _FID, "+ up to 100 grey levels", uses_masks=False),
        _spec(channel_swap, _FID, "DNA and actin exchanged", uses_masks=False),
        _spec(pure_noise, _FID, "images replaced by uniform noise", uses_masks=False),
        _spec(
            mode_collapse,
            ["recall", "coverage"],
            "the set collapsed onto N^(1-s) of its images",
            uses_masks=False,
        ),
        _spec(
            compound_swap,
            ["retrieval_top1", "retrieval_map"],
            "each compound's images replaced by another compound's",
            uses_masks=False,
            context=("compounds", "donors", "donor_compounds"),
        ),
        _spec(
            phenotype_erase,
            ["profile_shift_corr"],
            "images replaced by DMSO controls of other tasks",
            uses_masks=False,
            context=("controls",),
        ),
        _spec(
            training_copies,
            ["memorisation"],
            "images replaced by training crops",
            uses_masks=False,
            context=("train_donors",),
        ),
    )
}


def defect_seed(seed: int, name: str) -> np.random.SeedSequence:
    """The seed of a defect: the same for every severity, so the damage is nested."""
    import zlib

    return np.random.SeedSequence([seed, zlib.crc32(name.encode())])


def apply_defect(
    name: str,
    crops: np.ndarray,
    severity: float,
    *,
    seed: int = 0,
    dna_channel: int = 2,
    segs: Sequence | None = None,
    **context: Any,
) -> np.ndarray:
    """Apply defect ``name`` at ``severity`` with its own seeded generator (see :func:`defect_seed`).

    ``context`` holds the keywords some defects need (:attr:`DefectSpec.context`: ``moas``,
    ``donors``, ``donor_moas``, ``compounds``, ``donor_compounds``, ``controls``,
    ``train_donors``); the others ignore it.
    """
    spec = DEFECTS[name]
    rng = np.random.default_rng(defect_seed(seed, name))
    if spec.context:
        missing = [k for k in spec.context if context.get(k) is None]
        if missing:
            raise ValueError(f"defect {name} needs {', '.join(spec.context)}")
        return spec.fn(crops, severity, rng, **{k: context[k] for k in spec.context})
    if spec.uses_masks:
        return spec.fn(crops, severity, rng, dna_channel=dna_channel, segs=segs)
    return spec.fn(crops, severity, rng, dna_channel=dna_channel)
