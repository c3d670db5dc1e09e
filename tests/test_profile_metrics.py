"""Profile-shift metrics (cellbench.metrics.profile) against direct computations on fixed arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import pearsonr

from cellbench.metrics.profile import (
    dmso_normalise,
    profile_energy_distance,
    shift_correlation,
)

F = 12
COMPOUNDS = ["a", "b", "c", "d"]


def _sets(seed: int = 0, n: int = 30):
    """Controls, and real profiles of four compounds each shifted in its own direction."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 20.0, F)  # columns on very different scales
    control = rng.normal(5.0, 1.0, (80, F)) * scale
    shifts = {c: rng.normal(0, 1.5, F) for c in COMPOUNDS}
    real = np.concatenate([rng.normal(5.0 + shifts[c], 1.0, (n, F)) * scale for c in COMPOUNDS])
    real_cpds = np.repeat(COMPOUNDS, n)
    like_real = np.concatenate(
        [rng.normal(5.0 + shifts[c], 1.0, (n, F)) * scale for c in COMPOUNDS]
    )
    like_dmso = rng.normal(5.0, 1.0, (len(real), F)) * scale
    return control, real, real_cpds, like_real, like_dmso


def _direct_shift_corr(gen, gcp, real, rcp, control):
    mu, sd = control.mean(0), control.std(0)
    out = []
    for c in sorted(set(gcp) & set(rcp)):
        g = ((gen[gcp == c] - mu) / sd).mean(0)
        r = ((real[rcp == c] - mu) / sd).mean(0)
        out.append(pearsonr(g, r)[0])
    return np.array(out)


def _direct_energy(x, y):
    nx, ny = len(x), len(y)
    return (
        2 * cdist(x, y).mean()
        - cdist(x, x).sum() / (nx * (nx - 1))
        - cdist(y, y).sum() / (ny * (ny - 1))
    )


def test_normalise_is_dmso_units_and_drops_constant_columns() -> None:
    control, real, *_ = _sets()
    control[:, 3] = 7.0  # constant over DMSO: left out
    z = dmso_normalise(real, control)
    keep = [j for j in range(F) if j != 3]
    np.testing.assert_allclose(
        z, (real[:, keep] - control[:, keep].mean(0)) / control[:, keep].std(0), atol=1e-12
    )
    with pytest.raises(ValueError, match="two control"):
        dmso_normalise(real, control[:1])


def test_shift_correlation_against_direct_computation() -> None:
    control, real, rcp, like_real, _ = _sets()
    gcp = rcp.copy()
    res = shift_correlation(like_real, gcp, real, rcp, control, seed=3, n_permutations=50)
    direct = _direct_shift_corr(like_real, gcp, real, rcp, control)
    assert res.value == pytest.approx(direct.mean(), rel=1e-12)
    for c, v in zip(COMPOUNDS, direct, strict=True):
        assert res.per_compound[c] == pytest.approx(v, rel=1e-12)
    # the null, recomputed with the same seeded permutations of the generated labels
    rng = np.random.default_rng(3)
    lab = np.searchsorted(COMPOUNDS, gcp)
    null = [
        _direct_shift_corr(
            like_real, np.array(COMPOUNDS)[rng.permutation(lab)], real, rcp, control
        ).mean()
        for _ in range(50)
    ]
    assert res.null_mean == pytest.approx(np.mean(null), rel=1e-10)
    assert res.null_q95 == pytest.approx(np.quantile(null, 0.95), rel=1e-10)
    assert res.p_value == pytest.approx((1 + sum(v >= res.value for v in null)) / 51)
    assert (res.n_compounds, res.n_features, res.n_permutations) == (4, F, 50)


def test_real_like_is_at_the_ceiling_and_dmso_like_at_the_null() -> None:
    control, real, rcp, like_real, like_dmso = _sets(seed=1)
    good = shift_correlation(like_real, rcp, real, rcp, control, seed=0)
    flat = shift_correlation(like_dmso, rcp, real, rcp, control, seed=0)
    assert good.value > 0.9 and good.p_value == pytest.approx(1 / 201)
    assert abs(flat.value) < 0.35 and flat.p_value > 0.05
    assert good.value > good.null_q95 and flat.value < flat.null_q95


def test_energy_distance_against_direct_computation_and_null() -> None:
    control, real, rcp, like_real, like_dmso = _sets(seed=2, n=12)
    gcp = rcp.copy()
    res = profile_energy_distance(like_dmso, gcp, real, rcp, control, seed=5, n_permutations=40)
    zg, zr = dmso_normalise(like_dmso, control), dmso_normalise(real, control)
    direct = {c: _direct_energy(zg[gcp == c], zr[rcp == c]) for c in COMPOUNDS}
    for c in COMPOUNDS:
        assert res.per_compound[c] == pytest.approx(direct[c], rel=1e-9)
    assert res.value == pytest.approx(np.mean(list(direct.values())), rel=1e-9)
    rng = np.random.default_rng(5)
    null = np.zeros(40)
    for c in COMPOUNDS:
        pool = np.concatenate([zg[gcp == c], zr[rcp == c]])
        for b in range(40):
            pick = np.zeros(len(pool), bool)
            pick[rng.permutation(len(pool))[:12]] = True
            null[b] += _direct_energy(pool[pick], pool[~pick]) / len(COMPOUNDS)
    assert res.null_mean == pytest.approx(null.mean(), rel=1e-9)
    assert res.null_q95 == pytest.approx(np.quantile(null, 0.95), rel=1e-9)
    # a DMSO-like set is far from the treated real set: above every permutation
    assert res.p_value == pytest.approx(1 / 41) and res.value > 10 * res.null_q95
    same = profile_energy_distance(like_real, gcp, real, rcp, control, seed=5, n_permutations=40)
    assert same.value < 0.2 * res.value and same.p_value > 0.05


def test_compounds_missing_or_too_small_and_seeds() -> None:
    control, real, rcp, like_real, _ = _sets(seed=4, n=10)
    gcp = np.where(rcp == "d", "zz", rcp)  # d only real, zz only generated
    gcp[np.flatnonzero(gcp == "c")[1:]] = "b"  # c: one generated image
    sc = shift_correlation(like_real, gcp, real, rcp, control, seed=0, n_permutations=20)
    assert sorted(sc.per_compound) == ["a", "b", "c"]
    ed = profile_energy_distance(like_real, gcp, real, rcp, control, n_permutations=20)
    assert sorted(ed.per_compound) == ["a", "b"]
    again = shift_correlation(like_real, gcp, real, rcp, control, seed=0, n_permutations=20)
    other = shift_correlation(like_real, gcp, real, rcp, control, seed=1, n_permutations=20)
    assert again == sc and other.null_mean != sc.null_mean and other.value == sc.value
    none = shift_correlation(like_real, np.full(len(gcp), "q"), real, rcp, control)
    assert np.isnan(none.value) and none.as_dict()["value"] is None and none.n_compounds == 0


def test_normalise_per_batch() -> None:
    """Each image is centred on its own batch's controls; the scale is the controls' spread
    around their batch means; a batch without controls falls back to all controls."""
    rng = np.random.default_rng(7)
    offsets = {"p1": rng.normal(0, 5, F), "p2": rng.normal(0, 5, F)}
    cb = np.repeat(["p1", "p2"], 20)
    control = rng.normal(0, 1, (40, F)) + np.stack([offsets[b] for b in cb])
    xb = np.array(["p1", "p2", "p3"])
    x = rng.normal(0, 1, (3, F))
    z = dmso_normalise(x, control, batches=xb, control_batches=cb)
    centred = control - np.stack([control[cb == b].mean(0) for b in cb])
    sd = centred.std(0)
    np.testing.assert_allclose(z[0], (x[0] - control[:20].mean(0)) / sd, atol=1e-12)
    np.testing.assert_allclose(z[1], (x[1] - control[20:].mean(0)) / sd, atol=1e-12)
    np.testing.assert_allclose(z[2], (x[2] - control.mean(0)) / sd, atol=1e-12)
    with pytest.raises(ValueError, match="batch labels"):
        dmso_normalise(x, control, batches=xb[:2], control_batches=cb)


def test_batch_effect_shared_with_the_controls_is_not_a_shift() -> None:
    """An identity-like generator (its own batch's control images) shares the plate offsets of
    the real targets: globally centred it correlates with the real shift, per batch it does not."""
    rng = np.random.default_rng(8)
    batches = [f"p{k}" for k in range(6)]
    offset = {b: rng.normal(0, 3, F) for b in batches}
    cpds = np.array([f"c{k}" for k in range(12)])
    home = {c: batches[k % 6] for k, c in enumerate(cpds)}  # each compound on one plate
    shift = {c: rng.normal(0, 1, F) for c in cpds}
    cb = np.repeat(batches, 10)
    control = rng.normal(0, 1, (60, F)) + np.stack([offset[b] for b in cb])
    rcp = np.repeat(cpds, 10)
    rb = np.array([home[c] for c in rcp])
    real = rng.normal(0, 1, (120, F)) + np.stack(
        [offset[b] + shift[c] for b, c in zip(rb, rcp, strict=True)]
    )
    ident = np.stack([control[rng.choice(np.flatnonzero(cb == b))] for b in rb])
    flat = shift_correlation(ident, rcp, real, rcp, control, seed=0)
    per_batch = shift_correlation(
        ident, rcp, real, rcp, control, seed=0, gen_batches=rb, real_batches=rb, control_batches=cb
    )
    assert flat.value > 0.4 and flat.p_value < 0.05
    assert abs(per_batch.value) < 0.15 and per_batch.p_value > 0.05


def test_no_feature_varying_over_the_controls_gives_no_profile_value() -> None:
    """Controls that are each alone in their batch centre to zero: no column is kept, and both
    metrics are NaN over no compound (the evaluation reports them absent), without warnings."""
    rng = np.random.default_rng(9)
    control, cb = rng.normal(0, 1, (2, F)), np.array(["p1", "p2"])
    x, cpds, xb = rng.normal(0, 1, (6, F)), np.repeat(["a", "b"], 3), np.repeat(["p1", "p2"], 3)
    kw = {"gen_batches": xb, "real_batches": xb, "control_batches": cb, "n_permutations": 5}
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (shift_correlation, profile_energy_distance):
            res = fn(x, cpds, x, cpds, control, **kw)
            assert np.isnan(res.value) and res.n_compounds == 0 and res.n_features == 0
