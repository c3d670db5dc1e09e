"""FID and KID on Inception features, overall and per compound, plus the split-half real floor.

Everything here works on feature arrays (float, ``(N, d)``; d = 2048 for the FID network, see
:mod:`cellbench.features.inception`) and needs only numpy and scipy.

* :class:`GaussianStats` holds sufficient statistics in float64 (count, sum, sum of outer
  products), so shards merge exactly and the result does not depend on batch size.
* :func:`frechet_distance` is the FID between two Gaussians, computed with symmetric eigen
  decompositions (see its docstring); :func:`fid_from_features` the FID of two feature sets.
* :func:`kid_from_features` is the KID of torch-fidelity/torchmetrics: unbiased MMD^2 with the
  kernel ``(x.y / d + 1)^3``, averaged over ``n_subsets`` random subsets (mean, population std).
* :func:`fid_kid_overall`, :func:`fid_kid_per_compound` and :func:`fid_kid_summary` give FID_o,
  KID_o, FID_c and KID_c (docs/scoring.md); FID_c and KID_c are means over compounds of per-compound
  values (each compound's own KID, not one KID accumulated over all compounds).
* :func:`split_half_floor` is the real reference row (docs/scoring.md): each compound's real features
  split at random into two disjoint halves, one half scored against the other.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FID_C_MIN_IMAGES",
    "KID_MAX_SUBSET_SIZE",
    "SET_BOOTSTRAP",
    "CompoundScores",
    "FidKid",
    "FidKidSummary",
    "GaussianStats",
    "SetInterval",
    "fid_from_features",
    "fid_influence",
    "fid_kid_overall",
    "fid_kid_per_compound",
    "fid_kid_summary",
    "frechet_distance",
    "kid_bootstrap_deviations",
    "kid_from_features",
    "kid_subset_size",
    "overall_with_intervals",
    "split_half_floor",
    "split_half_indices",
]

#: FID_c warns when it averages compounds with fewer images a side than this (docs/scoring.md,
#: measured by bench/studies/per_compound_small_n.py, docs/benchmarks.md)
FID_C_MIN_IMAGES = 30
#: KID subset size cap (docs/scoring.md: subsets of min(100, smallest set)).
KID_MAX_SUBSET_SIZE = 100
_EPS = np.finfo(np.float64).eps


def _as_features(x: Any, name: str = "features") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, d), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


# ------------------------------------------------------------------------------------------------
# Sufficient statistics


class GaussianStats:
    """Mean and covariance of features from float64 sufficient statistics.

    ``n``, ``sum`` (d,) and ``sum_outer`` (d, d) are plain sums, so :meth:`update` in any batch
    sizes and :meth:`merge` of shards give the same statistics up to float64 rounding of the
    additions. ``cov`` is unbiased (divides by n - 1), as in the standard FID.

    Args:
        dim: feature dimension; taken from the first update if not given.
    """

    def __init__(self, dim: int | None = None):
        self.n = 0
        self.dim: int | None = None
        self.sum: np.ndarray | None = None
        self.sum_outer: np.ndarray | None = None
        if dim is not None:
            self._allocate(dim)

    def _allocate(self, dim: int) -> None:
        self.dim = int(dim)
        self.sum = np.zeros(self.dim)
        self.sum_outer = np.zeros((self.dim, self.dim))

    @classmethod
    def from_features(cls, features: Any) -> GaussianStats:
        """Statistics of one feature array ``(N, d)``."""
        arr = _as_features(features)
        return cls(arr.shape[1]).update(arr)

    def update(self, features: Any) -> GaussianStats:
        """Add a batch ``(B, d)`` of features (B may be 0); returns self."""
        arr = _as_features(features)
        if self.dim is None:
            self._allocate(arr.shape[1])
        if arr.shape[1] != self.dim:
            raise ValueError(f"feature dimension {arr.shape[1]} != {self.dim}")
        assert self.sum is not None and self.sum_outer is not None
        self.n += arr.shape[0]
        self.sum += arr.sum(axis=0)
        self.sum_outer += arr.T @ arr
        return self

    def merge(self, other: GaussianStats) -> GaussianStats:
        """A new object holding the statistics of both (shards computed separately)."""
        if self.dim is None:
            return other.copy()
        if other.dim is None:
            return self.copy()
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dimension {other.dim} into {self.dim}")
        out = self.copy()
        assert out.sum is not None and out.sum_outer is not None
        out.n += other.n
        out.sum += other.sum
        out.sum_outer += other.sum_outer
        return out

    def copy(self) -> GaussianStats:
        """An independent copy."""
        out = GaussianStats(self.dim)
        out.n = self.n
        if self.sum is not None and self.sum_outer is not None:
            out.sum = self.sum.copy()
            out.sum_outer = self.sum_outer.copy()
        return out

    @property
    def mean(self) -> np.ndarray:
        """Mean feature vector (needs n >= 1)."""
        if self.n < 1 or self.sum is None:
            raise ValueError("mean of an empty GaussianStats")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance ``(S - n mu mu^T) / (n - 1)`` (needs n >= 2), exactly symmetric."""
        if self.n < 2 or self.sum_outer is None:
            raise ValueError(f"covariance needs at least 2 samples, got {self.n}")
        mu = self.mean
        cov = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (cov + cov.T) / 2

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to save (e.g. cached real statistics): ``n``, ``sum``, ``sum_outer``."""
        if self.sum is None or self.sum_outer is None:
            raise ValueError("empty GaussianStats has no state")
        return {"n": np.array(self.n), "sum": self.sum.copy(), "sum_outer": self.sum_outer.copy()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray]) -> GaussianStats:
        """Inverse of :meth:`state_dict`."""
        out = cls(int(np.asarray(state["sum"]).shape[0]))
        out.n = int(state["n"])
        out.sum = np.array(state["sum"], dtype=np.float64)
        out.sum_outer = np.array(state["sum_outer"], dtype=np.float64)
        return out


# ------------------------------------------------------------------------------------------------
# FID


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; eigenvalues below rounding level are set to 0."""
    w, v = np.linalg.eigh(mat)
    w = np.where(w > _rounding_floor(w, mat.shape[0]), w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def _rounding_floor(eigenvalues: np.ndarray, dim: int) -> float:
    """Eigenvalues below ``d * eps * max|w|`` cannot be told from 0 in float64."""
    return float(dim * _EPS * np.abs(eigenvalues).max(initial=0.0))


def _trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr((cov1 cov2)^(1/2))`` via ``sum sqrt(eig(s1 cov2 s1))`` with ``s1 = cov1^(1/2)``."""
    s1 = _psd_sqrt(cov1)
    m = s1 @ cov2 @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    w = np.where(w > _rounding_floor(w, m.shape[0]), w, 0.0)
    return float(np.sqrt(w).sum())


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` between two Gaussians.

    ``tr((C1 C2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``C1^(1/2) C2 C1^(1/2)`` (same eigenvalues as ``C1 C2``), using
    :func:`numpy.linalg.eigh`, instead of ``scipy.linalg.sqrtm(C1 @ C2)``: there are no complex
    parts to discard, no failure on singular covariances (n < d makes them rank n - 1), and it is
    ~5x faster for d = 2048. Eigenvalues below ``d * eps * max`` (rounding noise, which the square
    root would turn into a spurious positive sum of order ``sqrt(eps)`` per direction) are set to
    0. On rank-deficient 2048-d covariances this agrees with the exact low-rank formula to ~1e-13
    relative, where ``sqrtm`` and torchmetrics' ``eigvals(C1 @ C2)`` are off by ~1e-7 relative.

    Returns:
        The distance as a float (can be slightly negative, ~1e-12, for identical inputs).
    """
    mu1 = np.asarray(mu1, dtype=np.float64)
    mu2 = np.asarray(mu2, dtype=np.float64)
    c1 = np.asarray(cov1, dtype=np.float64)
    c2 = np.asarray(cov2, dtype=np.float64)
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be 1-D of equal shape, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {c1.shape} and {c2.shape}")
    c1 = (c1 + c1.T) / 2
    c2 = (c2 + c2.T) / 2
    diff = mu1 - mu2
    tr_sqrt = _trace_sqrt_product(c1, c2)
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)


def fid_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """FID between two :class:`GaussianStats`."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def fid_from_features(a: Any, b: Any) -> float:
    """FID between two feature sets ``(n1, d)`` and ``(n2, d)`` (each n >= 2).

    When both sets are no larger than d (the usual per-compound case) the exact low-rank form is
    used: with centred, ``1/sqrt(n - 1)``-scaled features A and B, ``C1 = A^T A``,
    ``C2 = B^T B`` and ``tr((C1 C2)^(1/2))`` is the sum of singular values of the small matrix
    ``A B^T``; otherwise :func:`frechet_distance` of the means and covariances. Both agree to
    rounding (~1e-12 relative).
    """
    x = _as_features(a, "a")
    y = _as_features(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    d = x.shape[1]
    if max(len(x), len(y)) > d:
        return frechet_distance(
            x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
        )
    mx, my = x.mean(0), y.mean(0)
    xa = (x - mx) / np.sqrt(len(x) - 1)
    ya = (y - my) / np.sqrt(len(y) - 1)
    diff = mx - my
    nuclear = np.linalg.svd(xa @ ya.T, compute_uv=False).sum()
    return float(diff @ diff + np.sum(xa * xa) + np.sum(ya * ya) - 2.0 * nuclear)


# ------------------------------------------------------------------------------------------------
# KID


def kid_subset_size(n_a: int, n_b: int, max_size: int = KID_MAX_SUBSET_SIZE) -> int:
    """Subset size ``min(max_size, n_a, n_b)`` (docs/scoring.md)."""
    return int(min(max_size, n_a, n_b))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with kernel ``(x.y / d + 1)^3`` (torch-fidelity/torchmetrics ``poly_mmd``)."""
    m = x.shape[0]
    gamma = 1.0 / x.shape[1]
    k_xx = (x @ x.T * gamma + 1.0) ** 3
    k_yy = (y @ y.T * gamma + 1.0) ** 3
    k_xy = (x @ y.T * gamma + 1.0) ** 3
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    a: Any, b: Any, subset_size: int | None = None, n_subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased polynomial-kernel MMD^2 averaged over random subsets.

    For each of ``n_subsets`` subsets, ``subset_size`` rows of ``a`` and then of ``b`` are drawn
    without replacement by ``numpy.random.default_rng(seed).choice(n, subset_size,
    replace=False)`` (one generator for all draws, in that order), as torch-fidelity and
    torchmetrics do with their own generators.

    Args:
        a, b: feature sets ``(n_a, d)``, ``(n_b, d)``.
        subset_size: rows per subset; default :func:`kid_subset_size` (min(100, n_a, n_b)).
        n_subsets: number of subsets.
        seed: seed of the subset draws.

    Returns:
        ``(mean, std)`` over subsets (population std, ddof 0, as torch-fidelity/torchmetrics).
    """
    x = _as_features(a, "a")
    y = _as_features(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    m = kid_subset_size(len(x), len(y)) if subset_size is None else int(subset_size)
    if m < 2 or m > min(len(x), len(y)):
        raise ValueError(
            f"KID subset size must be in [2, min(n_a, n_b)] = [2, {min(len(x), len(y))}], got {m}"
        )
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        ia = rng.choice(len(x), m, replace=False)
        ib = rng.choice(len(y), m, replace=False)
        values[i] = _poly_mmd2(x[ia], y[ib])
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------------------------------
# Bootstrap intervals of FID_o and KID_o (over generated images; the real set is held fixed)


def fid_influence(gen: Any, real: Any) -> tuple[float, np.ndarray]:
    """FID of ``gen`` against ``real`` and each generated image's influence on it.

    With the real set fixed, FID is a smooth function of the generated images' empirical
    distribution; its first-order expansion around that distribution is
    ``FID(resampled) ~ FID + mean over the resample of IF``, with

    ``IF_i = 2 (mu_g - mu_r).u_i + k |u_i|^2 - tr C_g - k u_i^T A u_i + tr M^(1/2)``,

    ``u_i = x_i - mu_g``, ``k = n / (n - 1)``, ``M = S C_g S``, ``S = C_r^(1/2)`` and
    ``A = S M^(-1/2) S`` (the Gaussian optimal-transport map from the generated to the real
    distribution; eigenvalues of M at rounding level are left out as in :func:`frechet_distance`).
    The influence values have mean 0. Costs two symmetric eigen decompositions, as one FID does,
    where an exact bootstrap needs one per replicate: of d x d matrices, or, when neither set has
    more than d images (every protocol up to 2,048 tasks), one singular value decomposition of an
    n x m matrix instead (:func:`_influence_terms_low_rank`), equal to rounding (tested) and, for
    d = 2048, 45 times faster at 420 images a side, 6 times at 1,024 (``bench/perf/fid_influence_speed.py``, docs/benchmarks.md).

    Returns:
        ``(fid, influence)`` with ``influence`` of shape ``(n_gen,)``.
    """
    x = _as_features(gen, "gen")
    y = _as_features(real, "real")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    n = len(x)
    mu_g, mu_r = x.mean(0), y.mean(0)
    u = x - mu_g
    if max(n, len(y)) <= x.shape[1]:
        tr_g, tr_r, root, quad = _influence_terms_low_rank(u, y - mu_r)
    else:
        tr_g, tr_r, root, quad = _influence_terms_full(u, y)
    delta = mu_g - mu_r
    fid = float(delta @ delta + tr_g + tr_r - 2.0 * root.sum())
    k = n / (n - 1)
    influence = 2.0 * (u @ delta) + k * np.einsum("ij,ij->i", u, u) - tr_g - k * quad + root.sum()
    return fid, influence - influence.mean()


def _influence_terms_full(
    u: np.ndarray, y: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(tr C_g, tr C_r, sqrt of M's kept eigenvalues, u_i^T A u_i)`` of :func:`fid_influence`
    (``u``: the centred generated features) through d x d eigen decompositions."""
    n, d = u.shape
    c_g = u.T @ u / (n - 1)
    c_r = np.cov(y, rowvar=False).reshape(d, d)
    s_r = _psd_sqrt((c_r + c_r.T) / 2)
    m = s_r @ c_g @ s_r
    w, v = np.linalg.eigh((m + m.T) / 2)
    keep = w > _rounding_floor(w, m.shape[0])
    root = np.sqrt(w[keep])
    z = u @ (s_r @ v[:, keep])  # (n, k): u_i in M's eigenbasis, through S
    return float(np.trace(c_g)), float(np.trace(c_r)), root, (z * z) @ (1.0 / root)


def _influence_terms_low_rank(
    u: np.ndarray, yc: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """:func:`_influence_terms_full` for n, m <= d, from the n x m matrix whose singular values
    :func:`fid_from_features` sums (``yc``: the centred real features).

    With ``X = u / sqrt(n - 1)`` and ``Y = yc / sqrt(m - 1)``, ``C_g = X^T X``, ``C_r = Y^T Y``
    and ``M = B^T B`` with ``B = u S / sqrt(n - 1) = X S``; M's non-zero eigenvalues are those of
    ``B B^T = X C_r X^T = (X Y^T)(X Y^T)^T``. With ``X Y^T = P diag(s) Q^T``, they are ``s^2``,
    M's eigenvectors ``B^T p_j / s_j``, and ``u_i^T A u_i = (n - 1) sum_j P_ij^2 s_j``.
    """
    n = len(u)
    x = u / np.sqrt(n - 1)
    y = yc / np.sqrt(len(yc) - 1)
    p, s, _ = np.linalg.svd(x @ y.T, full_matrices=False)
    keep = s * s > _rounding_floor(s * s, n)  # M's eigenvalues at rounding level, as above
    root = s[keep]
    quad = (n - 1) * (p[:, keep] ** 2) @ root
    return float(np.sum(x * x)), float(np.sum(y * y)), root, quad


def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's polynomial kernel matrix, ``(x.y / d + 1)^3`` for every row pair of ``x`` and ``y``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid_bootstrap_deviations(
    gen: Any, real: Any, counts: np.ndarray, block: int = 512
) -> np.ndarray:
    """Exact bootstrap replicates of the complete unbiased MMD^2, minus its full-sample value.

    The generated images are resampled (``counts``, ``(n_boot, n_gen)`` from
    :func:`cellbench.metrics.bootstrap.bootstrap_counts`), the real ones are fixed, so the real
    term cancels. Within a resample, pairs of copies of the same image are left out of the
    generated-generated mean (they would add each image's self-similarity, a bias of the
    resampling, not of the data): ``(c^T K c - sum c_i^2 K_ii) / (n^2 - sum c_i^2)``. The kernel
    is KID's ``(x.y / d + 1)^3``, computed ``block`` rows at a time (memory ``block x n``).
    KID_o (subsets of 100) estimates the same complete statistic without bias. A resample made
    of one image repeated (likely only below about 6 images) has no pair to average: NaN.
    """
    x = _as_features(gen, "gen")
    y = _as_features(real, "real")
    c = np.asarray(counts, np.float64)
    n = len(x)
    if c.ndim != 2 or c.shape[1] != n:
        raise ValueError(f"counts must be (n_boot, {n}), got {c.shape}")
    kc = np.zeros((n, len(c)))  # (K c_b)_i for every replicate b
    diag = np.empty(n)
    row_real = np.empty(n)  # mean over real images of k(x_i, y)
    row_gen = np.zeros(n)  # sum over generated images of k(x_i, x)
    starts = range(0, n, block)
    for i0 in starts:  # K is symmetric: blocks on and above the diagonal only
        bi = slice(i0, min(i0 + block, n))
        for j0 in starts:
            if j0 < i0:
                continue
            bj = slice(j0, min(j0 + block, n))
            kb = poly_kernel(x[bi], x[bj])
            kc[bi] += kb @ c[:, bj].T
            row_gen[bi] += kb.sum(1)
            if j0 == i0:
                diag[bi] = np.diagonal(kb)
            else:
                kc[bj] += kb.T @ c[:, bi].T
                row_gen[bj] += kb.sum(0)
        row_real[bi] = poly_kernel(x[bi], y).mean(1)
    quad = np.einsum("bi,ib->b", c, kc)
    sq = (c * c).sum(1)
    pairs = n * n - sq  # 0 for a resample of one image repeated: no pair, the replicate is NaN
    gen_gen = np.divide(quad - (c * c) @ diag, pairs, out=np.full(len(c), np.nan), where=pairs > 0)
    reps = gen_gen - 2.0 * (c @ row_real) / n
    full = (row_gen.sum() - diag.sum()) / (n * (n - 1)) - 2.0 * row_real.mean()
    return reps - full


@dataclass(frozen=True)
class SetInterval:
    """A 95% bootstrap interval of a set-level distance, over resampled generated images."""

    low: float
    high: float
    n_boot: int
    method: str

    def as_dict(self, digits: int = 6) -> dict[str, Any]:
        """JSON-ready: ``ci``, ``n_boot``, ``method``, ``resampled``."""
        return {
            "ci": [round(self.low, digits), round(self.high, digits)],
            "n_boot": self.n_boot,
            "method": self.method,
            "resampled": "generated",
        }


#: bootstrap replicates behind the FID_o and KID_o intervals (docs/scoring.md)
SET_BOOTSTRAP = 1000
FID_INTERVAL_METHOD = "linearised"
KID_INTERVAL_METHOD = "exact"


def overall_with_intervals(
    gen_feats: Any,
    real_feats: Any,
    *,
    n_subsets: int = 100,
    seed: int = 0,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
    n_boot: int = SET_BOOTSTRAP,
) -> tuple[FidKid, dict[str, SetInterval]]:
    """FID_o and KID_o as :func:`fid_kid_overall`, with 95% intervals over the generated images.

    The real images are held fixed (every model of a protocol is scored against the same real
    set, so its sampling is not part of the comparison), the generated ones resampled with
    replacement: one set of counts, ``bootstrap_counts(n_gen, seed=seed, n_boot=n_boot)``, for
    both. FID_o's replicates are first-order (:func:`fid_influence`, which also gives FID_o
    itself: an exact replicate would cost one 2048-d eigen decomposition each), KID_o's exact
    (:func:`kid_bootstrap_deviations`). Each interval is the reported value plus the 2.5% and
    97.5% quantiles of replicate minus full-sample statistic
    (:func:`cellbench.metrics.bootstrap.shifted_percentile_interval`). KID_o has no interval
    when a resample is one image repeated (below about 6 generated images).
    """
    from cellbench.metrics.bootstrap import bootstrap_counts, shifted_percentile_interval

    g = _as_features(gen_feats, "gen_feats")
    r = _as_features(real_feats, "real_feats")
    m = kid_subset_size(len(g), len(r), max_subset_size)
    kid, kid_std = kid_from_features(g, r, m, n_subsets, seed)
    fid, influence = fid_influence(g, r)
    counts = bootstrap_counts(len(g), seed=seed, n_boot=n_boot)
    fid_dev = (counts - 1.0) @ influence / len(g)
    kid_dev = kid_bootstrap_deviations(g, r, counts)
    intervals = {
        "fid_o": SetInterval(
            *shifted_percentile_interval(fid, fid_dev), n_boot, FID_INTERVAL_METHOD
        )
    }
    if np.isfinite(kid_dev).all():  # else too few images for every resample to have a pair
        kid_ci = shifted_percentile_interval(kid, kid_dev)
        intervals["kid_o"] = SetInterval(*kid_ci, n_boot, KID_INTERVAL_METHOD)
    return FidKid(fid, kid, kid_std, len(g), len(r), m), intervals


# ------------------------------------------------------------------------------------------------
# Overall and per-compound scores


@dataclass(frozen=True)
class FidKid:
    """FID and KID of one generated set against one real set."""

    fid: float
    kid: float
    kid_std: float
    n_gen: int
    n_real: int
    kid_subset_size: int


@dataclass(frozen=True)
class CompoundScores:
    """Per-compound FID/KID and their means over compounds (FID_c, KID_c).

    ``skipped`` maps a compound with fewer than 2 images on a side to ``(n_gen, n_real)``.
    """

    fid_c: float
    kid_c: float
    per_compound: dict[str, FidKid] = field(default_factory=dict)
    skipped: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class FidKidSummary:
    """FID_o, KID_o, FID_c, KID_c with their per-compound breakdown and counts."""

    overall: FidKid
    compounds: CompoundScores
    #: 95% intervals of ``fid_o`` and ``kid_o`` (empty unless asked for: ``n_boot`` > 0)
    intervals: dict[str, SetInterval] = field(default_factory=dict)

    @property
    def fid_o(self) -> float:
        """FID of all generated vs all real images."""
        return self.overall.fid

    @property
    def kid_o(self) -> float:
        """KID (mean over subsets) of all generated vs all real images."""
        return self.overall.kid

    @property
    def fid_c(self) -> float:
        """Mean over compounds of per-compound FID."""
        return self.compounds.fid_c

    @property
    def kid_c(self) -> float:
        """Mean over compounds of per-compound KID."""
        return self.compounds.kid_c

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats, ints, nested dicts)."""
        return {
            "fid_o": self.fid_o,
            "kid_o": self.kid_o,
            "fid_c": self.fid_c,
            "kid_c": self.kid_c,
            "overall": asdict(self.overall),
            "per_compound": {k: asdict(v) for k, v in self.compounds.per_compound.items()},
            "skipped": {
                k: {"n_gen": g, "n_real": r} for k, (g, r) in self.compounds.skipped.items()
            },
            **(
                {"intervals": {k: v.as_dict() for k, v in self.intervals.items()}}
                if self.intervals
                else {}
            ),
        }


def _compound_seed(seed: int, compound: str) -> np.random.SeedSequence:
    """Per-compound KID seed: independent of which other compounds are evaluated."""
    return np.random.SeedSequence([seed, zlib.crc32(compound.encode("utf-8"))])


def fid_kid_overall(
    gen_feats: Any,
    real_feats: Any,
    *,
    n_subsets: int = 100,
    seed: int = 0,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
) -> FidKid:
    """FID_o and KID_o: all generated vs all real features (each at least 2 rows)."""
    g = _as_features(gen_feats, "gen_feats")
    r = _as_features(real_feats, "real_feats")
    m = kid_subset_size(len(g), len(r), max_subset_size)
    kid, kid_std = kid_from_features(g, r, m, n_subsets, seed)
    return FidKid(fid_from_features(g, r), kid, kid_std, len(g), len(r), m)


def _labels(labels: Iterable[Any], n: int, name: str) -> np.ndarray:
    arr = np.asarray([str(v) for v in labels], dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one label per feature row ({n}), got {arr.shape[0]}")
    return arr


def fid_kid_per_compound(
    gen_feats: Any,
    gen_compounds: Sequence[Any],
    real_feats: Any,
    real_compounds: Sequence[Any],
    *,
    n_subsets: int = 100,
    seed: int = 0,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
) -> CompoundScores:
    """FID and KID per compound, and FID_c / KID_c = their means over compounds.

    Each compound's KID uses its own subset size ``min(max_subset_size, n_gen_c, n_real_c)`` and
    its own seed (derived from ``seed`` and the compound name). Compounds with fewer than 2
    images on either side (including compounds present on one side only) are skipped and
    listed in ``skipped``; FID_c/KID_c are NaN if every compound is skipped.
    """
    g = _as_features(gen_feats, "gen_feats")
    r = _as_features(real_feats, "real_feats")
    gl = _labels(gen_compounds, len(g), "gen_compounds")
    rl = _labels(real_compounds, len(r), "real_compounds")
    per: dict[str, FidKid] = {}
    skipped: dict[str, tuple[int, int]] = {}
    for compound in sorted(set(gl) | set(rl)):
        gc, rc = g[gl == compound], r[rl == compound]
        if len(gc) < 2 or len(rc) < 2:
            skipped[compound] = (len(gc), len(rc))
            continue
        m = kid_subset_size(len(gc), len(rc), max_subset_size)
        kid_seed = int(_compound_seed(seed, compound).generate_state(1)[0])
        kid, kid_std = kid_from_features(gc, rc, m, n_subsets, kid_seed)
        per[compound] = FidKid(fid_from_features(gc, rc), kid, kid_std, len(gc), len(rc), m)
    fid_c = float(np.mean([s.fid for s in per.values()])) if per else float("nan")
    kid_c = float(np.mean([s.kid for s in per.values()])) if per else float("nan")
    return CompoundScores(fid_c, kid_c, per, skipped)


def fid_kid_summary(
    gen_feats: Any,
    gen_compounds: Sequence[Any],
    real_feats: Any,
    real_compounds: Sequence[Any],
    *,
    n_subsets: int = 100,
    seed: int = 0,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
    n_boot: int = 0,
) -> FidKidSummary:
    """FID_o, KID_o (all rows as given) and FID_c, KID_c (per compound) in one object.

    Pass the real test targets of the evaluated compounds only: FID_o compares all rows given.
    With ``n_boot`` > 0, FID_o and KID_o come with 95% intervals over the generated images
    (:func:`overall_with_intervals`; FID_o is then computed through :func:`fid_influence`, equal
    to :func:`fid_from_features` to rounding).
    """
    kw = {"n_subsets": n_subsets, "seed": seed, "max_subset_size": max_subset_size}
    intervals: dict[str, SetInterval] = {}
    if n_boot > 0:
        overall, intervals = overall_with_intervals(gen_feats, real_feats, n_boot=n_boot, **kw)
    else:
        overall = fid_kid_overall(gen_feats, real_feats, **kw)
    compounds = fid_kid_per_compound(gen_feats, gen_compounds, real_feats, real_compounds, **kw)
    return FidKidSummary(overall, compounds, intervals)


def split_half_indices(
    real_compounds: Sequence[Any], seed: int = 0, *, gen_counts: Mapping[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the two parts :func:`split_half_floor` compares (the generated part first).

    FID and KID need at least 2 rows in each part; with fewer, :func:`split_half_floor` raises.
    """
    labels = np.asarray([str(v) for v in real_compounds], dtype=object)
    half_a: list[int] = []
    half_b: list[int] = []
    for compound in sorted(set(labels)):
        idx = np.flatnonzero(labels == compound)
        rng = np.random.default_rng(_compound_seed(seed, compound))
        idx = idx[rng.permutation(len(idx))]
        k = len(idx) // 2
        if gen_counts is not None:
            k = min(int(gen_counts.get(compound, 0)), k)
        half_a.extend(idx[:k])
        half_b.extend(idx[k:])
    return np.asarray(half_a, dtype=np.int64), np.asarray(half_b, dtype=np.int64)


def split_half_floor(
    real_feats: Any,
    real_compounds: Sequence[Any],
    seed: int = 0,
    *,
    gen_counts: Mapping[str, int] | None = None,
    n_subsets: int = 100,
    kid_seed: int = 0,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
) -> FidKidSummary:
    """The real reference row for FID/KID (docs/scoring.md): one random half of the real set vs the other.

    Each compound's real rows are permuted with ``numpy.random.default_rng(SeedSequence([seed,
    crc32(compound)]))`` and split into two disjoint parts: the first, playing the generated set,
    gets ``min(gen_counts[compound], n // 2)`` rows when ``gen_counts`` is given (the evaluated
    set's image count where possible), else ``n // 2``; the second, playing the real set, gets the
    rest. Then the same FID_o/KID_o/FID_c/KID_c as :func:`fid_kid_summary` are computed. A compound
    with fewer than 4 real images (or a count of 0) cannot give two parts of 2 images: it is
    listed as skipped in the per-compound scores (its rows still count in FID_o/KID_o).

    Args:
        real_feats: real test-target features ``(N, d)``.
        real_compounds: compound of each row.
        seed: seed of the split.
        gen_counts: generated images per compound (optional).
        n_subsets, kid_seed, max_subset_size: KID settings as in :func:`fid_kid_summary`.
    """
    r = _as_features(real_feats, "real_feats")
    labels = _labels(real_compounds, len(r), "real_compounds")
    ia, ib = split_half_indices(labels, seed, gen_counts=gen_counts)
    return fid_kid_summary(
        r[ia],
        labels[ia],
        r[ib],
        labels[ib],
        n_subsets=n_subsets,
        seed=kid_seed,
        max_subset_size=max_subset_size,
    )
