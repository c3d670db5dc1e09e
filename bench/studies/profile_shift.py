"""The profile metrics on the two anchors and on real crops: do they separate signal from none?

On a dataset's named protocol (default ``bbbc021-sim``, ``cellflux-iid``, seed 0), with the
morphology profiles of the protocol's real target crops and of its DMSO control crops (the cached
arrays of ``cellbench eval``), this scores with :mod:`cellbench.metrics.profile`:

* ``identity`` (the control crop of each task, unchanged: keeps the DMSO phenotype),
* ``real-shuffle`` (a random real **training** crop of the task's compound and dose),
* ``real split half`` (each compound's real target crops, one half against the other: the
  reference row),
* ``real-shuffle, compounds permuted`` (the real-shuffle images with their compound labels
  permuted once: real phenotypes given to the wrong compounds),

and prints, for the shift correlation and the energy distance, the value, the permutation null
(mean and 95% quantile) and the p-value, through the same functions as ``cellbench eval``
(``centred_profiles`` of the result builder, ``SetInputs`` and its split half,
``profile_set_metrics``). The anchors' images are made in memory by the registered
generators (as ``cellbench generate identity|real-shuffle --seed 0`` makes them).

Usage: python bench/studies/profile_shift.py [--data-dir data] [--json out.json] [--global-dmso]
  (needs `cellbench data sim --out data/bbbc021-sim --scale small --seed 0`)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def generated_profiles(scorer, ds, table, name: str, seed: int) -> np.ndarray:
    """Profiles of generator ``name``'s images for every task of ``table``."""
    from cellbench.generators import get_generator_class

    gen = get_generator_class(name).load(ds)
    controls = ds.load_crops(table["control_key"].tolist())
    images = gen.generate(controls, table["compound"].tolist(), table["dose"].to_numpy(), seed=seed)
    return scorer.features(images, use_inception=False, profile=True).profile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="bbbc021-sim")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--protocol-name", default="cellflux-iid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--global-dmso",
        dest="per_batch",
        action="store_false",
        help="centre on all controls instead of each batch's (the metric centres per batch)",
    )
    args = ap.parse_args(argv)

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.evaluation import load_protocol_for
    from cellbench.metrics.profile import profile_set_metrics
    from cellbench.metrics.registry import SetInputs
    from cellbench.results.builder import centred_profiles
    from cellbench.scoring import Artifacts, Scorer
    from cellbench.scoring.images import control_arrays, reference_arrays

    ds = open_dataset(args.dataset, args.data_dir)
    table, _ = load_protocol_for(ds, None, args.protocol_name, args.seed)
    scorer = Scorer(Artifacts.for_dataset(ds), use_inception=False)
    _, _, real = reference_arrays(scorer, ds, table, use_inception=False)
    controls = control_arrays(scorer, ds, table, table["task_id"], use_inception=False)
    cpds = table["compound"].to_numpy().astype(str)
    moas = table["moa"].to_numpy().astype(str)
    batches = table["batch"].to_numpy().astype(str)
    if not args.per_batch:  # every crop in one batch: centred on all controls
        batches = np.zeros(len(table), str)
        controls = controls._replace(batches=np.zeros(len(controls.profile), str))
    print(
        f"{args.dataset} {args.protocol_name} seed {args.seed}: {len(table)} tasks, "
        f"{len(set(cpds))} compounds, {len(controls.profile)} control crops, "
        f"{real.shape[1]} features"
    )

    def inputs(gen: np.ndarray, gen_cpds: np.ndarray) -> SetInputs:
        g, r, c = centred_profiles(gen, batches, real, batches, controls)
        return SetInputs(
            compounds=gen_cpds,
            moas=moas,
            real_compounds=cpds,
            real_moas=moas,
            seed=args.seed,
            gen_profile=g,
            real_profile=r,
            control_profile=c,
        )

    shuffle = generated_profiles(scorer, ds, table, "real-shuffle", args.seed)
    rng = np.random.default_rng(args.seed)
    rows = {
        "identity": inputs(generated_profiles(scorer, ds, table, "identity", args.seed), cpds),
        "real-shuffle": inputs(shuffle, cpds),
        "real split half": inputs(real, cpds).split_half(),
        "real-shuffle, compounds permuted": inputs(shuffle, rng.permutation(cpds)),
    }
    out: dict = {"n_tasks": len(table), "n_controls": len(controls.profile), "rows": {}}
    print(f"{'set':34s} {'metric':20s} {'value':>8s} {'null mean':>9s} {'null q95':>9s} {'p':>7s}")
    for label, set_inputs in rows.items():
        t0 = time.perf_counter()
        got = profile_set_metrics(set_inputs)
        took = time.perf_counter() - t0
        out["rows"][label] = {"seconds": round(took, 3)}
        for name, v in got.items():
            out["rows"][label][name] = {"value": v.value, **v.detail}
            d = v.detail
            print(
                f"{label:34s} {name:20s} {v.value:8.3f} {d['null_mean']:9.3f} "
                f"{d['null_q95']:9.3f} {d['p_value']:7.3f}"
            )
        print(f"{'':34s} (both metrics: {took:.2f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
