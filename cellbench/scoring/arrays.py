"""Per-image arrays of a scored image set: what a shard stores and the aggregate reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cellbench.errors import CellbenchError
from cellbench.io import atomic_path, loads_json


@dataclass
class ImageArrays:
    """Everything per image that the aggregate needs, in protocol order."""

    task_ids: list[str]
    paths: list[str]
    pixel_sha256: list[str]
    seg: np.ndarray
    inception: np.ndarray | None
    problems: list[dict] = field(default_factory=list)
    #: (N, P) morphology profiles (:mod:`cellbench.features.profile`), or None (not computed)
    profile: np.ndarray | None = None

    def save(self, path: Path) -> None:
        """Write the arrays to ``path`` (``.npz``) atomically."""
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            self.write_to(fh)

    def write_to(self, fh: BinaryIO) -> None:
        """Write the arrays as an ``.npz`` to an open binary file."""
        np.savez(
            fh,
            task_ids=np.array(self.task_ids, dtype=str),
            paths=np.array(self.paths, dtype=str),
            pixel_sha256=np.array(self.pixel_sha256, dtype=str),
            seg=self.seg,
            inception=self.inception
            if self.inception is not None
            else np.zeros((0, 2048), np.float32),
            has_inception=np.array(self.inception is not None),
            problems=np.array(json.dumps(self.problems)),
            profile=self.profile if self.profile is not None else np.zeros((0, 0)),
            has_profile=np.array(self.profile is not None),
        )

    @classmethod
    def load(cls, path: Path) -> ImageArrays:
        try:
            z = np.load(path, allow_pickle=False)
            has_inc = bool(z["has_inception"])
            has_prof = "has_profile" in z.files and bool(z["has_profile"])
            return cls(
                task_ids=[str(t) for t in z["task_ids"]],
                paths=[str(p) for p in z["paths"]],
                pixel_sha256=[str(p) for p in z["pixel_sha256"]],
                seg=z["seg"],
                inception=z["inception"] if has_inc else None,
                problems=loads_json(str(z["problems"])),
                profile=z["profile"] if has_prof else None,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise CellbenchError(
                f"unreadable shard arrays ({exc})", path=path, fix="re-run that shard"
            ) from None


def concat_arrays(parts: list[ImageArrays], order: dict[str, int]) -> ImageArrays:
    """The arrays of several shards as one, rows sorted by protocol position (``order``)."""
    rows = [
        (order[t], p, i, j)
        for i, a in enumerate(parts)
        for j, (t, p) in enumerate(zip(a.task_ids, a.paths, strict=True))
    ]
    rows.sort()
    pick = [(i, j) for _, _, i, j in rows]
    has_inc = all(a.inception is not None for a in parts)
    has_prof = bool(parts) and all(a.profile is not None for a in parts)
    return ImageArrays(
        task_ids=[parts[i].task_ids[j] for i, j in pick],
        paths=[parts[i].paths[j] for i, j in pick],
        pixel_sha256=[parts[i].pixel_sha256[j] for i, j in pick],
        seg=np.stack([parts[i].seg[j] for i, j in pick]) if pick else np.zeros((0, 6)),
        inception=(
            np.stack([parts[i].inception[j] for i, j in pick])
            if pick
            else np.zeros((0, 2048), np.float32)
        )
        if has_inc
        else None,
        problems=sorted(
            {(p["path"], p["problem"]): p for a in parts for p in a.problems}.values(),
            key=lambda p: (p["path"], p["problem"]),
        ),  # files no shard could place are reported by every shard: keep one report each
        profile=(
            np.stack([parts[i].profile[j] for i, j in pick])
            if pick
            else np.zeros((0, parts[0].profile.shape[1]))
        )
        if has_prof
        else None,
    )
