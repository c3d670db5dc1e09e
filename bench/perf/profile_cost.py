"""What the morphology profile and its two metrics add to an evaluation (issue 20: the held-out
group may add at most 25% to a 5,120-image ``cellbench eval`` with cached reference features).

Side by side on the same simulated crops, in one process, CPU time (``time.process_time``: the
machine may be shared), medians over ``--repeats``:

* ``segmentation pass``: ``segment_batch`` as the rewards run it (no profile);
* ``segmentation pass + profile``: ``segment_batch(..., profile=True)``, the eval's pass: the
  difference is the profile's cost per image;
* ``profile kernel alone``: ``profile_stack`` on masks already made;
* ``naive profile``: the numpy / scikit-image ``regionprops`` computation the kernel is tested
  against (``compartment_profile_reference``), object by object, on ``--n-naive`` crops.

Then the two metrics as ``cellbench eval`` computes them (``profile_set_metrics`` on the
generated set and on the split half), on ``--n-images`` generated and as many real profiles over
``--compounds`` compounds (the measured profiles repeated), with ``--controls`` control profiles.

Usage: python bench/perf/profile_cost.py [--data-dir data] [--n 512] [--repeats 3]
  (needs `cellbench data sim --out data/bbbc021-sim --scale small --seed 0`)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time

import numpy as np


def _cpu(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        times.append(time.process_time() - t0)
    return float(np.median(times)), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--n", type=int, default=512, help="crops timed")
    ap.add_argument("--n-naive", type=int, default=32, help="crops of the naive profile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-images", type=int, default=5120)
    ap.add_argument("--compounds", type=int, default=30)
    ap.add_argument("--controls", type=int, default=300)
    args = ap.parse_args(argv)

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.features.profile import compartment_profile_reference, profile_stack
    from cellbench.features.segment.classical import segment_batch, segment_stack
    from cellbench.metrics.profile import profile_set_metrics
    from cellbench.metrics.registry import SetInputs

    ds = open_dataset("bbbc021-sim", args.data_dir)
    keys = sorted(ds.index["SAMPLE_KEY"].astype(str))[: args.n]
    crops = ds.load_crops(keys)
    dna = ds.card.dna_channel
    segment_batch(crops[:4], dna_channel=dna, profile=True)  # compiled kernels loaded

    cpu_model = subprocess.run(
        ["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"{datetime.date.today()} {cpu_model or platform.processor()}, {len(crops)} crops, "
        f"{args.repeats} repeats, CPU ms per image (one process)"
    )
    t_seg, _ = _cpu(lambda: segment_batch(crops, dna_channel=dna), args.repeats)
    t_both, _ = _cpu(lambda: segment_batch(crops, dna_channel=dna, profile=True), args.repeats)
    seg = segment_stack(crops, dna_channel=dna)
    t_kernel, prof = _cpu(
        lambda: profile_stack(crops, seg.nuclei, seg.cells, dna_channel=dna), args.repeats
    )
    m = min(args.n_naive, len(crops))
    t_naive, _ = _cpu(
        lambda: [
            (
                compartment_profile_reference(crops[i], seg.nuclei[i], (dna,)),
                compartment_profile_reference(crops[i], seg.cells[i], (0, 1, 2)),
            )
            for i in range(m)
        ],
        1,
    )
    n = len(crops)
    rows = [
        ("segmentation pass", 1e3 * t_seg / n),
        ("segmentation pass + profile", 1e3 * t_both / n),
        ("  difference: the profile", 1e3 * (t_both - t_seg) / n),
        ("profile kernel alone", 1e3 * t_kernel / n),
        (f"naive profile (regionprops), {m} crops", 1e3 * t_naive / m),
    ]
    for label, ms in rows:
        print(f"{label:44s} {ms:9.3f} ms")

    rng = np.random.default_rng(0)
    reps = -(-args.n_images // len(prof))
    gen = np.tile(prof, (reps, 1))[: args.n_images] + rng.normal(0, 1e-3, (args.n_images, 1))
    real = np.tile(prof, (reps, 1))[: args.n_images]
    cpds = np.array([f"c{k % args.compounds}" for k in range(args.n_images)])
    control = np.tile(prof, (-(-args.controls // len(prof)), 1))[: args.controls]
    inputs = SetInputs(
        compounds=cpds,
        moas=cpds,
        real_compounds=cpds,
        real_moas=cpds,
        seed=0,
        gen_profile=gen,
        real_profile=real,
        control_profile=control,
    )
    t_metrics, _ = _cpu(
        lambda: (profile_set_metrics(inputs), profile_set_metrics(inputs.split_half())),
        args.repeats,
    )
    print(
        f"both metrics + their split-half reference, {args.n_images} generated and "
        f"{args.n_images} real profiles, {args.compounds} compounds: {t_metrics:.2f} s CPU"
    )
    added = t_kernel / n * args.n_images
    print(
        f"added to a {args.n_images}-image eval: the profile kernel {added:.1f} s CPU (in the "
        f"segmentation pool: about {added / 2:.1f} s of wall time on 2 workers) + the metrics "
        f"{t_metrics:.1f} s (the difference of the two passes is within their noise on a shared "
        "machine; the kernel alone is the cost)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
