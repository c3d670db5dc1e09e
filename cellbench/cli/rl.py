"""`cellbench rl BASE`: post-train a checkpoint of BASE online with the rewards.

The command knows no model: the registered generator BASE names its post-trainer
(``post_trainer``, e.g. cellflux -> cellfluxrl, CellFluxRL in docs/cellfluxrl.md), whose
``post_training_config`` and ``post_train`` hooks do the work
(:class:`cellbench.generators.Generator`).
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


@app.command("rl", no_args_is_help=True)
def rl_cmd(
    base: Annotated[
        str,
        typer.Argument(help="The generator to post-train (cellflux; see `cellbench ls models`)."),
    ],
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="The base model's run folder or checkpoint (`cellbench train`), or the CellFlux "
            "authors' released checkpoint.pth (or a folder in their Hugging Face layout)."
        ),
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
    """Post-train BASE on the rewards (cellflux: CellFluxRL, by DiffusionNFT); writes checkpoints
    and log.csv.

    Generate with the result: `cellbench generate cellfluxrl --checkpoint RUN_DIR ...`.
    """
    import json

    from cellbench.data.bbbc021 import open_dataset
    from cellbench.errors import CellbenchError
    from cellbench.generators import get_generator_class
    from cellbench.io import check_out_folder
    from cellbench.ui import info

    if steps is not None and steps < 1:
        raise CellbenchError("--steps must be at least 1")
    check_out_folder(out)
    if reward_workers is None:
        import os

        cpus = os.cpu_count() or 1
        reward_workers = max(1, min(8, cpus - 1)) if device.startswith("cuda") else int(cpus > 1)
    if reward_workers < 0:
        raise CellbenchError("--reward-workers must be at least 0")
    name = get_generator_class(base).post_trainer
    if name is None:
        raise CellbenchError(
            f"model {base!r} has no post-training", fix="choose a model that has one (cellflux)"
        )
    cls = get_generator_class(name)
    cfg = cls.post_training_config(config, checkpoint, overrides={"steps": steps, "seed": seed})
    set_torch_threads(threads)
    ds = open_dataset(dataset, data_dir, create_sim=True)
    result = cls.post_train(ds, cfg, out, device=device, reward_workers=reward_workers)
    summary = {"model": name, "run_dir": str(out), **result}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    info(
        f"[green]post-trained[/green] {name} to step {result['step']}; checkpoint "
        f"{result['checkpoint']}; generate with `cellbench generate {name} --checkpoint {out}`"
    )
