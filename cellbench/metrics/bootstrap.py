"""Means with seeded 95% bootstrap confidence intervals, overall and per group, and the resampling
counts behind the intervals of set-level distances (:func:`bootstrap_counts`,
:func:`shifted_percentile_interval`, used by :mod:`cellbench.metrics.fid` for FID_o and KID_o)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOTSTRAP = 1000
CI_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile bootstrap interval and the number of values behind it."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self, digits: int = 6) -> dict:
        def r(x: float) -> float | None:
            return None if not np.isfinite(x) else round(float(x), digits)

        return {"value": r(self.value), "ci": [r(self.ci_low), r(self.ci_high)], "n": self.n}


def bootstrap_mean(
    values: np.ndarray, *, seed: int = 0, n_boot: int = N_BOOTSTRAP, level: float = CI_LEVEL
) -> Estimate:
    """Mean of finite ``values`` with a percentile bootstrap CI (seeded, so repeatable)."""
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(mean, float(lo), float(hi), n)


def grouped_bootstrap(
    values: np.ndarray, groups: np.ndarray, *, seed: int = 0, n_boot: int = N_BOOTSTRAP
) -> dict[str, Estimate]:
    """:func:`bootstrap_mean` per group label (sorted by label)."""
    groups = np.asarray(groups).astype(str)
    out = {}
    for g in sorted(set(groups)):
        out[g] = bootstrap_mean(np.asarray(values)[groups == g], seed=seed, n_boot=n_boot)
    return out


def bootstrap_counts(n: int, *, seed: int = 0, n_boot: int = N_BOOTSTRAP) -> np.ndarray:
    """``(n_boot, n)`` resampling counts: row b says how often each of n images is drawn.

    The same draw as ``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))`` counted per
    image (each row sums to n), so a statistic that is a weighted sum over images can be
    replicated by one matrix product instead of indexing.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.empty((n_boot, n), dtype=np.float64)
    for b in range(n_boot):
        counts[b] = np.bincount(idx[b], minlength=n)
    return counts


def shifted_percentile_interval(
    value: float, deviations: np.ndarray, level: float = CI_LEVEL
) -> tuple[float, float]:
    """``value`` plus the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of ``deviations``.

    ``deviations`` are replicate minus full-sample statistic; the interval is centred on the
    reported ``value`` (which may itself be computed differently, e.g. KID_o's subset average)
    rather than on the replicates' mean.
    """
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(deviations, np.float64), [alpha, 1.0 - alpha])
    return float(value + lo), float(value + hi)
