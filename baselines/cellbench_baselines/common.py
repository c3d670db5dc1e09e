"""Small helpers shared by the trainable generators (device choice, fingerprints, sizes)."""

from __future__ import annotations

import os

import numpy as np
import torch

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$CELLBENCH_DEVICE``, else CPU; asking for CUDA without one is an error."""
    name = str(device) if device is not None else os.environ.get("CELLBENCH_DEVICE", "cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CellbenchError(
            f"device {name!r} was asked for but torch sees no CUDA device", fix="use cpu"
        )
    return dev


def fingerprint_batch(dataset: BBBC021Dataset, compounds: list[str]) -> torch.Tensor:
    """(N, D) float32 fingerprints of ``compounds`` (unknown names raise with suggestions)."""
    cache: dict[str, np.ndarray] = {}
    rows = []
    for c in compounds:
        if c not in cache:
            cache[c] = dataset.fingerprint(c)
        rows.append(cache[c])
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def param_count(module: torch.nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
