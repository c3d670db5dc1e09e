"""Features of image sets: a generator's image folder and the protocol's real target crops.

Both go through :meth:`cellbench.scoring.Scorer.features`, the same per-image path as every other
scorer of cellbench (``docs/scoring.md``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from cellbench.io import atomic_path, sha256_bytes
from cellbench.metrics.rewards import SUITE_VERSION
from cellbench.paths import cache_dir
from cellbench.protocol import protocol_sha256
from cellbench.scoring.arrays import ImageArrays
from cellbench.scoring.scorer import Scorer

if TYPE_CHECKING:
    from cellbench.data.bbbc021 import BBBC021Dataset

Progress = Callable[[str, int, int], None]
#: real crops read (and featurised) at a time; a multiple of the Inception batch, large enough to
#: keep a segmentation worker pool busy
REFERENCE_CHUNK = 1024


def _noop(phase: str, done: int, total: int) -> None:
    return None


def score_images(
    scorer: Scorer,
    images_dir: str | Path,
    protocol: pd.DataFrame,
    *,
    strict: bool,
    use_inception: bool,
    full_protocol: pd.DataFrame | None = None,
    progress: Progress = _noop,
) -> tuple[ImageArrays, dict]:
    """Match, check and featurise the images of ``protocol``'s tasks.

    For a shard, ``protocol`` holds the shard's tasks and ``full_protocol`` all of them, so files
    of other shards' tasks are not reported as strangers.
    """
    from cellbench.images import discover_images, load_images

    found = discover_images(images_dir, full_protocol if full_protocol is not None else protocol)
    if full_protocol is not None:  # a shard: keep its own tasks, leave the rest to other shards
        mine = set(protocol["task_id"])
        found.files = {t: v for t, v in found.files.items() if t in mine}
        found.missing = [t for t in found.missing if t in mine]
        found.problems = [p for p in found.problems if p.task_id is None or p.task_id in mine]
    loaded = load_images(
        found, strict=strict, on_progress=lambda d, t: progress("reading images", d, t)
    )
    imgs = loaded.images
    feats = scorer.features(imgs, on_progress=progress, use_inception=use_inception, profile=True)
    folder = Path(images_dir)
    arrays = ImageArrays(
        task_ids=loaded.task_ids,
        paths=[
            str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p) for p in loaded.paths
        ],
        pixel_sha256=[sha256_bytes(np.ascontiguousarray(im).tobytes()) for im in imgs],
        seg=feats.seg,
        inception=feats.inception,
        problems=[
            {"path": p.path, "task_id": p.task_id, "problem": p.problem} for p in loaded.problems
        ],
        profile=feats.profile,
    )
    info = {"layout": found.layout, "folder": str(images_dir)}
    return arrays, info


def reference_arrays(
    scorer: Scorer,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    *,
    use_inception: bool,
    targets_sha256: str | None = None,
    progress: Progress = _noop,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Features of the protocol's real target crops (read from ``ds``), cached in the user cache:
    (segmentation features, Inception features or None, morphology profiles), in protocol order.

    A new cache file is announced on stderr with its path and size.

    The cache key hashes the dataset index, the target crops' bytes (``targets_sha256``, from
    :mod:`cellbench.data.content`; computed here when None), the protocol, the segmenter identity,
    the morphology profile's version and the feature network identity, so a change to any of them
    computes the features again.
    """
    from cellbench.features.profile import PROFILE_VERSION

    if targets_sha256 is None:
        from cellbench.data.content import crop_file_sha256s, digest_of

        targets_sha256 = digest_of(crop_file_sha256s(ds, protocol["target_key"].astype(str)))
    ident = {
        "dataset_index": ds.index_sha256,
        "target_crops": targets_sha256,
        "protocol": protocol_sha256(protocol),
        "segmenter": scorer.backend.identity(),
        "profile": PROFILE_VERSION,
        "inception": None if not use_inception else scorer.inception.identity(),
        "suite": SUITE_VERSION,
    }
    keys = protocol["target_key"].tolist()
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / "reference-features" / f"{key}.npz"
    if path.is_file():
        from cellbench.ui import step

        try:
            with step("reading cached reference features"):
                z = np.load(path, allow_pickle=False)
                inc = z["inception"] if use_inception else None
                seg, prof = z["seg"], z["profile"]
            if len(seg) == len(keys) == len(prof):
                return seg, inc, prof
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed below
    seg = np.zeros((len(keys), len(scorer.feature_names)))
    prof = np.zeros((len(keys), len(scorer.profile_names)))
    inc = np.zeros((len(keys), 2048), np.float32) if use_inception else None
    for start in range(0, len(keys), REFERENCE_CHUNK):
        crops = ds.load_crops(keys[start : start + REFERENCE_CHUNK])
        feats = scorer.features(
            crops,
            use_inception=use_inception,
            profile=True,
            on_progress=lambda phase, d, t, s=start: progress(
                f"reference: {phase}", s + d, len(keys)
            ),
        )
        seg[start : start + len(crops)] = feats.seg
        prof[start : start + len(crops)] = feats.profile
        if inc is not None:
            inc[start : start + len(crops)] = feats.inception
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            seg=seg,
            profile=prof,
            inception=inc if inc is not None else np.zeros((0, 2048), np.float32),
        )
    from cellbench.ui import format_size, info

    info(
        f"cached the reference features of {len(keys)} real crop{'s' * (len(keys) != 1)}: {path} "
        f"({format_size(path.stat().st_size)}; `cellbench cache info|clear`)"
    )
    return seg, inc, prof


class ControlArrays(NamedTuple):
    """Features of the DMSO control crops of an evaluation, one row per distinct crop."""

    seg: np.ndarray
    inception: np.ndarray | None
    profile: np.ndarray
    #: the batch (plate) of each control crop
    batches: np.ndarray
    #: the SAMPLE_KEY of each control crop
    keys: np.ndarray


def control_arrays(
    scorer: Scorer,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    task_ids: np.ndarray | list[str],
    *,
    use_inception: bool,
    progress: Progress = _noop,
) -> ControlArrays:
    """Features of the real DMSO control crops of the tasks ``task_ids`` (one row per distinct
    control crop, in protocol order), through :func:`reference_arrays` and its cache (the features
    of all the protocol's controls are cached together)."""
    controls = protocol.drop_duplicates("control_key").reset_index(drop=True)
    as_targets = controls.assign(target_key=controls["control_key"])
    seg, inc, prof = reference_arrays(
        scorer,
        ds,
        as_targets,
        use_inception=use_inception,
        progress=lambda phase, d, t: progress(phase.replace("reference", "controls"), d, t),
    )
    wanted = set(protocol.loc[protocol["task_id"].isin(set(task_ids)), "control_key"])
    rows = controls["control_key"].isin(wanted).to_numpy()
    return ControlArrays(
        seg[rows],
        inc[rows] if inc is not None else None,
        prof[rows],
        controls["batch"].to_numpy().astype(str)[rows],
        controls["control_key"].to_numpy().astype(str)[rows],
    )
