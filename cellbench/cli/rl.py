"""`cellbench rl cellflux`: post-train a CellFlux checkpoint online with the rewards (CellFluxRL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app
from cellbench.cli.options import (
    DataDirOpt,
    JsonOpt,
    RunOutOpt,
    SeedOverrideOpt,
    StepsOpt,
    ThreadsOpt,
    TorchDeviceOpt,
    set_torch_threads,
)

rl_app = typer.Typer(
    help="Post-train a generator with reinforcement learning on cellbench's rewards.",
    no_args_is_help=True,
)
app.add_typer(rl_app, name="rl")


@rl_app.command("cellflux")
def rl_cellflux(
    checkpoint: Annotated[
        Path, typer.Option(help="The base CellFlux run folder or checkpoint (`cellbench train`).")
    ],
    out: RunOutOpt,
    dataset: Annotated[str, typer.Option(help="Dataset to post-train on.")] = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    config: Annotated[
        str,
        typer.Option(
            help="A preset (cpu-small, paper) or a JSON/YAML file merged over the preset named by "
            'its \'preset\' key; e.g. {"reward": {"nuc_in_cyto": 1}} for a single-reward run.'
        ),
    ] = "cpu-small",
    steps: StepsOpt = None,
    seed: SeedOverrideOpt = None,
    device: TorchDeviceOpt = "cpu",
    reward_workers: Annotated[
        int | None,
        typer.Option(
            help="Processes scoring rollouts while the next ones are generated (0: score in "
            "this process; default: 1 on CPU, up to 8 (CPUs - 1) on CUDA)."
        ),
    ] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Post-train CELLFLUX by DiffusionNFT on the rewards; writes checkpoints and log.csv.

    Generate with the result: `cellbench generate cellfluxrl --checkpoint RUN_DIR ...`.
    """
    import json

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.errors import CellbenchError
    from cellbench.ui import info

    if steps is not None and steps < 1:
        raise CellbenchError("--steps must be at least 1")
    if reward_workers is None:
        import os

        cpus = os.cpu_count() or 1
        reward_workers = max(1, min(8, cpus - 1)) if device.startswith("cuda") else int(cpus > 1)
    if reward_workers < 0:
        raise CellbenchError("--reward-workers must be at least 0")
    set_torch_threads(threads)
    try:
        from cellbench_baselines.cellflux_rl import resolve_rl_config, run_rl
    except ModuleNotFoundError as exc:
        raise CellbenchError(
            f"CellFluxRL lives in a package that is not installed ({exc.name})",
            fix="install cellbench with its baselines: pip install -e .",
        ) from None

    cfg = resolve_rl_config(config, checkpoint, overrides={"steps": steps, "seed": seed})
    ds = open_dataset(dataset, data_dir, create_sim=True)
    result = run_rl(ds, cfg, out, device=device, reward_workers=reward_workers)
    summary = {
        "model": "cellfluxrl",
        "run_dir": str(out),
        "base_checkpoint": cfg["base_checkpoint"],
        "reward": cfg["reward"],
        **result.summary(),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    info(
        f"[green]post-trained[/green] cellfluxrl to step {result.step}; checkpoint "
        f"{result.checkpoint}; generate with `cellbench generate cellfluxrl --checkpoint {out}`"
    )
