"""The ``unet`` backend's CPU speed against ``classical`` v3, side by side on the same crops.

On the first ``--n`` crops of the simulated dataset, in one process, each repeat times one after
the other (paired):

* the nucleus pass alone: ``classical.segment_nuclei_stack`` against ``unet.segment_nuclei_stack``
  (the classical radius estimate, resize, network, seeded watershed);
* the whole per-crop features (nuclei, the shared classical cell pass, the six features):
  ``classical.segment_batch`` against ``UNetBackend.features``.

torch runs with ``--threads`` threads. Speed is CPU time (``time.process_time``, all threads of the
process), best of ``--repeats``, and wall clock; crops per CPU-second = 1000 / (ms per crop).

Usage: python bench/perf/unet_speed.py [--data-dir data] [--n 512] [--repeats 3] [--threads 1]
  (needs `cellbench data sim --out DATA/bbbc021-sim --scale small --seed 0`)
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.features.segment import classical, unet
    from cellbench.features.segment.backends import UNetBackend

    torch.set_num_threads(args.threads)
    ds = open_dataset("bbbc021-sim", args.data_dir)
    crops = ds.load_crops(ds.index["SAMPLE_KEY"].tolist()[: args.n])
    dna_channel = ds.card.dna_channel
    dna = crops[..., dna_channel]
    be = UNetBackend()
    paths = {
        "classical v3, nuclei": lambda: classical.segment_nuclei_stack(dna),
        "unet, nuclei": lambda: unet.segment_nuclei_stack(be._net, dna),
        "classical v3, features": lambda: classical.segment_batch(crops, dna_channel=dna_channel),
        "unet, features": lambda: be.features(crops, dna_channel=dna_channel),
    }
    # warm up (compiled kernels, torch's first call)
    classical.segment_batch(crops[:8], dna_channel=dna_channel)
    be.features(crops[:8], dna_channel=dna_channel)

    cpu: dict[str, list[float]] = {k: [] for k in paths}
    wall: dict[str, list[float]] = {k: [] for k in paths}
    counts: dict[str, float] = {}
    for _ in range(args.repeats):
        for k, f in paths.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = f()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - t0)
            if "nuclei" in k:
                counts[k] = float(np.mean(out.reshape(len(out), -1).max(1)))
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), "?"
    )
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {model}, torch "
        f"threads {args.threads}, load average {' '.join(load)}; {len(crops)} crops "
        f"{crops.shape[1:]}; best of {args.repeats}"
    )
    print("| path | CPU ms per crop | crops per CPU-second | wall ms per crop | nuclei per crop |")
    print("|---|---|---|---|---|")
    for k in paths:
        ms = 1000 * min(cpu[k]) / len(crops)
        nuc = f"{counts[k]:.2f}" if k in counts else ""
        print(
            f"| {k} | {ms:.2f} | {1000 / ms:.0f} | {1000 * min(wall[k]) / len(crops):.2f} | {nuc} |"
        )


if __name__ == "__main__":
    main()
