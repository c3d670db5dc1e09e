"""Nucleus segmentation accuracy against ground truth.

Three sets, each reported as mean F1 at IoU 0.5 and 0.75 with its runtime:

* the 66 DSB2018 fluorescence images in ``../shared/data/real_seg`` (CC0; per-image table);
* simulated 96x96 crops with known nuclei (``--sim-per-moa`` crops for DMSO and each MoA);
* any extra image / mask pairs given with ``--extra IMAGE MASK`` (e.g. a held-out image such as
  the one in the ``stardist`` wheel: ``stardist/data/images/img2d.tif`` and ``mask2d.tif``).

Usage: python bench/studies/segment_f1.py [--root DIR] [--backend classical | --candidate FILE.py]
       [--sim-per-moa 25] [--extra IMAGE MASK ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[3] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)


def _read(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    return np.asarray(Image.open(path))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--backend", default="classical")
    ap.add_argument("--candidate", type=Path, help="a module file defining segment_nuclei(dna)")
    ap.add_argument("--sim-per-moa", type=int, default=25, help="0 skips the simulated crops")
    ap.add_argument("--extra", nargs=2, action="append", default=[], metavar=("IMAGE", "MASK"))
    args = ap.parse_args()

    from cellbench.features.segment.backends import get_backend
    from cellbench.features.segment.evaluate import dsb_f1, f1_at_iou, sim_f1

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

    if args.root.is_dir():
        t0 = time.perf_counter()
        table = dsb_f1(args.root, segment=segment)
        dt = time.perf_counter() - t0
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        print(
            f"\n{name}: DSB2018 mean F1@0.5 {table['f1_50'].mean():.4f}, "
            f"F1@0.75 {table['f1_75'].mean():.4f} over {len(table)} images "
            f"({table['n_true'].sum()} nuclei) in {dt:.1f} s"
        )
    else:
        print(f"(no DSB2018 subset at {args.root}; skipped)")
    if args.sim_per_moa > 0:
        t0 = time.perf_counter()
        sim = sim_f1(args.sim_per_moa, seed=0, segment=lambda img: segment(img[..., 2]))
        dt = time.perf_counter() - t0
        print(sim.groupby("moa")[["f1_50", "f1_75", "n_true", "n_pred"]].mean().round(3))
        print(
            f"\n{name}: simulated crops mean F1@0.5 {sim['f1_50'].mean():.4f}, "
            f"F1@0.75 {sim['f1_75'].mean():.4f} over {len(sim)} crops "
            f"({sim['n_true'].sum()} nuclei) in {dt:.1f} s"
        )
    for image, mask in args.extra:
        img, gt = _read(Path(image)), _read(Path(mask))
        t0 = time.perf_counter()
        pred = segment(img if img.ndim == 2 else img[..., 0])
        dt = time.perf_counter() - t0
        print(
            f"{name}: {image}: F1@0.5 {f1_at_iou(pred, gt, 0.5):.4f}, "
            f"F1@0.75 {f1_at_iou(pred, gt, 0.75):.4f} ({len(np.unique(gt)) - 1} nuclei, "
            f"{dt:.2f} s)"
        )


if __name__ == "__main__":
    main()
