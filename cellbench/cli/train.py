"""`cellbench train`: train a reference generator with the shared Trainer (resumable)."""

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
    from cellbench.ui import info

    cls = get_generator_class(model)
    presets = getattr(cls, "presets", None)
    if not presets or not hasattr(cls, "trainable"):
        raise CellbenchError(
            f"model {model!r} is not trainable",
            fix="choose a model with a training recipe (cellflux, phendiff, impa)",
        )
    from cellbench_baselines.training import resolve_config, train

    if steps is not None and steps < 1:
        raise CellbenchError("--steps must be at least 1")
    set_torch_threads(threads)
    cfg = resolve_config(presets, config, overrides={"steps": steps, "seed": seed})
    ds = open_dataset(dataset, data_dir, create_sim=True)
    result = train(cls, model, ds, cfg, out, device=device, init_from=init_from)
    summary = {
        "model": model,
        "run_dir": str(out),
        **result.summary(),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    info(
        f"[green]trained[/green] {model} to step {result.step} "
        f"({result.images_per_s:.1f} images/s); checkpoint {result.checkpoint}"
    )
