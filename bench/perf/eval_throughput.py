"""Throughput of the scoring engine (issue: rewards >= 200 images/s without FID on 2 cores).

Measures, on bbbc021-sim crops:
  1. segmentation + the six mask rewards (no Inception): images/s;
  2. the full `cellbench eval` of N generated images end to end (cold reference cache, so the
     real reference row's segmentation and Inception features are computed too), wall time.

Usage:
  python bench/perf/eval_throughput.py --data-dir data --n-images 5120 [--device cuda]

``--device`` is where the Inception network of the full evaluation runs (segmentation stays on
the CPU workers).

The dataset must hold at least N test tasks: `cellbench data sim --scale demo` has 10300.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir", default="data", help="folder holding bbbc021-sim (made if absent)"
    )
    ap.add_argument("--scale", default="demo", help="simulator scale to create if absent")
    ap.add_argument("--n-images", type=int, default=5120, help="images in the end-to-end eval")
    ap.add_argument("--n-rewards", type=int, default=2048, help="images in the rewards-only timing")
    ap.add_argument("--skip-full", action="store_true", help="only time the rewards")
    ap.add_argument(
        "--device", default="cpu", help="torch device of the full evaluation's Inception"
    )
    args = ap.parse_args()

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.data.sim import write_sim_dataset
    from cellbench.evaluation import evaluate
    from cellbench.protocol import build_protocol, write_protocol
    from cellbench.scoring import Artifacts, Scorer

    root = Path(args.data_dir) / "bbbc021-sim"
    if not (root / "metadata").exists():
        print(f"simulating bbbc021-sim ({args.scale}) into {root} ...", flush=True)
        write_sim_dataset(root, seed=0, scale=args.scale, workers=os.cpu_count() or 1)
    ds = open_dataset("bbbc021-sim", args.data_dir)
    table = build_protocol(ds, "test", 0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, Inception on {args.device}"
    )

    # 1. rewards without FID
    scorer = Scorer(Artifacts.for_dataset(ds), use_inception=False)
    rows = table.iloc[: args.n_rewards]
    crops = ds.load_crops(rows["control_key"].tolist())
    from cellbench.features.segment.backends import POOL_MIN_IMAGES

    # warm-up: starts the worker pool (kept for the life of the process, as in `cellbench eval`,
    # which segments the reference and the generated images with the same pool)
    t0 = time.perf_counter()
    scorer.segment_features(crops[:POOL_MIN_IMAGES])
    print(f"warm-up incl. worker pool start: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    scorer.score(crops, rows["moa"].to_numpy())
    dt = time.perf_counter() - t0
    print(
        f"rewards without FID: {len(crops)} images in {dt:.2f} s = {len(crops) / dt:.0f} images/s"
    )
    if args.skip_full:
        return

    # 2. full evaluation, end to end, cold cache
    n = min(args.n_images, len(table))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CELLBENCH_CACHE_DIR"] = str(tmp / "cache")
        part = table.sample(n=n, random_state=0).sort_index()
        write_protocol(part, tmp / "protocol.csv")
        images = tmp / "images"
        images.mkdir()
        for r in part.itertuples():
            np.save(images / f"{r.task_id}.npy", ds.load_crop(r.control_key))
        t0 = time.perf_counter()
        doc = evaluate(
            images,
            "bbbc021-sim",
            data_dir=args.data_dir,
            protocol=tmp / "protocol.csv",
            out=tmp / "results.json",
            device=args.device,
        )
        dt = time.perf_counter() - t0
        print(
            f"full eval (cold cache) of {n} images: {dt:.1f} s = {n / dt:.1f} images/s "
            f"(overall {doc['metrics']['overall']['value']:.3f}, fid_o {doc['metrics']['fid_o']['value']:.2f})"
        )
        t0 = time.perf_counter()
        evaluate(
            images,
            "bbbc021-sim",
            data_dir=args.data_dir,
            protocol=tmp / "protocol.csv",
            device=args.device,
        )
        dt = time.perf_counter() - t0
        print(f"full eval (warm reference cache) of {n} images: {dt:.1f} s = {n / dt:.1f} images/s")


if __name__ == "__main__":
    main()
