"""``bbbc021-sim``: a procedural stand-in for the IMPA single-cell crops of BBBC021.

The simulator writes a dataset in exactly the on-disk layout of :mod:`cellbench.data.layout` (index
CSV, fingerprint CSV, one uint8 96x96x3 ``.npy`` per crop), so every code path that reads real
BBBC021 runs on it. It is a stand-in, never a replacement: anything computed on it must be labelled
``bbbc021-sim``. ``sim_config.json`` at the dataset root marks a folder as simulated.

Compounds, doses and MoAs are the real ones (:func:`cellbench.data.layout.moa_table`: 38 compounds,
103 compound-dose pairs, 12 MoAs, plus DMSO). Plate names follow the real BBBC021 plates
(``Week1_22123`` ...); SAMPLE_KEY is ``<week>_<plate>_<well>_s<site>_<cell>``.

Crops
-----
Channel order is :data:`CHANNELS` = (actin, tubulin, DNA), DNA at index 2, as believed for the IMPA
crops. Each crop is centred on one cell and holds 1 to 6 cells (neighbours may be cut by the border).

* Cells: star-shaped outlines (radius modulated by a few angular harmonics) packed around the centre
  cell; overlapping outlines are split where their normalised radii meet, so neighbours touch with a
  shared border. Every nucleus is clipped to its own cell and sized to fit well inside it.
* DNA: textured ellipses, compact and bright on a dark background (the most compact bright channel).
  Mitotic cells show condensed chromatin (metaphase bar, monopolar rosette, or scattered clumps).
* Tubulin: cytoplasm with radial filament texture from the centrosome, brighter around the nucleus,
  dimmer over it; mitotic cells show spindles or asters.
* Actin: dim interior with wavy stress fibres and a bright cortex at the cell edge and at contacts.
* Per plate (:class:`PlateStyle`, the batch effect): per-channel gain and offset, background level,
  blur, noise, illumination tilt, and small shifts of cell size and density.

Per-crop randomness comes from ``np.random.SeedSequence([seed, tag, crop_index])``, so the output is a
pure function of (seed, scale) whatever the number of worker processes.

MoA effects (cellbench's own choices; directions from the BBBC021 literature)
---------------------------------------------------------------------------
Each effect below is the change at ``strength`` 1; a cell's parameters move linearly from the DMSO
look towards it with its own response ``strength * N(1, 0.2)`` (about 12% of cells barely respond),
so within-MoA variation is wide and neighbouring MoAs overlap.

=========================== ==========================================================================
MoA                         effect on the simulated cells
=========================== ==========================================================================
Actin disruptors            actin collapses into bright puncta, cortex and stress fibres vanish;
                            cells shrink a little and get irregular, ragged outlines
Aurora kinase inhibitors    very large (x1.65) multi-lobed, brighter (polyploid) nuclei, micronuclei;
                            larger cells; far fewer cells per crop
Cholesterol-lowering        mild spreading (x1.12), slightly elongated; vacuole-like holes and a
                            little granularity in the cytoplasm
DNA damage                  larger nuclei (x1.4) with bright foci, frequent micronuclei; larger flat
                            cells; fewer cells
DNA replication             slightly larger (x1.18), brighter nuclei; fewer cells
Eg5 inhibitors              most cells arrested in mitosis: round cells with a monopolar rosette of
                            condensed chromatin (ring) around a central tubulin aster
Epithelial                  dense clusters of smaller, polygonal cells with tight contacts and
                            strong junctional actin
Kinase inhibitors           flatter, larger (x1.3), elongated, spread cells with dimmer stain and
                            more stress fibres; slightly fewer cells
Microtubule destabilizers   rounder cells, diffuse tubulin without filaments, many mitotic cells
                            with scattered condensed chromatin clumps
Microtubule stabilizers     thick bright tubulin bundles, brighter tubulin; many rounded mitotic
                            cells with chromatin clumps and multiple asters; micronuclei
Protein degradation         granular cytoplasm (aggregates in tubulin and actin), smaller nuclei
                            (x0.8), slightly smaller, rounder cells
Protein synthesis           smaller cells (x0.68), dimmer tubulin and actin, slightly smaller nuclei
=========================== ==========================================================================

Known limitation of SIM_VERSION 1: every nucleus is capped at 0.62x its cell's narrowest radius,
so the nucleus enlargements listed above show much less than stated (Aurora: about x1.1-1.3 in
area of the largest nucleus, DNA damage about x1.5). Fixing it changes the output bytes, so it needs a
SIM_VERSION bump and a rebuild of the shipped ``bbbc021-sim`` reference statistics and classifier.

Dose -> strength: the rank of the dose among that compound's doses maps linearly to 0.35 .. 1.0 (a
single-dose compound gets 1.0), times a compound potency in [0.85, 1.0] derived from a hash of its
name, clipped to [0, 1]. DMSO has strength 0.

Fingerprints (stand-in)
-----------------------
There is no SMILES table or RDKit here, so ``emb_fp.csv`` holds a deterministic stand-in with the
format of 1024-bit Morgan count fingerprints: sparse non-negative integer counts. For each compound, a
``sha256("cellbench-sim-fp:" + name)``-seeded RNG picks about 30 compound-specific bits (counts 1-4)
and keeps about 70% of its MoA's 24 "substructure" bits (seeded from the MoA name), plus each of 8
common drug-like bits with probability 0.6. Compounds of the same MoA therefore share bits, so
fingerprint similarity carries MoA similarity, as real fingerprints roughly do. DMSO gets 4 bits
of its own. Real Morgan fingerprints replace these when the real dataset is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from cellbench.data import layout
from cellbench.errors import CellbenchError, DataError, UnknownNameError

__all__ = [
    "CHANNELS",
    "DATASET_NAME",
    "SCALES",
    "SIM_VERSION",
    "PlateStyle",
    "SimScale",
    "dose_strength",
    "plate_style",
    "render_crop",
    "stand_in_fingerprints",
    "write_sim_dataset",
]

#: Bump whenever the bytes written for a given (seed, scale) change.
SIM_VERSION = "1"
DATASET_NAME = "bbbc021-sim"
SIM_CONFIG_NAME = "sim_config.json"
#: Channel order of every crop (DNA is channel index 2).
CHANNELS: tuple[str, str, str] = ("actin", "tubulin", "dna")


@dataclass(frozen=True)
class SimScale:
    """How many plates and crops a scale writes.

    Every treated compound-dose pair gets ``train_per_pair`` + ``test_per_pair`` crops spread over
    ``replicates`` plates; every plate gets DMSO crops in both splits.
    """

    n_plates: int
    replicates: int
    train_per_pair: int
    test_per_pair: int
    dmso_train_per_plate: int
    dmso_test_per_plate: int
    description: str


SCALES: dict[str, SimScale] = {
    "tiny": SimScale(4, 2, 2, 1, 4, 2, "333 crops; unit tests"),
    "small": SimScale(6, 3, 10, 5, 20, 10, "about 1.7K crops; small classifiers, benchmarks"),
    "demo": SimScale(8, 3, 100, 100, 120, 80, "about 22K crops; >= 100 test crops per pair"),
}

#: Real BBBC021 plate names (one per week), used in this order.
_PLATES: tuple[str, ...] = (
    "Week1_22123",
    "Week2_24141",
    "Week3_25421",
    "Week4_27481",
    "Week5_28901",
    "Week6_31641",
    "Week7_34381",
    "Week8_38203",
    "Week9_39206",
    "Week10_40111",
)

_H = layout.CROP_SIZE
_YY, _XX = np.mgrid[0:_H, 0:_H].astype(np.float32) + np.float32(0.5)
_TAG_LAYOUT = 0x4C41
_TAG_PLATE = 0x504C
_TAG_CROP = 0x4352
_CHUNK = 64


# --------------------------------------------------------------------------------------------------
# Plate-level batch effects


@dataclass(frozen=True)
class PlateStyle:
    """Plate-level batch effects applied to every crop of one plate.

    Gains, offsets and background are per channel in :data:`CHANNELS` order, on the [0, 1] intensity
    scale before quantisation to uint8.
    """

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    background: tuple[float, float, float] = (0.05, 0.05, 0.04)
    blur_sigma: float = 0.8
    noise_sigma: float = 0.02
    illum_tilt: float = 0.08
    size_factor: float = 1.0
    density_factor: float = 1.0


def plate_style(rng: np.random.Generator) -> PlateStyle:
    """Draw the batch effects of one plate."""
    gain = np.exp(rng.normal(0.0, 0.12, 3))
    offset = rng.normal(0.0, 0.012, 3)
    background = rng.uniform(0.025, 0.075, 3)
    return PlateStyle(
        gain=tuple(round(float(v), 6) for v in gain),
        offset=tuple(round(float(v), 6) for v in offset),
        background=tuple(round(float(v), 6) for v in background),
        blur_sigma=round(float(rng.uniform(0.45, 1.1)), 6),
        noise_sigma=round(float(rng.uniform(0.01, 0.03)), 6),
        illum_tilt=round(float(rng.uniform(0.0, 0.15)), 6),
        size_factor=round(float(np.exp(rng.normal(0.0, 0.04))), 6),
        density_factor=round(float(rng.uniform(0.85, 1.15)), 6),
    )


# --------------------------------------------------------------------------------------------------
# Phenotypes

#: DMSO (control) values of every phenotype parameter.
_BASE: dict[str, float] = {
    "cell_scale": 1.0,  # cell radius multiplier
    "nuc_scale": 1.0,  # nucleus size multiplier
    "density": 1.0,  # multiplier on the expected number of neighbours
    "cluster": 0.0,  # 1 = tight packing with shared borders
    "round": 0.0,  # 1 = circular outline
    "irregular": 0.0,  # ragged high-frequency outline
    "elong": 0.0,  # extra elongation
    "mitotic": 0.03,  # probability that a cell is in mitosis
    "lobed": 0.0,  # probability of a multi-lobed nucleus
    "micro": 0.03,  # probability of micronuclei
    "dna_gain": 1.0,
    "dna_foci": 0.0,
    "tub_gain": 1.0,
    "act_gain": 1.0,
    "filament": 1.0,  # contrast of fine microtubule filaments
    "bundle": 0.0,  # thick microtubule bundles
    "cortex": 1.0,  # actin cortex at the cell edge
    "stress": 1.0,  # actin stress fibres
    "punct": 0.0,  # punctate actin aggregates
    "granular": 0.0,  # cytoplasmic aggregates
    "vacuole": 0.0,  # vacuole-like holes
    "junction": 0.5,  # actin at cell-cell contacts
}
_FIELDS = tuple(_BASE)

#: Values at strength 1 (only the parameters that change).
_TARGETS: dict[str, dict[str, float]] = {
    "DMSO": {},
    "Actin disruptors": {
        "cell_scale": 0.85,
        "irregular": 0.55,
        "punct": 1.0,
        "cortex": 0.1,
        "stress": 0.0,
        "act_gain": 0.85,
        "junction": 0.05,
        "filament": 0.7,
    },
    "Aurora kinase inhibitors": {
        "nuc_scale": 1.65,
        "cell_scale": 1.35,
        "density": 0.3,
        "lobed": 0.9,
        "micro": 0.3,
        "dna_gain": 1.15,
        "mitotic": 0.02,
    },
    "Cholesterol-lowering": {
        "cell_scale": 1.12,
        "vacuole": 0.9,
        "elong": 0.1,
        "granular": 0.2,
        "filament": 0.8,
        "nuc_scale": 1.03,
    },
    "DNA damage": {
        "nuc_scale": 1.4,
        "density": 0.4,
        "micro": 0.55,
        "cell_scale": 1.2,
        "dna_foci": 1.0,
        "dna_gain": 1.05,
    },
    "DNA replication": {
        "nuc_scale": 1.18,
        "density": 0.55,
        "dna_gain": 1.22,
        "cell_scale": 1.05,
        "micro": 0.1,
    },
    "Eg5 inhibitors": {
        "mitotic": 0.8,
        "round": 0.6,
        "nuc_scale": 1.1,
        "density": 0.9,
    },
    "Epithelial": {
        "density": 2.2,
        "cluster": 1.0,
        "cell_scale": 0.88,
        "nuc_scale": 0.92,
        "junction": 1.6,
        "round": 0.4,
        "stress": 0.5,
    },
    "Kinase inhibitors": {
        "cell_scale": 1.3,
        "tub_gain": 0.78,
        "act_gain": 0.85,
        "elong": 0.15,
        "irregular": 0.15,
        "nuc_scale": 1.08,
        "density": 0.8,
        "stress": 1.5,
    },
    "Microtubule destabilizers": {
        "round": 0.85,
        "filament": 0.05,
        "mitotic": 0.45,
        "cell_scale": 0.85,
        "tub_gain": 0.85,
        "density": 0.95,
    },
    "Microtubule stabilizers": {
        "bundle": 1.0,
        "filament": 0.4,
        "tub_gain": 1.35,
        "mitotic": 0.5,
        "round": 0.5,
        "micro": 0.3,
    },
    "Protein degradation": {
        "granular": 1.0,
        "nuc_scale": 0.8,
        "cell_scale": 0.9,
        "round": 0.2,
        "dna_gain": 0.95,
        "filament": 0.6,
    },
    "Protein synthesis": {
        "cell_scale": 0.68,
        "tub_gain": 0.6,
        "act_gain": 0.62,
        "nuc_scale": 0.88,
        "density": 0.9,
    },
}

#: How mitotic cells of a MoA look.
_MITOSIS_KIND: dict[str, str] = {
    "Eg5 inhibitors": "monopolar",
    "Microtubule destabilizers": "clumps",
    "Microtubule stabilizers": "multipolar",
}

_DMSO_NEIGHBOURS = 2.3  # expected neighbours of the centre cell in a DMSO crop
_MAX_CELLS = 6
_CELL_RADIUS = 19.0
_NUC_RADIUS = 8.5


def _phenotype(moa: str, s: float) -> dict[str, float]:
    target = _TARGETS[moa]
    return {k: v + s * (target.get(k, v) - v) for k, v in _BASE.items()}


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Standardised Gaussian-filtered white noise on the crop grid."""
    field = ndimage.gaussian_filter(rng.standard_normal((_H, _H)).astype(np.float32), sigma)
    sd = float(field.std())
    return field / (sd if sd > 0 else 1.0)


def _sparse_dots(rng: np.random.Generator, density: float, sigma: float) -> np.ndarray:
    """Sparse bright spots (peak about 1) on the crop grid."""
    dots = (rng.random((_H, _H)) < density).astype(np.float32)
    blurred = ndimage.gaussian_filter(dots, sigma)
    return np.minimum(blurred * (2.0 * np.pi * sigma * sigma), 1.5)


@dataclass
class _Cell:
    x: float
    y: float
    radius: float
    harm: np.ndarray  # (K, 2): amplitude, phase for harmonics k = 2 .. K+1
    p: dict[str, float]
    mitotic: bool
    nuc_dx: float = 0.0
    nuc_dy: float = 0.0
    nuc_a: float = 0.0
    nuc_b: float = 0.0
    nuc_angle: float = 0.0


def _cell_shape(rng: np.random.Generator, p: dict[str, float], mitotic: bool) -> np.ndarray:
    harm = np.zeros((7, 2), dtype=np.float64)
    harm[:, 1] = rng.uniform(0.0, 2.0 * np.pi, 7)
    keep = 0.1 if mitotic else max(0.0, 1.0 - p["round"])
    harm[0, 0] = rng.uniform(0.04, 0.26) * keep + p["elong"] * (0.0 if mitotic else 1.0)
    harm[1:4, 0] = rng.uniform(0.0, 0.07, 3) * keep
    if not mitotic and p["irregular"] > 0:
        harm[3:7, 0] += rng.uniform(0.4, 1.0, 4) * 0.12 * p["irregular"]
    total = harm[:, 0].sum()
    if total > 0.55:
        harm[:, 0] *= 0.55 / total
    return harm


def _new_cell(
    rng: np.random.Generator, moa: str, strength: float, style: PlateStyle, x: float, y: float
) -> _Cell:
    if strength > 0 and rng.random() < 0.88:
        s_cell = float(np.clip(strength * rng.normal(1.0, 0.2), 0.0, 1.25))
    else:
        s_cell = strength * 0.15
    p = _phenotype(moa, s_cell)
    mitotic = bool(rng.random() < p["mitotic"])
    radius = _CELL_RADIUS * p["cell_scale"] * style.size_factor * float(np.exp(rng.normal(0, 0.12)))
    if mitotic:
        radius *= 0.72
    harm = _cell_shape(rng, p, mitotic)
    cell = _Cell(x=x, y=y, radius=radius, harm=harm, p=p, mitotic=mitotic)
    # nucleus, sized to sit well inside the narrowest part of the cell
    r_min = radius * (1.0 - harm[:, 0].sum())
    a = _NUC_RADIUS * p["nuc_scale"] * style.size_factor * float(np.exp(rng.normal(0, 0.1)))
    b = a * float(rng.uniform(0.72, 0.95))
    off = 0.0 if mitotic else float(rng.uniform(0.0, 0.12)) * radius
    extent = a * (1.15 if p["lobed"] > 0.3 else 1.0)
    limit = 0.62 * r_min - off
    if extent > limit:
        shrink = max(limit, 3.0) / extent
        a, b = a * shrink, b * shrink
    ang = float(rng.uniform(0, 2 * np.pi))
    cell.nuc_dx, cell.nuc_dy = off * np.cos(ang), off * np.sin(ang)
    cell.nuc_a, cell.nuc_b = a, b
    cell.nuc_angle = float(rng.uniform(0, np.pi))
    return cell


def _place_cells(
    rng: np.random.Generator, moa: str, strength: float, style: PlateStyle
) -> list[_Cell]:
    s_crop = float(np.clip(strength * rng.normal(1.0, 0.15), 0.0, 1.2)) if strength > 0 else 0.0
    crop_p = _phenotype(moa, s_crop)
    lam = _DMSO_NEIGHBOURS * crop_p["density"] * style.density_factor
    n_extra = min(int(rng.poisson(lam)), _MAX_CELLS - 1)
    cluster = crop_p["cluster"]
    lo, hi = 0.80 - 0.12 * cluster, 1.15 - 0.3 * cluster
    min_sep = 0.74 - 0.12 * cluster

    first = _new_cell(rng, moa, strength, style, 0.0, 0.0)
    first.x = _H / 2 + float(rng.normal(0, 2.0)) - first.nuc_dx
    first.y = _H / 2 + float(rng.normal(0, 2.0)) - first.nuc_dy
    cells = [first]
    for _ in range(n_extra):
        cand = _new_cell(rng, moa, strength, style, 0.0, 0.0)
        for _attempt in range(12):
            parent = cells[int(rng.integers(len(cells)))]
            ang = float(rng.uniform(0, 2 * np.pi))
            dist = (parent.radius + cand.radius) * float(rng.uniform(lo, hi))
            x = parent.x + dist * np.cos(ang)
            y = parent.y + dist * np.sin(ang)
            margin = 0.35 * cand.radius
            if not (-margin < x < _H + margin and -margin < y < _H + margin):
                continue
            if any(np.hypot(c.x - x, c.y - y) < min_sep * (c.radius + cand.radius) for c in cells):
                continue
            cand.x, cand.y = float(x), float(y)
            cells.append(cand)
            break
    return cells


# --------------------------------------------------------------------------------------------------
# Rendering


def _nucleus_field(
    rng: np.random.Generator, cell: _Cell, kind: str, theta: np.ndarray
) -> tuple[np.ndarray, float]:
    """Soft nucleus mask (0..1) of one cell on the crop grid, and its brightness."""
    cx, cy = cell.x + cell.nuc_dx, cell.y + cell.nuc_dy
    dx, dy = _XX - np.float32(cx), _YY - np.float32(cy)
    a, b = cell.nuc_a, cell.nuc_b
    ca, sa = np.cos(cell.nuc_angle), np.sin(cell.nuc_angle)
    u = dx * np.float32(ca) + dy * np.float32(sa)
    v = -dx * np.float32(sa) + dy * np.float32(ca)
    edge = 1.1  # soft edge width in pixels
    if cell.mitotic and kind == "monopolar":
        r = np.hypot(u, v)
        r0 = 0.56 * a * (1.0 + 0.1 * np.cos(6.0 * theta + rng.uniform(0, 6.3)))
        w = 0.36 * a
        field = np.clip((w - np.abs(r - r0)) / edge, 0.0, 1.0)
        return field, 1.3
    if cell.mitotic and kind in ("clumps", "multipolar"):
        field = np.zeros((_H, _H), dtype=np.float32)
        for _ in range(int(rng.integers(4, 8))):
            ang, rad = rng.uniform(0, 2 * np.pi), a * np.sqrt(rng.uniform(0.0, 0.32))
            br = a * rng.uniform(0.22, 0.34)
            d = np.hypot(u - rad * np.cos(ang), v - rad * np.sin(ang))
            field = np.maximum(field, np.clip((br - d) / edge + 0.5, 0.0, 1.0))
        return field, 1.35
    if cell.mitotic:  # normal metaphase plate
        jag = 1.0 + 0.12 * np.cos(9.0 * theta + rng.uniform(0, 6.3))
        d = np.sqrt((u / (0.85 * a)) ** 2 + (v / (0.3 * a)) ** 2) / jag
        return np.clip((1.0 - d) * 0.3 * a / edge, 0.0, 1.0), 1.35
    if rng.random() < cell.p["lobed"]:
        n_lobes = int(rng.integers(2, 5))
        base = rng.uniform(0, 2 * np.pi)
        d = np.full((_H, _H), np.inf, dtype=np.float32)
        for k in range(n_lobes):
            ang = base + 2 * np.pi * k / n_lobes + rng.uniform(-0.4, 0.4)
            ou, ov = 0.48 * a * np.cos(ang), 0.48 * a * np.sin(ang)
            la, lb = a * rng.uniform(0.5, 0.64), a * rng.uniform(0.42, 0.55)
            d = np.minimum(d, np.sqrt(((u - ou) / la) ** 2 + ((v - ov) / lb) ** 2))
        return np.clip((1.0 - d) * 0.5 * a / edge, 0.0, 1.0), 1.0
    wob = 1.0 + 0.05 * np.cos(2.0 * theta + rng.uniform(0, 6.3))
    wob = wob + 0.035 * np.cos(3.0 * theta + rng.uniform(0, 6.3))
    d = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wob
    return np.clip((1.0 - d) * b / edge, 0.0, 1.0), 1.0


def render_crop(
    rng: np.random.Generator,
    moa: str,
    strength: float,
    style: PlateStyle,
    *,
    with_nuclei: bool = False,
    with_cells: bool = False,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """One 96x96x3 uint8 crop (channel order :data:`CHANNELS`).

    Args:
        rng: the crop's random generator (all randomness of the crop is drawn from it).
        moa: one of :data:`cellbench.data.layout.MOAS` or ``"DMSO"``.
        strength: effect strength in [0, 1]; 0 gives the control look whatever ``moa`` is.
        style: the plate's batch effects (:func:`plate_style`).
        with_nuclei: also return the ground-truth nucleus labels (int32 96x96, 0 = background;
            a pixel belongs to the nucleus whose soft mask is largest there, if above 0.5). The
            image is the same either way.
        with_cells: also return the ground-truth cell labels after the nucleus labels (int32
            96x96, 0 = background; a pixel belongs to the cell whose territory it is in, more
            than 0.75 px inside its edge, where the cytoplasm stains reach half their level). The
            image is the same either way; the nucleus labels are returned too.
    """
    if moa not in _TARGETS:
        raise UnknownNameError(
            f"unknown MoA {moa!r} for the simulator", fix=f"use one of {sorted(_TARGETS)}"
        )
    strength = float(np.clip(strength, 0.0, 1.0))
    kind = _MITOSIS_KIND.get(moa, "bipolar") if strength > 0 else "bipolar"
    cells = _place_cells(rng, moa, strength, style)
    n = len(cells)

    # ---- cell territories: normalised radius per cell, owner = smallest one
    cx = np.array([c.x for c in cells], dtype=np.float32)[:, None, None]
    cy = np.array([c.y for c in cells], dtype=np.float32)[:, None, None]
    dx, dy = _XX[None] - cx, _YY[None] - cy
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    r_theta = np.ones_like(r)
    harm = np.stack([c.harm for c in cells]).astype(np.float32)  # (n, 7, 2)
    for k in range(harm.shape[1]):
        amp = harm[:, k, 0][:, None, None]
        ph = harm[:, k, 1][:, None, None]
        r_theta += amp * np.cos((k + 2) * theta + ph)
    r_theta *= np.array([c.radius for c in cells], dtype=np.float32)[:, None, None]
    d = r / r_theta
    owner = np.argmin(d, axis=0)
    own = owner[None]
    d_own = np.take_along_axis(d, own, 0)[0]
    r_own = np.take_along_axis(r, own, 0)[0]
    rt_own = np.take_along_axis(r_theta, own, 0)[0]
    th_own = np.take_along_axis(theta, own, 0)[0]
    d2 = np.partition(d, 1, axis=0)[1] if n > 1 else np.full_like(d_own, np.inf)
    to_edge = (1.0 - d_own) * rt_own  # pixels to the own cell edge (radially)
    cyto = np.clip(to_edge / 1.5, 0.0, 1.0)

    def per_cell(key: str) -> np.ndarray:
        return np.array([c.p[key] for c in cells], dtype=np.float32)[owner]

    mitotic = np.array([c.mitotic for c in cells], dtype=bool)
    mit_px = mitotic[owner]

    # ---- DNA
    inside = np.clip((to_edge - 1.0) / 1.0, 0.0, 1.0)  # keeps nuclei off the cell border
    nuc = np.zeros((_H, _H), dtype=np.float32)
    dna = np.zeros((_H, _H), dtype=np.float32)
    truth = np.zeros((_H, _H), dtype=np.int32)
    for i, cell in enumerate(cells):
        field, bright = _nucleus_field(rng, cell, kind, theta[i])
        field = field * (owner == i) * inside
        if with_nuclei or with_cells:
            truth[(field > 0.5) & (field > nuc)] = i + 1
        level = 0.6 * cell.p["dna_gain"] * bright * float(rng.uniform(0.85, 1.15))
        nuc = np.maximum(nuc, field)
        dna = np.maximum(dna, field * level)
        if not cell.mitotic and rng.random() < cell.p["micro"]:
            for _ in range(int(rng.integers(1, 3))):
                ang = rng.uniform(0, 2 * np.pi)
                dist = cell.nuc_a + rng.uniform(2.0, 5.0)
                mx = cell.x + cell.nuc_dx + dist * np.cos(ang)
                my = cell.y + cell.nuc_dy + dist * np.sin(ang)
                mr = rng.uniform(1.2, 2.2)
                blob = np.clip(mr - np.hypot(_XX - mx, _YY - my) + 0.5, 0.0, 1.0)
                blob = blob * (owner == i) * inside
                dna = np.maximum(dna, blob * 0.8 * level)
    tex = 1.0 + 0.13 * _smooth_noise(rng, 1.0) + 0.1 * _smooth_noise(rng, 2.5)
    foci = per_cell("dna_foci")
    if float(foci.max()) > 0.05:
        tex = tex + 0.6 * foci * _sparse_dots(rng, 0.02, 0.8)
    dna = dna * np.clip(tex, 0.3, 2.0)

    # ---- tubulin: radial filaments from the centrosome, perinuclear enrichment
    n_t, n_r = 96, 72
    polar = ndimage.gaussian_filter(
        rng.standard_normal((n_t, n_r)).astype(np.float32), (0.7, 5.0), mode=("wrap", "nearest")
    )
    polar /= max(float(polar.std()), 1e-6)
    coarse = ndimage.gaussian_filter(
        rng.standard_normal((n_t // 4, n_r)).astype(np.float32),
        (0.5, 8.0),
        mode=("wrap", "nearest"),
    )
    coarse /= max(float(coarse.std()), 1e-6)
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[owner]
    t_idx = ((th_own + phase) * (n_t / (2 * np.pi))).astype(np.int64) % n_t
    r_idx = np.clip(r_own, 0, n_r - 1).astype(np.int64)
    fil = polar[t_idx, r_idx]
    bundles = np.maximum(coarse[t_idx // 4, r_idx], 0.0) ** 2
    prof = 0.5 + 0.5 * np.exp(-((r_own / (0.55 * rt_own)) ** 2))
    filament = per_cell("filament") * np.where(mit_px, 0.3, 1.0)
    bundle = per_cell("bundle")
    tub = prof * (1.0 + 0.35 * filament * fil) * (1.0 - 0.45 * bundle) + 0.55 * bundle * bundles
    tub = tub * (1.0 - 0.35 * nuc)
    # mitotic spindles / asters
    for i, cell in enumerate(cells):
        if not cell.mitotic:
            continue
        ux, uy = _XX - np.float32(cell.x), _YY - np.float32(cell.y)
        a = cell.nuc_a
        if kind == "monopolar":
            spindle = np.exp(-(ux**2 + uy**2) / (2 * (0.35 * a) ** 2))
        elif kind == "multipolar":
            spindle = np.zeros((_H, _H), dtype=np.float32)
            for _ in range(int(rng.integers(2, 5))):
                ang = rng.uniform(0, 2 * np.pi)
                px, py = 0.7 * a * np.cos(ang), 0.7 * a * np.sin(ang)
                spindle += np.exp(-((ux - px) ** 2 + (uy - py) ** 2) / (2 * 1.6**2))
        elif kind == "clumps":
            spindle = np.zeros((_H, _H), dtype=np.float32)
        else:
            ca, sa = np.cos(cell.nuc_angle), np.sin(cell.nuc_angle)
            u = ux * np.float32(ca) + uy * np.float32(sa)
            v = -ux * np.float32(sa) + uy * np.float32(ca)
            spindle = np.exp(-((v / (1.1 * a)) ** 2) - (u / (0.45 * a)) ** 2)
        tub = tub + 0.7 * spindle.astype(np.float32) * (owner == i)
    tub = 0.42 * per_cell("tub_gain") * tub

    # ---- actin: dim interior with stress fibres, bright cortex and junctions
    ang_f = rng.uniform(0, np.pi, n).astype(np.float32)[owner]
    proj = _XX * np.cos(ang_f) + _YY * np.sin(ang_f)
    waves = np.cos(proj * np.float32(2 * np.pi / 4.5) + 2.5 * _smooth_noise(rng, 4.0))
    fibres = np.clip(waves, 0.0, 1.0) ** 3 * np.where(mit_px, 0.0, 1.0)
    cortex_edge = np.exp(-((to_edge / 2.0) ** 2))
    junction = np.exp(-(((d2 - d_own) * rt_own / 2.0) ** 2)) * (d2 < 1.05)
    cortex = per_cell("cortex") * np.where(mit_px, 1.5, 1.0)
    act = (
        0.3
        + 0.22 * per_cell("stress") * fibres
        + 0.45 * cortex * cortex_edge
        + 0.35 * per_cell("junction") * junction
    )
    punct = per_cell("punct")
    if float(punct.max()) > 0.05:
        act = act * (1.0 - 0.45 * punct) + 1.1 * punct * _sparse_dots(rng, 0.012, 0.9)
    act = 0.5 * per_cell("act_gain") * act

    # ---- cytoplasmic texture shared by tubulin and actin
    gran = per_cell("granular")
    if float(gran.max()) > 0.05:
        dots = _sparse_dots(rng, 0.03, 0.75)
        tub = tub + 0.35 * gran * dots
        act = act + 0.18 * gran * dots
    vac = per_cell("vacuole")
    if float(vac.max()) > 0.05:
        holes = np.clip((_smooth_noise(rng, 1.8) - 1.0) * 1.5, 0.0, 1.0)
        holes = holes * (1.0 - nuc)
        tub = tub * (1.0 - 0.6 * vac * holes)
        act = act * (1.0 - 0.5 * vac * holes)

    # ---- compose with the plate's batch effects
    img = np.stack([act * cyto, tub * cyto, dna], axis=-1)
    img *= np.float32(np.exp(rng.normal(0.0, 0.05)))  # per-crop exposure jitter
    ta = rng.uniform(0, 2 * np.pi)
    tilt = 1.0 + style.illum_tilt * ((_XX - 48.0) * np.cos(ta) + (_YY - 48.0) * np.sin(ta)) / 48.0
    img = img * np.asarray(style.gain, dtype=np.float32) + np.asarray(style.offset, np.float32)
    img = (img + np.asarray(style.background, dtype=np.float32)) * tilt[..., None]
    img = ndimage.gaussian_filter(img.astype(np.float32), (style.blur_sigma, style.blur_sigma, 0))
    noise = rng.standard_normal(img.shape).astype(np.float32)
    img = img + style.noise_sigma * noise * (0.6 + np.sqrt(np.maximum(img, 0.0)))
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if with_nuclei or with_cells:
        nuclei = _renumber(truth, n)
        if with_cells:
            return out, nuclei, _renumber(np.where(to_edge > 0.75, owner + 1, 0), n)
        return out, nuclei
    return out


def _renumber(labels: np.ndarray, n: int) -> np.ndarray:
    """Labels 0..n renumbered so that the visible ones are 1..k, in order (int32)."""
    lut = np.zeros(n + 1, np.int32)
    seen = np.unique(labels[labels > 0])
    lut[seen] = np.arange(1, len(seen) + 1, dtype=np.int32)
    return lut[labels]


# --------------------------------------------------------------------------------------------------
# Dose strength and fingerprints


def _hash_unit(text: str) -> float:
    """A number in [0, 1) from a sha256 of ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def dose_strength(compound: str, dose: float, table: pd.DataFrame | None = None) -> float:
    """Effect strength of a compound at a dose: dose rank -> 0.35 .. 1.0, times a potency.

    The potency in [0.85, 1.0] comes from a hash of the compound name. DMSO is 0.
    """
    if compound == layout.CONTROL_COMPOUND:
        return 0.0
    table = layout.moa_table() if table is None else table
    doses = sorted(float(d) for d in table.loc[table["compound"] == compound, "dose"])
    if not doses:
        raise UnknownNameError(f"unknown compound {compound!r}", fix="use a BBBC021 compound name")
    rank = min(range(len(doses)), key=lambda k: abs(doses[k] - float(dose)))
    base = 1.0 if len(doses) == 1 else 0.35 + 0.65 * rank / (len(doses) - 1)
    potency = 0.85 + 0.15 * _hash_unit(f"cellbench-sim-potency:{compound}")
    return float(np.clip(base * potency, 0.0, 1.0))


def _seeded(text: str) -> np.random.Generator:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def stand_in_fingerprints(table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The deterministic stand-in fingerprint table (one row per compound incl. DMSO, 1024 ints).

    Rows are indexed by compound name in sorted order; see the module docstring for the recipe.
    """
    table = layout.moa_table() if table is None else table
    dim = layout.FINGERPRINT_DIM
    common = _seeded("cellbench-sim-fp-common").choice(dim, 8, replace=False)
    moa_of = dict(zip(table["compound"], table["moa"], strict=True))
    rows = {}
    for compound in sorted(moa_of):
        vec = np.zeros(dim, dtype=np.int64)
        rng = _seeded(f"cellbench-sim-fp:{compound}")
        if compound == layout.CONTROL_COMPOUND:
            vec[rng.choice(dim, 4, replace=False)] = 1
        else:
            moa_bits = _seeded(f"cellbench-sim-fp-moa:{moa_of[compound]}").choice(dim, 24, False)
            keep = moa_bits[rng.random(24) < 0.7]
            vec[keep] += rng.integers(1, 4, keep.size)
            vec[common[rng.random(8) < 0.6]] += 1
            own = rng.choice(dim, 30, replace=False)
            vec[own] += 1 + rng.geometric(0.6, 30) - 1
            vec = np.minimum(vec, 12)
        rows[compound] = vec
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(range(dim)))


# --------------------------------------------------------------------------------------------------
# Dataset layout


def _well_names() -> list[str]:
    inner = [f"{row}{col:02d}" for row in "BCDEFG" for col in range(2, 12)]
    outer = [f"{row}{col:02d}" for row in "ABCDEFGH" for col in range(1, 13)]
    return inner + [w for w in outer if w not in inner]


def _plan(seed: int, cfg: SimScale) -> pd.DataFrame:
    """The index table (one row per crop) plus the columns ``_moa`` and ``_strength``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_LAYOUT]))
    table = layout.moa_table()
    n_plates = cfg.n_plates
    plates = _PLATES[:n_plates]
    treated = table[table["compound"] != layout.CONTROL_COMPOUND]
    treated = treated.sort_values(["moa", "compound", "dose"]).reset_index(drop=True)

    # condition -> list of (plate index, split)
    per_plate: dict[int, list[tuple[str, float, str, str]]] = {p: [] for p in range(n_plates)}
    for j, row in treated.iterrows():
        reps = [(j + r) % n_plates for r in range(min(cfg.replicates, n_plates))]
        splits = ["train"] * cfg.train_per_pair + ["test"] * cfg.test_per_pair
        splits = [splits[k] for k in rng.permutation(len(splits))]
        for k, split in enumerate(splits):
            per_plate[reps[k % len(reps)]].append(
                (row["compound"], float(row["dose"]), row["moa"], split)
            )
    for p in range(n_plates):
        splits = ["train"] * cfg.dmso_train_per_plate + ["test"] * cfg.dmso_test_per_plate
        for split in splits:
            per_plate[p].append((layout.CONTROL_COMPOUND, 0.0, layout.CONTROL_MOA, split))

    wells = _well_names()
    strengths: dict[tuple[str, float], float] = {}
    records = []
    for p, plate in enumerate(plates):
        week, plate_no = plate.split("_")
        conditions = sorted({(c, d) for c, d, _, _ in per_plate[p]})
        # DMSO controls get two wells per plate (as on real plates), treatments one each
        slots: list[tuple[str, float]] = []
        for cond in conditions:
            slots += [cond, cond] if cond[0] == layout.CONTROL_COMPOUND else [cond]
        if len(slots) > len(wells):
            raise CellbenchError(f"scale puts {len(slots)} wells on one plate; at most 96 fit")
        order = rng.permutation(60)
        plate_wells = [wells[i] for i in order] + wells[60:]
        well_of: dict[tuple[str, float], list[str]] = {}
        for slot, well in zip(slots, plate_wells, strict=False):  # extra wells stay unused
            well_of.setdefault(slot, []).append(well)
        counters: dict[tuple[str, int], int] = {}
        for n_item, (compound, dose, moa, split) in enumerate(per_plate[p]):
            options = well_of[(compound, dose)]
            well = options[n_item % len(options)]
            site = int(rng.integers(1, 5))
            cell_no = counters.get((well, site), int(rng.integers(0, 4)))
            counters[(well, site)] = cell_no + int(rng.integers(1, 4))
            key = f"{week}_{plate_no}_{well}_s{site}_{cell_no}"
            if (compound, dose) not in strengths:
                strengths[(compound, dose)] = dose_strength(compound, dose, table)
            records.append(
                {
                    "_plate": p,
                    "_well": well,
                    "_site": site,
                    "_cell": cell_no,
                    "SAMPLE_KEY": key,
                    "CPD_NAME": compound,
                    "DOSE": dose,
                    "ANNOT": moa,
                    "STATE": 0 if compound == layout.CONTROL_COMPOUND else 1,
                    "BATCH": plate,
                    "SPLIT": split,
                    "_moa": moa,
                    "_strength": strengths[(compound, dose)],
                }
            )
    df = pd.DataFrame.from_records(records)
    df = df.sort_values(["_plate", "_well", "_site", "_cell"], kind="stable").reset_index(drop=True)
    if df["SAMPLE_KEY"].duplicated().any():  # pragma: no cover - guarded by the counters
        raise CellbenchError("internal error: duplicate SAMPLE_KEY in the simulator plan")
    return df


def _crop_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _TAG_CROP, index]))


def _render_chunk(
    args: tuple[str, int, list[tuple[int, str, str, float, int]], list[PlateStyle]],
) -> int:
    """Render and save one chunk of crops (runs in a worker process when ``workers > 1``)."""
    root, seed, jobs, styles = args
    for index, relpath, moa, strength, plate in jobs:
        img = render_crop(_crop_rng(seed, index), moa, strength, styles[plate])
        np.save(os.path.join(root, relpath), img, allow_pickle=False)
    return len(jobs)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(
            "the output path exists and is not a folder",
            path=out,
            fix="choose an empty --out folder or delete it",
        )
    if out.is_dir() and any(out.iterdir()):
        raise DataError(
            "the output folder is not empty",
            path=out,
            fix="choose an empty --out folder or delete it",
        )


def write_sim_dataset(
    out: str | Path,
    *,
    seed: int = 0,
    scale: str = "tiny",
    on_progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> dict:
    """Write the simulated dataset to ``out`` and return a summary.

    The dataset is built in a temporary sibling folder and renamed onto ``out`` at the end, so an
    interrupted run never leaves a folder that looks complete. The files are a pure function of
    ``seed`` and ``scale`` (byte-identical across runs and across ``workers``).

    Args:
        out: the dataset folder to create; it must not exist or be empty.
        seed: a non-negative integer.
        scale: a key of :data:`SCALES` (``tiny``, ``small``, ``demo``).
        on_progress: called as ``on_progress(done, total)`` while crops are written.
        workers: processes used to render crops; 1 renders in this process.

    Returns:
        ``n_crops, n_train, n_test, n_batches, n_compound_doses, seconds, seed, scale,
        sim_version`` (``seconds`` is the wall time, recorded only here).
    """
    t0 = time.perf_counter()
    if scale not in SCALES:
        raise UnknownNameError(
            f"unknown simulator scale {scale!r}", fix=f"use one of {list(SCALES)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CellbenchError(f"seed must be a non-negative integer, not {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise CellbenchError(f"workers must be a positive integer, not {workers!r}")
    seed, workers = int(seed), int(workers)
    out = Path(out).expanduser()
    _check_out(out)
    cfg = SCALES[scale]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    tmp.mkdir()  # a plain mkdir, so the folder gets the user's usual permissions
    try:
        plan = _plan(seed, cfg)
        styles = [
            plate_style(np.random.default_rng(np.random.SeedSequence([seed, _TAG_PLATE, p])))
            for p in range(cfg.n_plates)
        ]
        relpaths = [str(layout.sample_key_to_relpath(k)) for k in plan["SAMPLE_KEY"]]
        for folder in sorted({os.path.dirname(rp) for rp in relpaths}):
            (tmp / folder).mkdir(parents=True, exist_ok=True)

        index_df = plan[list(layout.INDEX_COLUMNS)]
        (tmp / "metadata").mkdir()
        index_df.to_csv(tmp / layout.INDEX_RELPATH, index=True, lineterminator="\n")
        fp = stand_in_fingerprints()
        (tmp / layout.FINGERPRINT_RELPATH).parent.mkdir(parents=True)
        fp.to_csv(tmp / layout.FINGERPRINT_RELPATH, index=True, lineterminator="\n")

        jobs = [
            (i, rp, moa, float(s), int(p))
            for i, (rp, moa, s, p) in enumerate(
                zip(relpaths, plan["_moa"], plan["_strength"], plan["_plate"], strict=True)
            )
        ]
        _render_all(str(tmp), seed, jobs, styles, workers, on_progress)

        counts = {
            "n_crops": len(plan),
            "n_train": int((plan["SPLIT"] == "train").sum()),
            "n_test": int((plan["SPLIT"] == "test").sum()),
            "n_batches": int(plan["BATCH"].nunique()),
            "n_compound_doses": int(
                plan.loc[plan["STATE"] == 1, ["CPD_NAME", "DOSE"]].drop_duplicates().shape[0]
            ),
            "n_compounds": int(plan.loc[plan["STATE"] == 1, "CPD_NAME"].nunique()),
            "n_moas": int(plan.loc[plan["STATE"] == 1, "ANNOT"].nunique()),
        }
        config = {
            "dataset": DATASET_NAME,
            "simulated": True,
            "seed": seed,
            "scale": scale,
            "sim_version": SIM_VERSION,
            "channels": list(CHANNELS),
            "crop_shape": list(layout.CROP_SHAPE),
            "fingerprints": "stand-in (sha256-seeded sparse counts; MoA-shared bits)",
            "scale_settings": asdict(cfg),
            "plate_styles": {
                plate: asdict(style)
                for plate, style in zip(_PLATES[: cfg.n_plates], styles, strict=True)
            },
            "counts": counts,
        }
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        (tmp / SIM_CONFIG_NAME).write_bytes(text.encode("utf-8"))

        _check_out(out)  # someone may have filled it meanwhile
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "n_crops": counts["n_crops"],
        "n_train": counts["n_train"],
        "n_test": counts["n_test"],
        "n_batches": counts["n_batches"],
        "n_compound_doses": counts["n_compound_doses"],
        "seconds": round(time.perf_counter() - t0, 3),
        "seed": seed,
        "scale": scale,
        "sim_version": SIM_VERSION,
        "path": str(out),
    }


def _render_all(
    root: str,
    seed: int,
    jobs: Sequence[tuple[int, str, str, float, int]],
    styles: list[PlateStyle],
    workers: int,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    total = len(jobs)
    chunks = [list(jobs[i : i + _CHUNK]) for i in range(0, total, _CHUNK)]
    done = 0
    if on_progress is not None:
        on_progress(0, total)
    if workers == 1 or len(chunks) <= 1:
        for chunk in chunks:
            done += _render_chunk((root, seed, chunk, styles))
            if on_progress is not None:
                on_progress(done, total)
        return
    from cellbench.workers import worker_context

    ctx = worker_context()  # workers never re-run the caller's __main__ (cellbench.workers)
    with ctx.Pool(processes=min(workers, len(chunks))) as pool:
        args = [(root, seed, chunk, styles) for chunk in chunks]
        for n_done in pool.imap_unordered(_render_chunk, args):
            done += n_done
            if on_progress is not None:
                on_progress(done, total)
