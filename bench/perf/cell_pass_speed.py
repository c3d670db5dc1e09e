"""Time of the cell pass per 96x96 crop: the cytoplasm-evidence cells by the scipy /
scikit-image reference (``cells.segment_cells``, one crop per call and on mosaics of crops) and by
the compiled scoring path (``cells.segment_cells_stack``, the whole stack in one call), side by
side with the nucleus-seeded watershed they replaced (metric suite 2, reproduced below).

The nuclei are segmented once beforehand and shared by every path; the paths alternate round by
round and the best round of each is reported, in CPU time (``time.process_time``; the machine is
shared). Example:

    python bench/perf/cell_pass_speed.py --n-crops 256 --rounds 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def nucleus_seeded_cells(cyto_src: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """The cell pass of segmenter classical v2 before cells.py (the reference), from the frozen
    copy of v2."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _classical_v2 import cell_pass

    return cell_pass(cyto_src, nuclei)[0]


def mosaic_cells(cyto: np.ndarray, nuclei: list[np.ndarray], per_row: int, gutter: int = 8):
    """segment_cells on mosaics of ``per_row`` crops in one row, 8-px gutters; tiles cut out."""
    from cellbench.features.segment.cells import cyto_levels, segment_cells

    lo, thr = cyto_levels(cyto)
    out = []
    h, w = cyto.shape[1:]
    for s in range(0, len(cyto), per_row):
        k = min(per_row, len(cyto) - s)
        width = k * (w + gutter) - gutter
        img = np.zeros((h, width), np.float32)
        nuc = np.zeros((h, width), np.int32)
        lo_m = np.zeros_like(img)
        thr_m = np.ones_like(img)
        valid = np.zeros(img.shape, bool)
        offset = 0
        for j in range(k):
            x = slice(j * (w + gutter), j * (w + gutter) + w)
            img[:, x] = cyto[s + j]
            lo_m[:, x], thr_m[:, x] = lo[s + j], thr[s + j]
            valid[:, x] = True
            n = nuclei[s + j]
            nuc[:, x] = np.where(n > 0, n + offset, 0)
            offset += int(n.max())
        cells, _ = segment_cells(img, nuc, levels=(lo_m, thr_m), valid=valid)
        out.extend(cells[:, j * (w + gutter) : j * (w + gutter) + w] for j in range(k))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-crops", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-row", type=int, default=16, help="crops per mosaic")
    args = ap.parse_args()

    from cellbench.data import sim
    from cellbench.data.layout import MOAS
    from cellbench.features.segment.cells import segment_cells, segment_cells_stack
    from cellbench.features.segment.classical import segment_nuclei

    moas = ("DMSO", *MOAS)
    crops = []
    for k in range(args.n_crops):
        rng = np.random.default_rng([11, k])
        moa = moas[k % len(moas)]
        crops.append(sim.render_crop(rng, moa, 0.0 if moa == "DMSO" else 1.0, sim.plate_style(rng)))
    crops = np.stack(crops)
    cyto = crops[..., :2].astype(np.float32).mean(-1)
    nuclei = [segment_nuclei(c[..., 2]) for c in crops]
    paths = {
        "nucleus-seeded watershed (before)": lambda: [
            nucleus_seeded_cells(c, n) for c, n in zip(cyto, nuclei, strict=True)
        ],
        "cells.segment_cells, one crop per call": lambda: [
            segment_cells(c, n) for c, n in zip(cyto, nuclei, strict=True)
        ],
        f"cells.segment_cells, mosaics of {args.per_row}": lambda: mosaic_cells(
            cyto, nuclei, args.per_row
        ),
        "cells.segment_cells_stack (compiled), the stack in one call": lambda: segment_cells_stack(
            cyto, np.stack(nuclei)
        ),
    }
    segment_cells_stack(cyto[:2], np.stack(nuclei[:2]))  # compiled (or loaded) before timing
    best = {name: np.inf for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    print(f"{args.n_crops} sim crops (96x96), best of {args.rounds} rounds, CPU time")
    for name, t in best.items():
        print(f"  {name}: {1e3 * t / args.n_crops:.2f} ms/crop ({args.n_crops / t:.0f} crops/s)")


if __name__ == "__main__":
    main()
