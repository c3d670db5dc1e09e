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
from typing import TYPE_CHECKING

from cellbench.io import sha256_bytes, sha256_file

if TYPE_CHECKING:
    import pandas as pd

    from cellbench.data.bbbc021 import BBBC021Dataset


def crop_file_sha256s(ds: BBBC021Dataset, keys: Iterable[str]) -> dict[str, str]:
    """sha256 of each crop file's bytes, by SAMPLE_KEY (each key read once)."""
    return {k: sha256_file(ds.crop_path(k)) for k in dict.fromkeys(str(k) for k in keys)}


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
