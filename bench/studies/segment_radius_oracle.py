"""Is the nucleus scale estimate what limits F1 on the 66 DSB2018 images? An oracle study.

Each image is segmented by the classical backend three ways: with its defaults (the radius
estimated from the image, then the re-segment check), at the estimated radius held fixed (no
check), and at the ground truth's radius held fixed: sqrt(median nucleus area / pi) of the
image's annotated masks. The last one reads the ground truth, so it is an upper bound on what a
better per-image scale estimate could give this segmenter, not a method. The table gives the mean
per-image F1 at IoU 0.5 and 0.75 of each way, and the ``--worst`` images by F1 at IoU 0.5 of the
defaults with both radii.

Usage: python bench/studies/segment_radius_oracle.py [--root DIR] [--worst 10]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[3] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)


def truth_radius(gt: np.ndarray) -> float:
    """sqrt(median area / pi) of the annotated nuclei (NaN without any)."""
    _, areas = np.unique(gt[gt > 0], return_counts=True)
    return float(np.sqrt(np.median(areas) / np.pi)) if len(areas) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--worst", type=int, default=10, help="images listed, worst first")
    args = ap.parse_args()

    from cellbench.features.segment import classical as C
    from cellbench.features.segment.evaluate import dsb_ids, f1_at_iou, read_dsb

    rows = []
    for image_id in dsb_ids(args.root):
        img, gt = read_dsb(args.root, image_id)
        est = C.estimate_radius(img.astype(np.float32))
        truth = truth_radius(gt)
        row = {"image": image_id[:10], "estimated r": est, "truth r": truth}
        ways = {
            "defaults": C.DEFAULT_PARAMS,
            "estimated r, fixed": replace(C.DEFAULT_PARAMS, radius=est),
            "truth r, fixed": replace(C.DEFAULT_PARAMS, radius=truth if truth > 0 else est),
        }
        for name, params in ways.items():
            pred = C.segment_nuclei(img, params=params)
            row[name] = (f1_at_iou(pred, gt, 0.5), f1_at_iou(pred, gt, 0.75))
        rows.append(row)
    print(f"{len(rows)} DSB2018 images of {args.root}; mean per-image F1")
    print("| segmented with | F1 @ 0.5 | F1 @ 0.75 |")
    print("|---|---|---|")
    for name in ("defaults", "estimated r, fixed", "truth r, fixed"):
        a = np.array([r[name] for r in rows])
        print(f"| {name} | {a[:, 0].mean():.4f} | {a[:, 1].mean():.4f} |")
    print(f"\n{args.worst} worst images (defaults, F1 @ 0.5)")
    print("| image | estimated r | truth r | defaults | estimated r, fixed | truth r, fixed |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["defaults"][0])[: args.worst]:
        cells = " | ".join(
            f"{r[k][0]:.3f} / {r[k][1]:.3f}"
            for k in ("defaults", "estimated r, fixed", "truth r, fixed")
        )
        print(f"| {r['image']} | {r['estimated r']:.1f} | {r['truth r']:.1f} | {cells} |")


if __name__ == "__main__":
    main()
