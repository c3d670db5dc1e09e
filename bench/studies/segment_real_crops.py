"""A segmenter (default ``classical``) on the real BBBC021 crops: nuclei found per crop and DMSO vs
cycloheximide effect sizes of the six features.

Reads ``../shared/data/bbbc021_real/singh_crops_68x68`` (``crop_labels.csv`` and the crops it
lists), segments every crop (the ``--backend``'s ``features``; ``segment_batch`` for classical) and prints, per feature, the DMSO and
cycloheximide ("Protein synthesis") means and Cohen's d (cycloheximide minus DMSO over the pooled
standard deviation), plus the number of crops with no nucleus and how often the cell count
differs from the nucleus count.

Usage: python bench/studies/segment_real_crops.py [--root DIR] [--backend classical|unet]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "shared/data/bbbc021_real/singh_crops_68x68"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--backend", default="classical", help="segmentation backend")
    args = ap.parse_args()

    from cellbench.features.segment.backends import get_backend
    from cellbench.features.segment.classical import FEATURE_NAMES
    from cellbench.features.segment.convert import to_uint8_crop

    labels = pd.read_csv(args.root / "crop_labels.csv")
    crops = np.stack(
        [
            to_uint8_crop(np.load(args.root / r.class_folder / r.file_name), order=(2, 1, 0))
            for r in labels.itertuples()
        ]
    )
    be = get_backend(args.backend)
    feats = pd.DataFrame(be.features(crops, dna_channel=2), columns=FEATURE_NAMES)
    moa = labels["moa"].to_numpy()
    dmso, chx = feats[moa == "DMSO"], feats[moa == "Protein synthesis"]
    print(
        f"{be.name} v{be.version}: {len(feats)} crops; with no nucleus: "
        f"{int((feats['nuc_count'] < 1).sum())}; cell count != nucleus count: "
        f"{(feats['cell_count'] != feats['nuc_count']).mean():.1%}"
    )
    print(f"| feature | DMSO ({len(dmso)}) | cycloheximide ({len(chx)}) | Cohen's d |")
    print("|---|---|---|---|")
    for col in FEATURE_NAMES:
        pooled = np.sqrt((dmso[col].var() + chx[col].var()) / 2)
        d = (chx[col].mean() - dmso[col].mean()) / pooled
        print(f"| {col} | {dmso[col].mean():.4g} | {chx[col].mean():.4g} | {d:+.2f} |")


if __name__ == "__main__":
    main()
