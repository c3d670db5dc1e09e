"""Morphology-profile metrics: does a generator move cells away from DMSO as the drug does?

Pure functions of per-image morphology profiles (:mod:`cellbench.features.profile`) of three image
sets: the generated images, the real target crops of the same compounds, and the real DMSO control
crops of the protocol (the baseline). Definitions (``docs/scoring.md``, "Morphology profile"):

* **Standardisation by DMSO** (:func:`dmso_normalise`), per batch as profiling pipelines
  normalise per plate: each image's profile minus the mean profile of the control crops of its
  own batch (the protocol pairs every task with a control of the task's batch), every column
  divided by the standard deviation (population) of the control profiles around their batch
  means; columns constant over the controls (below :data:`MIN_SCALE`) are left out. In these
  units 0 is the average DMSO image of the same plate and 1 is one DMSO standard deviation.
  Without the per-batch centring, plate-level intensity shifts that the real targets and their
  same-batch controls share make even the control image itself (``identity``) correlate with the
  drug's shift (measured: ``docs/benchmarks.md``).
* **Shift** of a compound in a set: the mean standardised profile of the set's images of that
  compound, i.e. its displacement from DMSO in DMSO standard deviations, feature by feature.
* :func:`shift_correlation`: per compound, the Pearson correlation over features of the
  generated shift and the real shift (a shift vector without spread counts 0), averaged over the
  compounds present in both sets. 1: the generator moves every feature in the drug's direction
  in the drug's proportions; 0: unrelated. Its permutation null shuffles the compound labels of
  the generated images (group sizes kept): the value a generator gets whose shifts carry no
  compound-specific signal (effects common to all compounds still correlate, so the null may sit
  above 0).
* :func:`profile_energy_distance`: per compound, the energy distance (Szekely and Rizzo) between
  the generated and the real standardised profiles, 2 E|X - Y| - E|X - X'| - E|Y - Y'| with the
  within-set means over distinct pairs (unbiased: about 0 when both sets come from one
  distribution, and it can be slightly negative), averaged over compounds with at least two images
  in each set. Lower is better. Its permutation null shuffles the generated/real membership within
  each compound (set sizes kept): the value of a generator indistinguishable from real images.

Each null is :data:`N_PERMUTATIONS` seeded permutations; a result carries the value, the null's
mean and 95% quantile and the one-sided permutation p-value (the share of the null at least as
high as the value, counted with the value itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cellbench.metrics.registry import SetInputs, SetValue

#: permutations of each null distribution
N_PERMUTATIONS = 200
#: columns whose standard deviation over the DMSO controls is below this are left out
MIN_SCALE = 1e-9


@dataclass(frozen=True)
class ProfileScore:
    """A profile metric with its permutation null.

    Attributes:
        value: the metric (mean over compounds); NaN without a compound to score.
        null_mean: mean of the permutation null.
        null_q95: the null's 95% quantile.
        p_value: (1 + permutations at least as high as ``value``) / (1 + permutations), the
            one-sided permutation test: for the shift correlation, small = more compound signal
            than chance; for the energy distance, small = distinguishable from real images.
        n_permutations: size of the null.
        n_compounds: compounds averaged.
        n_features: profile columns used.
        per_compound: the value of each compound.
    """

    value: float
    null_mean: float
    null_q95: float
    p_value: float
    n_permutations: int
    n_compounds: int
    n_features: int
    per_compound: dict[str, float] = field(default_factory=dict)

    def as_dict(self, digits: int = 6) -> dict:
        """JSON-ready, rounded; NaN as None."""

        def r(x: float) -> float | None:
            return None if not np.isfinite(x) else round(float(x), digits)

        return {
            "value": r(self.value),
            "null_mean": r(self.null_mean),
            "null_q95": r(self.null_q95),
            "p_value": r(self.p_value),
            "n_permutations": self.n_permutations,
            "n_compounds": self.n_compounds,
            "n_features": self.n_features,
            "per_compound": {c: r(v) for c, v in self.per_compound.items()},
        }


def centre_on_batches(
    x: np.ndarray,
    batches: np.ndarray | None,
    control: np.ndarray,
    control_batches: np.ndarray | None,
) -> np.ndarray:
    """Each row of ``x`` minus the mean control profile of its batch (of all controls where
    ``batches`` is None or the row's batch has no control)."""
    x = np.asarray(x, np.float64)
    control = np.asarray(control, np.float64)
    out = x - control.mean(0)
    if batches is None or control_batches is None:
        return out
    b = np.asarray(batches).astype(str)
    cb = np.asarray(control_batches).astype(str)
    if len(b) != len(x) or len(cb) != len(control):
        raise ValueError(
            f"{len(b)} batch labels for {len(x)} profiles, {len(cb)} for {len(control)} controls"
        )
    for key in np.unique(cb):
        rows = b == key
        out[rows] = x[rows] - control[cb == key].mean(0)
    return out


def dmso_normalise(
    x: np.ndarray,
    control: np.ndarray,
    *,
    batches: np.ndarray | None = None,
    control_batches: np.ndarray | None = None,
) -> np.ndarray:
    """Profiles ``x`` in DMSO units (module docstring): :func:`centre_on_batches`, divided by the
    standard deviation of the controls around their batch means; columns constant over the
    controls are left out. Profiles already centred on their batches' controls (controls too)
    give the same values without batch labels."""
    c = np.asarray(control, np.float64)
    if c.ndim != 2 or len(c) < 2:
        raise ValueError(f"need at least two control profiles, got shape {c.shape}")
    scale = centre_on_batches(c, control_batches, c, control_batches).std(0)
    kept = scale > MIN_SCALE
    return centre_on_batches(x, batches, c, control_batches)[:, kept] / scale[kept]


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; 0 where either row
    has no spread."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    num = (a * b).sum(-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _group_means(z: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, F) means of the rows of ``z`` by integer label."""
    sums = np.zeros((n_groups, z.shape[1]))
    np.add.at(sums, labels, z)
    return sums / np.bincount(labels, minlength=n_groups)[:, None]


def _score(value: float, null: np.ndarray, per: dict[str, float], n_features: int) -> ProfileScore:
    if not len(per):
        nan = float("nan")
        return ProfileScore(nan, nan, nan, nan, 0, 0, n_features, {})
    return ProfileScore(
        value=float(value),
        null_mean=float(null.mean()),
        null_q95=float(np.quantile(null, 0.95)),
        p_value=float((1 + (null >= value).sum()) / (1 + len(null))),
        n_permutations=len(null),
        n_compounds=len(per),
        n_features=n_features,
        per_compound=per,
    )


def shift_correlation(
    gen: np.ndarray,
    gen_compounds: np.ndarray,
    real: np.ndarray,
    real_compounds: np.ndarray,
    control: np.ndarray,
    *,
    seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
    gen_batches: np.ndarray | None = None,
    real_batches: np.ndarray | None = None,
    control_batches: np.ndarray | None = None,
) -> ProfileScore:
    """Mean over compounds of the correlation of the generated and the real shift from DMSO,
    with the compound-label permutation null (module docstring). The batches (plates) of the
    images and of the controls, where given, centre each image on its own batch's controls."""
    gen_compounds = np.asarray(gen_compounds).astype(str)
    real_compounds = np.asarray(real_compounds).astype(str)
    compounds = sorted(set(gen_compounds) & set(real_compounds))
    zg = dmso_normalise(gen, control, batches=gen_batches, control_batches=control_batches)
    zr = dmso_normalise(real, control, batches=real_batches, control_batches=control_batches)
    if not compounds or not zg.shape[1]:  # no feature varies over the controls: no profile
        return _score(float("nan"), np.zeros(0), {}, zg.shape[1])
    index = {c: k for k, c in enumerate(compounds)}
    g_in = np.isin(gen_compounds, compounds)
    r_in = np.isin(real_compounds, compounds)
    g_lab = np.array([index[c] for c in gen_compounds[g_in]], np.int64)
    r_lab = np.array([index[c] for c in real_compounds[r_in]], np.int64)
    zg = zg[g_in]
    real_shift = _group_means(zr[r_in], r_lab, len(compounds))
    per_c = _pearson_rows(_group_means(zg, g_lab, len(compounds)), real_shift)
    rng = np.random.default_rng(seed)
    null = np.array(
        [
            _pearson_rows(
                _group_means(zg, rng.permutation(g_lab), len(compounds)), real_shift
            ).mean()
            for _ in range(n_permutations)
        ]
    )
    per = {c: float(v) for c, v in zip(compounds, per_c, strict=True)}
    return _score(float(per_c.mean()), null, per, zg.shape[1])


def _energy_with_null(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_permutations: int
) -> tuple[float, np.ndarray]:
    """Energy distance of ``x`` and ``y`` and its membership-permutation null."""
    pool = np.concatenate([x, y])
    sq = (pool * pool).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * pool @ pool.T, 0.0))
    np.fill_diagonal(d, 0.0)
    n, nx = len(pool), len(x)
    ny = n - nx
    s = np.zeros((n, 1 + n_permutations))
    s[:nx, 0] = 1.0
    for b in range(n_permutations):
        s[rng.permutation(n)[:nx], 1 + b] = 1.0
    ds = d @ s
    sxx = (s * ds).sum(0)
    sxy = ds.sum(0) - sxx
    syy = d.sum() - sxx - 2.0 * sxy
    e = 2.0 * sxy / (nx * ny) - sxx / (nx * (nx - 1)) - syy / (ny * (ny - 1))
    return float(e[0]), e[1:]


def profile_energy_distance(
    gen: np.ndarray,
    gen_compounds: np.ndarray,
    real: np.ndarray,
    real_compounds: np.ndarray,
    control: np.ndarray,
    *,
    seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
    gen_batches: np.ndarray | None = None,
    real_batches: np.ndarray | None = None,
    control_batches: np.ndarray | None = None,
) -> ProfileScore:
    """Mean over compounds of the energy distance between generated and real profiles (DMSO
    units), with the generated/real membership permutation null (module docstring); batches as
    in :func:`shift_correlation`."""
    gen_compounds = np.asarray(gen_compounds).astype(str)
    real_compounds = np.asarray(real_compounds).astype(str)
    zg = dmso_normalise(gen, control, batches=gen_batches, control_batches=control_batches)
    zr = dmso_normalise(real, control, batches=real_batches, control_batches=control_batches)
    compounds = [
        c
        for c in sorted(set(gen_compounds) & set(real_compounds))
        if (gen_compounds == c).sum() >= 2 and (real_compounds == c).sum() >= 2
    ]
    if not zg.shape[1]:  # no feature varies over the controls: no profile
        compounds = []
    rng = np.random.default_rng(seed)
    per: dict[str, float] = {}
    null = np.zeros(n_permutations)
    for c in compounds:
        e, e_null = _energy_with_null(
            zg[gen_compounds == c], zr[real_compounds == c], rng, n_permutations
        )
        per[c] = e
        null += e_null / len(compounds)
    value = float(np.mean(list(per.values()))) if per else float("nan")
    return _score(value, null, per, zg.shape[1])


#: the registry names of the two metrics (:mod:`cellbench.metrics.registry`)
SHIFT_CORR = "profile_shift_corr"
ENERGY = "profile_energy"


def profile_set_metrics(inputs: SetInputs) -> dict[str, SetValue]:
    """Both profile metrics of a ``kind="set_fn"`` evaluation (:class:`SetInputs`): the generated
    and real profiles against the control profiles (the builder centres all three on their own
    batches' controls first, :func:`centre_on_batches`), seeded by the evaluation's seed."""
    from cellbench.metrics.registry import SetValue

    args = (
        inputs.gen_profile,
        inputs.compounds,
        inputs.real_profile,
        inputs.real_compounds,
        inputs.control_profile,
    )
    out = {}
    for name, fn in ((SHIFT_CORR, shift_correlation), (ENERGY, profile_energy_distance)):
        res = fn(*args, seed=inputs.seed)
        detail = res.as_dict()
        value = detail.pop("value")
        out[name] = SetValue(float("nan") if value is None else value, detail)
    return out
