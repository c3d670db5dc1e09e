"""Nucleus segmentation accuracy on real ground truth (DSB2018 fluorescence subset, CC0).

Prints per-image and mean F1 at IoU 0.5 and 0.75 and the runtime.

Usage: python bench/segment_f1.py [--root ../shared/data/real_seg/dsb2018_stage1_train_subset]
       [--backend classical]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[2] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--backend", default="classical")
    args = ap.parse_args()

    from cellbench.segment.backends import get_backend
    from cellbench.segment.evaluate import dsb_f1

    be = get_backend(args.backend)

    def segment(img):
        return be.segment(img, dna_channel=0).nuclei

    t0 = time.perf_counter()
    table = dsb_f1(args.root, segment=segment)
    dt = time.perf_counter() - t0
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(
        f"\n{args.backend} v{be.version}: mean F1@0.5 {table['f1_50'].mean():.4f}, "
        f"F1@0.75 {table['f1_75'].mean():.4f} over {len(table)} images "
        f"({table['n_true'].sum()} nuclei) in {dt:.1f} s"
    )


if __name__ == "__main__":
    main()
