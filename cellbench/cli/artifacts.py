"""``cellbench artifacts build|pack|fetch``: the shared, deterministic scoring artifacts.

``cellbench reference build`` and ``cellbench classifier train`` are the two halves of
``artifacts build`` (``--only reference`` / ``--only classifier``) through the same function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellbench.cli.app import app
from cellbench.cli.options import BackendOpt, DataDirOpt, DatasetOpt, DeviceOpt, set_torch_threads

artifacts_app = typer.Typer(
    help="The reference statistics and MoA classifier every result is scored with: build "
    "(byte-identical on every rebuild), pack for publishing, fetch a published set.",
    no_args_is_help=True,
)
app.add_typer(artifacts_app, name="artifacts")

OutDirOpt = Annotated[
    Path | None,
    typer.Option(help="Artifact folder (default: <dataset root>/cellbench_artifacts)."),
]
EpochsOpt = Annotated[
    int, typer.Option(help="Classifier training epochs (10 as in CellFlux's recipe).")
]
SeedOpt = Annotated[int, typer.Option(help="Classifier training seed.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="torch threads for the Inception pass (the bytes do not depend on it)."),
]


def run_build(
    dataset: str,
    data_dir: Path | None,
    *,
    parts: tuple[str, ...],
    out: Path | None = None,
    backend: str = "classical",
    reference_split: str = "train",
    epochs: int = 10,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[Path, dict]:
    """Open the dataset and build ``parts`` of its set with progress bars; print what was written."""
    from cellbench.artifacts.build import build_artifacts
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.io import check_out_folder
    from cellbench.ui import info, phase_progress

    if out is not None:
        check_out_folder(out)
    ds = open_dataset(dataset, data_dir, create_sim=True)
    update, stop = phase_progress()
    try:
        folder, record = build_artifacts(
            ds,
            out=out,
            parts=parts,
            backend=backend,
            reference_split=reference_split,
            epochs=epochs,
            seed=seed,
            device=device,
            progress=update,
        )
    finally:
        stop()
    for name, digest in record["files"].items():
        info(f"  {digest}  {name}")
    info(f"[green]wrote[/green] {folder} (artifact set sha256 {record['sha256']})")
    return folder, record


@artifacts_app.command("build")
def build(
    dataset: DatasetOpt = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    out: OutDirOpt = None,
    backend: BackendOpt = "classical",
    only: Annotated[
        str | None,
        typer.Option(help="Build one part only: reference or classifier (default: both)."),
    ] = None,
    epochs: EpochsOpt = 10,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Reference statistics (train split) and MoA classifier (train-iid, random flips) of a dataset.

    Rebuilding from the same data gives the same bytes (the same sha256) on one machine, whatever
    the thread count; the folder's MANIFEST.json lists every file's sha256 and the set's digest.
    """
    from cellbench.artifacts.build import PARTS
    from cellbench.errors import CellbenchError

    if only is not None and only not in PARTS:
        raise CellbenchError(f"--only {only!r} is not one of {', '.join(PARTS)}")
    set_torch_threads(threads)
    run_build(
        dataset,
        data_dir,
        parts=PARTS if only is None else (only,),
        out=out,
        backend=backend,
        epochs=epochs,
        seed=seed,
        device=device,
    )


@artifacts_app.command("pack")
def pack(
    out: Annotated[Path, typer.Option(help="Archive to write (.tar.gz).")],
    dataset: DatasetOpt = "bbbc021-sim",
    data_dir: DataDirOpt = None,
    folder: Annotated[
        Path | None,
        typer.Option(help="Built set to pack (default: <dataset root>/cellbench_artifacts)."),
    ] = None,
    url: Annotated[
        str, typer.Option(help="Where the archive will be published (goes into the entry).")
    ] = "URL",
) -> None:
    """Pack a built set into a deterministic archive; print its sha256 and its registry entry."""
    from cellbench.artifacts.archive import pack as pack_set
    from cellbench.artifacts.registry import registry_entry
    from cellbench.io import check_out_file
    from cellbench.ui import info

    check_out_file(out, fix="name the archive file, e.g. --out artifacts.tar.gz")
    if folder is None:
        from cellbench.artifacts.build import default_out
        from cellbench.data.bbbc021 import open_dataset

        folder = default_out(open_dataset(dataset, data_dir))
    digest = pack_set(folder, out)
    info(f"[green]wrote[/green] {out} (sha256 {digest})")
    info(
        "to register it: upload the archive and add this entry under "
        f'"{dataset}" in cellbench/resources/artifacts/registered.json:'
    )
    typer.echo(json.dumps(registry_entry(folder, url, digest), indent=2))


@artifacts_app.command("fetch")
def fetch(
    url: Annotated[str, typer.Option(help="URL of the published artifact archive.")],
    sha256: Annotated[str, typer.Option(help="The archive's published sha256.")],
    dataset: DatasetOpt = "bbbc021",
    data_dir: DataDirOpt = None,
    timeout: Annotated[float, typer.Option(help="Network timeout in seconds.")] = 60.0,
) -> None:
    """Download a published set, verify its sha256, extract it safely and install it."""
    from cellbench.artifacts.archive import fetch as fetch_set
    from cellbench.artifacts.build import default_out
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.errors import CellbenchError
    from cellbench.ui import info, progress

    if not 0 < timeout < float("inf"):
        raise CellbenchError(f"--timeout must be a number of seconds above 0 (got {timeout})")
    ds = open_dataset(dataset, data_dir)
    with progress("downloading artifacts", None) as update:
        record = fetch_set(
            url,
            sha256,
            default_out(ds),
            dataset=ds.name,
            index_sha256=ds.index_sha256,
            on_progress=update,
            timeout=timeout,
        )
    info(f"[green]installed[/green] {default_out(ds)} (artifact set sha256 {record['sha256']})")
