"""The identity of an artifact set: each file's sha256 and one digest of the set.

The digest of a set is the sha256 of its sorted ``"<sha256>  <relative path>\\n"`` lines (the
``sha256sum`` format), so it names exactly which bytes were used and is independent of where the
files lie. A result records the files its scorer read (:func:`set_record`); a built folder holds a
``MANIFEST.json`` listing every file of the set, written last by ``cellbench artifacts build`` and
``fetch``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from cellbench.errors import CellbenchError
from cellbench.io import read_json, sha256_bytes, sha256_file

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_SCHEMA = "cellbench.artifacts/1"
#: the classifier's files, relative to the set's folder
CLASSIFIER_FILES = ("classifier/classifier.json", "classifier/classifier.safetensors")


def set_digest(files: Mapping[str, str]) -> str:
    """One sha256 over ``{relative path: sha256}`` (sorted ``sha256sum`` lines)."""
    lines = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return sha256_bytes(lines.encode("utf-8"))


def set_record(files: Mapping[str, str]) -> dict:
    """``{"files": {...}, "sha256": digest}``: what a result and a registry entry hold."""
    return {"files": dict(sorted(files.items())), "sha256": set_digest(files)}


def hash_files(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """``{relative path: sha256}`` of ``names`` under ``folder``."""
    return {name: sha256_file(folder / name) for name in sorted(names)}


def set_files(folder: Path) -> list[str]:
    """The artifact files present in ``folder``: every ``reference_*.json`` and the classifier."""
    names = sorted(p.name for p in folder.glob("reference_*.json") if p.is_file())
    names += [n for n in CLASSIFIER_FILES if (folder / n).is_file()]
    return names


def manifest_bytes(dataset: str, index_sha256: str, files: Mapping[str, str]) -> bytes:
    """The canonical ``MANIFEST.json`` bytes (sorted keys, no timestamps)."""
    doc = {
        "schema": MANIFEST_SCHEMA,
        "dataset": dataset,
        "dataset_index_sha256": index_sha256,
        **set_record(files),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_manifest(folder: Path, *, verify: bool = True) -> dict:
    """Read ``folder/MANIFEST.json``; with ``verify``, check every listed file's sha256."""
    path = folder / MANIFEST_NAME
    fix = "rebuild the set with `cellbench artifacts build` or fetch it again"
    doc = read_json(path, "artifact manifest", fix)
    files = doc.get("files") if isinstance(doc, dict) else None
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != MANIFEST_SCHEMA
        or not isinstance(files, dict)
        or doc.get("sha256") != set_digest(files)
    ):
        raise CellbenchError("not a consistent cellbench artifact manifest", path=path, fix=fix)
    if verify:
        for name, want in files.items():
            if not (folder / name).is_file() or sha256_file(folder / name) != want:
                raise CellbenchError(
                    f"artifact file {name} is missing or does not match the manifest",
                    path=folder / name,
                    fix=fix,
                )
    return doc
