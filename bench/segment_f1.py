"""Nucleus segmentation accuracy on real ground truth (DSB2018 fluorescence subset, CC0).

Prints per-image and mean F1 at IoU 0.5 and 0.75 and the runtime.

Usage: python bench/segment_f1.py [--root ../shared/data/real_seg/dsb2018_stage1_train_subset]
       [--backend classical | --candidate cellbench/segment/classical_v2.py]
"""

from __future__ import annotations

import argparse
import sys
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
    ap.add_argument("--candidate", type=Path, help="a module file defining segment_nuclei(dna)")
    args = ap.parse_args()

    from cellbench.segment.backends import get_backend
    from cellbench.segment.evaluate import dsb_f1

    if args.candidate is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("candidate", args.candidate)
        module = importlib.util.module_from_spec(spec)
        sys.modules["candidate"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        segment, name = module.segment_nuclei, f"candidate {args.candidate.name}"
    else:
        be = get_backend(args.backend)

        def segment(img):
            return be.segment(img, dna_channel=0).nuclei

        name = f"{args.backend} v{be.version}"

    t0 = time.perf_counter()
    table = dsb_f1(args.root, segment=segment)
    dt = time.perf_counter() - t0
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(
        f"\n{name}: mean F1@0.5 {table['f1_50'].mean():.4f}, "
        f"F1@0.75 {table['f1_75'].mean():.4f} over {len(table)} images "
        f"({table['n_true'].sum()} nuclei) in {dt:.1f} s"
    )


if __name__ == "__main__":
    main()
