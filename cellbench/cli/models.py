"""Generator commands: ls models, generate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app, ls_app
from cellbench.cli.options import DataDirOpt, JsonOpt, ThreadsOpt, set_torch_threads
from cellbench.io import atomic_write_text, sha256_file


@ls_app.command("models")
def ls_models(as_json: JsonOpt = False) -> None:
    """List registered generators."""
    import json

    from cellbench.generators import GENERATORS
    from cellbench.ui import out_console

    rows = [{"name": e.name, "summary": e.summary} for e in GENERATORS.entries()]
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
    checkpoint: Annotated[Path | None, typer.Option(help="Weights of a trained generator.")] = None,
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
            "$CELLBENCH_DEVICE, else cpu)."
        ),
    ] = None,
    threads: ThreadsOpt = None,
    sample_steps: Annotated[
        int | None,
        typer.Option(
            help="Solver steps of an ODE-sampling generator (cellflux, cellfluxrl; default: the "
            "checkpoint config's sample_steps)."
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
    from cellbench.protocol import read_protocol
    from cellbench.ui import info, progress

    if n_per_task < 1 or batch_size < 1 or best_of < 1:
        raise CellbenchError("--n-per-task, --batch-size and --best-of must be at least 1")
    if best_of > 1 and n_per_task > 1:
        raise CellbenchError("--best-of keeps one image per task; drop --n-per-task")
    if best_of > 1 and resume:
        raise CellbenchError("--resume is for plain generation", fix="drop --resume or --best-of")
    set_torch_threads(threads)
    ds = open_dataset(dataset, data_dir, create_sim=True)
    table = read_protocol(protocol)
    if sample_steps is not None and sample_steps < 1:
        raise CellbenchError("--sample-steps must be at least 1")
    gen = get_generator_class(model).load(ds, checkpoint, device=device)
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
                checkpoint=checkpoint,
                seed=seed,
                batch_size=batch_size,
                on_progress=update,
            )
        info(
            f"[green]wrote[/green] {len(table)} best-of-{best_of} images and generation.json to {out}"
        )
        return
    settings = run_settings(
        model=model,
        gen=gen,
        dataset=dataset,
        protocol=protocol,
        checkpoint=checkpoint,
        seed=seed,
        batch_size=batch_size,
        n_per_task=n_per_task,
    )
    record = out / RUN_SETTINGS_FILE
    if resume:
        check_resumable(record, settings)
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(settings, indent=2) + "\n")
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
        )
    info(f"[green]wrote[/green] {n} images to {out}")


#: dot-file in a `cellbench generate` output folder recording the settings, for --resume
RUN_SETTINGS_FILE = ".cellbench-generate.json"


def run_settings(
    *,
    model: str,
    gen: object,
    dataset: str,
    protocol: Path,
    checkpoint: Path | None,
    seed: int,
    batch_size: int,
    n_per_task: int,
) -> dict[str, object]:
    """Everything that decides the images of a `cellbench generate` run (compared by --resume)."""
    from cellbench.best_of_n import checkpoint_sha256

    steps = getattr(gen, "sample_steps", None)
    return {
        "model": model,
        "generator_version": str(getattr(gen, "version", "0")),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "dataset": dataset,
        "protocol_sha256": sha256_file(protocol),
        "seed": seed,
        "batch_size": batch_size,
        "n_per_task": n_per_task,
        "sample_steps": steps if isinstance(steps, int) else None,
    }


def check_resumable(record: Path, settings: dict[str, object]) -> None:
    """Refuse --resume unless ``record`` holds the same settings as this run."""
    from cellbench.errors import CellbenchError

    try:
        before = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CellbenchError(
            "nothing to resume: no earlier `cellbench generate` run wrote this folder",
            path=record.parent,
            fix="drop --resume",
        ) from None
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict):
        raise CellbenchError(
            "unreadable settings of the earlier run (not a JSON object)",
            path=record,
            fix="drop --resume to generate every image again",
        )
    changed = sorted(k for k, v in settings.items() if before.get(k) != v)
    if changed:
        raise CellbenchError(
            f"the earlier run in this folder used other settings ({', '.join(changed)})",
            path=record.parent,
            fix="repeat the earlier options, or drop --resume, or choose a new --out",
        )
