"""Small samples made honest: FID_o/KID_o bootstrap intervals, FID_c small-n record, n per compound."""

from __future__ import annotations

import numpy as np
import pytest

from cellbench.metrics.bootstrap import bootstrap_counts, shifted_percentile_interval
from cellbench.metrics.fid import (
    FID_C_MIN_IMAGES,
    fid_from_features,
    fid_influence,
    fid_kid_overall,
    fid_kid_per_compound,
    fid_kid_summary,
    kid_bootstrap_deviations,
    overall_with_intervals,
)


def _features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.abs(rng.standard_normal((n, d)) @ mix + shift)


def _poly(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def test_bootstrap_counts_are_the_seeded_draws_counted() -> None:
    counts = bootstrap_counts(7, seed=3, n_boot=5)
    idx = np.random.default_rng(3).integers(0, 7, size=(5, 7))
    for b in range(5):
        assert np.array_equal(counts[b], np.bincount(idx[b], minlength=7))
    assert np.all(counts.sum(1) == 7)
    with pytest.raises(ValueError):
        bootstrap_counts(0)


def test_shifted_interval_is_value_plus_deviation_quantiles() -> None:
    dev = np.arange(-50, 51, dtype=float)  # 101 values, quantiles -47.5 and 47.5
    assert shifted_percentile_interval(10.0, dev) == pytest.approx((-37.5, 57.5))


@pytest.mark.parametrize(("n", "d"), [(60, 8), (12, 20)])  # n > d and the rank-deficient n < d
def test_fid_influence_gives_fid_and_mean_zero_influence(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    g, r = _features(rng, n, d), _features(rng, n + 5, d, 0.3)
    fid, inf = fid_influence(g, r)
    assert fid == pytest.approx(fid_from_features(g, r), rel=1e-10)
    assert inf.shape == (n,) and abs(inf.mean()) < 1e-12 * np.abs(inf).max()


def test_fid_influence_low_rank_terms_equal_the_covariance_terms() -> None:
    """Both sets smaller than d (the SVD path) against the d x d eigen decompositions."""
    from cellbench.metrics.fid import _influence_terms_full, _influence_terms_low_rank

    rng = np.random.default_rng(3)
    g, r = _features(rng, 30, 64), _features(rng, 45, 64, 0.2)
    u = g - g.mean(0)
    full = _influence_terms_full(u, r)
    low = _influence_terms_low_rank(u, r - r.mean(0))
    assert low[0] == pytest.approx(full[0], rel=1e-12) and low[1] == pytest.approx(
        full[1], rel=1e-12
    )
    assert len(low[2]) == len(full[2]) == 29  # rank of M: n - 1
    assert np.allclose(np.sort(low[2]), np.sort(full[2]), rtol=1e-9, atol=0)
    assert np.allclose(low[3], full[3], rtol=1e-9, atol=1e-9 * np.abs(full[3]).max())


@pytest.mark.parametrize(("n", "m", "d"), [(80, 90, 6), (15, 18, 40)])  # full and SVD paths
def test_fid_influence_is_the_derivative_of_fid(n: int, m: int, d: int) -> None:
    """(FID(weights 1 + eps e_i) - FID) / eps -> IF_i: checked by reweighting one image."""
    rng = np.random.default_rng(1)
    g, r = _features(rng, n, d), _features(rng, m, d, 0.2)
    fid, inf = fid_influence(g, r)
    n = len(g)

    def weighted_fid(w: np.ndarray) -> float:
        w = w / w.sum()
        mu = w @ g
        u = g - mu
        c_g = (u * w[:, None]).T @ u * n / (n - 1)
        from cellbench.metrics.fid import frechet_distance

        return frechet_distance(mu, c_g, r.mean(0), np.cov(r, rowvar=False))

    eps = 1e-6
    for i in (0, n // 3, n - 2):
        w = np.full(n, 1.0 / n)
        w = (1 - eps) * w
        w[i] += eps
        assert (weighted_fid(w) - fid) / eps == pytest.approx(inf[i], rel=1e-3, abs=1e-4)


def test_linearised_fid_bootstrap_matches_the_exact_bootstrap() -> None:
    """The sd of first-order replicates is within 5% of exact replicates' (measured: 0.2%)."""
    rng = np.random.default_rng(1)
    g, r = _features(rng, 400, 16, 0.1), _features(rng, 500, 16)
    fid, inf = fid_influence(g, r)
    counts = bootstrap_counts(len(g), seed=0, n_boot=200)
    lin = (counts - 1) @ inf / len(g)
    idx = np.random.default_rng(0).integers(0, len(g), (200, len(g)))
    exact = np.array([fid_from_features(g[i], r) - fid for i in idx])
    assert lin.std() == pytest.approx(exact.std(), rel=0.05)
    assert np.corrcoef(lin, exact)[0, 1] > 0.98


def test_kid_deviations_equal_a_direct_computation() -> None:
    rng = np.random.default_rng(2)
    g, r = _features(rng, 50, 8), _features(rng, 40, 8, 0.2)
    counts = bootstrap_counts(len(g), seed=4, n_boot=6)
    dev = kid_bootstrap_deviations(g, r, counts, block=16)  # several blocks, one partial
    idx = np.random.default_rng(4).integers(0, len(g), (6, len(g)))
    k_full = _poly(g, g)
    full = (k_full.sum() - np.trace(k_full)) / (50 * 49) - 2 * _poly(g, r).mean()
    for b in range(6):
        sel = idx[b]
        same = sel[:, None] == sel[None, :]  # copies of one image: left out
        direct = _poly(g[sel], g[sel])[~same].mean() - 2 * _poly(g[sel], r).mean()
        assert dev[b] == pytest.approx(direct - full, rel=1e-12, abs=1e-14)


def test_intervals_cover_the_value_widen_with_fewer_images_and_are_seeded() -> None:
    rng = np.random.default_rng(3)
    g, r = _features(rng, 300, 10, 0.2), _features(rng, 300, 10)
    overall, iv = overall_with_intervals(g, r, seed=5, n_boot=300)
    plain = fid_kid_overall(g, r, seed=5)
    assert overall.fid == pytest.approx(plain.fid, rel=1e-10) and overall.kid == plain.kid
    for name, value in (("fid_o", overall.fid), ("kid_o", overall.kid)):
        lo, hi = iv[name].low, iv[name].high
        assert lo < value < hi
    _, small = overall_with_intervals(g[:75], r, seed=5, n_boot=300)
    for name in ("fid_o", "kid_o"):
        assert small[name].high - small[name].low > 1.5 * (iv[name].high - iv[name].low)
    again = overall_with_intervals(g, r, seed=5, n_boot=300)[1]
    assert again == iv
    assert overall_with_intervals(g, r, seed=6, n_boot=300)[1] != iv
    d = iv["fid_o"].as_dict()
    assert d["n_boot"] == 300 and d["method"] == "linearised" and d["resampled"] == "generated"
    assert iv["kid_o"].method == "exact"


def test_summary_with_intervals_writes_them_and_keeps_the_values() -> None:
    rng = np.random.default_rng(4)
    g, r = _features(rng, 40, 6), _features(rng, 40, 6, 0.1)
    labels = np.array(["a", "b"] * 20)
    plain = fid_kid_summary(g, labels, r, labels)
    boot = fid_kid_summary(g, labels, r, labels, n_boot=50)
    assert "intervals" not in plain.to_dict()
    assert set(boot.to_dict()["intervals"]) == {"fid_o", "kid_o"}
    assert boot.fid_o == pytest.approx(plain.fid_o, rel=1e-10)
    assert (boot.kid_o, boot.fid_c, boot.kid_c) == (plain.kid_o, plain.fid_c, plain.kid_c)


def test_small_n_record_counts_compounds_below_the_threshold() -> None:
    from cellbench.results.builder import small_n_record

    rng = np.random.default_rng(5)
    big = FID_C_MIN_IMAGES
    sizes = {"a": big, "b": big - 1, "c": 3}
    g = np.concatenate([_features(rng, k, 4) for k in sizes.values()])
    labels = np.concatenate([[c] * k for c, k in sizes.items()])
    scores = fid_kid_per_compound(g, labels, g + 0.1, labels, n_subsets=2)
    rec = small_n_record(scores)
    assert rec["threshold"] == big and rec["compounds"] == 3 and rec["below"] == 2
    assert rec["min_images"] == 3 and "2 of 3 compounds" in rec["warning"]
    only_big = fid_kid_per_compound(g[:big], labels[:big], g[:big], labels[:big], n_subsets=2)
    assert small_n_record(only_big)["warning"] is None


def test_eval_table_prints_n_per_compound_and_the_fid_c_warning() -> None:
    from cellbench.cli.scoring import _results_notes, compound_counts_note

    est = {"value": 0.0, "ci": [0.0, 0.0]}
    doc = {
        "images": {
            "n_images": 9,
            "n_tasks_covered": 9,
            "n_tasks_expected": 9,
            "missing_tasks": 0,
            "n_problems": 0,
        },
        "complete": True,
        "per_compound": {
            c: {"overall": {**est, "n": k}} for c, k in (("a", 2), ("b", 3), ("c", 4))
        },
        "fid_detail": {
            "model": {"per_compound": {"a": {"n_real": 5}, "b": {"n_real": 7}, "c": {"n_real": 9}}}
        },
        "metrics": {"fid_c": {"small_n": {"warning": "FID_c averages 3 of 3 compounds ..."}}},
    }
    note = compound_counts_note(doc)
    assert (
        note
        == "images per compound (min / median / max over 3): generated 2 / 3 / 4, real 5 / 7 / 9"
    )
    notes = _results_notes(doc)
    assert note in notes and "warning: FID_c averages 3 of 3 compounds ..." in notes
    doc["metrics"]["fid_c"]["small_n"]["warning"] = None
    assert not any(n.startswith("warning") for n in _results_notes(doc))
    assert compound_counts_note({"per_compound": {}}) is None


def test_a_resample_of_one_image_repeated_has_no_kid_replicate_and_no_interval() -> None:
    """With 3 images some resamples are one image three times: no generated pair to average,
    so that replicate is NaN (no division by zero) and KID_o gets no interval; FID_o keeps its."""
    rng = np.random.default_rng(6)
    g, r = _features(rng, 3, 8), _features(rng, 20, 8)
    counts = np.array([[3, 0, 0], [1, 1, 1], [0, 2, 1]])
    with np.errstate(all="raise"):
        dev = kid_bootstrap_deviations(g, r, counts)
        _, iv = overall_with_intervals(g, r, seed=0, n_boot=200)
    assert np.isnan(dev[0]) and np.isfinite(dev[1:]).all()
    assert dev[1] == pytest.approx(0.0, abs=1e-12)  # the sample itself
    assert set(iv) == {"fid_o"} and iv["fid_o"].low <= iv["fid_o"].high
