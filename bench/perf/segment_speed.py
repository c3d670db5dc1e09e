"""Rewards without Inception: segmentation + the six mask features + the rewards, images/s.

Three pipelines on the same simulated crops, side by side in one run:

* ``naive``: per crop, plain Otsu threshold of the DNA channel, distance-transform watershed
  (peaks at least 5 px apart), cells by a watershed of the cytoplasm seeded by the nuclei inside
  its Otsu foreground, the features of :func:`cellbench.features.segment.classical.features_from_masks`;
* ``classical v2``: the frozen copy of the suite-2 segmenter (``bench/perf/_classical_v2.py``),
  its ``segment_batch``;
* ``classical v3``: the current default, ``cellbench.features.segment.classical.segment_batch``.

Each pipeline's features then go through ``cellbench.metrics.rewards.compute_rewards`` with the
shipped reference statistics (their values do not matter for timing). Runs are paired: every
repeat times the three pipelines one after the other, in one process and with a pool of
``--workers`` processes (fork, started before timing); the table gives the median images/s over
the repeats (wall clock) and the median CPU-time rate of the one-process runs. On a shared machine
the wall-clock figures are noisy; the ratios within a repeat are the reliable part.

Usage: python bench/perf/segment_speed.py [--data-dir data] [--n 1024] [--repeats 3]
  (needs `cellbench data sim --out DATA/bbbc021-sim --scale small --seed 0` or larger)
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _classical_v2 as v2

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


PIPELINES = {
    "naive": naive_batch,
    "classical v2": v2.segment_batch,
    "classical v3": v3.segment_batch,
}


def _features(name: str, images: np.ndarray) -> np.ndarray:
    return PIPELINES[name](images, dna_channel=2)


def _rewards(feats: np.ndarray, moas: np.ndarray, reference: dict) -> None:
    from cellbench.metrics.rewards import compute_rewards

    compute_rewards({k: feats[:, j] for j, k in enumerate(v3.FEATURE_NAMES)}, None, moas, reference)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=1024, help="crops per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=128, help="crops per pool task")
    ap.add_argument("--skip", nargs="*", default=[], help="pipelines to leave out")
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
    names = [n for n in PIPELINES if n not in args.skip]
    pool = multiprocessing.get_context("fork").Pool(args.workers)
    chunks = [crops[s : s + args.chunk] for s in range(0, len(crops), args.chunk)]
    pool.starmap(_features, [(n, chunks[0][:4]) for n in names for _ in range(args.workers)])

    wall1: dict[str, list[float]] = {n: [] for n in names}
    cpu1: dict[str, list[float]] = {n: [] for n in names}
    wallp: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            t0, c0 = time.perf_counter(), time.process_time()
            _rewards(_features(n, crops), moas, reference)
            wall1[n].append(len(crops) / (time.perf_counter() - t0))
            cpu1[n].append(len(crops) / (time.process_time() - c0))
            t0 = time.perf_counter()
            feats = np.concatenate(pool.starmap(_features, [(n, c) for c in chunks]))
            _rewards(feats, moas, reference)
            wallp[n].append(len(crops) / (time.perf_counter() - t0))
    pool.close()

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), "?"
    )
    print(
        f"{datetime.date.today()}, {model}, {multiprocessing.cpu_count()} CPUs, python "
        f"{platform.python_version()}; {len(crops)} crops {crops.shape[1:]} of "
        f"{ds.root}; median of {args.repeats} paired repeats"
    )
    base = np.median(wall1[names[0]])
    print(
        f"| pipeline | 1 process, images/s | 1 process, images/CPU-s | "
        f"{args.workers} processes, images/s | 1 process vs {names[0]} |"
    )
    print("|---|---|---|---|---|")
    for n in names:
        print(
            f"| {n} | {np.median(wall1[n]):.0f} | {np.median(cpu1[n]):.0f} | "
            f"{np.median(wallp[n]):.0f} | {np.median(wall1[n]) / base:.2f}x |"
        )
    print("runs (1 process, images/s):", {n: [round(v) for v in wall1[n]] for n in names})


if __name__ == "__main__":
    main()
