"""Per-image arrays of a scored image set: what a shard stores and the aggregate reads."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
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
        """Read and check the arrays a shard wrote (:meth:`write_to`); refuse any other file.

        Checked: a readable ``.npz`` without pickles, every key of :meth:`write_to`, one row per
        task id in every array, float features that are all finite (segmentation features,
        Inception features and profiles are finite for every valid image) and a JSON list of
        problems. The widths a scorer expects are checked by :meth:`check_widths`.
        """

        def bad(why: str) -> CellbenchError:
            return CellbenchError(
                f"unreadable shard arrays ({why})", path=path, fix="re-run that shard"
            )

        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise bad("not an .npz file")
            with z:
                missing = [k for k in _KEYS if k not in z.files]
                if missing:
                    raise bad(f"no {missing[0]!r} array")
                arrs = {k: z[k] for k in z.files if k in (*_KEYS, *_OPTIONAL)}
        except CellbenchError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise bad(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        arrs.setdefault("has_profile", np.array(False))  # arrays of a cellbench without profiles
        text = {}
        for key in ("task_ids", "paths", "pixel_sha256"):
            a = arrs[key]
            if a.ndim != 1 or a.dtype.kind != "U":
                raise bad(f"{key!r} is not a list of strings")
            text[key] = [str(t) for t in a]
        n = len(text["task_ids"])
        if len(text["paths"]) != n or len(text["pixel_sha256"]) != n:
            raise bad("'task_ids', 'paths' and 'pixel_sha256' differ in length")
        flags = {}
        for key in ("has_inception", "has_profile"):
            if arrs[key].shape != () or arrs[key].dtype != bool:
                raise bad(f"{key!r} is not true or false")
            flags[key] = bool(arrs[key])
        seg = _features(arrs["seg"], "seg", n, bad)
        inception = (
            _features(arrs["inception"], "inception", n, bad) if flags["has_inception"] else None
        )
        profile = None
        if flags["has_profile"]:
            if "profile" not in arrs:
                raise bad("no 'profile' array")
            profile = _features(arrs["profile"], "profile", n, bad)
        if arrs["problems"].shape != () or arrs["problems"].dtype.kind != "U":
            raise bad("'problems' is not a JSON text")
        try:
            problems = loads_json(str(arrs["problems"]))
        except ValueError as exc:
            raise bad(f"'problems': {exc}") from None
        if not isinstance(problems, list) or not all(
            isinstance(p, dict)
            and isinstance(p.get("path"), str)
            and isinstance(p.get("problem"), str)
            and isinstance(p.get("task_id"), str | None)
            for p in problems
        ):
            raise bad("'problems' is not a list of {path, task_id, problem} objects")
        return cls(
            task_ids=text["task_ids"],
            paths=text["paths"],
            pixel_sha256=text["pixel_sha256"],
            seg=seg,
            inception=inception,
            problems=problems,
            profile=profile,
        )

    def check_widths(self, path: Path, *, seg: int, profile: int) -> None:
        """Refuse arrays whose feature widths are not ``seg`` and ``profile`` (the scorer's)."""
        for name, arr, want in (("seg", self.seg, seg), ("profile", self.profile, profile)):
            if arr is not None and arr.shape[1] != want:
                raise CellbenchError(
                    f"unreadable shard arrays ({name!r} has {arr.shape[1]} columns, "
                    f"the segmenter gives {want})",
                    path=path,
                    fix="re-run that shard",
                )


#: the arrays :meth:`ImageArrays.write_to` writes
_KEYS = (
    "task_ids",
    "paths",
    "pixel_sha256",
    "seg",
    "inception",
    "has_inception",
    "problems",
)
#: written by a cellbench with morphology profiles
_OPTIONAL = ("profile", "has_profile")


def _features(
    arr: np.ndarray, key: str, n: int, bad: Callable[[str], CellbenchError]
) -> np.ndarray:
    """``arr`` if it is an (n, F) array of finite floats, else the error ``bad`` makes."""
    if arr.ndim != 2 or arr.dtype.kind != "f" or len(arr) != n:
        raise bad(f"{key!r} is not a ({n}, F) float array (got {arr.dtype} {arr.shape})")
    if not np.isfinite(arr).all():
        raise bad(f"{key!r} holds NaN or infinite values")
    return arr


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
