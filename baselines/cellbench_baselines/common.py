"""Small helpers shared by the trainable generators (device choice, fingerprints, sizes)."""

from __future__ import annotations

import numpy as np
import torch

from cellbench import devices
from cellbench.data.bbbc021 import BBBC021Dataset


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$CELLBENCH_DEVICE``, else CPU (:func:`cellbench.devices.resolve_device`:
    an unknown device, or CUDA without one, is an error)."""
    return torch.device(devices.resolve_device(None if device is None else str(device)))


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
