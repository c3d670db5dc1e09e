"""Cost of the FID_o/KID_o bootstrap intervals at 5,120 images, and the first-order FID check.

Two measurements, side by side with the reference path:

1. **Cost.** On 5,120 generated and 5,120 real 2048-d features (random, non-negative and
   correlated like pool3 activations; the cost does not depend on the values), the time of
   ``fid_kid_summary``'s FID_o + KID_o without intervals (``fid_kid_overall``, what ``cellbench
   eval`` computed before) and with them (``overall_with_intervals``, 1,000 resamples: FID_o
   through its influence values, the exact KID_o replicates), and of one exact FID replicate (one
   ``fid_from_features`` of a resample: what an exact FID bootstrap pays per replicate).
2. **Accuracy of the first-order FID replicates.** With ``--features FILE.npz`` (the ``features``
   and ``keys`` arrays ``bench/studies/per_compound_small_n.py --features-cache`` writes, Inception
   features of every crop of ``bbbc021-sim``): a random half of the crops plays the generated set,
   the other half the real one; the standard deviation of ``--exact`` exact bootstrap replicates
   of FID (a resample's ``fid_from_features``) against that of the first-order replicates on the
   same resamples.

    python bench/perf/fid_interval_cost.py --features /tmp/feats.npz --exact 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cellbench.metrics.bootstrap import bootstrap_counts
from cellbench.metrics.fid import (
    SET_BOOTSTRAP,
    fid_from_features,
    fid_influence,
    fid_kid_overall,
    overall_with_intervals,
)


def _features(rng: np.random.Generator, n: int, d: int, shift: float) -> np.ndarray:
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.abs(rng.standard_normal((n, d)) @ mix + shift)


def cost(n: int, d: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    g, r = _features(rng, n, d, 0.1), _features(rng, n, d, 0.0)
    for rep in range(repeats):
        t0 = time.perf_counter()
        fid_kid_overall(g, r)
        t1 = time.perf_counter()
        overall_with_intervals(g, r, n_boot=SET_BOOTSTRAP)
        t2 = time.perf_counter()
        idx = rng.integers(0, n, n)
        fid_from_features(g[idx], r)
        t3 = time.perf_counter()
        print(
            f"[{rep + 1}/{repeats}] n={n} d={d}: FID_o+KID_o {t1 - t0:.1f} s; with intervals "
            f"({SET_BOOTSTRAP} resamples) {t2 - t1:.1f} s (+{t2 - t1 - (t1 - t0):.1f} s); "
            f"one exact FID replicate {t3 - t2:.1f} s",
            flush=True,
        )


def accuracy(path: Path, n_exact: int, seed: int) -> None:
    z = np.load(path, allow_pickle=False)
    feats = np.asarray(z["features"], np.float64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(feats))
    half = len(feats) // 2
    g, r = feats[perm[:half]], feats[perm[half:]]
    fid, influence = fid_influence(g, r)
    counts = bootstrap_counts(len(g), seed=seed, n_boot=n_exact)
    linear = (counts - 1.0) @ influence / len(g)
    idx = np.random.default_rng(seed).integers(0, len(g), size=(n_exact, len(g)))
    exact = np.array([fid_from_features(g[i], r) - fid for i in idx])
    print(
        f"Inception features of {path.name}: {len(g)} vs {len(r)} crops, FID {fid:.2f}; "
        f"{n_exact} resamples: sd exact {exact.std():.3f}, first-order {linear.std():.3f} "
        f"(ratio {linear.std() / exact.std():.3f}), correlation "
        f"{np.corrcoef(linear, exact)[0, 1]:.3f}; exact replicates' mean shift "
        f"{exact.mean():+.3f} (the resampling's own bias, which the interval leaves out)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5120)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--features", type=Path, default=None)
    ap.add_argument("--exact", type=int, default=200, help="exact replicates of the check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.skip_cost:
        cost(args.n, args.dim, args.repeats)
    if args.features is not None:
        accuracy(args.features, args.exact, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
