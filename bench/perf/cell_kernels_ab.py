"""The compiled cell pass against another version of its kernels: same cells?, and how fast?

``--old FILE`` is an earlier ``cellbench/features/segment/_cell_kernels.py``, written out with

    git show COMMIT:cellbench/features/segment/_cell_kernels.py > FILE

Both versions' ``cells_stack`` run on the same inputs: every simulated crop of ``--data-dir``'s
``bbbc021-sim`` and every real BBBC021 crop in ``../shared/data/bbbc021_real/singh_crops_68x68``
(when present), with the nuclei of the current nucleus pass, under the default cell parameters
and a few others (h, seed clearance, distance weight, ring), and once with no nucleus at all. The
table counts the crops whose cells or cytoplasm foreground differ in any pixel. Then the two run
back to back ``--pairs`` times on the first 512 simulated crops, in one process, and the median
of the per-pair CPU-time ratios (current / old) is printed: on a VM whose speed drifts, a paired
ratio is steadier than two best-of figures.

Usage: python bench/perf/cell_kernels_ab.py --old FILE [--data-dir data] [--pairs 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import types
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
VARIANTS = (
    {},
    {"h": 0.2},
    {"h": 1.5},
    {"seed_clearance": 0},
    {"seed_clearance": 8},
    {"distance_weight": 0.0},
    {"ring": 1},
)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--old", required=True, type=Path, help="an earlier _cell_kernels.py")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--pairs", type=int, default=30)
    args = ap.parse_args()
    if not args.old.is_file():
        raise SystemExit(f"{args.old}: no such file (write it with `git show COMMIT:...`)")

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.features.segment import _cell_kernels as new
    from cellbench.features.segment import classical
    from cellbench.features.segment.cells import DEFAULT_CELL_PARAMS
    from cellbench.features.segment.cells import run_cells_kernel as run

    # compiled afresh each run (numba's cache cannot reload a module that is not importable)
    old = types.ModuleType("_cell_kernels_old")
    source = args.old.read_text().replace("cache=True", "cache=False")
    exec(compile(source, str(args.old), "exec"), old.__dict__)

    sets = []
    ds = open_dataset("bbbc021-sim", args.data_dir)
    sets.append(("sim crops", ds.load_crops(ds.index["SAMPLE_KEY"].tolist())))
    real = SHARED / "bbbc021_real" / "singh_crops_68x68"
    if real.exists():
        import pandas as pd

        from cellbench.features.segment.convert import to_uint8_crop

        labels = pd.read_csv(real / "crop_labels.csv")
        sets.append(
            (
                "real BBBC021 crops",
                np.stack(
                    [
                        to_uint8_crop(np.load(real / r.class_folder / r.file_name), order=(2, 1, 0))
                        for r in labels.itertuples()
                    ]
                ),
            )
        )
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; old: {args.old}")
    print("| crops | n | parameters | crops differing (cells or foreground) |")
    print("|---|---|---|---|")
    inputs = {}
    for name, crops in sets:
        dna, cyto = classical._split_channels(crops, 2)
        cyto = np.ascontiguousarray(cyto, np.float32)
        nuclei = classical.segment_nuclei_stack(dna)
        inputs[name] = (cyto, nuclei)
        for var in (*VARIANTS, None):
            p = dataclasses.replace(DEFAULT_CELL_PARAMS, **(var or {}))
            nuc = nuclei if var is not None else np.zeros_like(nuclei)
            a, fa = run(old, cyto, nuc, p)
            b, fb = run(new, cyto, nuc, p)
            differ = int(((a != b) | (fa != fb)).reshape(len(a), -1).any(1).sum())
            label = "no nuclei" if var is None else (var or "defaults")
            print(f"| {name} | {len(crops)} | {label} | {differ} |")

    from nucleus_pass_speed import paired

    cyto, nuclei = (a[:512] for a in inputs["sim crops"])
    run(new, cyto[:4], nuclei[:4], DEFAULT_CELL_PARAMS)
    run(old, cyto[:4], nuclei[:4], DEFAULT_CELL_PARAMS)
    paired(
        lambda c, n: run(new, c, n, DEFAULT_CELL_PARAMS),
        lambda c, n: run(old, c, n, DEFAULT_CELL_PARAMS),
        [(cyto, nuclei)],
        args.pairs,
        names=("current", "old"),
    )


if __name__ == "__main__":
    main()
