"""Per-compound distances at small n: bias under the null and signal, FID vs KID vs sliced Wasserstein.

FID_c averages per-compound FIDs computed on a handful of images each (on ``bbbc021-sim``'s
``cellflux-iid`` protocol, about 14 a compound), far fewer than the 2,048 feature dimensions, where
FID is dominated by its small-sample bias. This script measures, on real Inception features of the
simulated dataset (every crop of the index, train and test), for each per-compound sample size n:

* the **null**: two disjoint random sets of n real crops of the same compound (true distance 0);
  the mean over draws is the distance's bias at n;
* the **signal**: n real crops of the compound against n DMSO crops (what an ``identity``-like
  generator that keeps the control phenotype scores);
* ``snr``: (mean signal - mean null) / standard deviation of the null, how well the distance tells
  a wrong phenotype from a right one at n.

Distances: FID (:func:`cellbench.metrics.fid.fid_from_features`), KID (the unbiased MMD^2 of
:func:`cellbench.metrics.fid.kid_from_features`, subsets of min(100, n)) and the sliced Wasserstein
distance (SWD, squared, 128 random directions, a candidate that is not in cellbench). Compounds with
at least ``2 * max(--sizes)`` crops are used (DMSO is the signal's other side only).

    python bench/studies/per_compound_small_n.py --data-dir data --sizes 5 10 20 30 --reps 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cellbench.errors import CellbenchError
from cellbench.metrics.fid import fid_from_features, kid_from_features

CONTROL = "DMSO"


def sliced_wasserstein2(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Squared sliced Wasserstein-2 between equal-size sets over unit ``directions`` (k, d)."""
    pa = np.sort(a @ directions.T, axis=0)
    pb = np.sort(b @ directions.T, axis=0)
    return float(np.mean((pa - pb) ** 2))


def all_features(ds_name: str, data_dir: Path | None, cache: Path | None) -> tuple:
    """Inception features of every crop of the index (cached in ``cache`` when given)."""
    from cellbench.data.bbbc021 import open_dataset

    ds = open_dataset(ds_name, data_dir)
    keys = ds.index["SAMPLE_KEY"].to_numpy().astype(str)
    cpds = ds.index["CPD_NAME"].to_numpy().astype(str)
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if list(z["keys"]) == list(keys):
            return z["features"].astype(np.float64), cpds
    from cellbench.scoring import Artifacts, Scorer

    scorer = Scorer(Artifacts.for_dataset(ds))
    feats = scorer.inception_features(ds.load_crops(keys))
    if cache is not None:
        np.savez(cache, keys=keys, features=feats)
    return np.asarray(feats, np.float64), cpds


def study(
    feats: np.ndarray, cpds: np.ndarray, sizes: list[int], reps: int, seed: int
) -> dict[str, dict[int, dict[str, float]]]:
    """Per distance, per n: null mean and sd, signal mean and snr (means over compounds' draws)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((128, feats.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    control = np.flatnonzero(cpds == CONTROL)
    need = 2 * max(sizes)
    compounds = [c for c in sorted(set(cpds)) if c != CONTROL and (cpds == c).sum() >= need]
    if not compounds or len(control) < max(sizes):
        raise CellbenchError(f"no compound has {need} crops: choose smaller --sizes")
    dists = {
        "FID": fid_from_features,
        "KID": lambda a, b: kid_from_features(a, b, n_subsets=20, seed=0)[0],
        "SWD": lambda a, b: sliced_wasserstein2(a, b, directions),
    }
    out: dict[str, dict[int, dict[str, float]]] = {k: {} for k in dists}
    for n in sizes:
        vals: dict[str, dict[str, list[float]]] = {k: {"null": [], "signal": []} for k in dists}
        for c in compounds:
            idx = np.flatnonzero(cpds == c)
            for _ in range(reps):
                perm = rng.permutation(idx)
                a, b = feats[perm[:n]], feats[perm[n : 2 * n]]
                ctrl = feats[rng.choice(control, n, replace=False)]
                for name, f in dists.items():
                    vals[name]["null"].append(f(a, b))
                    vals[name]["signal"].append(f(a, ctrl))
        for name, v in vals.items():
            null, sig = np.array(v["null"]), np.array(v["signal"])
            sd = float(null.std()) or float("nan")
            out[name][n] = {
                "null_mean": float(null.mean()),
                "null_sd": float(null.std()),
                "signal_mean": float(sig.mean()),
                "bias_share": float(null.mean() / sig.mean()),
                "snr": float((sig.mean() - null.mean()) / sd),
                "compounds": len(compounds),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="bbbc021-sim")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 30])
    ap.add_argument("--reps", type=int, default=20, help="draws per compound and size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features-cache", type=Path, default=None, help=".npz of the features")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    try:
        feats, cpds = all_features(args.dataset, args.data_dir, args.features_cache)
        res = study(feats, cpds, args.sizes, args.reps, args.seed)
    except CellbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| distance | n | null mean (bias) | null sd | signal (vs DMSO) | null / signal | snr |")
    print("|---|---|---|---|---|---|---|")
    for name, by_n in res.items():
        for n, v in by_n.items():
            print(
                f"| {name} | {n} | {v['null_mean']:.4g} | {v['null_sd']:.3g} | "
                f"{v['signal_mean']:.4g} | {v['bias_share']:.2f} | {v['snr']:.2f} |"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
