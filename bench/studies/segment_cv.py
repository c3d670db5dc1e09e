"""Cross-validated nucleus F1 on the 66 DSB2018 images: naive, classical v2 and classical v3.

For classical v3 a few candidate parameter sets (``CANDIDATES``, round values around the defaults)
are run on every image once; then, for each of ``--folds`` folds (image i is in fold i mod k,
images sorted by id), the candidate with the best mean F1 at IoU 0.5 on the OTHER folds is chosen
and scored on the fold it never saw. Two fixed references are scored on the same folds: ``naive``
(Otsu's threshold, holes filled, distance-transform watershed with peaks at least 5 px apart: the
nucleus part of the naive pipeline of ``bench/perf/segment_speed.py``) and ``classical v2`` (the
frozen suite-2 segmenter in ``bench/perf/_classical_v2.py``, whose parameters were chosen on these
66 images, so its figure is in-sample). The per-fold table, the pooled cross-validated mean (each
image scored by a parameter set chosen without it) and every candidate's in-sample figure are
printed. No per-image parameter comes from the ground truth: the radius is estimated from each
image.

Usage: python bench/studies/segment_cv.py [--root DIR] [--folds 5] [--workers 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[3] / "shared/data/real_seg/dsb2018_stage1_train_subset"
)
#: candidate parameter sets of classical v3 (deviations from NucleusParams' defaults)
CANDIDATES: tuple[dict, ...] = (
    {},
    {"consistent_nuclei": 0.0},
    {"consistent_rounds": 1},
    {"distance_sigma": 0.1},
    {"min_area": 0.1},
)
#: the fixed references (no parameter chosen here)
REFERENCES = ("naive", "classical v2")


def naive_nuclei(dna: np.ndarray) -> np.ndarray:
    """Otsu's threshold, holes filled, distance-transform watershed (peaks >= 5 px apart)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    x = np.asarray(dna, np.float32)
    if x.max() <= x.min():
        return np.zeros(x.shape, np.int32)
    fg = ndi.binary_fill_holes(x > threshold_otsu(x))
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=5, labels=ndi.label(fg)[0])
    markers = np.zeros(x.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def _score(args: tuple[Path, str, str]) -> list[float]:
    from cellbench.features.segment.classical import DEFAULT_PARAMS, segment_nuclei
    from cellbench.features.segment.evaluate import f1_at_iou, read_dsb

    root, name, cand = args
    img, gt = read_dsb(root, name)
    if cand == "naive":
        pred = naive_nuclei(img)
    elif cand == "classical v2":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
        import _classical_v2

        pred = _classical_v2.segment_nuclei(img)
    else:
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

    from cellbench.features.segment.evaluate import dsb_ids

    names = dsb_ids(args.root)
    cands = [json.dumps(c, sort_keys=True) for c in CANDIDATES]
    runs = list(REFERENCES) + cands
    jobs = [(args.root, n, c) for c in runs for n in names]
    with ProcessPoolExecutor(args.workers) as pool:
        flat = list(pool.map(_score, jobs, chunksize=1))
    scores = np.array(flat).reshape(len(runs), len(names), 2)  # run, image, (0.5, 0.75)
    if args.json:
        args.json.write_text(json.dumps({"images": names, "runs": runs, "f1": scores.tolist()}))
    refs, v3 = scores[: len(REFERENCES)], scores[len(REFERENCES) :]

    fold = np.arange(len(names)) % args.folds
    cv = np.zeros((len(names), 2))
    head = " | ".join(f"{r} F1 @ 0.5 / 0.75" for r in REFERENCES)
    print(f"| fold | images | {head} | v3: chosen on the other folds | v3 F1 @ 0.5 / 0.75 |")
    print("|---|---|" + "---|" * len(REFERENCES) + "---|---|")
    for k in range(args.folds):
        test = fold == k
        best = int(np.argmax(v3[:, ~test, 0].mean(1)))
        cv[test] = v3[best, test]
        ref = " | ".join(f"{s[test, 0].mean():.4f} / {s[test, 1].mean():.4f}" for s in refs)
        chosen = "defaults" if cands[best] == "{}" else cands[best]
        print(
            f"| {k} | {test.sum()} | {ref} | {chosen} | "
            f"{v3[best, test, 0].mean():.4f} / {v3[best, test, 1].mean():.4f} |"
        )
    ref = " | ".join(f"**{s[:, 0].mean():.4f}** / {s[:, 1].mean():.4f}" for s in refs)
    print(
        f"| all (cross-validated) | {len(names)} | {ref} | | "
        f"**{cv[:, 0].mean():.4f}** / {cv[:, 1].mean():.4f} |"
    )
    for c, s in zip(cands, v3, strict=True):
        print(f"v3 in-sample {c}: F1 @ 0.5 {s[:, 0].mean():.4f}, @ 0.75 {s[:, 1].mean():.4f}")


if __name__ == "__main__":
    main()
