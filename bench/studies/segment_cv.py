"""Cross-validated nucleus F1 of the classical segmenter on the 66 DSB2018 images.

A few candidate parameter sets (``CANDIDATES``, round values around the defaults) are run on every
image once; then, for each of ``--folds`` folds (image i is in fold i mod k, images sorted by id),
the candidate with the best mean F1 at IoU 0.5 on the OTHER folds is chosen and scored on the fold
it never saw. The per-fold table, the pooled cross-validated mean (each image scored by a
parameter set chosen without it) and the defaults' in-sample figure are printed. No per-image
parameter comes from the ground truth: the radius is estimated from each image.

Usage: python bench/studies/segment_cv.py [--root DIR] [--folds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[3] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)
#: candidate parameter sets (deviations from NucleusParams' defaults)
CANDIDATES: tuple[dict, ...] = (
    {},
    {"refine_fraction": 0.0},
    {"refine_fraction": 0.6},
    {"h": 0.065},
    {"intensity_weight": 0.6},
)


def _score(args: tuple[Path, str, str]) -> list[float]:
    from PIL import Image

    from cellbench.features.segment.classical import DEFAULT_PARAMS, segment_nuclei
    from cellbench.features.segment.evaluate import f1_at_iou

    root, name, cand = args
    img = np.asarray(Image.open(root / "images" / name))[..., 0]
    gt = np.asarray(Image.open(root / "labels_derived" / name))
    pred = segment_nuclei(img, params=replace(DEFAULT_PARAMS, **json.loads(cand)))
    return [f1_at_iou(pred, gt, 0.5), f1_at_iou(pred, gt, 0.75)]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the per-image scores here")
    args = ap.parse_args()

    names = sorted(p.name for p in (args.root / "images").glob("*.png"))
    cands = [json.dumps(c, sort_keys=True) for c in CANDIDATES]
    jobs = [(args.root, n, c) for c in cands for n in names]
    with ProcessPoolExecutor(args.workers) as pool:
        flat = list(pool.map(_score, jobs, chunksize=1))
    scores = np.array(flat).reshape(len(cands), len(names), 2)  # candidate, image, (0.5, 0.75)
    if args.json:
        args.json.write_text(
            json.dumps({"images": names, "candidates": cands, "f1": scores.tolist()})
        )

    fold = np.arange(len(names)) % args.folds
    cv = np.zeros((len(names), 2))
    print("| fold | images | chosen on the other folds | F1 @ 0.5 | F1 @ 0.75 |")
    print("|---|---|---|---|---|")
    for k in range(args.folds):
        test = fold == k
        best = int(np.argmax(scores[:, ~test, 0].mean(1)))
        cv[test] = scores[best, test]
        print(
            f"| {k} | {test.sum()} | {cands[best]} | {scores[best, test, 0].mean():.4f} | "
            f"{scores[best, test, 1].mean():.4f} |"
        )
    print(
        f"| all (cross-validated) | {len(names)} | | {cv[:, 0].mean():.4f} | {cv[:, 1].mean():.4f} |"
    )
    for c, s in zip(cands, scores, strict=True):
        print(f"in-sample {c}: F1 @ 0.5 {s[:, 0].mean():.4f}, @ 0.75 {s[:, 1].mean():.4f}")


if __name__ == "__main__":
    main()
