"""Data-side commands: ls datasets|protocols, data download|sim|inspect, protocol, images check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app, data_app, images_app, ls_app
from cellbench.cli.options import DataDirOpt, JsonOpt
from cellbench.errors import CellbenchError


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
    fingerprints: Annotated[
        Path | None,
        typer.Option(
            "--fingerprints",
            help="Compound fingerprint CSV to install as emb_fp.csv (the IMPA repository's); "
            "also adds it to an already installed dataset, without a download.",
        ),
    ] = None,
) -> None:
    """Fetch BBBC021 (only its member of the IMPA Zenodo zip, resumable, verified).

    Fingerprints are optional: without --fingerprints and without emb_fp.csv in the archive the
    dataset installs with a warning; scoring does not need them.
    """
    from cellbench.data.catalog import get_card
    from cellbench.ui import info, progress

    card = get_card(name)
    if card.simulated:
        raise CellbenchError(
            f"{name} is simulated and not downloaded", fix="use `cellbench data sim --out DIR`"
        )
    from cellbench.data import download

    root = card.root(data_dir)
    installed = download.is_complete(root)
    if installed and fingerprints is not None:
        info(f"Adding fingerprints {fingerprints} to {root}")
    elif not installed:
        info(f"Downloading {name} to {root}")
    kwargs = {"url": url} if url else {}
    with progress("download", None) as update:
        download.download_bbbc021(root, fingerprints=fingerprints, on_progress=update, **kwargs)
    if not download.has_fingerprints(root):
        info(
            "[yellow]warning[/yellow]: installed without compound fingerprints (emb_fp.csv); "
            "scoring does not need them, generators conditioning on compounds (cellflux, impa, "
            f"cellfluxrl) do: add the IMPA repository's emb_fp.csv with `cellbench data download "
            f"{name} --data-dir {root} --fingerprints emb_fp.csv`"
        )
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
@ls_app.command("protocols")
def ls_protocols(as_json: JsonOpt = False) -> None:
    """List the named evaluation protocols: name, version, split and what each reproduces."""
    from dataclasses import asdict

    from cellbench.protocol_registry import DEFAULT_PROTOCOL, PROTOCOLS

    specs = [PROTOCOLS.get(n) for n in PROTOCOLS.names()]
    if as_json:
        rows = [
            {**asdict(s), "rule": s.rule(), "default": s.name == DEFAULT_PROTOCOL} for s in specs
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    from cellbench.ui import out_console

    for s in specs:
        out_console.print(
            f"[bold]{s.name:<14}[/bold] v{s.version} {s.summary} ({s.rule()})", markup=True
        )


@app.command("protocol")
def protocol_cmd(
    dataset: Annotated[
        str, typer.Option(help="Dataset name (see `cellbench ls datasets`).")
    ] = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Named protocol (see `cellbench ls protocols`; default cellflux-iid)."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Instead of a named protocol: every treated crop of this split (recorded as "
            "'custom' by eval)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the control pairing.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Protocol CSV to write.")] = Path(
        "protocol.csv"
    ),
) -> None:
    """Write an evaluation protocol: one task per target crop, each with a same-batch control."""
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.io import check_out_file
    from cellbench.protocol import build_protocol, write_protocol
    from cellbench.protocol_registry import DEFAULT_PROTOCOL, build_named_protocol
    from cellbench.ui import info

    if name is not None and split is not None:
        raise CellbenchError(
            "--name and --split are two ways to choose the tasks; give one",
            fix="--name cellflux-iid for the default protocol (`cellbench ls protocols`)",
        )
    check_out_file(out, fix="name the protocol CSV, e.g. --out protocol.csv")
    ds = open_dataset(dataset, data_dir, create_sim=True)
    if split is not None:
        table, label = build_protocol(ds, split=split, seed=seed), f"custom (split {split})"
    else:
        label = name or DEFAULT_PROTOCOL
        table = build_named_protocol(ds, label, seed)
    digest = write_protocol(table, out)
    info(
        f"[green]wrote[/green] protocol {label}: {len(table)} tasks "
        f"({table['compound'].nunique()} compounds, "
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
    """Match images to tasks and check every file; the summary always prints, then exit 1 if any
    file has a problem or any task has no image."""
    from cellbench.images import check_n_per_task, discover_images, load_images
    from cellbench.protocol import read_protocol
    from cellbench.ui import progress

    check_n_per_task(n_per_task)  # options before files
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
    if loaded.problems or loaded.missing:
        raise typer.Exit(1)


# the scoring and generator commands live in their own modules and register on `app`
from cellbench.cli import community as _community  # noqa: E402, F401
from cellbench.cli import models as _models  # noqa: E402, F401
from cellbench.cli import rl as _rl  # noqa: E402, F401
from cellbench.cli import scoring as _scoring  # noqa: E402, F401
from cellbench.cli import train as _train  # noqa: E402, F401
from cellbench.cli import validation as _validation  # noqa: E402, F401
