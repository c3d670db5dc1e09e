"""``cellbench artifacts build``: a dataset's reference statistics and MoA classifier, byte-identical.

The set is built into a staging folder inside the output folder, then installed file by file with
``os.replace``: the old ``MANIFEST.json`` is removed first and the new one written last, so a folder
with a manifest always holds the files it lists (:func:`cellbench.artifacts.manifest.read_manifest`
checks them). Files of the output folder that are not artifacts (a README) are left alone.

Why rebuilds give the same bytes (tested on the tiny sim, docs/scoring.md "Artifacts"): the
reference statistics are a canonical JSON (sorted keys, values rounded to 8 digits) of
deterministic segmentation features; the Inception pool features of a crop do not depend on the
torch thread count or the batch size on a given CPU (measured, and tested); the classifier head is
trained on one thread from a seeded generator (:func:`cellbench.features.classifier.train_head`);
the card and the safetensors metadata hold no timestamp or timing and are written with sorted keys.
Across CPU families float32 kernels may still differ in their last bits: that is why a dataset's
published set is fetched (``cellbench artifacts fetch``) rather than rebuilt by every user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cellbench.artifacts.manifest import (
    MANIFEST_NAME,
    hash_files,
    manifest_bytes,
    set_files,
)
from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.io import atomic_write_bytes

#: the parts of a set ``cellbench artifacts build --only`` can name
PARTS = ("reference", "classifier")

PhaseProgress = Callable[[str, int, int], None]


def default_out(ds: BBBC021Dataset) -> Path:
    """``<dataset root>/cellbench_artifacts``: where the scorer looks first."""
    from cellbench.scoring.artifacts import ARTIFACT_DIR

    return ds.root / ARTIFACT_DIR


def install_staged(staging: Path, out: Path, dataset: str, index_sha256: str) -> dict:
    """Move every file of ``staging`` into ``out`` (manifest removed first, rewritten last).

    Returns the manifest's ``{"files", "sha256"}`` record of the whole set now in ``out``.
    """
    from cellbench.artifacts.manifest import set_record

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dest = out / src.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
    files = hash_files(out, set_files(out))
    atomic_write_bytes(out / MANIFEST_NAME, manifest_bytes(dataset, index_sha256, files))
    return set_record(files)


def build_artifacts(
    ds: BBBC021Dataset,
    *,
    out: str | Path | None = None,
    parts: Sequence[str] = PARTS,
    backend: str = "classical",
    reference_split: str = "train",
    epochs: int = 10,
    seed: int = 0,
    device: str = "cpu",
    progress: PhaseProgress = lambda *a: None,
) -> tuple[Path, dict]:
    """Build ``parts`` of ``ds``'s artifact set into ``out`` (default :func:`default_out`).

    Returns the folder and the record (``{"files": {path: sha256}, "sha256": digest}``) of every
    artifact file now in it. Nothing in ``out`` changes unless every part was built.
    """
    from cellbench.features.classifier_train import train_and_save
    from cellbench.features.reference import build_reference, reference_filename, save_reference
    from cellbench.features.segment.backends import get_backend

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown artifact part(s) {unknown}; choose from {PARTS}")
    folder = Path(out) if out is not None else default_out(ds)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        if "reference" in parts:
            be = get_backend(backend, device)
            doc = build_reference(
                ds,
                be,
                split=reference_split,
                on_progress=lambda d, t: progress(f"segmenting ({reference_split})", d, t),
            )
            save_reference(doc, staging / reference_filename(be.name))
        if "classifier" in parts:
            train_and_save(
                ds,
                out=staging / "classifier",
                epochs=epochs,
                seed=seed,
                device=device,
                progress=progress,
            )
        record = install_staged(staging, folder, ds.name, ds.index_sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, record
