"""Command-line options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellbench.devices import check_device_option

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
TorchDeviceOpt = Annotated[
    str, typer.Option(help="cpu, cuda or cuda:N.", callback=check_device_option)
]
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


DatasetOpt = Annotated[str, typer.Option(help="Dataset name (see `cellbench ls datasets`).")]
BackendOpt = Annotated[
    str, typer.Option(help="Segmentation backend (see `cellbench ls segmenters`).")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        help="Torch device for the feature network (cpu or cuda).", callback=check_device_option
    ),
]
