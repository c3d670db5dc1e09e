"""Reward curves of CellFluxRL runs, from their log.csv files (the training log, not held-out).

Usage:
  python bench/studies/plot_rl_rewards.py OUT.png RUN_DIR [RUN_DIR ...]

One panel per reward (overall first): each run's per-step mean over its rollouts (thin) and a
10-step running mean (thick), labelled by the run folder's name. A run whose objective skips the
Inception pass has no moa/overall columns; those panels show only the other runs.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from cellbench.metrics.rewards import REWARD_NAMES

REWARDS = ("overall", *REWARD_NAMES)


def running_mean(y: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last ``k`` values at each position (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(i - k, 0)
    return (c[i] - c[lo]) / (i - lo)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("runs", type=Path, nargs="+", help="run folders of `cellbench rl`")
    ap.add_argument("--window", type=int, default=10, help="running-mean window (steps)")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharex=True)
    for run in args.runs:
        with open(run / "log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise SystemExit(f"{run / 'log.csv'}: no steps logged yet")
        steps = np.array([int(r["step"]) for r in rows])
        for ax, name in zip(axes.flat, REWARDS, strict=True):
            if f"r_{name}" not in rows[0]:  # e.g. no moa/overall in a run without Inception
                ax.plot([], [])  # keep each run's colour the same in every panel
                continue
            y = np.array([float(r[f"r_{name}"]) for r in rows])
            (line,) = ax.plot(steps, y, alpha=0.25)
            ax.plot(steps, running_mean(y, args.window), color=line.get_color(), label=run.name)
    for ax, name in zip(axes.flat, REWARDS, strict=True):
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    axes[1, 3].legend(fontsize=8)  # every run has the count rewards
    fig.suptitle(
        "CellFluxRL on bbbc021-sim: mean reward of each step's rollouts "
        f"(training log; thin: per step, thick: {args.window}-step mean)",
        fontsize=10,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part.png")
    fig.savefig(tmp, dpi=80)
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
