"""Segmentation backends and per-image features (docs/scoring.md).

* :mod:`cellbench.features.segment.classical`: the default ``classical`` backend (version 3: scale-aware
  nuclei, every step once per batch, the steps' scipy / scikit-image routines replaced bit for bit
  by the numba kernels of ``_nucleus_kernels.py``; cells from :mod:`.cells`).
* :mod:`cellbench.features.segment.cells`: cells from the cytoplasm's own evidence (the scipy
  reference ``segment_cells`` and the compiled scoring path ``segment_cells_stack``, whose numba
  kernels are in ``_cell_kernels.py``; the features' kernel is ``_feature_kernels.py``).
* :mod:`cellbench.features.segment.evaluate`: instance matching and F1 against ground truth (real DSB2018
  nuclei, simulated crops with known nuclei).
* :mod:`cellbench.features.segment.convert`: other crops to the 96x96 uint8 convention.
* :mod:`cellbench.features.segment.backends`: the backend registry (``classical``, ``cellpose``).

The names below are imported lazily (scikit-image loads only when one is used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKEND_NAME": "classical",
    "BACKEND_VERSION": "classical",
    "FEATURE_NAMES": "classical",
    "NucleusParams": "classical",
    "estimate_radius": "classical",
    "SegmentationResult": "classical",
    "features_from_masks": "classical",
    "segment_batch": "classical",
    "segment_crop": "classical",
    "segment_nuclei": "classical",
    "segment_nuclei_stack": "classical",
    "segment_stack": "classical",
    "stack_features": "classical",
    "estimate_radii": "classical",
    "segment_cells": "cells",
    "segment_cells_stack": "cells",
    "dsb_f1": "evaluate",
    "f1_at_iou": "evaluate",
    "iou_matrix": "evaluate",
    "match_instances": "evaluate",
    "sim_cell_f1": "evaluate",
    "sim_f1": "evaluate",
    "to_uint8_crop": "convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
