"""The memorisation metrics (cellbench.metrics.memorisation) against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from cellbench.metrics import memorisation as mem


def _features(seed: int, n: int, d: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def test_nearest_distances_equal_a_direct_computation_in_any_block_size(monkeypatch) -> None:
    q, r = _features(0, 37), _features(1, 53)
    want = cdist(q, r).min(axis=1)
    np.testing.assert_allclose(mem.nearest_distances(q, r), want, rtol=1e-12, atol=1e-9)
    monkeypatch.setattr(mem, "_BLOCK_ELEMENTS", 60)  # one query row per block
    np.testing.assert_allclose(mem.nearest_distances(q, r), want, rtol=1e-12, atol=1e-9)


def test_a_copied_row_is_at_distance_zero_at_inception_scale() -> None:
    r = np.abs(_features(2, 40, 2048)) * 3  # Inception pool features are non-negative, O(1)
    d = mem.nearest_distances(r[[5, 7]], r)
    assert d.max() < 1e-5


def test_shapes_and_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError, match="widths differ"):
        mem.nearest_distances(_features(0, 3, 4), _features(1, 3, 5))
    bad = _features(0, 3)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mem.nearest_distances(bad, _features(1, 3))


def _sets(seed: int = 0):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(300, 8))
    real = rng.normal(size=(200, 8))  # unseen draws of the same distribution
    real_ctrl = rng.normal(size=(200, 8))
    return train, real, real_ctrl


def test_a_model_drawing_new_images_is_not_flagged() -> None:
    train, real, real_ctrl = _sets()
    rng = np.random.default_rng(9)
    gen, gen_ctrl = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    m = mem.memorisation_summary(
        gen_features=gen,
        real_features=real,
        train_features=train,
        gen_pairs=(gen, gen_ctrl),
        real_pairs=(real, real_ctrl),
        gen_digests=[f"g{i}" for i in range(200)],
        input_digests=[f"c{i}" for i in range(200)],
        train_digests={f"t{i}" for i in range(300)},
    )
    assert m.flags == ()
    assert m.copy_rate < 0.05 and m.input_copy_rate < 0.05
    assert m.exact_train_copies == 0.0 and m.exact_input_copies == 0.0


def test_training_copies_are_flagged_by_features_and_by_pixels() -> None:
    train, real, real_ctrl = _sets()
    pick = np.random.default_rng(3).integers(0, 300, 200)
    m = mem.memorisation_summary(
        gen_features=train[pick],
        real_features=real,
        train_features=train,
        gen_pairs=(train[pick], real_ctrl),
        real_pairs=(real, real_ctrl),
        gen_digests=[f"t{i}" for i in pick],
        input_digests=[f"c{i}" for i in range(200)],
        train_digests={f"t{i}" for i in range(300)},
    )
    assert m.copy_rate == 1.0 and m.exact_train_copies == 1.0
    assert m.median_train_distance < 1e-6 < m.real_median_train_distance
    assert m.flags == ("copies training images",)
    # the pixel check alone flags too (no features)
    p = mem.memorisation_summary(
        gen_digests=[f"t{i}" for i in pick], train_digests={f"t{i}" for i in range(300)}
    )
    assert p.copy_rate is None and p.exact_input_copies is None
    assert p.flags == ("copies training images",)


def test_returning_the_input_is_flagged_as_copying_the_input() -> None:
    train, real, real_ctrl = _sets()
    ctrl = np.random.default_rng(5).normal(size=(200, 8))
    m = mem.memorisation_summary(
        gen_features=ctrl,
        real_features=real,
        train_features=train,
        gen_pairs=(ctrl, ctrl),
        real_pairs=(real, real_ctrl),
        gen_digests=[f"c{i}" for i in range(200)],
        input_digests=[f"c{i}" for i in range(199)] + [None],
        train_digests={f"t{i}" for i in range(300)},
    )
    assert m.exact_input_copies == 199 / 200 and m.input_copy_rate == 1.0
    assert m.flags == ("copies its input",)


def test_a_few_copies_below_the_flag_rate_are_reported_but_not_flagged() -> None:
    train, real, _ = _sets()
    rng = np.random.default_rng(11)
    gen = rng.normal(size=(200, 8))
    gen[:4] = train[:4]  # 2 %: above the real crops' 1 % but under the 10 % flag rate
    m = mem.memorisation_summary(gen_features=gen, real_features=real, train_features=train)
    assert 0.02 <= m.copy_rate < mem.FLAG_RATE
    assert m.input_copy_rate is None and m.exact_train_copies is None and m.flags == ()


def test_the_set_function_reads_control_rows_and_digests_from_set_inputs() -> None:
    from cellbench.metrics.registry import SetInputs

    train, real, real_ctrl = _sets()
    ctrl = real_ctrl[:50]
    gen_control = np.arange(200) % 50
    gen_control[0] = -1  # a task whose control is not among the rows
    inputs = SetInputs(
        compounds=np.array(["a"] * 200),
        moas=np.array(["m"] * 200),
        real_compounds=np.array(["a"] * 200),
        real_moas=np.array(["m"] * 200),
        seed=0,
        gen_inception=ctrl[gen_control % 50],
        real_inception=real,
        control_inception=ctrl,
        control_digests=np.array([f"c{i}" for i in range(50)]),
        gen_digests=np.array([f"c{i % 50}" for i in gen_control]),
        gen_control=gen_control,
        real_control=np.arange(200) % 50,
        train_inception=train,
        train_digests=frozenset(f"t{i}" for i in range(300)),
    )
    out = mem.memorisation_metrics(inputs)
    assert set(out) == {"memorisation", "input_copies"}
    assert out["input_copies"].value == 1.0  # the 199 images with a known control copy it
    d = out["memorisation"].detail
    assert d["exact_input_copies"] == 199 / 200 and d["flags"] == ["copies its input"]
    assert out["memorisation"].value < mem.FLAG_RATE


def test_training_arrays_hold_every_training_crop_digest_and_come_back_from_the_cache(
    mini_ds, tmp_path, monkeypatch
) -> None:
    from cellbench.io import sha256_bytes
    from cellbench.scoring import training_set
    from cellbench.scoring.artifacts import Artifacts
    from cellbench.scoring.scorer import Scorer

    monkeypatch.setenv("CELLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    scorer = Scorer(Artifacts.shipped("bbbc021-sim"), use_inception=False)
    keys = mini_ds.split("train")["SAMPLE_KEY"].tolist()
    first = training_set.training_arrays(scorer, mini_ds, use_inception=False)
    assert first.n_crops == len(keys) and first.inception is None
    assert sha256_bytes(mini_ds.load_crop(keys[3]).tobytes()) in first.digests
    test_key = mini_ds.split("test")["SAMPLE_KEY"].iloc[0]
    assert sha256_bytes(mini_ds.load_crop(test_key).tobytes()) not in first.digests

    def refuse(*_a, **_k):
        raise AssertionError("the cached digests were not used")

    monkeypatch.setattr(type(mini_ds), "load_crops", refuse)
    assert training_set.training_arrays(scorer, mini_ds, use_inception=False) == first


def test_the_training_feature_sample_is_seeded_and_capped() -> None:
    from cellbench.scoring.training_set import sample_rows

    assert sample_rows(5, cap=10).tolist() == [0, 1, 2, 3, 4]
    a, b = sample_rows(1000, cap=100), sample_rows(1000, cap=100)
    assert len(a) == 100 and len(set(a.tolist())) == 100 and (a == b).all()
    assert (np.diff(a) > 0).all()
