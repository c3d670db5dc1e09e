"""The seven biological rewards and the overall reward (metric suite version 3, docs/scoring.md).

All rewards are higher-is-better and computed per generated image with its task's MoA m:

========  ===============  ==========================================================
reward    category         definition
========  ===============  ==========================================================
moa       function         p_cls(m | x), the MoA classifier's probability of the true MoA
nuc_in_   structure        fraction of nucleus pixels inside the cytoplasm foreground
cyto
roundness structure        -z^2 of the mean nucleus roundness
nuc_size  morphology       -z^2 of the largest nucleus area
cyto_size morphology       -z^2 of the largest cell area
nuc_count morphology       -z^2 of the nucleus count
cyto_     morphology       -z^2 of the cell count
count
========  ===============  ==========================================================

z = (feature - mu_m) / max(sigma_m, floor_f), with mu_m, sigma_m from the reference statistics
(real training-split images of MoA m, same segmenter), clipped to [-5, 5], so each morphology reward
lies in [-25, 0]. An image with no nucleus gets the clipped minimum (-25) on ``roundness``.

Overall = 5 moa + 2 nuc_in_cyto + roundness + nuc_size + cyto_size + nuc_count + cyto_count
(weights from CellFluxRL).

cellbench's own choices where the papers are silent (part of the suite since version 1):

* ``floor_f``, the smallest standard deviation used in z: 0.02 for roundness, 5 px^2 for the areas,
  0.25 for the counts. A MoA whose training images all share one value (possible for counts on small
  data) would otherwise give an infinite z.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: the metric suite version: bumped by any change that can move a metric value (results of
#: different versions are never ranked together). History:
#: 1: first release (segmenter ``classical`` version 1);
#: 2: segmenter ``classical`` version 2 (scale-aware nuclei: nucleus F1 0.773 -> 0.851 on DSB2018,
#:    0.758 -> 0.944 on simulated crops), reference statistics rebuilt;
#: 3: named protocols with ``cellflux-iid`` the default (the 8 CellFlux unseen compounds out of the
#:    default evaluation set), the MoA classifier trained on ``train-iid`` with random flips, one
#:    deterministic artifact set per dataset recorded in every result (docs/protocols.md,
#:    docs/scoring.md "Artifacts").
SUITE_VERSION = "3"

REWARD_NAMES: tuple[str, ...] = (
    "moa",
    "nuc_in_cyto",
    "roundness",
    "nuc_size",
    "cyto_size",
    "nuc_count",
    "cyto_count",
)
OVERALL_WEIGHTS: dict[str, float] = {
    "moa": 5.0,
    "nuc_in_cyto": 2.0,
    "roundness": 1.0,
    "nuc_size": 1.0,
    "cyto_size": 1.0,
    "nuc_count": 1.0,
    "cyto_count": 1.0,
}
#: which per-image feature each z-scored reward uses
ZSCORE_FEATURE: dict[str, str] = {
    "roundness": "roundness",
    "nuc_size": "nuc_max_area",
    "cyto_size": "cell_max_area",
    "nuc_count": "nuc_count",
    "cyto_count": "cell_count",
}
SIGMA_FLOOR: dict[str, float] = {
    "roundness": 0.02,
    "nuc_max_area": 5.0,
    "cell_max_area": 5.0,
    "nuc_count": 0.25,
    "cell_count": 0.25,
}
Z_CLIP = 5.0
REWARD_MIN = -(Z_CLIP**2)


def zscore_reward(
    values: np.ndarray, mean: np.ndarray, std: np.ndarray, floor: float
) -> np.ndarray:
    """-clip(z, -5, 5)^2 with z = (values - mean) / max(std, floor), elementwise."""
    z = (np.asarray(values, np.float64) - mean) / np.maximum(std, floor)
    return -(np.clip(z, -Z_CLIP, Z_CLIP) ** 2)


def compute_rewards(
    features: Mapping[str, np.ndarray],
    moa_prob: np.ndarray | None,
    moas: np.ndarray,
    reference: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict[str, np.ndarray]:
    """Per-image rewards.

    Args:
        features: per-image arrays keyed by feature name (``nuc_count``, ``cell_count``,
            ``nuc_max_area``, ``cell_max_area``, ``roundness``, ``nuc_in_cyto``), length N.
        moa_prob: the classifier's probability of each image's true MoA (N,), or None to skip
            the ``moa`` reward (it is then NaN and excluded from ``overall``).
        moas: the task MoA of each image (N,), names as in the reference statistics.
        reference: ``reference[moa][feature] = {"mean": .., "std": ..}``.

    Returns:
        reward name -> (N,) float64, plus ``overall``.
    """
    moas = np.asarray(moas).astype(str)
    n = len(moas)
    unknown = sorted(set(moas) - set(reference))
    if unknown:
        raise KeyError(f"no reference statistics for MoA(s) {unknown}")
    out: dict[str, np.ndarray] = {}
    if moa_prob is None:
        out["moa"] = np.full(n, np.nan)
    else:
        out["moa"] = np.asarray(moa_prob, np.float64)
    out["nuc_in_cyto"] = np.clip(np.asarray(features["nuc_in_cyto"], np.float64), 0.0, 1.0)
    for reward, feat in ZSCORE_FEATURE.items():
        mean = np.array([reference[m][feat]["mean"] for m in moas], np.float64)
        std = np.array([reference[m][feat]["std"] for m in moas], np.float64)
        out[reward] = zscore_reward(features[feat], mean, std, SIGMA_FLOOR[feat])
    no_nucleus = np.asarray(features["nuc_count"]) < 1
    out["roundness"] = np.where(no_nucleus, REWARD_MIN, out["roundness"])
    out["overall"] = overall_reward(out)
    return out


def overall_components(moa_computed: bool) -> list[str]:
    """The rewards summed into ``overall``: all seven, or six without ``moa``.

    Without Inception (``cellbench eval --no-fid``) there are no classifier probabilities, so
    ``overall`` is the weighted sum of the six mask rewards only: a different quantity, on a
    different scale, which is never ranked or compared with an ``overall`` that includes ``moa``.
    The result document records the components and ``overall_comparable`` (docs/scoring.md).
    """
    return [n for n in OVERALL_WEIGHTS if moa_computed or n != "moa"]


def overall_reward(rewards: Mapping[str, np.ndarray]) -> np.ndarray:
    """The weighted sum; the ``moa`` term is left out where it is NaN (no classifier).

    An ``overall`` without ``moa`` is not comparable with one that has it (see
    :func:`overall_components`); the result document says which it is.
    """
    total = np.zeros_like(np.asarray(rewards["nuc_in_cyto"], np.float64))
    for name, w in OVERALL_WEIGHTS.items():
        term = np.asarray(rewards[name], np.float64)
        total = total + w * np.nan_to_num(term, nan=0.0)
    return total
