"""How far border placement alone can take nucleus F1 at IoU 0.75 on the 66 DSB2018 images.

The classical segmenter's nuclei of every image are moved by whole pixels before scoring: shrunk
(every pixel with a 4-neighbour of another label or of the background dropped, once per pixel)
or grown (each background pixel with a labelled 4-neighbour takes the largest such label, once
per pixel). The table gives the mean per-image F1 at IoU 0.5 and 0.75 for every shift, how many
images score best at IoU 0.75 with each shift, and the *oracle*: every image at its own best
shift. The oracle reads the ground truth, so it is an upper bound on any rule that moves whole
borders by a per-image amount, not a method. ``--fractions`` also scores the segmenter with other
values of its border parameter ``refine_fraction`` (default 0.5: each nucleus keeps the pixels
above half its mean contrast).

Usage: python bench/studies/segment_border_oracle.py [--root DIR] [--shifts -2,-1,0,1,2]
       [--fractions 0.4,0.6] [--workers 2]
"""

from __future__ import annotations

import argparse
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[3] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)


def shrink(labels: np.ndarray) -> np.ndarray:
    """Labels without their border pixels (a 4-neighbour of another label or the background;
    the image's edge counts as background)."""
    p = np.pad(labels, 1)
    c = p[1:-1, 1:-1]
    inner = (p[:-2, 1:-1] == c) & (p[2:, 1:-1] == c) & (p[1:-1, :-2] == c) & (p[1:-1, 2:] == c)
    return np.where(inner, c, 0)


def grow(labels: np.ndarray) -> np.ndarray:
    """Labels grown by one pixel into the background (the largest labelled 4-neighbour)."""
    p = np.pad(labels, 1)
    near = np.maximum.reduce([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
    return np.where(labels == 0, near, labels)


def shifted(labels: np.ndarray, k: int) -> np.ndarray:
    """``labels`` grown by k pixels (k > 0) or shrunk by -k pixels (k < 0)."""
    out = labels
    for _ in range(abs(k)):
        out = grow(out) if k > 0 else shrink(out)
    return out


def _score(args: tuple[Path, str, tuple[int, ...], float | None]) -> np.ndarray:
    """(len(shifts), 2) F1 at IoU 0.5 and 0.75 of one image."""
    from cellbench.features.segment.classical import DEFAULT_PARAMS, segment_nuclei
    from cellbench.features.segment.evaluate import f1_at_iou, read_dsb

    root, name, shifts, fraction = args
    img, gt = read_dsb(root, name)
    params = (
        DEFAULT_PARAMS if fraction is None else replace(DEFAULT_PARAMS, refine_fraction=fraction)
    )
    pred = segment_nuclei(img, params=params)
    rows = []
    for k in shifts:
        moved = shifted(pred, k)
        rows.append([f1_at_iou(moved, gt, 0.5), f1_at_iou(moved, gt, 0.75)])
    return np.array(rows)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--shifts", default="-2,-1,0,1,2", help="whole-pixel border shifts")
    ap.add_argument("--fractions", default="", help="other refine_fraction values to score")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not (args.root / "images").is_dir():
        raise SystemExit(f"{args.root}: no images/ folder (the DSB2018 subset of ../shared/data)")
    shifts = tuple(int(v) for v in args.shifts.split(","))
    if 0 not in shifts:
        shifts = (*shifts, 0)
    from cellbench.features.segment.evaluate import dsb_ids

    names = dsb_ids(args.root)
    with ProcessPoolExecutor(args.workers) as ex:
        scores = np.stack(list(ex.map(_score, [(args.root, n, shifts, None) for n in names])))
        others = {
            float(f): np.stack(
                list(ex.map(_score, [(args.root, n, (0,), float(f)) for n in names]))
            )[:, 0]
            for f in args.fractions.split(",")
            if f
        }
    # the shift each image scores best with at IoU 0.75 (ties: the smallest move)
    by_size = sorted(range(len(shifts)), key=lambda j: (abs(shifts[j]), shifts[j]))
    best = Counter(shifts[by_size[int(np.argmax(row[by_size]))]] for row in scores[:, :, 1])
    print(f"{len(names)} images of {args.root}")
    print(
        "| border shift (px) | F1 @ 0.5 | F1 @ 0.75 | images best at 0.75 (ties: smallest move) |"
    )
    print("|---|---|---|---|")
    for j, k in enumerate(shifts):
        m = scores[:, j].mean(0)
        print(f"| {k:+d} | {m[0]:.4f} | {m[1]:.4f} | {best[k]} |")
    oracle = scores[:, :, 1].max(1).mean()
    print(f"| oracle (each image at its best shift; reads the ground truth) | | {oracle:.4f} | |")
    for f, s in others.items():
        m = s.mean(0)
        print(f"| refine_fraction {f} (no shift) | {m[0]:.4f} | {m[1]:.4f} | |")


if __name__ == "__main__":
    main()
