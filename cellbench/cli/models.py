"""Generator commands: ls models, generate (images + generation.json, see cellbench.generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app, ls_app
from cellbench.cli.options import DataDirOpt, JsonOpt, ThreadsOpt, set_torch_threads
from cellbench.devices import check_device_option


@ls_app.command("models")
def ls_models(as_json: JsonOpt = False) -> None:
    """List registered generators."""
    import json

    from cellbench.generators import GENERATORS, generator_summary
    from cellbench.ui import out_console

    rows = [{"name": name, "summary": generator_summary(name)} for name in GENERATORS.names()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        out_console.print(f"[bold]{r['name']:<13}[/bold] {r['summary']}")


@app.command("generate")
def generate_cmd(
    model: Annotated[str, typer.Argument(help="Generator name (see `cellbench ls models`).")],
    protocol: Annotated[Path, typer.Option(help="Protocol CSV whose tasks to answer.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write <task_id>.npy images to.")],
    dataset: Annotated[str, typer.Option(help="Dataset the protocol belongs to.")] = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Weights of a trained generator: a `cellbench train` run folder or checkpoint, or "
            "the authors' released files (cellflux: checkpoint.pth or a folder in their Hugging "
            "Face layout; impa: <epoch>_nets.ckpt or its folder; phendiff: a diffusers pipeline "
            "folder; docs/reproduce.md)."
        ),
    ] = None,
    n_per_task: Annotated[int, typer.Option(help="Images per task (named <task_id>_<k>).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Tasks per generator call.")] = 64,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    best_of: Annotated[
        int,
        typer.Option(
            "--best-of",
            help="Draw N candidates per task and keep the one with the highest overall reward "
            "(recorded in generation.json and in the results; inflates the rewards).",
        ),
    ] = 1,
    device: Annotated[
        str | None,
        typer.Option(
            help="Torch device of a trained generator: cpu, cuda or cuda:N (default: "
            "$CELLBENCH_DEVICE, else cpu).",
            callback=check_device_option,
        ),
    ] = None,
    threads: ThreadsOpt = None,
    sample_steps: Annotated[
        int | None,
        typer.Option(
            help="Solver steps of an ODE-sampling generator (cellflux, cellfluxrl; default: the "
            "checkpoint config's sample_steps), or the DDIM steps each way of a phendiff "
            "pipeline folder (default 100)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Keep the images an interrupted run of the same command already wrote in --out "
            "and generate only the rest (the result equals an uninterrupted run's).",
        ),
    ] = False,
) -> None:
    """Generate one image (or N) per protocol task, in the format `cellbench eval` reads."""
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.errors import CellbenchError
    from cellbench.generators import get_generator_class, write_generated
    from cellbench.io import check_out_folder
    from cellbench.protocol import check_against_dataset, read_protocol
    from cellbench.ui import info, progress

    gen_class = get_generator_class(model)
    if checkpoint is not None and not gen_class.takes_checkpoint:
        raise CellbenchError(f"model {model!r} has no weights to load", fix="drop --checkpoint")
    if n_per_task < 1 or batch_size < 1 or best_of < 1:
        raise CellbenchError("--n-per-task, --batch-size and --best-of must be at least 1")
    if best_of > 1 and n_per_task > 1:
        raise CellbenchError("--best-of keeps one image per task; drop --n-per-task")
    if best_of > 1 and resume:
        raise CellbenchError("--resume is for plain generation", fix="drop --resume or --best-of")
    check_out_folder(out)
    set_torch_threads(threads)
    ds = open_dataset(dataset, data_dir, create_sim=True)
    table = read_protocol(protocol)
    if sample_steps is not None and sample_steps < 1:
        raise CellbenchError("--sample-steps must be at least 1")
    check_against_dataset(table, ds, protocol)
    gen = gen_class.load(ds, checkpoint, device=device)
    if sample_steps is not None:
        if not isinstance(getattr(gen, "sample_steps", None), int):
            raise CellbenchError(
                f"model {model!r} has no solver steps to set", fix="drop --sample-steps"
            )
        gen.sample_steps = sample_steps
    if best_of > 1:
        from cellbench.best_of_n import write_generated_best_of_n

        with progress(f"generating best-of-{best_of} ({model})", len(table)) as update:
            write_generated_best_of_n(
                gen,
                ds,
                table,
                out,
                n=best_of,
                model=model,
                seed=seed,
                batch_size=batch_size,
                dataset=dataset,
                protocol_path=protocol,
                on_progress=update,
            )
        info(
            f"[green]wrote[/green] {len(table)} best-of-{best_of} images and generation.json to {out}"
        )
        return
    from cellbench.generation import check_resumable, generation_record, write_generation_record

    record = generation_record(
        gen,
        model=model,
        seed=seed,
        batch_size=batch_size,
        dataset=dataset,
        protocol=protocol,
        n_per_task=n_per_task,
        complete=False,
    )
    if resume:
        check_resumable(out, record)
    out.mkdir(parents=True, exist_ok=True)
    write_generation_record(out, record)  # before the images: --resume compares against it
    redone: list[Path] = []
    with progress(f"generating ({model})", len(table) * n_per_task) as update:
        n = write_generated(
            gen,
            ds,
            table,
            out,
            n_per_task=n_per_task,
            seed=seed,
            batch_size=batch_size,
            skip_existing=resume,
            on_progress=update,
            on_bad=lambda path, problem: redone.append(path),
        )
    write_generation_record(out, {**record, "complete": True})
    if redone:
        info(
            f"regenerated {len(redone)} unreadable or incomplete image(s) the earlier run left "
            f"(first: {redone[0].name})"
        )
    info(f"[green]wrote[/green] {n} images and generation.json to {out}")
