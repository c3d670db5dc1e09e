"""Cost of the content-provenance digest (``cellbench/data/content.py``) beside an evaluation.

Measures, on a bbbc021-sim folder and its default protocol (``cellflux-iid``, seed 0):
  1. the digest every ``cellbench eval`` now computes (sha256 of every target and control crop
     file the protocol reads), cold (first read of the files) and warm (OS file cache);
  2. the naive reference path it replaces nothing of, for scale: reading the same crops as
     arrays (``BBBC021Dataset.load_crops``), which every cold evaluation does anyway;
  3. a full ``cellbench eval --no-fid`` of the ``identity`` answers with a warm reference cache
     (the cheapest evaluation, so the largest share the digest can take), and its share.

Usage:
  python bench/perf/content_digest.py --data-dir DATA [--full-eval]

``DATA`` holds ``bbbc021-sim`` (``cellbench data sim --scale demo --seed 0 --out DATA/bbbc021-sim``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _drop_file_cache(paths: list[Path]) -> bool:
    """Ask the OS to forget the files' pages (Linux); True if it could."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="data", help="folder holding bbbc021-sim")
    ap.add_argument("--repeats", type=int, default=3, help="warm digest timings")
    ap.add_argument("--full-eval", action="store_true", help="also time `eval --no-fid`")
    args = ap.parse_args()

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.data.content import protocol_crop_digests
    from cellbench.protocol_registry import DEFAULT_PROTOCOL, build_named_protocol

    ds = open_dataset("bbbc021-sim", args.data_dir)
    table = build_named_protocol(ds, DEFAULT_PROTOCOL, 0)
    keys = list(dict.fromkeys([*table["target_key"], *table["control_key"]]))
    size = sum(ds.crop_path(k).stat().st_size for k in keys)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}; {len(table)} tasks, {len(keys)} crop files, "
        f"{size / 1e6:.1f} MB"
    )
    dropped = _drop_file_cache([ds.crop_path(k) for k in keys])
    t0 = time.perf_counter()
    digests = protocol_crop_digests(ds, table)
    cold = time.perf_counter() - t0
    print(f"digest, {'cold (file cache dropped)' if dropped else 'first'}: {cold:.3f} s")
    warm = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        again = protocol_crop_digests(ds, table)
        warm.append(time.perf_counter() - t0)
        assert again == digests
    print(f"digest, warm: {', '.join(f'{w:.3f}' for w in warm)} s")
    t0 = time.perf_counter()
    ds.load_crops(keys)
    print(f"reading the same crops as arrays (load_crops): {time.perf_counter() - t0:.3f} s")
    if not args.full_eval:
        return

    from cellbench.evaluation import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CELLBENCH_CACHE_DIR"] = str(tmp / "cache")
        images = tmp / "identity"
        images.mkdir()
        for r in table.itertuples():
            np.save(images / f"{r.task_id}.npy", ds.load_crop(r.control_key))
        evaluate(images, "bbbc021-sim", data_dir=args.data_dir, fid=False)  # warms the cache
        t0 = time.perf_counter()
        evaluate(images, "bbbc021-sim", data_dir=args.data_dir, fid=False)
        full = time.perf_counter() - t0
    share = min(warm) / full
    print(
        f"eval --no-fid of {len(table)} identity images, warm reference cache: {full:.1f} s; "
        f"the warm digest is {100 * share:.1f}% of it"
    )


if __name__ == "__main__":
    main()
