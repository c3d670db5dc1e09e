"""Copies of training images and of the input: the memorisation metrics (docs/scoring.md,
"Held-out metrics").

A generator that returns training crops, or hands back its control image, can score well on
distances to the real set without predicting anything. Two checks tell it apart from a model:

* **Training copies.** Each generated image's Euclidean distance to its nearest training crop
  in Inception space is compared with the same distance for the real test crops (unseen by any
  generator). ``copy_rate`` is the fraction of generated images nearer to a training crop than
  the :data:`QUANTILE` quantile of the real crops' distances; real unseen crops give about
  :data:`QUANTILE` by construction, a model that memorised gives much more. Pixel-identical
  copies are counted separately from the images' pixel digests (``exact_train_copies``).
* **Input copies.** Each generated image's distance to its own task's control crop is compared
  with the real target's distance to the same control (``input_copy_rate``, same quantile
  rule), and pixel-identical returns of the control are counted (``exact_input_copies``).

A result is flagged when either rate passes :data:`FLAG_RATE` (ten times what unseen real crops
give) or when more than :data:`FLAG_EXACT` of its images are pixel copies.

Everything here works on arrays (features ``(N, d)``, digests as strings) and needs only numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cellbench.metrics.registry import SetInputs, SetValue

__all__ = [
    "FLAG_EXACT",
    "FLAG_RATE",
    "QUANTILE",
    "Memorisation",
    "memorisation_metrics",
    "memorisation_summary",
    "nearest_distances",
    "paired_distances",
]

#: the quantile of the real crops' distances below which an image counts as a near copy
QUANTILE = 0.01
#: a rate above this (ten times :data:`QUANTILE`) flags the result
FLAG_RATE = 0.10
#: a fraction of pixel-identical copies above this flags the result
FLAG_EXACT = 0.01
#: how many distance entries one block of :func:`nearest_distances` holds (float64: 128 MiB)
_BLOCK_ELEMENTS = 1 << 24


def _rows(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, d), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def nearest_distances(query: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``query`` to its nearest row of ``ref``.

    Computed in float64 as ``|q|^2 + |r|^2 - 2 q.r`` in blocks of query rows (memory stays under
    about 128 MiB whatever the sizes); a pixel copy's features give 0 up to rounding (about 1e-6
    for Inception features).
    """
    q, r = _rows(query, "query features"), _rows(ref, "reference features")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"feature widths differ: {q.shape[1]} vs {r.shape[1]}")
    if len(r) == 0:
        raise ValueError("no reference features to compare with")
    out = np.empty(len(q))
    r2 = np.einsum("ij,ij->i", r, r)
    step = max(1, _BLOCK_ELEMENTS // len(r))
    for start in range(0, len(q), step):
        block = q[start : start + step]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + r2[None, :] - 2.0 * (block @ r.T)
        out[start : start + step] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def paired_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance between row i of ``a`` and row i of ``b``."""
    x, y = _rows(a, "features"), _rows(b, "paired features")
    if x.shape != y.shape:
        raise ValueError(f"paired features differ in shape: {x.shape} vs {y.shape}")
    return np.sqrt(((x - y) ** 2).sum(axis=1))


@dataclass(frozen=True)
class Memorisation:
    """The memorisation figures of one result (see the module docstring).

    Attributes:
        copy_rate: fraction of generated images nearer a training crop than the real crops'
            :data:`QUANTILE` quantile (None without features).
        input_copy_rate: fraction of generated images nearer their own control crop than the
            real targets' quantile (None without paired control features).
        exact_train_copies: fraction of generated images pixel-identical to a training crop
            (None without digests).
        exact_input_copies: fraction of generated images pixel-identical to their control crop
            (None without digests).
        median_train_distance: median nearest-training distance of the generated images.
        real_median_train_distance: the same for the real test crops.
        threshold: the real crops' quantile used by ``copy_rate``.
        input_threshold: the real targets' quantile used by ``input_copy_rate``.
        n_gen, n_real, n_train: sizes of the three sets.
        flags: ``"copies training images"`` and/or ``"copies its input"``, empty when neither.
    """

    copy_rate: float | None
    input_copy_rate: float | None
    exact_train_copies: float | None
    exact_input_copies: float | None
    median_train_distance: float | None
    real_median_train_distance: float | None
    threshold: float | None
    input_threshold: float | None
    n_gen: int
    n_real: int
    n_train: int
    flags: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


Pairs = tuple[np.ndarray, np.ndarray]


def memorisation_summary(
    *,
    gen_features: np.ndarray | None = None,
    real_features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    gen_pairs: Pairs | None = None,
    real_pairs: Pairs | None = None,
    gen_digests: Sequence[str] | None = None,
    input_digests: Sequence[str | None] | None = None,
    train_digests: Sequence[str] | frozenset[str] | set[str] | None = None,
) -> Memorisation:
    """The memorisation figures of a generated set.

    Args:
        gen_features: Inception features of the generated images.
        real_features: features of the real test targets (unseen by any generator).
        train_features: features of the training crops.
        gen_pairs: (features of generated images, features of each one's own control crop),
            row-aligned: the images whose control is known.
        real_pairs: the same for real targets and their controls.
        gen_digests: pixel digest of each generated image.
        input_digests: pixel digest of each generated image's own control crop (None where
            unknown), aligned with ``gen_digests``.
        train_digests: pixel digests of the training crops.
    """
    n = len(gen_features) if gen_features is not None else len(gen_digests or ())
    exact_train = exact_input = None
    if gen_digests is not None and train_digests is not None:
        train_set = set(train_digests)
        exact_train = float(np.mean([d in train_set for d in gen_digests])) if n else 0.0
    if gen_digests is not None and input_digests is not None:
        if len(input_digests) != len(gen_digests):
            raise ValueError("one input digest per generated image is needed")
        same = [c is not None and g == c for g, c in zip(gen_digests, input_digests, strict=True)]
        exact_input = float(np.mean(same)) if n else 0.0
    copy_rate = input_rate = med_gen = med_real = thr = in_thr = None
    if gen_features is not None and n:
        if real_features is None or train_features is None:
            raise ValueError("real and training features are needed with generated features")
        d_gen = nearest_distances(gen_features, train_features)
        d_real = nearest_distances(real_features, train_features)
        thr = float(np.quantile(d_real, QUANTILE))
        copy_rate = float(np.mean(d_gen <= thr))
        med_gen, med_real = float(np.median(d_gen)), float(np.median(d_real))
    if (
        gen_pairs is not None
        and real_pairs is not None
        and len(gen_pairs[0])
        and len(real_pairs[0])
    ):
        p_gen = paired_distances(*gen_pairs)
        p_real = paired_distances(*real_pairs)
        in_thr = float(np.quantile(p_real, QUANTILE))
        input_rate = float(np.mean(p_gen <= in_thr))
    flags = []
    if (exact_train or 0.0) > FLAG_EXACT or (copy_rate is not None and copy_rate > FLAG_RATE):
        flags.append("copies training images")
    if (exact_input or 0.0) > FLAG_EXACT or (input_rate is not None and input_rate > FLAG_RATE):
        flags.append("copies its input")
    return Memorisation(
        copy_rate=copy_rate,
        input_copy_rate=input_rate,
        exact_train_copies=exact_train,
        exact_input_copies=exact_input,
        median_train_distance=med_gen,
        real_median_train_distance=med_real,
        threshold=thr,
        input_threshold=in_thr,
        n_gen=n,
        n_real=0 if real_features is None else len(real_features),
        n_train=0 if train_features is None else len(train_features),
        flags=tuple(flags),
    )


def memorisation_metrics(inputs: SetInputs) -> dict[str, SetValue]:
    """The ``kind="set_fn"`` entries ``memorisation`` (the training near-copy rate) and
    ``input_copies`` (the input near-copy rate), from one :func:`memorisation_summary`; both carry
    the whole summary (exact copies, flags) as their detail."""
    from cellbench.metrics.registry import SetValue

    def pairs(feats: np.ndarray | None, rows: np.ndarray | None) -> Pairs | None:
        ctrl = inputs.control_inception
        if feats is None or rows is None or ctrl is None:
            return None
        ok = np.asarray(rows) >= 0
        return feats[ok], ctrl[np.asarray(rows)[ok]]

    input_digests = None
    if inputs.gen_control is not None and inputs.control_digests is not None:
        input_digests = [
            str(inputs.control_digests[r]) if r >= 0 else None for r in inputs.gen_control
        ]
    m = memorisation_summary(
        gen_features=inputs.gen_inception,
        real_features=inputs.real_inception,
        train_features=inputs.train_inception,
        gen_pairs=pairs(inputs.gen_inception, inputs.gen_control),
        real_pairs=pairs(inputs.real_inception, inputs.real_control),
        gen_digests=None if inputs.gen_digests is None else [str(d) for d in inputs.gen_digests],
        input_digests=input_digests,
        train_digests=inputs.train_digests,
    )
    detail = m.to_dict()
    nan = float("nan")
    return {
        "memorisation": SetValue(nan if m.copy_rate is None else m.copy_rate, detail),
        "input_copies": SetValue(nan if m.input_copy_rate is None else m.input_copy_rate, detail),
    }
