"""What the set-level held-out metrics add to a `cellbench eval` (issue 20: at most +25%).

Two measurements, side by side on the same machine in the same run:

1. ``--arrays`` (default): the set-level step alone on arrays shaped like a 5,120-image
   evaluation (5,120 generated and 5,120 real Inception feature vectors of 2,048 floats, the
   sim's compounds and MoAs), against the FID/KID step the builder already runs on the same
   arrays (``fid_kid_summary`` and the split-half floor). The held-out step is every registered
   ``kind="set_fn"`` metric on the model and on the split-half reference
   (:func:`cellbench.results.builder.set_fn_values`).
2. ``--full-eval``: ``cellbench eval`` of N generated images (the protocol's real targets, so the
   work is that of a real run) with the reference features cached, with the held-out
   ``set_fn`` metrics registered and with them unregistered, alternated for ``--repeats`` rounds
   (A B A B, so a load that changes during the run reaches both arms); the wall times, each
   round's ratio and their median.

Usage:
  python bench/perf/heldout_cost.py --repeats 3
  python bench/perf/heldout_cost.py --full-eval --data-dir data --n-images 5120 --repeats 2

``--full-eval`` needs a dataset with N test tasks (`cellbench data sim --scale demo`: 10,300).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cellbench.metrics.registry import SetInputs


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, python {platform.python_version()}"


def synthetic_inputs(n: int, n_compounds: int, n_moas: int, seed: int = 0):
    """Inception-like features (non-negative, 2,048-d) of n generated and n real images."""
    from cellbench.metrics.registry import SetInputs

    rng = np.random.default_rng(seed)
    compound_of = np.array([f"c{i:02d}" for i in range(n_compounds)])
    moa_of = {c: f"m{i % n_moas:02d}" for i, c in enumerate(compound_of)}
    centres = rng.gamma(2.0, 0.15, size=(n_compounds, 2048)).astype(np.float32)

    def side(shift: float):
        cpd = compound_of[rng.integers(0, n_compounds, n)]
        idx = np.searchsorted(compound_of, cpd)
        feats = centres[idx] + rng.gamma(2.0, 0.1, size=(n, 2048)).astype(np.float32) + shift
        return feats.astype(np.float32), cpd, np.array([moa_of[c] for c in cpd])

    gen, gen_c, gen_m = side(0.02)
    real, real_c, real_m = side(0.0)
    return SetInputs(
        compounds=gen_c,
        moas=gen_m,
        real_compounds=real_c,
        real_moas=real_m,
        seed=seed,
        gen_inception=gen,
        real_inception=real,
    )


def time_arrays(n: int, repeats: int, with_fid: bool) -> None:
    from cellbench.metrics.registry import set_fn_names
    from cellbench.results.builder import set_fn_values

    inputs = synthetic_inputs(n, n_compounds=38, n_moas=12)
    print(f"set_fn metrics: {', '.join(set_fn_names())}")
    for r in range(repeats):
        t_fid = c_fid = float("nan")
        if with_fid:
            t0, c0 = time.perf_counter(), time.process_time()
            fid_step(inputs)
            t_fid, c_fid = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        metrics, _, _ = set_fn_values(inputs)
        t_held, c_held = time.perf_counter() - t0, time.process_time() - c0
        shown = {k: v["value"] for k, v in metrics.items() if v["value"] is not None}
        print(
            f"run {r + 1}: {n} generated x {n} real: held-out set_fn step {t_held:.1f} s wall, "
            f"{c_held:.1f} s CPU (model + split half); FID/KID step {t_fid:.1f} s wall, "
            f"{c_fid:.1f} s CPU; " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()),
            flush=True,
        )


def fid_step(inputs: SetInputs) -> None:
    """The builder's FID/KID step on the same arrays: fid_kid_summary and the split-half floor."""
    from cellbench.metrics.fid import fid_kid_summary, split_half_floor

    fid_kid_summary(
        inputs.gen_inception, inputs.compounds, inputs.real_inception, inputs.real_compounds, seed=0
    )
    gen_counts = {c: int((inputs.compounds == c).sum()) for c in np.unique(inputs.compounds)}
    split_half_floor(
        inputs.real_inception, inputs.real_compounds, 0, gen_counts=gen_counts, kid_seed=0
    )


def time_full_eval(data_dir: str, n_images: int, repeats: int = 1) -> None:
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.evaluation import evaluate
    from cellbench.metrics import registry
    from cellbench.protocol import build_protocol, write_protocol

    ds = open_dataset("bbbc021-sim", data_dir)
    table = build_protocol(ds, "test", 0)
    n = min(n_images, len(table))
    rows = table.iloc[:n]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CELLBENCH_CACHE_DIR"] = str(tmp / "cache")
        write_protocol(rows, tmp / "protocol.csv")
        folder = tmp / "images"
        folder.mkdir()
        for start in range(0, n, 1024):
            part = rows.iloc[start : start + 1024]
            crops = ds.load_crops(part["target_key"].tolist())
            for r, crop in zip(part.itertuples(), crops, strict=True):
                np.save(folder / f"{r.task_id}.npy", crop)

        def run(label: str) -> float:
            t0 = time.perf_counter()
            evaluate(folder, "bbbc021-sim", data_dir=data_dir, protocol=tmp / "protocol.csv")
            dt = time.perf_counter() - t0
            print(f"{label}: {n} images in {dt:.1f} s", flush=True)
            return dt

        run("warm-up (fills the reference and training-feature caches; not counted)")
        specs = registry.set_fn_metrics()
        ratios = []
        for k in range(repeats):  # A B A B: a load that drifts during the run hits both arms
            with_held = run(f"round {k + 1}: eval, caches filled, with the held-out set_fn metrics")
            for s in specs:
                registry.unregister_metric(s.name)
            try:
                without = run(f"round {k + 1}: eval, caches filled, without them")
            finally:
                for s in specs:
                    registry.register_metric(s)
            ratios.append(with_held / without)
            print(
                f"round {k + 1}: added {100 * (ratios[-1] - 1):+.1f}% "
                f"(load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        print(
            f"added: median {100 * (float(np.median(ratios)) - 1):+.1f}% over {repeats} "
            f"round(s) ({', '.join(f'{100 * (r - 1):+.1f}%' for r in ratios)})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=5120, help="images per side in the arrays timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-fid-step", action="store_true", help="skip the FID/KID comparison")
    ap.add_argument("--full-eval", action="store_true", help="time cellbench eval with/without")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n-images", type=int, default=5120)
    args = ap.parse_args()
    print(f"machine: {_machine()}")
    if args.full_eval:
        time_full_eval(args.data_dir, args.n_images, args.repeats)
    else:
        time_arrays(args.n, args.repeats, not args.no_fid_step)


if __name__ == "__main__":
    main()
