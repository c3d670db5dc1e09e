"""The generation record: ``generation.json``, written by ``cellbench generate`` beside the images.

Every image folder ``cellbench generate`` writes holds one ``generation.json`` saying what made
the images and how: the generator (name, version, parameter count), the sha256 of the weights it
loaded, its sampler settings, the dataset, the protocol's sha256, the seed, the batch size, the
images per task and best-of-N. ``cellbench eval`` copies it into the result (``generation``,
``best_of_n``; docs/generators.md). The same record is what ``--resume`` compares against: a resumed
run must have the settings of the run that started the folder (:func:`check_resumable`).

A plain run writes the record before the first image with ``complete: false`` and rewrites it
with ``complete: true`` after the last; a best-of-N run writes it once, after every image
(:mod:`cellbench.best_of_n`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cellbench.errors import CellbenchError
from cellbench.io import atomic_write_text, is_within, read_json_object, sha256_file

#: the file name of the record (ignored by the image matching of :mod:`cellbench.images`)
GENERATION_FILE = "generation.json"
GENERATION_FORMAT = "cellbench-generation"
#: 2: every `cellbench generate` writes one (1: best-of-N runs only, without n_parameters,
#: sampler, dataset, protocol_sha256, n_per_task and complete)
GENERATION_FORMAT_VERSION = 2

#: the record keys a ``--resume`` run must share with the run that started the folder
RESUME_KEYS = (
    "model",
    "generator_version",
    "checkpoint_sha256",
    "sampler",
    "dataset",
    "protocol_sha256",
    "seed",
    "batch_size",
    "n_per_task",
    "best_of_n",
)


def generation_record(
    gen: Any,
    *,
    model: str,
    seed: int,
    batch_size: int,
    dataset: str | None = None,
    protocol: str | Path | None = None,
    n_per_task: int = 1,
    best_of_n: int = 1,
    selection_reward: str | None = None,
    complete: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``generation.json`` document of images made by ``gen`` (a loaded generator).

    The generator's version, parameter count, checkpoint (path and sha256, as its ``load`` found
    them) and :meth:`~cellbench.generators.Generator.sampler_settings` are read from ``gen``;
    ``protocol`` is hashed. ``selection_reward`` is kept only for ``best_of_n > 1``.
    """
    n_par = getattr(gen, "n_parameters", None)
    settings = getattr(gen, "sampler_settings", None)
    ckpt = getattr(gen, "checkpoint_path", None)
    return {
        "format": GENERATION_FORMAT,
        "format_version": GENERATION_FORMAT_VERSION,
        "model": model,
        "generator_version": str(getattr(gen, "version", "0")),
        "n_parameters": int(n_par()) if callable(n_par) else 0,
        "checkpoint": None if ckpt is None else str(ckpt),
        "checkpoint_sha256": getattr(gen, "checkpoint_sha256", None),
        "sampler": dict(settings()) if callable(settings) else {},
        "dataset": dataset,
        "protocol_sha256": None if protocol is None else sha256_file(protocol),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "n_per_task": int(n_per_task),
        "best_of_n": int(best_of_n),
        "selection_reward": selection_reward if best_of_n > 1 else None,
        "complete": bool(complete),
        **(extra or {}),
    }


def write_generation_record(folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as the folder's ``generation.json`` (atomically); returns its path."""
    path = Path(folder) / GENERATION_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_generation_record(folder: str | Path) -> dict[str, Any] | None:
    """The ``generation.json`` of an image folder, or None if it has none."""
    path = Path(folder) / GENERATION_FILE
    if path.is_symlink() and not is_within(path, folder):
        raise CellbenchError(
            "generation record is a symbolic link that leads outside the image folder",
            path=path,
            fix="copy the record into the image folder",
        )
    if not path.is_file():
        return None
    fix = "regenerate the images or delete the file"
    data = read_json_object(path, "generation record", fix)
    if data.get("format") != GENERATION_FORMAT:
        raise CellbenchError("not a cellbench generation record", path=path, fix=fix)
    n = data.get("best_of_n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CellbenchError(
            f"best_of_n must be a positive integer, got {n!r}", path=path, fix="regenerate"
        )
    return data


def check_resumable(folder: str | Path, record: dict[str, Any]) -> None:
    """Refuse ``--resume`` unless ``folder``'s record has this run's :data:`RESUME_KEYS`."""
    path = Path(folder) / GENERATION_FILE
    if not path.is_file():
        raise CellbenchError(
            "nothing to resume: no earlier `cellbench generate` run wrote this folder",
            path=folder,
            fix="drop --resume",
        )
    try:
        before = read_generation_record(folder)
    except CellbenchError as exc:
        raise CellbenchError(
            f"unreadable settings of the earlier run ({exc.message})",
            path=path,
            fix="drop --resume to generate every image again",
        ) from None
    assert before is not None
    changed = sorted(k for k in RESUME_KEYS if before.get(k) != record.get(k))
    if changed:
        raise CellbenchError(
            f"the earlier run in this folder used other settings ({', '.join(changed)})",
            path=folder,
            fix="repeat the earlier options, or drop --resume, or choose a new --out",
        )
