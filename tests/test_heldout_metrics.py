"""The set-level held-out metrics: precision/recall/density/coverage and per-compound retrieval.

Each is checked against a direct computation written here (full distance matrices, Python loops)
and against the reference packages' outputs on fixed features: ``prdc`` 0.2 (Naeem et al.'s) and
``copairs`` 0.5.5, run in a scratch virtual environment outside the repository (neither is a
dependency of cellbench) on the features of :func:`fixed_features`, 2026-12-06; their outputs are
pasted below.
"""

from __future__ import annotations

import numpy as np
import pytest

from cellbench.metrics import neighbours
from cellbench.metrics.prdc import compute_prdc, prdc
from cellbench.metrics.registry import SetInputs, compute_set, set_fn_names
from cellbench.metrics.retrieval import (
    average_precisions,
    compound_ranks,
    retrieval_inception,
)


def fixed_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Four compounds in 6 dimensions: real (46) and generated (42) features with labels."""
    rng = np.random.default_rng(2020)
    centres = rng.normal(0, 1.5, size=(4, 6))
    real_c = np.repeat(np.array(["a", "b", "c", "d"]), [12, 9, 15, 10])
    gen_c = np.repeat(np.array(["a", "b", "c", "d"]), [10, 11, 8, 13])
    idx = {"a": 0, "b": 1, "c": 2, "d": 3}
    real = np.stack([centres[idx[c]] for c in real_c]) + rng.normal(size=(len(real_c), 6))
    gen = np.stack([centres[idx[c]] for c in gen_c]) * 0.7 + rng.normal(
        0.3, 1.2, size=(len(gen_c), 6)
    )
    return real, real_c, gen, gen_c


# prdc.compute_prdc(real, gen, nearest_k) of prdc 0.2 on fixed_features()
PRDC_PACKAGE = {
    5: {
        "precision": 0.9761904761904762,
        "recall": 1.0,
        "density": 0.7904761904761906,
        "coverage": 0.8913043478260869,
    },
    3: {
        "precision": 0.8095238095238095,
        "recall": 0.9130434782608695,
        "density": 0.6666666666666666,
        "coverage": 0.717391304347826,
    },
}
# copairs.map.average_precision of copairs 0.5.5 on fixed_features(): generated and real rows in
# one table, pos_sameby=["compound"], pos_diffby=["side"], neg_diffby=["compound", "side"],
# distance="euclidean"; the generated rows' average_precision
COPAIRS_AP = [
    1.0, 0.9614769489769489, 0.9707362082362082, 0.7169772722404301, 0.835433201058201,
    0.4625588752176774, 0.4197201563868231, 0.6784597279082574, 0.7226034253414285,
    0.9880952380952381, 0.545354162745467, 0.684522422022422, 0.9436868686868686,
    0.7439474106140772, 0.526350809684143, 0.79001924001924, 0.7179852554852554,
    0.19678137964296513, 0.6905483405483405, 0.37443019943019945, 0.2961547234127879,
    0.7634281570699244, 0.7503744039421788, 0.830332390806075, 0.6149453713852691,
    0.5299221662792354, 0.7121042937791581, 0.6466268177238942, 0.6006950067476384,
    0.7238600479979791, 0.8435056610056609, 1.0, 0.6585975093849857, 0.9455555555555556,
    0.9173737373737374, 0.9666666666666666, 0.5800417710944027, 0.9833333333333334,
    0.2947116419939001, 0.6677200577200577, 0.18684884480211955, 0.9247863247863247,
]  # fmt: skip


# ------------------------------------------------------------------------ direct computations
def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def direct_prdc(real: np.ndarray, gen: np.ndarray, k: int) -> dict[str, float]:
    """The definitions, with full matrices of exact differences and sorted rows."""
    r_real = np.sort(_dist(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_gen = np.sort(_dist(gen, gen), axis=1)[:, k]
    d = _dist(gen, real)  # generated x real
    inside = d < r_real[None, :]
    return {
        "precision": float(inside.any(axis=1).mean()),
        "recall": float((d < r_gen[:, None]).any(axis=0).mean()),
        "density": float(inside.sum(axis=1).mean() / k),
        "coverage": float((d.min(axis=0) < r_real).mean()),
    }


def direct_ap(gen, gen_c, real, real_c) -> list[float]:
    """Average precision by a Python loop: rank by (distance, positive), negatives first."""
    out = []
    for g, c in zip(gen, gen_c, strict=True):
        d = np.sqrt(((real - g) ** 2).sum(1))
        ranked = sorted(zip(d.tolist(), (real_c == c).tolist(), strict=True))
        hits, total = 0, 0.0
        for rank, (_, pos) in enumerate(ranked, start=1):
            if pos:
                hits += 1
                total += hits / rank
        out.append(total / (real_c == c).sum())
    return out


# ----------------------------------------------------------------------------------- PRDC
@pytest.mark.parametrize("k", [5, 3])
def test_prdc_equals_the_prdc_package_on_fixed_features(k: int) -> None:
    real, _, gen, _ = fixed_features()
    got = compute_prdc(real, gen, k)
    assert got == pytest.approx(PRDC_PACKAGE[k], abs=1e-12)
    assert got == pytest.approx(direct_prdc(real, gen, k), abs=1e-12)


@pytest.mark.parametrize("block", [1, 7, 512])
def test_prdc_equals_the_direct_computation_in_any_block_size(monkeypatch, block: int) -> None:
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", block)
    rng = np.random.default_rng(block)
    real = rng.normal(size=(40, 5))
    gen = np.concatenate([rng.normal(0.5, 1.5, size=(25, 5)), real[:6]])  # some exact copies
    got = compute_prdc(real, gen)
    assert got == pytest.approx(direct_prdc(real, gen, 5), abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1


def test_prdc_argument_order_a_copy_of_one_real_image_is_precise_but_not_diverse() -> None:
    """One real image returned for every task: every generated image lies in the real manifold
    (precision 1) but covers none of it (recall 0, coverage about k/m); swapping the two sets, as
    torch-fidelity is reported to do, would give the opposite, so the order is the test."""
    real, _, _, _ = fixed_features()
    copy = np.repeat(real[3:4], 42, axis=0)
    got = compute_prdc(real, copy)
    assert got["precision"] == 1.0 and got["recall"] == 0.0
    assert 0 < got["coverage"] <= 6 / len(real)  # the copied image's ball and a few neighbours'
    swapped = compute_prdc(copy, real)  # real images scored as if generated
    assert swapped["precision"] == 0.0 and swapped["recall"] == 1.0
    # the real images against themselves: every ball holds k points, density exactly 1
    assert compute_prdc(real, real) == {
        "precision": 1.0,
        "recall": 1.0,
        "density": 1.0,
        "coverage": 1.0,
    }


def test_prdc_is_nan_without_enough_images_and_per_moa_in_the_detail() -> None:
    real, real_c, gen, gen_c = fixed_features()
    assert all(np.isnan(v) for v in compute_prdc(real[:5], gen).values())
    moa = {"a": "M1", "b": "M1", "c": "M2", "d": "M2"}
    inputs = SetInputs(
        compounds=gen_c,
        moas=np.array([moa[c] for c in gen_c]),
        real_compounds=real_c,
        real_moas=np.array([moa[c] for c in real_c]),
        seed=0,
        gen_inception=gen,
        real_inception=real,
    )
    got = prdc(inputs)
    assert got["precision"].value == PRDC_PACKAGE[5]["precision"]
    m2 = got["coverage"].detail["per_moa"]["M2"]
    g, r = inputs.moas == "M2", inputs.real_moas == "M2"
    assert m2 == {
        "value": direct_prdc(real[r], gen[g], 5)["coverage"],
        "n_gen": int(g.sum()),
        "n_real": int(r.sum()),
    }


# ------------------------------------------------------------------------------ retrieval
def test_average_precision_equals_copairs_and_the_direct_loop() -> None:
    real, real_c, gen, gen_c = fixed_features()
    ap = average_precisions(gen, gen_c, real, real_c)
    np.testing.assert_allclose(ap, COPAIRS_AP, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ap, direct_ap(gen, gen_c, real, real_c), rtol=0, atol=1e-12)


def test_average_precision_ties_count_against_the_generator(monkeypatch) -> None:
    """Integer features with many equal distances: a negative tied with a positive ranks first."""
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", 3)
    rng = np.random.default_rng(1)
    real = rng.integers(0, 3, size=(30, 2)).astype(float)
    real_c = rng.choice(["a", "b", "c"], size=30)
    gen = rng.integers(0, 3, size=(20, 2)).astype(float)
    gen_c = rng.choice(["a", "b", "c", "z"], size=20)  # z: no real image -> NaN
    ap = average_precisions(gen, gen_c, real, real_c)
    has_real = gen_c != "z"
    assert np.isnan(ap[~has_real]).all() and (~has_real).any()
    want = direct_ap(gen[has_real], gen_c[has_real], real, real_c)
    np.testing.assert_allclose(ap[has_real], want, rtol=0, atol=1e-12)
    # all generated images at one point: every real image at one distance, AP of a random order
    # at its worst (all negatives first): mean over positives of i / (n_neg + i)
    same = average_precisions(np.zeros((1, 2)), np.array(["a"]), np.zeros((30, 2)), real_c)
    n_pos, n_neg = int((real_c == "a").sum()), int((real_c != "a").sum())
    worst = np.mean([i / (n_neg + i) for i in range(1, n_pos + 1)])
    assert same[0] == pytest.approx(worst, abs=1e-12)


def test_compound_ranks_equal_a_direct_ranking() -> None:
    real, real_c, gen, gen_c = fixed_features()
    ranks = compound_ranks(gen, gen_c, real, real_c)
    names = sorted(set(real_c))
    for c in sorted(set(gen_c)):
        mean = gen[gen_c == c].mean(0)
        d = {n: float(np.linalg.norm(mean - real[real_c == n].mean(0))) for n in names}
        assert ranks[c] == 1 + sum(d[n] <= d[c] for n in names if n != c)


def _inputs(gen, gen_c, real, real_c, **kw) -> SetInputs:
    return SetInputs(
        compounds=gen_c,
        moas=np.array(["M"] * len(gen_c)),
        real_compounds=real_c,
        real_moas=np.array(["M"] * len(real_c)),
        seed=0,
        gen_inception=gen,
        real_inception=real,
        **kw,
    )


def test_retrieval_finds_the_right_compounds_and_misses_swapped_ones() -> None:
    """Real images as the generated set: every compound retrieved first; the same images under
    swapped compound labels: none; a shift shared by every generated image changes nothing."""
    rng = np.random.default_rng(5)
    names = np.array([f"c{i}" for i in range(8)])
    centres = rng.normal(0, 2.0, size=(8, 16))
    real_c = np.repeat(names, 12)
    real = centres[np.repeat(np.arange(8), 12)] + rng.normal(size=(96, 16))
    gen = centres[np.repeat(np.arange(8), 10)] + rng.normal(size=(80, 16))
    gen_c = np.repeat(names, 10)
    good = retrieval_inception(_inputs(gen + 3.0, gen_c, real, real_c))
    assert good["retrieval_top1"].value == 1.0 and good["retrieval_top5"].value == 1.0
    assert good["retrieval_map"].value > 0.9
    detail = good["retrieval_map"].detail
    assert detail["chance"] == pytest.approx(12 / 96) and detail["n_real_compounds"] == 8
    swapped = np.roll(names, 1)[np.repeat(np.arange(8), 10)]  # c0's images labelled c1, ...
    bad = retrieval_inception(_inputs(gen, swapped, real, real_c))
    assert bad["retrieval_top1"].value == 0.0
    assert bad["retrieval_map"].value < 0.2
    assert good["retrieval_top1"].detail["rank"] == dict.fromkeys(names.tolist(), 1)


def test_profile_retrieval_is_absent_without_a_profile_and_computed_with_one() -> None:
    real, real_c, gen, gen_c = fixed_features()
    names = set_fn_names()
    without = compute_set(names, _inputs(gen, gen_c, real, real_c))
    assert without["retrieval_map_profile"].absent == "not computed: no morphology profile"
    # a profile whose columns have very different units: scaled by the real SD, so the result
    # equals the one of the unscaled features
    units = np.array([1.0, 1e3, 1e-3, 10.0, 1.0, 1e4])
    inputs = _inputs(gen, gen_c, real, real_c, gen_profile=gen * units, real_profile=real * units)
    with_profile = compute_set(names, inputs)
    plain = retrieval_inception(_inputs(gen / real.std(0), gen_c, real / real.std(0), real_c))
    for k in ("top1", "top5", "map"):
        assert with_profile[f"retrieval_{k}_profile"].value == pytest.approx(
            plain[f"retrieval_{k}"].value, abs=1e-9
        )
