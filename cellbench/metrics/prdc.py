"""Precision, recall, density and coverage of the generated images (Naeem et al., 2020).

Quality and diversity apart, on Inception pool features, with k = 5 nearest neighbours
(``docs/scoring.md``, "Held-out metrics"). With real images R (m) and generated images G (n), and
``r_j`` the distance from R_j to its k-th nearest other real image (``g_i`` likewise within G):

* **precision**: the fraction of generated images inside some real image's ball,
  ``mean_i [exists j: d(G_i, R_j) < r_j]`` (fidelity: how many images look real);
* **recall**: the fraction of real images inside some generated image's ball,
  ``mean_j [exists i: d(R_j, G_i) < g_i]`` (diversity: how much of the real variety is produced);
* **density**: ``(1 / k) mean_i #{j: d(G_i, R_j) < r_j}`` (precision that counts how many real
  balls hold each image; about 1 for a generator with the real distribution);
* **coverage**: the fraction of real images whose ball holds at least one generated image,
  ``mean_j [min_i d(R_j, G_i) < r_j]`` (diversity measured on the real manifold only).

The order of the two sets matters (torch-fidelity's implementation is reported to swap them): a
generator that returns one real image for every task has precision 1 and recall 0, and coverage
about k/m (tested). The balls are strict (``<``), as in the authors' ``prdc`` package, which this
implementation equals on fixed features (``tests/test_heldout_metrics.py``). Each of the four is
also computed within each MoA (generated and real images of that MoA; NaN when either side has no
more than k images).
"""

from __future__ import annotations

import numpy as np

from cellbench.metrics.neighbours import kth_neighbour_sq_radius, sq_dist_blocks
from cellbench.metrics.registry import SetInputs, SetValue

#: nearest neighbours behind the balls
K = 5
#: the four metrics, in the order of the registry
PRDC_NAMES: tuple[str, ...] = ("precision", "recall", "density", "coverage")


def compute_prdc(real: np.ndarray, gen: np.ndarray, k: int = K) -> dict[str, float]:
    """Precision, recall, density and coverage of ``gen`` (n, d) against ``real`` (m, d).

    NaN for all four when either set has no more than ``k`` images (no k-th neighbour).
    """
    if len(real) <= k or len(gen) <= k:
        return dict.fromkeys(PRDC_NAMES, float("nan"))
    r_real = kth_neighbour_sq_radius(real, k)  # squared radii: d < r  <=>  d^2 < r^2
    r_gen = kth_neighbour_sq_radius(gen, k)
    in_real_balls = np.zeros(len(gen), dtype=np.int64)  # per generated image
    recalled = np.zeros(len(real), dtype=bool)  # per real image
    nearest_gen = np.full(len(real), np.inf)  # per real image
    for rows, d in sq_dist_blocks(gen, real):  # d: generated rows x real images
        in_real_balls[rows] = (d < r_real[None, :]).sum(axis=1)
        recalled |= (d < r_gen[rows, None]).any(axis=0)
        np.minimum(nearest_gen, d.min(axis=0), out=nearest_gen)
    return {
        "precision": float((in_real_balls > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(in_real_balls.mean() / k),
        "coverage": float((nearest_gen < r_real).mean()),
    }


def prdc(inputs: SetInputs) -> dict[str, SetValue]:
    """The four metrics on the Inception features of ``inputs``, overall and per MoA (detail)."""
    gen, real = inputs.gen_inception, inputs.real_inception
    assert gen is not None and real is not None  # the registry's `inputs` guarantee them
    overall = compute_prdc(real, gen)
    per_moa: dict[str, dict[str, float]] = {}
    for moa in sorted(set(inputs.moas) | set(inputs.real_moas)):
        g, r = inputs.moas == moa, inputs.real_moas == moa
        per_moa[str(moa)] = {
            **compute_prdc(real[r], gen[g]),
            "n_gen": int(g.sum()),
            "n_real": int(r.sum()),
        }
    return {
        name: SetValue(
            overall[name],
            {
                "k": K,
                "features": "Inception pool (2048)",
                "per_moa": {
                    moa: {"value": v[name], "n_gen": v["n_gen"], "n_real": v["n_real"]}
                    for moa, v in per_moa.items()
                },
            },
        )
        for name in PRDC_NAMES
    }
