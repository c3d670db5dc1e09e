"""`cellbench train`: train a registered generator through its training hooks (resumable).

The command knows no model: it calls ``training_config`` and ``train`` of the class the registry
returns (:class:`cellbench.generators.Generator`).
"""

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


@app.command("train")
def train_cmd(
    model: Annotated[str, typer.Argument(help="Trainable generator (cellflux, phendiff, ...).")],
    out: RunOutOpt,
    dataset: Annotated[str, typer.Option(help="Dataset to train on.")] = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    config: Annotated[
        str,
        typer.Option(
            help="A preset name (cpu-small, paper) or a JSON/YAML file merged over the preset "
            "named by its 'preset' key (default cpu-small)."
        ),
    ] = "cpu-small",
    steps: StepsOpt = None,
    device: TorchDeviceOpt = "cpu",
    seed: SeedOverrideOpt = None,
    threads: ThreadsOpt = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start a new run folder from another run's checkpoint of MODEL (weights, EMA, "
            "optimiser, step): a change of recipe part-way. The network must be the same; "
            "ignored once --out holds its own checkpoint.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train MODEL; writes checkpoints (EMA weights in safetensors), log.csv and config.json."""
    import json

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.errors import CellbenchError
    from cellbench.generators import get_generator_class
    from cellbench.io import check_out_folder
    from cellbench.ui import info

    if steps is not None and steps < 1:
        raise CellbenchError("--steps must be at least 1")
    check_out_folder(out)
    cls = get_generator_class(model)
    cfg = cls.training_config(config, overrides={"steps": steps, "seed": seed})
    set_torch_threads(threads)
    ds = open_dataset(dataset, data_dir, create_sim=True)
    result = cls.train(ds, cfg, out, device=device, init_from=init_from)
    summary = {
        "model": model,
        "run_dir": str(out),
        **result,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    info(
        f"[green]trained[/green] {model} to step {result['step']} "
        f"({result['train_images_per_s']:.1f} images/s); checkpoint {result['checkpoint']}"
    )
