"""What the memorisation metrics know of the training split: every crop's pixel digest and the
Inception features of a seeded sample of its crops, cached in the user cache.

The training split is the dataset's whole ``train`` split (controls included): everything any
generator scored by cellbench may have seen. Pixel digests are taken over every crop (a
pixel-identical copy of any training crop is found); Inception features over at most
:data:`TRAIN_FEATURE_CAP` crops drawn with a fixed seed, so the one-time cost stays bounded on real
BBBC021. Real test crops are compared with the same sample, so the near-copy rule of
:mod:`cellbench.metrics.memorisation` stays fair whatever the sample size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellbench.io import atomic_path, sha256_bytes
from cellbench.metrics.rewards import SUITE_VERSION
from cellbench.paths import cache_dir
from cellbench.scoring.scorer import Scorer

if TYPE_CHECKING:
    from cellbench.data.bbbc021 import BBBC021Dataset

#: the training split the memorisation metrics compare with
TRAIN_SPLIT = "train"
#: at most this many training crops get Inception features (seeded sample)
TRAIN_FEATURE_CAP = 10_000
#: crops read at a time
_CHUNK = 1024

Progress = Callable[[str, int, int], None]


def _noop(phase: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class TrainingArrays:
    """Pixel digests of every training crop; Inception features of a sample (or None)."""

    digests: frozenset[str]
    inception: np.ndarray | None
    n_crops: int


def sample_rows(n: int, cap: int = TRAIN_FEATURE_CAP, seed: int = 0) -> np.ndarray:
    """Sorted row indices of the seeded sample (all rows when ``n <= cap``)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def training_arrays(
    scorer: Scorer,
    ds: BBBC021Dataset,
    *,
    use_inception: bool,
    progress: Progress = _noop,
) -> TrainingArrays:
    """The training split's digests (and sampled features), from the cache or computed once.

    The cache key hashes the dataset index, the training crops' file digests, the feature network
    identity and the sample rule, so a change to any of them computes them again. A new cache file
    is announced on stderr with its path and size.
    """
    from cellbench.data.content import crop_file_sha256s, digest_of

    keys = ds.split(TRAIN_SPLIT)["SAMPLE_KEY"].astype(str).tolist()
    ident = {
        "dataset_index": ds.index_sha256,
        "train_crops": digest_of(crop_file_sha256s(ds, keys)),
        "inception": scorer.inception.identity() if use_inception and scorer.inception else None,
        "cap": TRAIN_FEATURE_CAP,
        "suite": SUITE_VERSION,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / "training-features" / f"{key}.npz"
    want_inc = ident["inception"] is not None
    if path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            digests = [str(d) for d in z["digests"]]
            inc = z["inception"] if want_inc else None
            if len(digests) == len(keys) and (
                inc is None or len(inc) == len(sample_rows(len(keys)))
            ):
                return TrainingArrays(frozenset(digests), inc, len(keys))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed below
    sample = set(sample_rows(len(keys)).tolist())
    digests: list[str] = []
    feats: list[np.ndarray] = []
    for start in range(0, len(keys), _CHUNK):
        crops = ds.load_crops(keys[start : start + _CHUNK])
        digests += [sha256_bytes(np.ascontiguousarray(c).tobytes()) for c in crops]
        rows = [i for i in range(len(crops)) if start + i in sample]
        if want_inc and rows:
            feats.append(scorer.inception_features(crops[rows]))
        progress("training split", start + len(crops), len(keys))
    inc = np.concatenate(feats) if want_inc and feats else None
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            digests=np.array(digests, dtype=str),
            inception=inc if inc is not None else np.zeros((0, 2048), np.float32),
        )
    from cellbench.ui import format_size, info

    info(
        f"cached the training split's digests and features ({len(keys)} crops): {path} "
        f"({format_size(path.stat().st_size)}; `cellbench cache info|clear`)"
    )
    return TrainingArrays(frozenset(digests), inc, len(keys))


#: the :class:`~cellbench.metrics.registry.SetInputs` fields :func:`copy_inputs` fills
COPY_FIELDS = (
    "control_digests",
    "gen_digests",
    "gen_control",
    "real_control",
    "train_inception",
    "train_digests",
)


def copy_inputs(
    scorer: Scorer,
    ds: BBBC021Dataset,
    protocol: pd.DataFrame,
    task_ids: np.ndarray,
    gen_digests: list[str],
    evaluated: np.ndarray,
    control_keys: np.ndarray | None,
    *,
    needs: set[str],
    use_inception: bool,
    progress: Progress = _noop,
) -> dict[str, Any]:
    """The :data:`COPY_FIELDS` of :class:`~cellbench.metrics.registry.SetInputs` that the
    metrics' ``needs`` name: which control row (of ``control_keys``, the rows of
    :func:`cellbench.scoring.images.control_arrays`) each generated image (and each real target on
    the ``evaluated`` side) was given as input, the controls' and training crops' pixel digests
    and the training split's sampled features. Fields nobody needs stay None."""
    out: dict[str, Any] = dict.fromkeys(COPY_FIELDS)
    if not needs & set(COPY_FIELDS) or control_keys is None:
        return out
    keys = [str(k) for k in control_keys]
    row = {k: i for i, k in enumerate(keys)}
    control_of = dict(
        zip(protocol["task_id"].astype(str), protocol["control_key"].astype(str), strict=True)
    )
    out["gen_digests"] = np.array(gen_digests, dtype=str)
    out["gen_control"] = np.array([row.get(control_of[str(t)], -1) for t in task_ids], dtype=int)
    out["real_control"] = np.array(
        [row.get(str(k), -1) for k in protocol["control_key"].to_numpy()[evaluated]], dtype=int
    )
    out["control_digests"] = np.array(
        [sha256_bytes(np.ascontiguousarray(c).tobytes()) for c in ds.load_crops(keys)], dtype=str
    )
    if needs & {"train_inception", "train_digests"}:
        train = training_arrays(scorer, ds, use_inception=use_inception, progress=progress)
        out["train_digests"] = train.digests
        out["train_inception"] = train.inception
    return out
