"""The nucleus pass alone: CPU time per crop of the DNA channel's segmentation, side by side.

Paths, on the same simulated crops, timed one after the other in each repeat (paired), in one
process:

* ``naive``: per crop, Otsu's threshold, holes filled, distance-transform watershed (peaks at least
  5 px apart), ``bench/studies/segment_cv.py``'s ``naive_nuclei``;
* ``classical v2``: the frozen suite-2 segmenter (``bench/perf/_classical_v2.py``), one crop at a
  time (its ``segment_nuclei``);
* ``classical v3``: ``segment_nuclei_stack`` on the whole stack (radius estimate included);
* ``--v3-file FILE``: another version of ``classical.py`` (e.g. an earlier commit's, written out
  with ``git show COMMIT:cellbench/features/segment/classical.py > FILE``), its
  ``segment_nuclei_stack``.

Speed is CPU time (``time.process_time``), the best of ``--repeats``, so that other jobs on a
shared machine move it less than wall-clock time; crops per CPU-second = 1000 / (ms per crop).
With ``--v3-file`` and ``--pairs N``, v3 and the file also run back to back on chunks of 256
crops N times, and the median of their per-pair CPU-time ratios is printed: on a VM whose speed
drifts by 20% between repeats, that ratio is steadier than two best-of figures.

Usage: python bench/perf/nucleus_pass_speed.py [--data-dir data] [--n 512] [--repeats 3]
       [--v3-file FILE] [--skip naive ...]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--n", type=int, default=512, help="crops")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--v3-file", type=Path, help="another classical.py to time beside v3")
    ap.add_argument("--skip", nargs="*", default=[], help="paths to leave out")
    ap.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="with --v3-file: also time v3 and the file on chunks of 256 crops, alternating "
        "which goes first, this many pairs; report the median ratio (robust to a VM whose "
        "speed drifts between repeats)",
    )
    args = ap.parse_args()

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.features.segment.classical import segment_nuclei_stack

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "studies"))
    import _classical_v2 as v2
    from segment_cv import naive_nuclei

    ds = open_dataset("bbbc021-sim", args.data_dir)
    keys = ds.index["SAMPLE_KEY"].iloc[: args.n].tolist()
    dna = ds.load_crops(keys)[..., 2]

    paths = {
        "naive": lambda s: np.stack([naive_nuclei(x) for x in s]),
        "classical v2": lambda s: np.stack([v2.segment_nuclei(x) for x in s]),
        "classical v3": segment_nuclei_stack,
    }
    if args.v3_file is not None:
        other = _load(args.v3_file, "classical_other")
        paths[f"v3 file {args.v3_file.name}"] = other.segment_nuclei_stack
    paths = {k: f for k, f in paths.items() if k not in args.skip}
    for f in paths.values():
        f(dna[:16])  # warm up
    cpu = {k: [] for k in paths}
    count = {}
    for _ in range(args.repeats):
        for name, f in paths.items():
            c0 = time.process_time()
            labels = f(dna)
            cpu[name].append((time.process_time() - c0) / len(dna) * 1e3)
            count[name] = float(labels.reshape(len(dna), -1).max(1).mean())
    print(
        f"{datetime.date.today()}; {len(dna)} crops {dna.shape[1:]} of {args.data_dir}; "
        f"CPU ms per crop, best of {args.repeats} (all runs in brackets)"
    )
    print("| path | CPU ms per crop | crops per CPU-second | nuclei per crop |")
    print("|---|---|---|---|")
    for name, v in cpu.items():
        best = min(v)
        runs = ", ".join(f"{x:.2f}" for x in v)
        print(f"| {name} | {best:.2f} ({runs}) | {1e3 / best:.0f} | {count[name]:.2f} |")
    if args.pairs and args.v3_file is not None:
        chunks = [(dna[i : i + 256],) for i in range(0, len(dna), 256)]
        paired(segment_nuclei_stack, other.segment_nuclei_stack, chunks, args.pairs)


def paired(
    new, old, chunks: list[tuple], pairs: int, names: tuple[str, str] = ("v3", "file")
) -> None:
    """Time ``new(*args)`` and ``old(*args)`` back to back on the same arguments, ``pairs`` times
    (the tuples of ``chunks`` in turn, the first of each pair alternating); print the median ratio
    of their CPU times and its quartiles. Drift of the machine's speed between pairs cancels in
    each ratio. ``names``: how the two are called in the printed line."""
    ratios, t_new, t_old = [], [], []
    size = len(chunks[0][0])
    for k in range(pairs):
        c = chunks[k % len(chunks)]
        t = {}
        for name, f in (("new", new), ("old", old)) if k % 2 == 0 else (("old", old), ("new", new)):
            c0 = time.process_time()
            f(*c)
            t[name] = (time.process_time() - c0) / len(c[0]) * 1e3
        ratios.append(t["new"] / t["old"])
        t_new.append(t["new"])
        t_old.append(t["old"])
    q1, med, q3 = np.quantile(ratios, [0.25, 0.5, 0.75])
    a, b = names
    print(
        f"paired, {pairs} pairs of {size} crops: {a} / {b} CPU time median {med:.3f} "
        f"(quartiles {q1:.3f}-{q3:.3f}), {a} faster in {np.mean(np.array(ratios) < 1):.0%} of "
        f"pairs; median CPU ms per crop: {a} {np.median(t_new):.3f}, {b} {np.median(t_old):.3f}"
    )


if __name__ == "__main__":
    main()
