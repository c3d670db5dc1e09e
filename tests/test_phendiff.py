"""PhenDiff: classes, the denoising step, inversion + regeneration, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.torch_dataset import PairedCropDataset, to_model_range
from cellbench.errors import CellbenchError
from cellbench.io import sha256_file
from cellbench_baselines.config import resolve_config
from cellbench_baselines.phendiff import PhenDiff, training_classes
from cellbench_baselines.sampling import ddim_invert, ddim_sample
from cellbench_baselines.trainer import train
from tests.conftest import TINY_UNET

TINY = {
    "batch_size": 4,
    "steps": 2,
    "ckpt_every": 2,
    "log_every": 1,
    "ddim_steps": 4,
    "unet": TINY_UNET,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(ds: BBBC021Dataset) -> dict:
    pairs = PairedCropDataset(ds, "train", seed=0)
    return default_collate([pairs[i] for i in range(4)])


def test_classes_follow_the_training_split(mini_ds: BBBC021Dataset) -> None:
    classes = training_classes(mini_ds, "train")
    assert classes == ["DMSO", "cytochalasin D", "nocodazole", "taxol"]
    assert classes[1:] == PairedCropDataset(mini_ds, "train").compounds  # compound_idx + 1
    assert training_classes(mini_ds, "train-iid") == ["DMSO", "nocodazole", "taxol"]
    cfg = resolve_config(PhenDiff.presets, "paper")
    assert cfg["ddim_steps"] == 100 and cfg["network"] == "diffusers"


@pytest.mark.slow
def test_training_reduces_the_denoising_loss(mini_ds: BBBC021Dataset) -> None:
    torch.manual_seed(0)
    cfg = resolve_config(PhenDiff.presets, {**TINY, "lr": 3e-3})
    model = PhenDiff.trainable(mini_ds, cfg)
    assert cfg["unet"]["num_classes"] == 4 and cfg["classes"][0] == "DMSO"
    batch = _batch(mini_ds)

    def fixed_loss() -> float:
        torch.manual_seed(321)
        with torch.no_grad():
            return float(model.loss(batch))

    eps = model.diffusion.eps(batch["target"], 10, batch["compound_idx"] + 1)
    assert eps.shape == batch["target"].shape
    before = fixed_loss()
    for step in range(25):
        assert np.isfinite(model.training_step(batch, step)["loss"])
    after = fixed_loss()
    assert after < 0.9 * before, (before, after)


@pytest.fixture
def run_dir(mini_ds: BBBC021Dataset, tmp_path: Path) -> Path:
    cfg = resolve_config(PhenDiff.presets, TINY)
    train(PhenDiff, "phendiff", mini_ds, cfg, tmp_path / "run")
    return tmp_path / "run"


def test_translation_is_inversion_then_regeneration(run_dir: Path, mini_ds: BBBC021Dataset) -> None:
    gen = PhenDiff.load(mini_ds, run_dir)
    with torch.no_grad():
        for p in gen.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctrl = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:2])
    out = gen.generate(ctrl, ["taxol", "nocodazole"], [0.3, 1.0], seed=0)
    assert out.shape == ctrl.shape and out.dtype == np.uint8
    # deterministic, and independent of the seed (DDIM with eta = 0)
    assert np.array_equal(out, gen.generate(ctrl, ["taxol", "nocodazole"], [0.3, 1.0], seed=9))
    # by hand: invert under class 0 (DMSO), regenerate under the compounds' classes
    d = gen.diffusion
    x = to_model_range(ctrl)
    labels = torch.tensor([gen.classes.index("taxol"), gen.classes.index("nocodazole")])
    with torch.no_grad():
        z = ddim_invert(
            lambda z, k: d.eps(z, k, torch.zeros(2, dtype=torch.long)), x, d.alpha_bars, d.timesteps
        )
        y = ddim_sample(lambda z, k: d.eps(z, k, labels), z, d.alpha_bars, d.timesteps)
    want = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(want.astype(int) - out.astype(int)).max() <= 1
    # the class matters
    other = gen.generate(ctrl, ["cytochalasin D", "cytochalasin D"], [0.3, 0.3], seed=0)
    assert not np.array_equal(out, other)


def test_round_trip_and_unknown_compound(run_dir: Path, mini_ds: BBBC021Dataset) -> None:
    a = PhenDiff.load(mini_ds, run_dir)
    b = PhenDiff.load(mini_ds, run_dir / "checkpoints" / "step-00000002" / "model.safetensors")
    ctrl = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:2])
    assert np.array_equal(
        a.generate(ctrl, ["taxol"] * 2, [1.0] * 2, 0), b.generate(ctrl, ["taxol"] * 2, [1.0] * 2, 0)
    )
    # load resolves both paths to the same checkpoint and reports what it read
    ckpt = run_dir / "checkpoints" / "step-00000002"
    assert a.checkpoint_path == b.checkpoint_path == ckpt
    assert a.checkpoint_sha256 == b.checkpoint_sha256 == sha256_file(ckpt / "model.safetensors")
    assert a.sampler_settings() == {"ddim_steps": 4}
    with pytest.raises(CellbenchError, match="not trained on compound 'AZ138'") as err:
        a.generate(ctrl[:1], ["AZ138"], [1.0], 0)
    assert "config.json" in str(err.value)
