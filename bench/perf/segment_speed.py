"""Rewards without Inception: segmentation + the six mask features + the rewards, images/s.

Pipelines on the same simulated crops, side by side in one run:

* ``naive``: per crop, plain Otsu threshold of the DNA channel, distance-transform watershed
  (peaks at least 5 px apart), cells by a watershed of the cytoplasm seeded by the nuclei inside
  its Otsu foreground, the features of :func:`cellbench.features.segment.classical.features_from_masks`;
* ``classical v2``: the frozen copy of the suite-2 segmenter (``bench/perf/_classical_v2.py``),
  its ``segment_batch``;
* ``classical v3, scipy nuclei``: version 3 before the compiled nucleus pass, the frozen copy
  ``bench/perf/_classical_v3_ref.py`` (its nucleus pass in scipy / scikit-image; compiled cell
  pass and features), its ``segment_batch``: the same features as the current one, bit for bit
  (``bench/perf/nucleus_exactness.py``);
* ``classical v3``: the current default, ``cellbench.features.segment.classical.segment_batch``
  (compiled nucleus pass, cell pass and features);
* ``classical v3, scipy cells`` (only with ``--with-scipy-cells``): version 3 as first merged:
  nuclei as above, the cell pass by the scipy / scikit-image reference ``cells.segment_cells``
  once per batch on a strip of crops with 8-px gutters, the features by the numpy batch code
  (both reproduced below).

Each pipeline's features then go through ``cellbench.metrics.rewards.compute_rewards`` with the
shipped reference statistics (their values do not matter for timing). Every repeat times the
pipelines one after the other, in one process and with a pool of ``--workers`` processes (fork,
started and warmed before timing). The machine may be shared, so the figure to read is CPU time:
images per CPU-second of the one process (``time.process_time``) and, for the pool, images per
CPU-second summed over the workers (each worker reports its own process time) next to the wall
clock. Medians over the repeats.

A stage profile follows (CPU ms per crop, one process): DNA / cytoplasm split, nucleus pass, cell
pass, features, rewards, for v3 with the scipy nucleus pass (frozen copy) and the current v3
(compiled); ``--cprofile`` adds cProfile's top functions of the current pipeline.

Usage: python bench/perf/segment_speed.py [--data-dir data] [--n 512] [--repeats 3]
  (needs `cellbench data sim --out DATA/bbbc021-sim --scale small --seed 0` or larger)
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import multiprocessing
import platform
import pstats
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _classical_v2 as v2
import _classical_v3_ref as v3_ref

from cellbench.features.segment import classical as v3


def naive_batch(images: np.ndarray, *, dna_channel: int = 2) -> np.ndarray:
    """Plain Otsu + distance-transform watershed, one crop at a time (the naive reference)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    out = np.zeros((len(images), len(v3.FEATURE_NAMES)))
    for i, img in enumerate(images):
        dna = img[..., dna_channel].astype(np.float32)
        cyto = np.delete(img, dna_channel, axis=-1).astype(np.float32).mean(-1)
        nuclei = np.zeros(dna.shape, np.int32)
        if dna.max() > dna.min():
            fg = ndi.binary_fill_holes(dna > threshold_otsu(dna))
            dist = ndi.distance_transform_edt(fg)
            peaks = peak_local_max(dist, min_distance=5, labels=ndi.label(fg)[0])
            markers = np.zeros(dna.shape, np.int32)
            markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
            nuclei = watershed(-dist, markers, mask=fg).astype(np.int32)
        cmask = np.zeros(dna.shape, bool)
        if cyto.max() > cyto.min():
            cmask = ndi.binary_fill_holes(cyto > threshold_otsu(cyto))
        cells = watershed(-cyto, nuclei, mask=cmask | (nuclei > 0)).astype(np.int32)
        f = v3.features_from_masks(v3.SegmentationResult(nuclei, cells, cmask))
        out[i] = [f[k] for k in v3.FEATURE_NAMES]
    return out


# ------------------------------------------------------------------ v3 before the compiled kernels


def scipy_cell_pass(cyto_src: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cell pass of v3 as first merged: ``cells.segment_cells`` once on a strip of the crops
    separated by 8-px gutters, each crop in its own intensity units."""
    from cellbench.features.segment.cells import cyto_levels, segment_cells

    n_img, h, w = nuclei.shape
    g = 8
    lo, thr = cyto_levels(cyto_src)
    pad = ((0, 0), (g, 0), (g, g))

    def strip(x: np.ndarray) -> np.ndarray:
        return np.pad(x, pad).reshape(-1, w + 2 * g)

    offsets = np.r_[0, np.cumsum(nuclei.reshape(n_img, -1).max(1))[:-1]].astype(np.int32)
    nuc_s = strip(np.where(nuclei > 0, nuclei + offsets[:, None, None], 0))
    valid = strip(np.ones(nuclei.shape, bool))
    ones = np.ones((n_img, h, w), np.float32)
    lo_map = strip(ones * lo[:, None, None].astype(np.float32))
    thr_map = strip(ones * (thr - 1.0)[:, None, None].astype(np.float32)) + 1.0
    rows = ((0, g), (0, 0))
    cells_s, fg_s = segment_cells(
        np.pad(strip(cyto_src.astype(np.float32)), rows),
        np.pad(nuc_s, rows),
        levels=(np.pad(lo_map, rows), np.pad(thr_map, rows)),
        valid=np.pad(valid, rows),
    )

    def unstrip(x: np.ndarray) -> np.ndarray:
        return x[:-g].reshape(n_img, h + g, w + 2 * g)[:, g:, g:-g]

    return unstrip(cells_s), unstrip(fg_s)


def _global_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    n_img = len(labels)
    per = labels.reshape(n_img, -1).max(1).astype(np.int64)
    offsets = np.r_[0, np.cumsum(per)[:-1]]
    glob = np.where(labels > 0, labels + offsets[:, None, None], 0)
    img_of = np.r_[-1, np.repeat(np.arange(n_img), per)]
    return glob, img_of, int(per.sum())


def numpy_stack_features(nuclei: np.ndarray, cells: np.ndarray, cyto: np.ndarray) -> np.ndarray:
    """The batch features of v3 as first merged (numpy, the whole batch at once)."""
    n_img = len(nuclei)
    out = np.zeros((n_img, len(v3.FEATURE_NAMES)))
    nuc, nuc_img, n_nuc = _global_labels(nuclei)
    cel, cell_img, n_cells = _global_labels(cells)
    nuc_area = np.bincount(nuc.ravel(), minlength=n_nuc + 1).astype(np.float64)
    cell_area = np.bincount(cel.ravel(), minlength=n_cells + 1).astype(np.float64)
    nuc_p, cell_p = nuc_area[1:] > 0, cell_area[1:] > 0
    counts = np.bincount(nuc_img[1:][nuc_p], minlength=n_img).astype(np.float64)
    out[:, 0] = counts
    out[:, 1] = np.bincount(cell_img[1:][cell_p], minlength=n_img)
    np.maximum.at(out[:, 2], nuc_img[1:][nuc_p], nuc_area[1:][nuc_p])
    np.maximum.at(out[:, 3], cell_img[1:][cell_p], cell_area[1:][cell_p])
    if n_nuc:
        per = v3._perimeters(v3._strip(nuc), n_nuc)[1:][nuc_p]
        area = nuc_area[1:][nuc_p]
        with np.errstate(divide="ignore", invalid="ignore"):
            rounds = np.where(per > 0, np.minimum(4.0 * np.pi * area / per**2, 1.0), 1.0)
        sums = np.bincount(nuc_img[1:][nuc_p], weights=rounds, minlength=n_img)
        inside = nuc > 0
        n_in = inside.reshape(n_img, -1).sum(1)
        n_in_cyto = (inside & cyto).reshape(n_img, -1).sum(1)
        has = counts > 0
        out[has, 4] = sums[has] / counts[has]
        out[has, 5] = n_in_cyto[has] / n_in[has]
    return out


def v3_before_batch(images: np.ndarray, *, dna_channel: int = 2) -> np.ndarray:
    out = np.zeros((len(images), len(v3.FEATURE_NAMES)))
    for s in range(0, len(images), v3.BATCH_CHUNK):
        dna, cyto = v3._split_channels(images[s : s + v3.BATCH_CHUNK], dna_channel)
        nuclei = v3.segment_nuclei_stack(dna)
        cells, fg = scipy_cell_pass(cyto, nuclei)
        out[s : s + len(dna)] = numpy_stack_features(nuclei, cells, fg)
    return out


PIPELINES = {
    "naive": naive_batch,
    "classical v2": v2.segment_batch,
    "classical v3, scipy cells": v3_before_batch,
    "classical v3, scipy nuclei": v3_ref.segment_batch,
    "classical v3": v3.segment_batch,
}


def _features(name: str, images: np.ndarray) -> tuple[np.ndarray, float]:
    c0 = time.process_time()
    feats = PIPELINES[name](images, dna_channel=2)
    return feats, time.process_time() - c0


def _rewards(feats: np.ndarray, moas: np.ndarray, reference: dict) -> None:
    from cellbench.metrics.rewards import compute_rewards

    compute_rewards({k: feats[:, j] for j, k in enumerate(v3.FEATURE_NAMES)}, None, moas, reference)


def stage_profile(crops: np.ndarray, moas: np.ndarray, reference: dict) -> dict[str, dict]:
    """CPU ms per crop of each stage, v3 with the scipy nucleus pass (frozen) and the current v3."""
    out: dict[str, dict] = {"v3, scipy nuclei": {}, "v3": {}}
    n = len(crops)
    feats = lambda a, b, c: v3.stack_features(v3.StackSegmentation(a, b, c))  # noqa: E731
    for name, nucleus_pass in (
        ("v3, scipy nuclei", v3_ref.segment_nuclei_stack),
        ("v3", v3.segment_nuclei_stack),
    ):
        t = dict.fromkeys(("split", "nuclei", "cells", "features", "rewards"), 0.0)
        for s in range(0, n, v3.BATCH_CHUNK):
            c0 = time.process_time()
            dna, cyto = v3._split_channels(crops[s : s + v3.BATCH_CHUNK], 2)
            c1 = time.process_time()
            nuclei = nucleus_pass(dna)
            c2 = time.process_time()
            cells, fg = v3._cell_pass(cyto, nuclei)
            c3 = time.process_time()
            f = feats(nuclei, cells, fg)
            c4 = time.process_time()
            _rewards(f, moas[s : s + len(dna)], reference)
            c5 = time.process_time()
            for key, dt in zip(t, (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c5 - c4), strict=True):
                t[key] += dt
        out[name] = {k: 1e3 * v / n for k, v in t.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=512, help="crops per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=128, help="crops per pool task")
    ap.add_argument("--skip", nargs="*", default=[], help="pipelines to leave out")
    ap.add_argument("--cprofile", action="store_true", help="cProfile's top functions of v3")
    ap.add_argument(
        "--with-scipy-cells", action="store_true", help="add v3 as first merged (scipy cells)"
    )
    args = ap.parse_args()

    from cellbench.data.bbbc021 import open_dataset

    ds = open_dataset("bbbc021-sim", args.data_dir)
    index = ds.index.iloc[: args.n]
    crops = ds.load_crops(index["SAMPLE_KEY"].tolist())
    moas = index["ANNOT"].astype(str).to_numpy()
    ref_path = (
        Path(v3.__file__).resolve().parents[2] / "resources/bbbc021-sim/reference_classical.json"
    )
    reference = json.loads(ref_path.read_text())["per_moa"]
    if set(moas) - set(reference):
        moas = np.full(len(crops), "DMSO")
    skip = set(args.skip) | (set() if args.with_scipy_cells else {"classical v3, scipy cells"})
    names = [n for n in PIPELINES if n not in skip]
    for n in names:  # compiled kernels loaded (or compiled) before the pool forks
        _features(n, crops[:32])
    pool = multiprocessing.get_context("fork").Pool(args.workers)
    chunks = [crops[s : s + args.chunk] for s in range(0, len(crops), args.chunk)]
    pool.starmap(_features, [(n, chunks[0][:4]) for n in names for _ in range(args.workers)])

    wall1: dict[str, list[float]] = {n: [] for n in names}
    cpu1: dict[str, list[float]] = {n: [] for n in names}
    wallp: dict[str, list[float]] = {n: [] for n in names}
    cpup: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            t0, c0 = time.perf_counter(), time.process_time()
            _rewards(_features(n, crops)[0], moas, reference)
            wall1[n].append(len(crops) / (time.perf_counter() - t0))
            cpu1[n].append(len(crops) / (time.process_time() - c0))
            t0, c0 = time.perf_counter(), time.process_time()
            parts = pool.starmap(_features, [(n, c) for c in chunks])
            _rewards(np.concatenate([p[0] for p in parts]), moas, reference)
            wallp[n].append(len(crops) / (time.perf_counter() - t0))
            cpu_used = sum(p[1] for p in parts) + (time.process_time() - c0)
            cpup[n].append(len(crops) / cpu_used)
    pool.close()

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "?"
    )
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {model}, "
        f"{multiprocessing.cpu_count()} CPUs, python {platform.python_version()}, load average "
        f"{' '.join(load)}; {len(crops)} crops {crops.shape[1:]} of {ds.root}; median of "
        f"{args.repeats} repeats"
    )
    base = np.median(cpu1[names[0]])
    print(
        f"| pipeline | 1 process, images per CPU-second | 1 process, images/s (wall) | "
        f"{args.workers} processes, images per CPU-second | {args.workers} processes, images/s "
        f"(wall) | CPU rate vs {names[0]} |"
    )
    print("|---|---|---|---|---|---|")
    for n in names:
        print(
            f"| {n} | {np.median(cpu1[n]):.0f} | {np.median(wall1[n]):.0f} | "
            f"{np.median(cpup[n]):.0f} | {np.median(wallp[n]):.0f} | "
            f"{np.median(cpu1[n]) / base:.2f}x |"
        )
    print(
        "runs (1 process, images per CPU-second):", {n: [round(v) for v in cpu1[n]] for n in names}
    )

    prof = stage_profile(crops, moas, reference)
    print("\nWhere the time goes (CPU ms per crop, one process):")
    print("| stage | " + " | ".join(prof) + " |")
    print("|---|" + "---|" * len(prof))
    for stage in ("split", "nuclei", "cells", "features", "rewards"):
        print(f"| {stage} | " + " | ".join(f"{prof[k][stage]:.3f}" for k in prof) + " |")
    print("| total | " + " | ".join(f"{sum(prof[k].values()):.3f}" for k in prof) + " |")
    if args.cprofile:
        pr = cProfile.Profile()
        pr.enable()
        _rewards(_features("classical v3", crops)[0], moas, reference)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
