"""Content provenance: a digest of the crop bytes an evaluation reads.

The index CSV's sha256 names the dataset's rows, not its pixels: a dataset whose crops were
replaced under an unchanged index would otherwise carry the same provenance and be served stale
cached features. :func:`crops_digest` hashes the bytes of every crop file a protocol reads (its
targets, which are also the real reference row and FID/KID's real side, and its controls); results
record it (``dataset.crops_sha256``) and the reference-feature cache is keyed by the targets' digest.
``docs/benchmarks.md`` gives its cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from cellbench.data import layout
from cellbench.errors import DataError
from cellbench.io import is_within, sha256_bytes, sha256_file

if TYPE_CHECKING:
    import pandas as pd

    from cellbench.data.bbbc021 import BBBC021Dataset

#: threads reading crop files for the digest
READ_THREADS = 4


def crop_file_sha256s(ds: BBBC021Dataset, keys: Iterable[str]) -> dict[str, str]:
    """sha256 of each crop file's bytes, by SAMPLE_KEY (each key read once).

    The containment check of :meth:`BBBC021Dataset.crop_path` (no key may lead outside the dataset
    folder) is made once per crop folder, plus a check that the file itself is no symbolic link;
    anything else goes through ``crop_path``, which raises its one-line error (resolving every path
    in full took two thirds of the digest's time). The files are read by :data:`READ_THREADS`
    threads (hashlib releases the GIL): 1.3-1.6x faster than one on the 2-core machine.
    """
    root = ds.root.resolve()
    folders: dict[Path, bool] = {}
    paths: dict[str, Path] = {}
    for key in dict.fromkeys(str(k) for k in keys):
        path = ds.root / layout.sample_key_to_relpath(key)
        inside = folders.get(path.parent)
        if inside is None:
            inside = folders[path.parent] = is_within(path.parent, root)
        if not inside or path.is_symlink():
            path = ds.crop_path(key)  # the full check (raises for a key leaving the folder)
        paths[key] = path
    with ThreadPoolExecutor(READ_THREADS) as pool:
        digests = list(pool.map(_file_sha256, paths.values()))
    return dict(zip(paths, digests, strict=True))


def _file_sha256(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise DataError(
            f"crop file is missing or unreadable ({type(exc).__name__})",
            path=path,
            fix="re-download or regenerate the dataset",
        ) from None


def digest_of(file_sha256s: dict[str, str], keys: Iterable[str] | None = None) -> str:
    """One digest of the crops ``keys`` (default: all), independent of their order."""
    chosen = file_sha256s if keys is None else {str(k) for k in keys}
    lines = sorted(f"{k}\t{file_sha256s[k]}" for k in chosen)
    return sha256_bytes(("\n".join(lines) + "\n").encode())


def protocol_crop_digests(ds: BBBC021Dataset, protocol: pd.DataFrame) -> dict[str, str | int]:
    """Digests of a protocol's crops: ``crops_sha256`` (targets and controls), ``n_crops`` and
    ``targets_sha256`` (the reference row's and FID/KID's real crops)."""
    targets = protocol["target_key"].astype(str).tolist()
    shas = crop_file_sha256s(ds, [*targets, *protocol["control_key"].astype(str)])
    return {
        "crops_sha256": digest_of(shas),
        "n_crops": len(shas),
        "targets_sha256": digest_of(shas, targets),
    }
