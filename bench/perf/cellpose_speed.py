"""Crops/s of the segmentation backends: classical beside Cellpose (batched, and one call per crop).

Cellpose runs with random-init networks written to a temporary models folder (the speed of a
network does not depend on its weights; the mask step after it does somewhat, so the figure is a
measurement of this code path, not of the published weights). The "per crop" row is the naive
path this backend replaced: one Cellpose call per crop and model.

Usage (needs the cellpose extra: pip install -e '.[cellpose]'):
  python bench/perf/cellpose_speed.py --data-dir data --n 64 [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), "?")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir", default="data", help="folder holding bbbc021-sim (made if absent)"
    )
    ap.add_argument("--scale", default="tiny", help="simulator scale to create if absent")
    ap.add_argument("--n", type=int, default=64, help="crops to segment")
    ap.add_argument("--device", default="cpu", help="device of the Cellpose networks")
    ap.add_argument("--skip-per-crop", action="store_true", help="skip the naive per-crop row")
    args = ap.parse_args()

    import torch

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.features.segment import backends

    ds = open_dataset("bbbc021-sim", args.data_dir, create_sim=True)
    keys = ds.index["SAMPLE_KEY"].tolist()[: args.n]
    crops = ds.load_crops(keys)
    dna = ds.card.dna_channel
    print(f"cpu: {_cpu()}; torch threads {torch.get_num_threads()}; device {args.device}")
    print(f"{len(crops)} crops of bbbc021-sim (96 x 96)")

    def timed(label: str, fn) -> np.ndarray:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        print(f"{label:<34} {dt:8.1f} s   {len(crops) / dt:8.2f} crops/s")
        return out

    os.environ.setdefault("CELLBENCH_WORKERS", "1")
    classical = backends.get_backend("classical")
    timed("classical (1 process)", lambda: classical.features(crops, dna_channel=dna))

    from cellpose.resnet_torch import CPnet

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        for name, diam in (("nucleitorch_0", 17.0), ("cyto3", 30.0)):
            net = CPnet([2, 32, 64, 128, 256], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam)
            net.save_model(str(Path(tmp) / name))
        os.environ["CELLPOSE_LOCAL_MODELS_PATH"] = tmp
        cp = backends.get_backend("cellpose", args.device)
        batched = timed(
            f"cellpose batched ({cp.batch} per call)", lambda: cp.features(crops, dna_channel=dna)
        )
        if not args.skip_per_crop:
            from cellbench.features.segment.classical import features_from_masks

            def per_crop() -> np.ndarray:
                out = []
                for img in crops:
                    f = features_from_masks(cp.segment_many(img[None], dna_channel=dna)[0])
                    out.append([f[k] for k in cp.feature_names])
                return np.array(out)

            single = timed("cellpose one call per crop", per_crop)
            print("batched == per crop:", bool(np.array_equal(batched, single)))


if __name__ == "__main__":
    main()
