"""Paired difference of two `cellbench eval` runs on the same protocol, per reward.

Both runs answer the same tasks, so the per-task difference B - A has a much tighter interval
than the two runs' separate intervals. Reads the per-image CSVs that `cellbench eval --out
X.json` writes beside the result (`X.per_image.csv`).

Usage:
  python bench/paired_diff.py A.per_image.csv B.per_image.csv [--n-boot 2000] [--seed 0]

Prints, per reward, mean(B - A) over the shared tasks with a 95% percentile bootstrap interval
(tasks resampled with replacement).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from cellbench.metrics.rewards import REWARD_NAMES

REWARDS = ("overall", *REWARD_NAMES)


def read_rewards(path: Path) -> dict[str, dict[str, float]]:
    """task_id -> reward name -> value (tasks with several images: their mean)."""
    sums: dict[str, dict[str, list[float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            per = sums.setdefault(row["task_id"], {k: [] for k in REWARDS})
            for k in REWARDS:
                if row.get(k, "") != "":
                    per[k].append(float(row[k]))
    return {t: {k: float(np.mean(v)) for k, v in d.items() if v} for t, d in sums.items()}


def paired_bootstrap(d: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the mean of ``d`` (resampled with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("a", type=Path, help="per-image CSV of the baseline run")
    ap.add_argument("b", type=Path, help="per-image CSV of the compared run")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for p in (args.a, args.b):
        if not p.is_file():
            sys.exit(f"{p}: no such file (run `cellbench eval ... --out X.json` first)")
    a, b = read_rewards(args.a), read_rewards(args.b)
    shared = sorted(set(a) & set(b))
    if not shared:
        sys.exit(f"{args.a} and {args.b} share no task_id: were they scored on the same protocol?")
    print(f"{len(shared)} shared tasks ({len(a)} in A, {len(b)} in B); B - A, 95% paired bootstrap")
    print(f"{'reward':<12} {'mean':>8}  interval")
    for k in REWARDS:
        rows = [t for t in shared if k in a[t] and k in b[t]]
        if not rows:
            continue
        d = np.array([b[t][k] - a[t][k] for t in rows])
        lo, hi = paired_bootstrap(d, args.n_boot, args.seed)
        print(f"{k:<12} {d.mean():>+8.3f}  [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
