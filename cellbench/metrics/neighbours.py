"""Euclidean distances between feature sets, by blocks of rows (``docs/scoring.md``).

The set-level held-out metrics (:mod:`cellbench.metrics.prdc`, :mod:`cellbench.metrics.retrieval`)
compare every generated image with every real one. :func:`sq_dist_blocks` yields the squared
distances a block of rows at a time, so 5,120 x 5,120 distances never need to be held at once
(a block is ``BLOCK_ROWS`` rows: about 20 MB against 5,120 real images).

Squared distances are computed in float64 as ``|a|^2 + |b|^2 - 2 a.b`` (one matrix product per
block) and clipped at zero; a squared distance below ``ZERO_REL`` times ``|a|^2 + |b|^2``, which is
rounding error of that expansion, is set to exactly zero, so identical feature vectors (a copied
image) are at distance 0 from each other, as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: rows of the first set per block
BLOCK_ROWS = 512
#: squared distances below this fraction of |a|^2 + |b|^2 are rounding error: set to 0
ZERO_REL = 1e-12


def as_float64(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float64 (n, d) array."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an (n, d) feature array, got shape {x.shape}")
    return x


def sq_norms(x: np.ndarray) -> np.ndarray:
    """Row-wise squared norms of a float64 array."""
    return np.einsum("ij,ij->i", x, x)


def sq_dists(
    a: np.ndarray, b: np.ndarray, a_sq: np.ndarray | None = None, b_sq: np.ndarray | None = None
) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)) of float64 arrays (norms reused if given)."""
    a_sq = sq_norms(a) if a_sq is None else a_sq
    b_sq = sq_norms(b) if b_sq is None else b_sq
    scale = a_sq[:, None] + b_sq[None, :]
    d = scale - 2.0 * (a @ b.T)
    d[d < ZERO_REL * scale] = 0.0
    return d


def sq_dist_blocks(
    a: np.ndarray, b: np.ndarray, block: int | None = None
) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, D)`` for consecutive blocks of ``a``'s rows: D = squared distances a[rows] x b
    (``block`` rows at a time; default :data:`BLOCK_ROWS`)."""
    block = block or BLOCK_ROWS
    a, b = as_float64(a), as_float64(b)
    a_sq, b_sq = sq_norms(a), sq_norms(b)
    for start in range(0, len(a), block):
        rows = slice(start, min(start + block, len(a)))
        yield rows, sq_dists(a[rows], b, a_sq[rows], b_sq)


def kth_neighbour_sq_radius(x: np.ndarray, k: int, block: int | None = None) -> np.ndarray:
    """Squared distance from each row of ``x`` to its k-th nearest other row (self excluded;
    duplicates count as neighbours at distance 0). Needs more than k rows."""
    if len(x) <= k:
        raise ValueError(f"{len(x)} points have no {k}-th nearest neighbour")
    out = np.empty(len(x))
    for rows, d in sq_dist_blocks(x, x, block):
        # each row's own distance (0) is the smallest: the (k+1)-th smallest is the k-th other
        out[rows] = np.partition(d, k, axis=1)[:, k]
    return out
