"""What cellbench keeps on disk besides datasets: the cache and the weights folder.

The cache (``$CELLBENCH_CACHE_DIR``, else the user cache folder) holds only what cellbench can
recompute: ``reference-features/`` (segmentation and Inception features and morphology profiles of
a protocol's real target crops and of its control crops, keyed by the dataset index, protocol,
segmenter, profile version and network). and ``training-features/``
(the training split's pixel digests and sampled Inception features, for the memorisation
metrics). The weights folder
(``$CELLBENCH_WEIGHTS_DIR``, else ``weights/`` in the user data folder) holds the FID Inception
weights (:mod:`cellbench.features.weights`). :func:`clear_cache` deletes only cellbench's own
sub-folders of the cache, never anything else a shared cache folder may hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cellbench.io import tree_size
from cellbench.paths import cache_dir, weights_dir

__all__ = ["CACHE_PARTS", "cache_info", "clear_cache"]

#: the sub-folders of the cache folder that cellbench writes, and what each holds
CACHE_PARTS: dict[str, str] = {
    "reference-features": "features of each protocol's real crops (recomputed when missing)",
    "training-features": "pixel digests and sampled features of the training split, for the "
    "memorisation metrics (recomputed when missing)",
}


def _entry(path: Path, what: str) -> dict[str, Any]:
    files, size = tree_size(path)
    return {"path": str(path), "what": what, "files": files, "bytes": size}


def cache_info() -> dict[str, Any]:
    """Paths, file counts and sizes of the cache's parts and of the weights folder."""
    root = cache_dir()
    parts = {name: _entry(root / name, what) for name, what in CACHE_PARTS.items()}
    return {
        "cache_dir": str(root),
        "parts": parts,
        "cache_bytes": sum(p["bytes"] for p in parts.values()),
        "weights": _entry(weights_dir(), "FID Inception weights (kept by `cellbench cache clear`)"),
    }


def clear_cache() -> dict[str, Any]:
    """Delete cellbench's sub-folders of the cache folder; returns what was removed and its size."""
    root = cache_dir()
    removed: dict[str, int] = {}
    for name in CACHE_PARTS:
        part = root / name
        if part.is_dir() and not part.is_symlink():
            removed[str(part)] = tree_size(part)[1]
            shutil.rmtree(part)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return {"cache_dir": str(root), "removed": removed, "bytes": sum(removed.values())}
