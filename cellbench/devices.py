"""The torch device a command runs on: one check of ``--device`` (and ``$CELLBENCH_DEVICE``).

A device torch does not know, or one this machine lacks (CUDA or MPS without it), is refused with
one line before any work starts, instead of a torch error deep inside the command.
"""

from __future__ import annotations

import os

from cellbench.errors import CellbenchError

DEVICE_ENV = "CELLBENCH_DEVICE"

#: the device types cellbench runs its networks on
DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str | None = None, *, source: str = "--device") -> str:
    """The device name to use: ``device``, else ``$CELLBENCH_DEVICE``, else ``cpu``.

    ``auto`` is CUDA where torch sees it, else the CPU. An unknown name, or CUDA/MPS on a machine
    without it, raises :class:`CellbenchError` naming ``source`` (the option or the variable).
    """
    if device is None:
        device, source = os.environ.get(DEVICE_ENV) or "cpu", f"${DEVICE_ENV}"
    name = str(device).strip()
    if name == "cpu":
        return name  # no torch import for the common case
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise CellbenchError(
            f"{source} {name!r} is not a device cellbench can use", fix="use cpu, cuda or cuda:N"
        )
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise CellbenchError(f"{source} {name}: torch sees no CUDA device", fix="use cpu")
        if dev.index is not None and dev.index >= n:
            raise CellbenchError(
                f"{source} {name}: torch sees {n} CUDA device(s)", fix=f"use cuda:0 to cuda:{n - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CellbenchError(f"{source} {name}: torch sees no MPS device", fix="use cpu")
    return name


def check_device_option(value: str | None) -> str | None:
    """Typer callback of the ``--device`` options: refuse a bad device (None: check
    ``$CELLBENCH_DEVICE``) before the command runs; the value itself is passed on unchanged."""
    resolve_device(value)
    return value
