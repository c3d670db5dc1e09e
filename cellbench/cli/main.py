"""Entry point of the ``cellbench`` command.

Heavy libraries (torch, pandas, scikit-image) are imported inside the commands, so
``cellbench --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cellbench._version import __version__
from cellbench.errors import CellbenchError

app = typer.Typer(
    name="cellbench",
    help="Benchmark virtual cell image generators on BBBC021: data, protocol, scoring, leaderboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
ls_app = typer.Typer(help="List registered datasets, metrics and segmenters.", no_args_is_help=True)
data_app = typer.Typer(help="Get, simulate and inspect datasets.", no_args_is_help=True)
images_app = typer.Typer(
    help="Check a generator's image folder against a protocol.", no_args_is_help=True
)
app.add_typer(ls_app, name="ls")
app.add_typer(data_app, name="data")
app.add_typer(images_app, name="images")

_state = {"debug": os.environ.get("CELLBENCH_DEBUG", "") not in ("", "0")}

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding datasets (default: $CELLBENCH_DATA_DIR, else the user data folder).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
# options shared by the training commands (`cellbench train`, `cellbench rl`)
RunOutOpt = Annotated[
    Path, typer.Option("--out", help="Run folder (resumed if it holds a checkpoint).")
]
StepsOpt = Annotated[int | None, typer.Option(help="Total optimiser steps (overrides the config).")]
SeedOverrideOpt = Annotated[int | None, typer.Option(help="Seed (overrides the config).")]
TorchDeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy "
        "2-core machine)."
    ),
]


def set_torch_threads(threads: int | None) -> None:
    """Apply a ``--threads`` option (None: leave torch's default)."""
    if threads is None:
        return
    from cellbench.errors import CellbenchError

    if threads < 1:
        raise CellbenchError("--threads must be at least 1")
    import torch

    torch.set_num_threads(threads)


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"cellbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_cb, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Benchmark virtual cell image generators on BBBC021."""
    if debug:
        _state["debug"] = True


# ----------------------------------------------------------------------------- ls
@ls_app.command("datasets")
def ls_datasets(as_json: JsonOpt = False) -> None:
    """List datasets with a one-line card each."""
    from cellbench.data.catalog import DATASETS

    cards = [DATASETS.get(n) for n in DATASETS.names()]
    if as_json:
        rows = [
            {
                "name": c.name,
                "title": c.title,
                "source": c.source,
                "licence": c.licence,
                "size": c.size,
                "channels": list(c.channels),
                "splits": list(c.splits),
                "version": c.version,
                "simulated": c.simulated,
            }
            for c in cards
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    from cellbench.ui import out_console

    for c in cards:
        out_console.print(
            f"[bold]{c.name:<12}[/bold] {c.title} | source: {c.source} | licence: {c.licence} | "
            f"size: {c.size} | channels: {','.join(c.channels)} | splits: {','.join(c.splits)}",
            markup=True,
        )


# ----------------------------------------------------------------------------- data
@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="Dataset to fetch (bbbc021).")],
    data_dir: DataDirOpt = None,
    url: Annotated[
        str | None, typer.Option(help="Override the source URL (a mirror of the IMPA zip).")
    ] = None,
) -> None:
    """Fetch BBBC021 (only its member of the IMPA Zenodo zip, resumable, verified)."""
    from cellbench.data.catalog import get_card
    from cellbench.ui import info, progress

    card = get_card(name)
    if card.simulated:
        raise CellbenchError(
            f"{name} is simulated and not downloaded", fix="use `cellbench data sim --out DIR`"
        )
    from cellbench.data import download

    root = card.root(data_dir)
    info(f"Downloading {name} to {root}")
    kwargs = {"url": url} if url else {}
    with progress("download", None) as update:
        download.download_bbbc021(root, on_progress=update, **kwargs)
    info(f"[green]done[/green]: {root}")


@data_app.command("sim")
def data_sim(
    out: Annotated[
        Path, typer.Option("--out", help="Empty or new folder to write the dataset to.")
    ],
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    scale: Annotated[
        str,
        typer.Option(help="tiny (a few hundred crops), small, or demo (100+ test crops per pair)."),
    ] = "tiny",
    workers: Annotated[
        int, typer.Option(help="Worker processes (output does not depend on it).")
    ] = 1,
) -> None:
    """Write the simulated dataset bbbc021-sim in the IMPA layout."""
    from cellbench.data.sim import SCALES, write_sim_dataset
    from cellbench.registry import suggest
    from cellbench.ui import info, progress

    if scale not in SCALES:
        err = suggest(scale, list(SCALES), "scale")
        err.fix = f"use one of {', '.join(SCALES)}"
        raise err
    with progress(f"simulating ({scale})", None) as update:
        summary = write_sim_dataset(
            out, seed=seed, scale=scale, on_progress=update, workers=workers
        )
    info(
        f"[green]wrote[/green] {summary['n_crops']} crops ({summary['n_train']} train, "
        f"{summary['n_test']} test, {summary['n_batches']} batches) to {out} "
        f"in {summary['seconds']:.1f} s"
    )


@data_app.command("inspect")
def data_inspect(
    folder: Annotated[
        Path, typer.Argument(help="A dataset root (holds metadata/bbbc021_df_all.csv).")
    ],
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset card to check against (default: from the folder)."),
    ] = None,
    sample: Annotated[int, typer.Option(help="Crops sampled for channel statistics.")] = 400,
    as_json: JsonOpt = False,
) -> None:
    """Counts per split / MoA / compound / batch, channel statistics, DNA-channel check."""
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import get_card
    from cellbench.data.inspect import inspect_dataset
    from cellbench.ui import progress

    if dataset is None:
        dataset = "bbbc021-sim" if (folder / "sim_config.json").is_file() else "bbbc021"
    ds = BBBC021Dataset(folder, get_card(dataset))
    with progress("reading crops", sample) as update:
        report = inspect_dataset(ds, sample=sample, on_progress=update)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_inspect(report)
    if not report["dna_check"]["ok"]:
        raise CellbenchError(
            f"the DNA stain looks like channel {report['dna_check']['observed_channel']}, "
            f"but the {dataset} card says channel {report['dna_check']['declared_channel']}",
            path=folder,
            fix="check the channel order of the crops",
        )


def _print_inspect(report: dict) -> None:
    from rich.table import Table

    from cellbench.ui import out_console

    c = report["counts"]
    out_console.print(
        f"[bold]{report['dataset']}[/bold] at {report['root']}"
        f"{' (simulated)' if report['simulated'] else ''}\n"
        f"{c['n_crops']} crops, {c['n_controls']} controls, {c['n_compound_doses']} compound-dose "
        f"pairs, {len(c['per_compound'])} compounds, {len(c['per_moa'])} MoA labels, "
        f"{len(c['per_batch'])} batches; index sha256 {report['index_sha256'][:12]}"
    )
    t = Table(title="per split")
    for col in ("split", "treated", "control"):
        t.add_column(col)
    for s, v in c["per_split"].items():
        t.add_row(s, str(v["treated"]), str(v["control"]))
    out_console.print(t)
    t = Table(title="per MoA")
    t.add_column("MoA")
    t.add_column("crops", justify="right")
    for k, v in c["per_moa"].items():
        t.add_row(k, str(v))
    out_console.print(t)
    t = Table(title="per batch")
    t.add_column("batch")
    t.add_column("crops", justify="right")
    for k, v in c["per_batch"].items():
        t.add_row(k, str(v))
    out_console.print(t)
    t = Table(title=f"channels ({report['sampled_crops']} sampled crops)")
    for col in ("channel", "mean", "std", "p1", "p99", "saturated", "foreground"):
        t.add_column(col, justify="right")
    fg = report["dna_check"]["foreground_fraction"]
    for name, s in report["channels"].items():
        t.add_row(
            name,
            f"{s['mean']:.1f}",
            f"{s['std']:.1f}",
            f"{s['p1']:.0f}",
            f"{s['p99']:.0f}",
            f"{s['saturated_fraction']:.4f}",
            f"{fg[name]:.3f}",
        )
    out_console.print(t)
    d = report["dna_check"]
    verdict = "[green]ok[/green]" if d["ok"] else "[red]MISMATCH[/red]"
    out_console.print(
        f"DNA channel: declared {d['declared_channel']}, observed {d['observed_channel']} "
        f"(smallest foreground fraction) {verdict}"
    )
    out_console.print("compounds: " + ", ".join(f"{k} ({v})" for k, v in c["per_compound"].items()))


# ----------------------------------------------------------------------------- protocol
@app.command("protocol")
def protocol_cmd(
    dataset: Annotated[
        str, typer.Option(help="Dataset name (see `cellbench ls datasets`).")
    ] = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="Split to make tasks from.")] = "test",
    seed: Annotated[int, typer.Option(help="Seed of the control pairing.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Protocol CSV to write.")] = Path(
        "protocol.csv"
    ),
) -> None:
    """Write the evaluation protocol: one task per treated test crop with a same-batch control."""
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.protocol import build_protocol, write_protocol
    from cellbench.ui import info

    ds = open_dataset(dataset, data_dir, create_sim=True)
    table = build_protocol(ds, split=split, seed=seed)
    digest = write_protocol(table, out)
    info(
        f"[green]wrote[/green] {len(table)} tasks ({table['compound'].nunique()} compounds, "
        f"{table[['compound', 'dose']].drop_duplicates().shape[0]} compound-dose pairs) to {out}; "
        f"sha256 {digest[:12]}"
    )


# ----------------------------------------------------------------------------- images
@images_app.command("check")
def images_check(
    images: Annotated[Path, typer.Argument(help="Folder of generated images.")],
    protocol: Annotated[Path, typer.Option(help="Protocol CSV the images answer.")] = Path(
        "protocol.csv"
    ),
    n_per_task: Annotated[
        int | None, typer.Option(help="Expected images per task (default: any).")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any problem.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Match images to tasks and check every file (exit 1 if any problem)."""
    from cellbench.images import discover_images, load_images
    from cellbench.protocol import read_protocol
    from cellbench.ui import progress

    table = read_protocol(protocol)
    found = discover_images(images, table)
    with progress("checking images", found.n_files) as update:
        loaded = load_images(found, strict=strict, n_per_task=n_per_task, on_progress=update)
    report = {
        "folder": str(images),
        "layout": found.layout,
        "tasks": len(table),
        "good_images": len(loaded.task_ids),
        "tasks_covered": len(set(loaded.task_ids)),
        "missing_tasks": len(loaded.missing),
        "problems": [
            {"path": p.path, "task_id": p.task_id, "problem": p.problem} for p in loaded.problems
        ],
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from cellbench.ui import out_console

        out_console.print(
            f"{report['good_images']} good images covering {report['tasks_covered']} of "
            f"{report['tasks']} tasks (layout: {found.layout}); {report['missing_tasks']} tasks "
            f"without an image; {len(loaded.problems)} problem(s)"
        )
        for p in loaded.problems:
            out_console.print(f"  {p}", markup=False)
    if loaded.problems:
        raise typer.Exit(1)


# the scoring and generator commands live in their own modules and register on `app`
from cellbench.cli import community as _community  # noqa: E402, F401
from cellbench.cli import models as _models  # noqa: E402, F401
from cellbench.cli import rl as _rl  # noqa: E402, F401
from cellbench.cli import scoring as _scoring  # noqa: E402, F401
from cellbench.cli import train as _train  # noqa: E402, F401
from cellbench.cli import validation as _validation  # noqa: E402, F401


def main() -> None:
    """Console-script entry point: one-line errors, no traceback unless --debug."""
    args = sys.argv[1:]
    for i, a in enumerate(args):  # `cellbench eval merge ...` is the hidden `eval-merge` command
        if not a.startswith("-"):
            if a == "eval" and args[i + 1 : i + 2] == ["merge"]:
                sys.argv[1:] = [*args[:i], "eval-merge", *args[i + 2 :]]
            break
    try:
        app()
    except CellbenchError as exc:
        if _state["debug"]:
            raise
        from rich.markup import escape

        from cellbench.ui import err_console

        err_console.print(
            f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
