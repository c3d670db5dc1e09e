"""The one scoring path (``cellbench.scoring``): each feature stage once, artifacts, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellbench.data.layout import MOAS
from cellbench.errors import CellbenchError
from cellbench.scoring import Artifacts, Features, Scorer
from cellbench.scoring.inputs import check_crops, check_moas

REGRESS = Path(__file__).resolve().parent / "regress"


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Eight real bbbc021-sim crops (uint8, 96x96x3) from the committed regression set."""
    return np.load(REGRESS / "images.npy", allow_pickle=False)[:8]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    """A scorer on the shipped bbbc021-sim artifacts, without the Inception network."""
    return Scorer(Artifacts.shipped("bbbc021-sim"), use_inception=False)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory):
    from cellbench.data.sim import write_sim_dataset
    from cellbench.scoring import RewardModel

    data = tmp_path_factory.mktemp("scoring") / "data"
    write_sim_dataset(data / "bbbc021-sim", seed=0, scale="tiny")
    return RewardModel("bbbc021-sim", data_dir=data, use_moa=False)


# ------------------------------------------------------------------------------ the features
def _counting(scorer: Scorer, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Replace the three stages by deterministic fakes that record the batch size of each call."""
    calls: dict[str, list[int]] = {"seg": [], "inception": [], "probs": []}

    def seg(images, on_progress=None, profile=False):
        calls["seg"].append(len(images))
        return np.tile(np.arange(len(scorer.feature_names), dtype=np.float64), (len(images), 1))

    def inception(images, on_progress=None):
        calls["inception"].append(len(images))
        return images.reshape(len(images), -1)[:, :2048].astype(np.float32)

    def probs(feats):
        calls["probs"].append(len(feats))
        p = np.full((len(feats), len(MOAS)), 0.5 / (len(MOAS) - 1))
        p[:, 3] = 0.5
        return p

    monkeypatch.setattr(scorer, "segment_features", seg)
    monkeypatch.setattr(scorer, "inception_features", inception)
    monkeypatch.setattr(scorer, "moa_probs", probs)
    monkeypatch.setattr(scorer, "inception", object())  # "has an Inception network"
    monkeypatch.setattr(scorer, "head", object())
    return calls


def test_features_computes_each_stage_once(
    scorer: Scorer, crops: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(scorer, monkeypatch)
    feats = scorer.features(crops)
    assert isinstance(feats, Features)
    assert calls == {"seg": [8], "inception": [8], "probs": [8]}
    assert feats.seg.shape == (8, len(scorer.feature_names))
    np.testing.assert_array_equal(feats.inception, crops.reshape(8, -1)[:, :2048])
    assert feats.probs is not None and feats.probs.shape == (8, len(MOAS))
    # score = rewards(features): one pass of each stage, the same numbers as the two steps
    moas = [MOAS[3]] * 4 + [MOAS[0]] * 4
    out = scorer.score(crops, moas)
    assert calls == {"seg": [8, 8], "inception": [8, 8], "probs": [8, 8]}
    expected = scorer.rewards(feats.seg, feats.probs, np.array(moas))
    assert set(out) == set(expected)
    for k in expected:
        np.testing.assert_array_equal(out[k], expected[k])
    np.testing.assert_array_equal(out["moa_accuracy"], [1.0] * 4 + [0.0] * 4)
    np.testing.assert_array_equal(out["moa"], [0.5] * 4 + [0.5 / (len(MOAS) - 1)] * 4)


def test_features_skips_what_it_is_told_to(
    scorer: Scorer, crops: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(scorer, monkeypatch)
    given = np.ones((8, len(scorer.feature_names)))
    feats = scorer.features(crops, seg=given)  # segmented in a worker process
    assert calls == {"seg": [], "inception": [8], "probs": [8]}
    assert feats.seg is given
    feats = scorer.features(crops, use_inception=False)
    assert calls == {"seg": [8], "inception": [8], "probs": [8]}
    assert feats.inception is None and feats.probs is None
    with pytest.raises(ValueError, match="3 segmentation feature rows for 8 images"):
        scorer.features(crops, seg=given[:3])


def test_features_reports_its_phases(scorer: Scorer, crops: np.ndarray) -> None:
    seen: list[tuple[str, int, int]] = []
    feats = scorer.features(crops, on_progress=lambda p, d, t: seen.append((p, d, t)))
    assert seen and {p for p, _, _ in seen} == {"segmenting"} and seen[-1][1:] == (8, 8)
    assert feats.inception is None and feats.probs is None  # this scorer has no Inception
    np.testing.assert_array_equal(feats.seg, scorer.segment_features(crops))


# ------------------------------------------------------------------------------ the artifacts
def test_artifacts_lookup_order(tmp_path: Path) -> None:
    shipped = Artifacts.shipped("bbbc021-sim")
    assert shipped.local_dir is None and shipped.card.dna_channel == 2
    packaged = shipped.reference_path("classical")
    assert packaged.parent.name == "bbbc021-sim" and packaged.parent.parent.name == "resources"
    assert shipped.classifier_path().name == "classifier"
    local = Artifacts("bbbc021-sim", shipped.card, tmp_path / "cellbench_artifacts")
    assert local.reference_path("classical") == packaged  # nothing local yet: the shipped copy
    (tmp_path / "cellbench_artifacts").mkdir()
    (tmp_path / "cellbench_artifacts" / "reference_classical.json").write_text("{}")
    assert local.reference_path("classical") == tmp_path / "cellbench_artifacts" / (
        "reference_classical.json"
    )
    with pytest.raises(
        CellbenchError, match=r"no reference_cellpose\.json for dataset bbbc021-sim"
    ):
        local.reference_path("cellpose")
    with pytest.raises(CellbenchError, match="cellbench classifier train --dataset bbbc021"):
        Artifacts.shipped("bbbc021").classifier_path()


# ------------------------------------------------------------------------------ bad input
def test_check_crops_accepts_both_layouts_exactly(crops: np.ndarray) -> None:
    import torch

    from cellbench.data.torch_dataset import from_model_range, to_model_range

    np.testing.assert_array_equal(check_crops(crops), crops)
    np.testing.assert_array_equal(check_crops(torch.from_numpy(crops)), crops)
    model = to_model_range(crops)
    np.testing.assert_array_equal(check_crops(model), crops)
    np.testing.assert_array_equal(check_crops(model), from_model_range(model))
    np.testing.assert_array_equal(check_crops(model.numpy().astype(np.float64)), crops)
    np.testing.assert_array_equal(
        check_crops(model.to(torch.bfloat16)), from_model_range(model.to(torch.bfloat16))
    )
    unit = np.moveaxis(crops, -1, 1).astype(np.float32) / 255.0
    np.testing.assert_array_equal(check_crops(unit, value_range=(0, 1)), crops)
    np.testing.assert_array_equal(check_crops(unit * 255.0, value_range=(0, 255)), crops)


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda c: c[:, :64, :64], {}, r"uint8 images have shape \(8, 64, 64, 3\)"),
        (lambda c: np.moveaxis(c, -1, 1), {}, "uint8 batches are channels-last"),
        (lambda c: c[0], {}, r"shape \(96, 96, 3\), not a batch"),
        (lambda c: c[:0], {}, "the batch holds no image"),
        (lambda c: c.astype(np.int64), {}, "dtype int64"),
        (lambda c: c > 100, {}, "dtype bool"),
        (lambda c: c.tolist(), {}, "images are a list"),
        (lambda c: c.astype(np.float32) / 127.5 - 1, {}, "float batches are channels-first"),
        (lambda c: np.moveaxis(c, -1, 1).astype(np.float32), {}, r"outside the declared range"),
        (lambda c: np.moveaxis(c, -1, 1) / 255.0, {}, r"look like images in \[0, 1\]"),
        (lambda c: np.moveaxis(c, -1, 1) / 127.5 - 1, {"value_range": (0, 1)}, "outside"),
        (lambda c: np.full((2, 3, 96, 96), np.nan), {}, "NaN or infinite"),
        (lambda c: np.zeros((2, 3, 96, 96)), {"value_range": (1, 1)}, "is empty"),
        (lambda c: c, {"value_range": (-1, 1)}, "uint8 images cannot be in value_range"),
    ],
)
def test_check_crops_refuses_bad_batches(crops: np.ndarray, make, kwargs, message) -> None:
    with pytest.raises(CellbenchError, match=message) as info:
        check_crops(make(crops), **kwargs)
    assert info.value.fix  # every refusal names the fix


def test_check_moas() -> None:
    np.testing.assert_array_equal(check_moas((MOAS[0], MOAS[1]), 2), [MOAS[0], MOAS[1]])
    with pytest.raises(CellbenchError, match=r"1 MoA name\(s\) for 2 image\(s\)"):
        check_moas([MOAS[0]], 2)
    with pytest.raises(CellbenchError, match="one string"):
        check_moas(MOAS[0], 2)
    with pytest.raises(CellbenchError, match="unknown MoA 'Actin disruptor'; did you mean"):
        check_moas(["Actin disruptor", MOAS[0]], 2)
    with pytest.raises(CellbenchError, match="unknown MoA 'DMSO'"):
        check_moas(["DMSO"], 1)


def test_reward_model_refuses_bad_input(reward_model, crops: np.ndarray) -> None:
    """The [0, 1]-as-[-1, 1] batch of the trial is refused; declared, it scores like uint8."""
    from cellbench.data.torch_dataset import to_model_range

    moas = [MOAS[0]] * len(crops)
    good = reward_model(crops, moas)
    unit = to_model_range(crops) * 0.5 + 0.5  # [0, 1] floats
    with pytest.raises(CellbenchError, match=r"pass value_range=\(0, 1\)"):
        reward_model(unit, moas)
    declared = reward_model(unit, moas, value_range=(0, 1))
    for k in good:
        np.testing.assert_array_equal(declared[k].numpy(), good[k].numpy())
    np.testing.assert_array_equal(
        reward_model(to_model_range(crops), moas)["overall"], good["overall"]
    )
    with pytest.raises(CellbenchError, match=r"7 MoA name\(s\) for 8 image\(s\)"):
        reward_model(crops, moas[:7])
    with pytest.raises(CellbenchError, match="unknown MoA"):
        reward_model(crops, ["not a moa"] * len(crops))
    with pytest.raises(CellbenchError, match="shape"):
        reward_model(crops[:, :48, :48], moas)
    with pytest.raises(CellbenchError, match="dtype"):
        reward_model(crops.astype(np.int32), moas)


@pytest.mark.slow
def test_rollout_rewards_in_worker_processes_match_inline(reward_model, crops: np.ndarray) -> None:
    """CellFluxRL's rollout scorer: features computed in a spawned worker give the inline rewards."""
    from cellbench_baselines.cellflux_rl import RolloutRewards

    moas = [MOAS[0]] * 4 + [MOAS[5]] * 4
    weights = {"nuc_in_cyto": 1.0, "roundness": 1.0}  # no moa: the workers only segment
    inline = RolloutRewards(reward_model.dataset, weights, workers=0)
    pooled = RolloutRewards(reward_model.dataset, weights, workers=1)
    try:
        a = inline.collect([inline.submit(crops[:5], moas[:5]), inline.submit(crops[5:], moas[5:])])
        b = pooled.collect([pooled.submit(crops[:5], moas[:5]), pooled.submit(crops[5:], moas[5:])])
    finally:
        pooled.close()
    expected = reward_model(crops, moas)
    assert set(b) == set(expected)
    for k in expected:
        np.testing.assert_array_equal(a[k], expected[k].numpy())
        np.testing.assert_array_equal(b[k], expected[k].numpy())
