"""Reference statistics for the z-scored rewards.

The reference statistics of a dataset + segmenter are the per-MoA mean and standard deviation of
each per-image feature over the real **training-split** crops (``docs/scoring.md``). They are written
as a canonical JSON file whose sha256 is recorded in every result. Where the file of a dataset is
found: :mod:`cellbench.scoring.artifacts`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench.io import atomic_write_text, loads_json, sha256_bytes
from cellbench.metrics.rewards import SUITE_VERSION

REFERENCE_SCHEMA = "cellbench.reference-stats/1"


def reference_filename(backend: str) -> str:
    """File name of the reference statistics made with segmentation backend ``backend``."""
    return f"reference_{backend}.json"


def compute_reference_stats(
    features: np.ndarray, feature_names: tuple[str, ...], moas: np.ndarray
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-MoA mean, std (population) and n of each feature column."""
    moas = np.asarray(moas).astype(str)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in sorted(set(moas)):
        block = np.asarray(features, np.float64)[moas == m]
        out[m] = {
            f: {
                "mean": round(float(block[:, j].mean()), 8),
                "std": round(float(block[:, j].std()), 8),
                "n": int(block.shape[0]),
            }
            for j, f in enumerate(feature_names)
        }
    return out


def build_reference(
    ds: BBBC021Dataset,
    backend,
    *,
    split: str = "train",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Segment every real crop of ``split`` and return the reference-statistics document."""
    rows = ds.split(split)
    keys = rows["SAMPLE_KEY"].tolist()
    feats = backend.features_of_keys(ds, keys, on_progress=on_progress)
    return {
        "schema": REFERENCE_SCHEMA,
        "metric_suite_version": SUITE_VERSION,
        "dataset": ds.name,
        "dataset_index_sha256": ds.index_sha256,
        "split": split,
        "segmenter": backend.identity(),
        "features": list(backend.feature_names),
        "per_moa": compute_reference_stats(feats, backend.feature_names, rows["ANNOT"].to_numpy()),
    }


def reference_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def save_reference(doc: dict, path: str | Path) -> str:
    """Write the document atomically; return its sha256."""
    data = reference_bytes(doc)
    atomic_write_text(path, data.decode())
    return sha256_bytes(data)


def load_reference(path: str | Path, *, backend_identity: dict | None = None) -> tuple[dict, str]:
    """Read a reference-statistics file and its sha256; refuse one made for another segmenter."""
    path = Path(path)
    try:
        data = path.read_bytes()
        doc = loads_json(data)
    except (OSError, ValueError) as exc:
        raise CellbenchError(
            f"unreadable reference statistics ({exc})",
            path=path,
            fix="rebuild with `cellbench reference build`",
        ) from None
    if doc.get("schema") != REFERENCE_SCHEMA or "per_moa" not in doc:
        raise CellbenchError(
            "not a cellbench reference-statistics file",
            path=path,
            fix="rebuild with `cellbench reference build`",
        )
    if doc.get("metric_suite_version") != SUITE_VERSION:
        raise CellbenchError(
            f"reference statistics are for metric suite {doc.get('metric_suite_version')}, "
            f"this cellbench uses {SUITE_VERSION}",
            path=path,
            fix="rebuild with `cellbench reference build`",
        )
    if backend_identity is not None and doc.get("segmenter") != backend_identity:
        raise CellbenchError(
            f"reference statistics were made with segmenter {doc.get('segmenter')}, "
            f"not {backend_identity}",
            path=path,
            fix="rebuild with `cellbench reference build --backend NAME`",
        )
    return doc, sha256_bytes(data)
