"""The arithmetic of bench/studies/reward_hacking.py's paired resamples: its fast FID is the
suite's FID, and its all-pairs KID is the unbiased MMD^2 computed directly."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

from cellbench.metrics.fid import fid_from_features, poly_kernel
from tests.conftest import REPO


def _study():
    path = REPO / "bench" / "studies" / "reward_hacking.py"
    spec = importlib.util.spec_from_file_location("reward_hacking", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reward_hacking", mod)  # its dataclass looks itself up there
    spec.loader.exec_module(mod)
    return mod


def _features(seed: int, n: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.2, size=(n, 64)) + shift


def test_fast_fid_equals_the_suites_fid_on_full_and_resampled_sets() -> None:
    study = _study()
    gen, real = _features(0, 50, 0.05), _features(1, 60, 0.0)
    mean = real.mean(0)
    centred = (real - mean) / np.sqrt(len(real) - 1)
    tr = float((centred**2).sum())
    for idx in (np.arange(50), np.random.default_rng(2).integers(0, 50, 50)):
        fast = study.fid_nuclear(gen[idx], centred, mean, tr)
        assert abs(fast - fid_from_features(gen[idx], real)) < 1e-8 * max(1.0, fast)


def test_all_pairs_kid_is_the_unbiased_mmd() -> None:
    study = _study()
    gen, real = _features(3, 30, 0.1), _features(4, 40, 0.0)
    kernels = study.kid_kernels(gen, real)
    idx = np.random.default_rng(5).integers(0, 30, 30)
    g = gen[idx]
    k = poly_kernel
    n, m = len(g), len(real)
    kgg, krr = k(g, g), k(real, real)
    direct = (
        (kgg.sum() - np.trace(kgg)) / (n * (n - 1))
        + (krr.sum() - np.trace(krr)) / (m * (m - 1))
        - 2.0 * k(g, real).mean()
    )
    assert abs(study.kid_all_pairs(kernels, idx) - direct) < 1e-12 * max(1.0, abs(direct))
    assert study.kid_all_pairs(study.kid_kernels(real[:20], real[20:]), np.arange(20)) < abs(direct)
