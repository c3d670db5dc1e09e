"""The ``unet`` segmentation backend: shipped weights, their check, accuracy floors, real crops."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_data_or_skip

from cellbench.errors import CellbenchError
from cellbench.features.segment import unet
from cellbench.features.segment.backends import UNetBackend, get_backend
from cellbench.features.segment.classical import FEATURE_NAMES, features_from_masks
from cellbench.features.segment.evaluate import f1_at_iou
from cellbench.io import sha256_file


@pytest.fixture(scope="module")
def net() -> unet.TinyUNet:
    return unet.load_net()


def test_shipped_weights_match_their_sha256(net: unet.TinyUNet) -> None:
    assert sha256_file(unet.WEIGHTS_PATH) == unet.WEIGHTS_SHA256
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params < 200_000  # small: 122,339 parameters
    be = get_backend("unet")
    assert isinstance(be, UNetBackend)
    assert be.identity()["weights"] == {unet.WEIGHTS_PATH.name: unet.WEIGHTS_SHA256}
    assert be.identity()["version"] == unet.MODEL_VERSION


def test_altered_or_unreadable_weights_are_refused(tmp_path) -> None:
    data = bytearray(unet.WEIGHTS_PATH.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "nucleus_unet.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CellbenchError, match="sha256") as e:
        unet.load_net(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(CellbenchError, match="missing"):
        unet.load_net(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CellbenchError, match="cannot be read"):
        unet.load_net(junk, sha256=None)


@pytest.mark.parametrize("radius", [3, 12, 50])
def test_nuclei_from_3_to_50_px(net: unet.TinyUNet, radius: int) -> None:
    """The classical scale estimate brings every radius to the network's canonical size."""
    from test_segment import _synthetic_nuclei

    img, truth = _synthetic_nuclei(radius)
    pred = unet.segment_nuclei(net, img)
    # measured with the shipped weights: F1 @ 0.5 and @ 0.75 = 1.0 at 3, 12 and 50 px
    assert f1_at_iou(pred, truth, 0.5) == 1.0
    assert f1_at_iou(pred, truth, 0.75) >= 0.95


def test_backend_features_on_sim_crops(one_torch_thread) -> None:
    """Batch and crop-by-crop features agree; every simulated crop has a nucleus."""
    from cellbench.data import sim

    rng = np.random.default_rng(3)
    style = sim.plate_style(rng)
    moas = ["DMSO", "Aurora kinase inhibitors", "Actin disruptors", "Eg5 inhibitors"] * 2
    crops = np.stack([sim.render_crop(rng, m, 1.0, style) for m in moas])
    be = get_backend("unet")
    feats = be.features(crops, dna_channel=2)
    one = [
        [features_from_masks(be.segment(c, dna_channel=2))[k] for k in FEATURE_NAMES] for c in crops
    ]
    np.testing.assert_allclose(feats, np.array(one))
    assert (feats[:, 0] >= 1).all()
    empty = be.features(np.zeros((2, 96, 96, 3), np.uint8), dna_channel=2)
    assert (empty[:, 0] == 0).all()
    # with the morphology profile (what `cellbench eval` asks for): the same six features first,
    # then the profile of the same masks
    from cellbench.features.profile import profile_stack

    both = be.features(crops[:3], dna_channel=2, profile=True)
    np.testing.assert_allclose(both[:, : len(FEATURE_NAMES)], feats[:3])
    stack = be.segment_stack(crops[:3], dna_channel=2)
    want = profile_stack(crops[:3], stack.nuclei, stack.cells, dna_channel=2)
    np.testing.assert_allclose(both[:, len(FEATURE_NAMES) :], want)


#: mean F1 at IoU 0.5 and 0.75 of the shipped network on DSB2018 images 0, 16, 32, 48, 64 (sorted
#: by id), measured 2026-12-06 (in-sample: the shipped network was trained on all 66 images)
F1_FLOOR = (0.8497, 0.7764)


def _dsb(names: list[str]):
    from cellbench.features.segment.evaluate import read_dsb

    root = shared_data_or_skip("real_seg", "dsb2018_stage1_train_subset")
    for n in names:
        yield read_dsb(root, n)


@pytest.mark.shared
def test_dsb2018_f1_floor(net: unet.TinyUNet) -> None:
    """F1 on five DSB2018 images does not fall below what the shipped network reached."""
    from pathlib import Path

    root = shared_data_or_skip("real_seg", "dsb2018_stage1_train_subset")
    names = sorted(p.stem for p in Path(root, "images").glob("*.png"))[:66:16]
    f = np.array(
        [
            [f1_at_iou(p, g, t) for t in (0.5, 0.75)]
            for p, g in ((unet.segment_nuclei(net, i), g) for i, g in _dsb(names))
        ]
    )
    assert f[:, 0].mean() >= F1_FLOOR[0] - 0.02
    assert f[:, 1].mean() >= F1_FLOOR[1] - 0.02


@pytest.mark.shared
def test_real_bbbc021_crops_have_nuclei() -> None:
    from test_segment import _real_crops

    crops, _ = _real_crops()
    feats = get_backend("unet").features(crops, dna_channel=2)
    assert (feats[:, 0] >= 1).all()
