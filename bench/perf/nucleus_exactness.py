"""The compiled nucleus pass against the frozen scipy / scikit-image one, on every image we have.

``cellbench/features/segment/classical.py`` (compiled kernels, ``_nucleus_kernels.py``) and
``bench/perf/_classical_v3_ref.py`` (the same module before them) segment:

* the first ``--n`` crops of the simulated dataset (the sim's ``demo`` crops), whole pipeline:
  nuclei, cells, cytoplasm and the six features;
* every real BBBC021 crop in ``../shared/data/bbbc021_real/singh_crops_68x68`` (same);
* every DSB2018 image of ``bench/studies/segment_cv.py`` with each of its candidate parameter
  sets (the nucleus labels the cross-validated F1 is computed from).

It prints, per set, the number of images and of pixels whose label differs (0 means the F1 tables
and every metric value are unchanged).

Usage: python bench/perf/nucleus_exactness.py [--data-dir data] [--n 1024]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--n", type=int, default=1024)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "studies"))
    import _classical_v3_ref as ref
    from segment_cv import CANDIDATES

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.features.segment import classical as fast

    def whole(crops: np.ndarray, name: str) -> None:
        diff_px = 0
        diff_img = np.zeros(len(crops), bool)
        feats_equal = True
        for s in range(0, len(crops), fast.BATCH_CHUNK):
            c = crops[s : s + fast.BATCH_CHUNK]
            a, b = ref.segment_stack(c), fast.segment_stack(c)
            for k in ("nuclei", "cells", "cyto_mask"):
                d = getattr(a, k) != getattr(b, k)
                diff_px += int(d.sum())
                diff_img[s : s + len(c)] |= d.reshape(len(c), -1).any(1)
            feats_equal &= np.array_equal(ref.stack_features(a), fast.stack_features(b))
        print(
            f"| {name} | {len(crops)} | {int(diff_img.sum())} | {diff_px} | "
            f"{'identical' if feats_equal else 'DIFFER'} |"
        )

    print("| images | n | images differing | pixels differing | features |")
    print("|---|---|---|---|---|")
    ds = open_dataset("bbbc021-sim", args.data_dir)
    whole(
        ds.load_crops(ds.index["SAMPLE_KEY"].iloc[: args.n].tolist()), "sim crops (whole pipeline)"
    )

    real = SHARED / "bbbc021_real" / "singh_crops_68x68"
    if real.exists():
        import pandas as pd

        from cellbench.features.segment.convert import to_uint8_crop

        labels = pd.read_csv(real / "crop_labels.csv")
        crops = np.stack(
            [
                to_uint8_crop(np.load(real / r.class_folder / r.file_name), order=(2, 1, 0))
                for r in labels.itertuples()
            ]
        )
        whole(crops, "real BBBC021 crops (whole pipeline)")

    dsb = SHARED / "real_seg" / "dsb2018_stage1_train_subset"
    if dsb.exists():
        from cellbench.features.segment.evaluate import dsb_ids, read_dsb

        images = [read_dsb(dsb, i)[0] for i in dsb_ids(dsb)]
        for cand in CANDIDATES:
            n_img, n_px = 0, 0
            for img in images:
                a = ref.segment_nuclei(img, params=replace(ref.DEFAULT_PARAMS, **cand))
                b = fast.segment_nuclei(img, params=replace(fast.DEFAULT_PARAMS, **cand))
                n_img += int((a != b).any())
                n_px += int((a != b).sum())
            print(
                f"| DSB2018 nuclei, candidate {cand or 'defaults'} | {len(images)} | {n_img} | {n_px} | - |"
            )


if __name__ == "__main__":
    main()
