"""``cellbench compare A.json B.json``: paired per-task differences of two results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app
from cellbench.cli.options import JsonOpt


@app.command("compare")
def compare_cmd(
    a: Annotated[
        Path, typer.Argument(help="The baseline result (results.json of `cellbench eval --out`).")
    ],
    b: Annotated[
        Path, typer.Argument(help="The compared result, on the same dataset and protocol.")
    ],
    n_boot: Annotated[
        int | None,
        typer.Option(
            help="Bootstrap resamples of the shared tasks, 1 to 100000 (default: as many as "
            "`cellbench eval`)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Paired difference B - A per metric over the tasks both results scored, with 95% intervals.

    Reads each result's per-image CSV (written beside it by `cellbench eval --out`). Results of a
    different dataset, protocol, metric suite, segmenter or reference statistics are refused.
    FID/KID are set-level: shown as the two values and their difference, without an interval.
    """
    from cellbench.compare import compare_results

    doc = compare_results(a, b, seed=seed, n_boot=n_boot)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, allow_nan=False))
        return
    n = doc["n_tasks"]
    boot = doc["bootstrap"]
    typer.echo(f"A: {doc['a']}\nB: {doc['b']}")
    typer.echo(
        f"{n['shared']} shared tasks ({n['a']} in A, {n['b']} in B) of {doc['dataset']}; B - A, "
        f"{boot['level']:.0%} paired bootstrap ({boot['n_boot']} resamples, seed {boot['seed']})"
    )
    typer.echo(f"{'metric':<13} {'B - A':>9}  interval")
    for name, est in doc["paired"].items():
        lo, hi = est["ci"]
        interval = "-" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"
        typer.echo(f"{name:<13} {est['value']:>+9.3f}  {interval}  (n={est['n']})")
    for name, row in doc["set_level"].items():
        typer.echo(
            f"{name:<13} {row['difference']:>+9.3f}  set-level, no interval "
            f"(A {row['a']:.3f}, B {row['b']:.3f})"
        )
