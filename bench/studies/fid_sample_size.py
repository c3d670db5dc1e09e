"""FID_o and KID_o of image folders at several numbers of tasks, on the same task subsets.

FID is biased upwards at small sample sizes, by an amount that differs between generators, so two
FID_o values are comparable only at the same number of images, and a ranking at one size need not
hold at another. This script measures that for one protocol: for each size ``n`` it draws
``--reps`` random subsets of the protocol's tasks (the same subsets for every folder), scores each
folder's images of those tasks against the real targets of the same tasks, and prints the mean
and spread. It also fits FID(n) = FID_inf + k / n over the sizes (the extrapolation of Chong and
Forsyth, "Effectively unbiased FID and Inception score", CVPR 2020) and counts how many distinct
control crops each subset's tasks start from (answers built from few distinct controls, such as
the ``identity`` anchor's, have little diversity, which FID penalises). With ``--controls K ...``
it also scores ``--controls-size`` tasks drawn from those of K random control crops, to measure
what a protocol that reuses few controls does to FID.

Every folder must answer every task (one image per task). Inception features of the real targets
come from ``cellbench eval``'s cache (computed on first use).

    python bench/studies/fid_sample_size.py out/demo/identity out/demo/cellflux-long \\
        --data-dir out/demo/data --protocol out/demo/protocol.csv --controls 60 120
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellbench.errors import CellbenchError
from cellbench.metrics.fid import fid_kid_overall

if TYPE_CHECKING:
    import pandas as pd

    from cellbench.scoring import Scorer

DEFAULT_SIZES = (515, 1000, 2000, 5000)


def subsets(
    n_tasks: int,
    sizes: list[int],
    reps: int,
    seed: int,
    controls: np.ndarray | None = None,
    n_controls: int | None = None,
) -> list[tuple[int, np.ndarray]]:
    """(size, task indices) pairs: ``reps`` random subsets per size below ``n_tasks``, and all.

    With ``n_controls``, each subset draws its tasks only from those of ``n_controls`` random
    distinct values of ``controls`` (the tasks' control crops), and the full set is left out.
    """
    rng = np.random.default_rng(seed)
    distinct = None
    if n_controls is not None:
        assert controls is not None and len(controls) == n_tasks
        distinct = np.unique(controls)
        if n_controls > len(distinct):
            raise CellbenchError(
                f"--controls {n_controls}: the protocol has {len(distinct)} control crops"
            )
    out: list[tuple[int, np.ndarray]] = []
    for n in sorted(set(sizes)):
        if n < 2:
            raise CellbenchError(f"--sizes {n}: FID needs at least 2 images")
        if n >= n_tasks and distinct is None:
            continue
        for _ in range(reps):
            pool = np.arange(n_tasks)
            if distinct is not None:
                keep = rng.choice(distinct, n_controls, replace=False)
                pool = np.flatnonzero(np.isin(controls, keep))
            if n > len(pool):
                raise CellbenchError(
                    f"--sizes {n}: only {len(pool)} tasks start from {n_controls} control crops"
                )
            out.append((n, np.sort(rng.choice(pool, n, replace=False))))
    if n_controls is None:
        out.append((n_tasks, np.arange(n_tasks)))
    return out


def fid_by_size(
    gen: np.ndarray, real: np.ndarray, draws: list[tuple[int, np.ndarray]], seed: int = 0
) -> dict[int, dict[str, float]]:
    """Per size: mean and standard deviation over the draws of FID and KID (gen vs real rows)."""
    per: dict[int, dict[str, list[float]]] = {}
    for n, idx in draws:
        scores = fid_kid_overall(gen[idx], real[idx], n_subsets=20, seed=seed)
        d = per.setdefault(n, {"fid": [], "kid": []})
        d["fid"].append(scores.fid)
        d["kid"].append(scores.kid)
    return {
        n: {
            "fid": float(np.mean(v["fid"])),
            "fid_sd": float(np.std(v["fid"])),
            "kid": float(np.mean(v["kid"])),
            "draws": len(v["fid"]),
        }
        for n, v in per.items()
    }


def fid_infinity(by_size: dict[int, dict[str, float]]) -> tuple[float, float]:
    """(FID_inf, k) of the least-squares line FID = FID_inf + k / n."""
    ns = np.array(sorted(by_size), float)
    if len(ns) < 2:
        raise ValueError("the extrapolation needs at least two sizes")
    k, b = np.polyfit(1.0 / ns, [by_size[int(n)]["fid"] for n in ns], 1)
    return float(b), float(k)


def folder_features(scorer: Scorer, folder: Path, protocol: pd.DataFrame) -> np.ndarray:
    """Inception features of ``folder``'s images in protocol order; every task must be answered."""
    from cellbench.images import one_image_per_task

    return scorer.inception_features(one_image_per_task(folder, protocol))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="image folders answering the protocol")
    ap.add_argument("--dataset", default="bbbc021-sim")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument(
        "--protocol", type=Path, default=None, help="default: the default named protocol, built"
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    ap.add_argument("--reps", type=int, default=5, help="random subsets per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--controls",
        type=int,
        nargs="+",
        default=[],
        help="also: subsets drawn from the tasks of K random control crops, for each K given",
    )
    ap.add_argument("--controls-size", type=int, default=515, help="tasks per subset of --controls")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.evaluation import load_protocol_for
    from cellbench.scoring import Artifacts, Scorer, reference_arrays

    try:
        ds = open_dataset(args.dataset, args.data_dir)
        table, _ = load_protocol_for(ds, args.protocol, None, 0)
        controls = table["control_key"].to_numpy()
        # every analysis: (label, draws); the same draws for every folder
        analyses = [("all controls", subsets(len(table), args.sizes, args.reps, args.seed))]
        for k in args.controls:
            draws = subsets(len(table), [args.controls_size], args.reps, args.seed, controls, k)
            analyses.append((f"{k} controls", draws))
        scorer = Scorer(Artifacts.for_dataset(ds))
        _, real, _ = reference_arrays(scorer, ds, table, use_inception=True)
        result: dict = {"n_tasks": len(table), "analyses": {}}
        for label, draws in analyses:
            distinct: dict[int, list[int]] = {}
            for n, idx in draws:
                distinct.setdefault(n, []).append(len(set(controls[idx])))
            result["analyses"][label] = {
                "distinct_controls": {n: float(np.mean(v)) for n, v in distinct.items()},
                "folders": {},
            }
            cells = ", ".join(f"n={n}: {np.mean(v):.0f}" for n, v in distinct.items())
            print(f"[{label}] distinct control crops per subset: {cells}")
        for folder in args.folders:
            feats = folder_features(scorer, folder, table)
            for label, draws in analyses:
                by = fid_by_size(feats, real, draws, args.seed)
                entry: dict = {"by_size": by}
                cells = ", ".join(
                    f"n={n}: FID {v['fid']:.2f} ± {v['fid_sd']:.2f}, KID {v['kid']:.4f}"
                    for n, v in by.items()
                )
                line = f"[{label}] {folder}: {cells}"
                if len(by) >= 2:
                    entry["fid_inf"], entry["k"] = fid_infinity(by)
                    line += f"; FID_inf {entry['fid_inf']:.2f} (k {entry['k']:.0f})"
                result["analyses"][label]["folders"][str(folder)] = entry
                print(line, flush=True)
    except CellbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
