"""The artifact sets published for each dataset (the ones ``submission validate`` accepts).

A dataset's registered sets are the entries of the shipped
``cellbench/resources/artifacts/registered.json`` for it plus, where the package ships a set for
it (``cellbench/resources/<dataset>/``, the simulated dataset), that set. A result's artifacts
are registered when every file it records appears, with the same sha256, in one registered set.

How a maintainer registers a set (docs/scoring.md "Artifacts"): build it
(``cellbench artifacts build``), pack it (``cellbench artifacts pack``, which prints the registry
entry), upload the archive, and add the printed entry, with its URL, to ``registered.json``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from cellbench.artifacts.manifest import hash_files, set_files, set_record

REGISTRY_SCHEMA = "cellbench.artifact-registry/1"


@lru_cache(maxsize=1)
def _registry() -> dict:
    ref = resources.files("cellbench") / "resources" / "artifacts" / "registered.json"
    doc = json.loads(ref.read_text(encoding="utf-8"))
    if doc.get("schema") != REGISTRY_SCHEMA:  # pragma: no cover - a packaging error
        raise ValueError(f"registered.json is not {REGISTRY_SCHEMA}")
    return doc


def published_sets(dataset: str) -> list[dict]:
    """The entries of ``registered.json`` for ``dataset`` (url, archive sha256, files, digest)."""
    return list(_registry()["datasets"].get(dataset, []))


@lru_cache(maxsize=8)
def shipped_set(dataset: str) -> dict | None:
    """The record (``files``, ``sha256``) of the set shipped in the package for ``dataset``."""
    from cellbench.scoring.artifacts import packaged_artifacts

    folder = packaged_artifacts(dataset)
    if folder is None:
        return None
    names = set_files(folder)
    return set_record(hash_files(folder, names)) if names else None


def registered_sets(dataset: str) -> list[dict]:
    """Every registered set of ``dataset``: the shipped one first, then the published ones."""
    shipped = shipped_set(dataset)
    return ([shipped] if shipped else []) + published_sets(dataset)


def is_registered(dataset: str, files: dict[str, str]) -> bool:
    """True if every ``{path: sha256}`` of ``files`` is in one registered set of ``dataset``."""
    return any(
        all(entry["files"].get(k) == v for k, v in files.items())
        for entry in registered_sets(dataset)
    )


def registry_entry(folder: Path, url: str, archive_sha256: str) -> dict:
    """The ``registered.json`` entry of the set in ``folder`` published at ``url``."""
    from cellbench.artifacts.manifest import read_manifest

    doc = read_manifest(folder, verify=True)
    return {
        "url": url,
        "archive_sha256": archive_sha256,
        "dataset_index_sha256": doc["dataset_index_sha256"],
        "files": doc["files"],
        "sha256": doc["sha256"],
    }
