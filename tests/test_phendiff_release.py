"""PhenDiff pipeline folders: diffusers' UNet2DModel keys, the DDIM schedules, DDIB, bad folders.

The folders are written by cellbench's own code in the layout the authors' training script saves
(``diffusers`` 0.18.2 ``save_pretrained``); no ``diffusers`` is needed. The parity against the
authors' code itself is measured outside the repository (docs/generators.md, "PhenDiff").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench.io import sha256_file
from cellbench_baselines.nn.diffusers_unet import DiffusersUNet2D
from cellbench_baselines.phendiff import PhenDiff
from cellbench_baselines.phendiff_release import (
    DDIMInverseSchedule,
    DDIMSchedule,
    PipelinePhenDiff,
    ddib_translate,
)
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the authors' BBBC021 denoiser (models_configs/denoiser/small_denoiser_config.json), as facts
AUTHORS_UNET = {
    "_class_name": "CondUNet2DModel",
    "_diffusers_version": "0.18.2",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [128, 256, 512],
    "center_input_sample": False,
    "class_embed_type": None,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": 2,
    "out_channels": 3,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_embedding_type": "positional",
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
}
#: their scheduler (models_configs/noise_scheduler/3k_steps_clipping_rescaling.json)
AUTHORS_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.18.2",
    "beta_schedule": "scaled_linear",
    "beta_end": 0.02,
    "beta_start": 0.0001,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 3000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}
#: parameters of their CustomCondUNet2DModel built from AUTHORS_UNET with diffusers 0.18.2
#: (measured outside the repository, docs/generators.md "PhenDiff"); +512 per extra class
AUTHORS_UNET_PARAMETERS = 62_826_243

TINY_UNET = {
    **AUTHORS_UNET,
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "num_class_embeds": 3,
}
CLASSES = ["DMSO", "nocodazole", "taxol"]


def test_unet_has_diffusers_key_names_and_the_authors_parameter_count() -> None:
    with torch.device("meta"):
        unet = DiffusersUNet2D(AUTHORS_UNET)
    keys = set(unet.state_dict())
    for key in (
        "conv_in.weight",
        "time_embedding.linear_1.weight",
        "time_embedding.linear_2.bias",
        "class_embedding.weight",
        "down_blocks.0.resnets.0.time_emb_proj.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight",  # 128 -> 256 channels
        "down_blocks.2.attentions.1.to_q.weight",
        "down_blocks.2.attentions.1.to_out.0.bias",
        "down_blocks.2.attentions.1.group_norm.weight",
        "mid_block.attentions.0.to_v.weight",
        "mid_block.resnets.1.norm2.weight",
        "up_blocks.0.resnets.2.conv_shortcut.weight",
        "up_blocks.0.attentions.2.to_k.bias",
        "up_blocks.1.upsamplers.0.conv.weight",
        "conv_norm_out.weight",
        "conv_out.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("down_blocks.2.downsamplers") for k in keys)  # last level
    assert not any(k.startswith("up_blocks.2.upsamplers") for k in keys)
    assert unet.class_embedding.weight.shape == (2, 512)  # 4 x 128: the time embedding width
    assert sum(p.numel() for p in unet.parameters()) == AUTHORS_UNET_PARAMETERS
    assert unet.down_blocks[2].attentions[0].heads == 512 // 8  # attention_head_dim is per head


def test_paper_preset_is_the_authors_architecture() -> None:
    paper = PhenDiff.presets["paper"]
    assert paper["unet_diffusers"]["block_out_channels"] == [128, 256, 512]
    cfg = {**paper["unet_diffusers"], "num_class_embeds": 2}
    with torch.device("meta"):
        unet = DiffusersUNet2D(cfg)
    assert sum(p.numel() for p in unet.parameters()) == AUTHORS_UNET_PARAMETERS
    assert paper["scheduler"] == {
        k: v for k, v in AUTHORS_SCHEDULER.items() if not k.startswith("_")
    }
    assert paper["ddim_steps"] == 100


def test_schedules_follow_the_config() -> None:
    fwd = DDIMSchedule(AUTHORS_SCHEDULER, 100)
    assert fwd.timesteps[:3] == [2999, 2969, 2939] and fwd.timesteps[-1] == 29
    assert fwd.alphas_cumprod[-1] == 0.0  # zero terminal SNR
    plain = DDIMInverseSchedule(AUTHORS_SCHEDULER, 100)
    assert plain.timesteps[:3] == [0, 30, 60] and plain.timesteps[-1] == 2970
    # the inverse schedule has no zero-SNR rescaling: its alphas are the plain scaled-linear ones
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, 3000) ** 2
    assert torch.allclose(plain.alphas_cumprod, torch.cumprod(1 - betas, 0))
    assert torch.isclose(fwd.alphas_cumprod[0], plain.alphas_cumprod[0])
    # a v-prediction of the true v gives back the clean image exactly (inside the clip range)
    x0, eps = torch.rand(1, 3, 4, 4) * 1.8 - 0.9, torch.randn(1, 3, 4, 4)
    t = 1500
    ab = fwd.alphas_cumprod[t]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    prev = fwd.step(v, t, xt)
    ab_prev = fwd.alphas_cumprod[t - 30]
    assert torch.allclose(prev, ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps, atol=1e-5)
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDIMSchedule({**AUTHORS_SCHEDULER, "timestep_spacing": "odd"}, 10)


def _write_pipeline(folder: Path, *, legacy_names: bool = False, seed: int = 0) -> DiffusersUNet2D:
    """A pipeline folder in the layout of diffusers 0.18.2's ``save_pretrained`` (``.bin``)."""
    torch.manual_seed(seed)
    unet = DiffusersUNet2D(TINY_UNET).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    state = unet.state_dict()
    if legacy_names:  # diffusers' older attention names
        old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        renamed = {}
        for k, v in state.items():
            for new, legacy in old.items():
                k = k.replace(f".{new}.", f".{legacy}.")
            renamed[k] = v
        state = renamed
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    (folder / "unet" / "config.json").write_text(json.dumps(TINY_UNET))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(AUTHORS_SCHEDULER))
    index = {
        "_class_name": "ConditionalDDIMPipeline",
        "_diffusers_version": "0.18.2",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["cond_unet_2d", "CustomCondUNet2DModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    return unet


@pytest.mark.parametrize("legacy", [False, True])
def test_pipeline_folder_translates_by_ddib(
    mini_ds: BBBC021Dataset, tmp_path: Path, legacy: bool
) -> None:
    unet = _write_pipeline(tmp_path / "pipe", legacy_names=legacy)
    gen = PhenDiff.load(mini_ds, tmp_path / "pipe")
    assert isinstance(gen, PipelinePhenDiff)
    assert gen.checkpoint_sha256 == sha256_file(tmp_path / "pipe/unet/diffusion_pytorch_model.bin")
    assert gen.n_parameters() == sum(p.numel() for p in unet.parameters())
    assert gen.sampler_settings()["ddim_steps"] == 100
    gen.sample_steps = 3
    controls = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:2])
    out = gen.generate(controls, ["taxol", "nocodazole"], [1.0, 1.0], seed=0)
    assert out.shape == (2, 96, 96, 3) and out.dtype == np.uint8
    x = torch.from_numpy(controls).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    want = ddib_translate(
        unet, AUTHORS_SCHEDULER, x, torch.tensor([0, 0]), torch.tensor([2, 1]), steps=3
    )
    want_u8 = ((want + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert np.array_equal(out, want_u8.numpy())
    # deterministic: the seed plays no part
    assert np.array_equal(gen.generate(controls, ["taxol", "nocodazole"], [1, 1], seed=9), out)
    with pytest.raises(CellbenchError, match="no class 'AZ138'"):
        gen.generate(controls[:1], ["AZ138"], [1.0], seed=0)


def test_bad_pipeline_folders_are_one_line_errors(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    _write_pipeline(pipe)
    (pipe / "classes.json").unlink()
    with pytest.raises(CellbenchError, match="does not name its classes") as err:
        PhenDiff.load(mini_ds, pipe)
    assert str(pipe / "classes.json") in str(err.value)
    (pipe / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(CellbenchError, match="no DMSO"):
        PhenDiff.load(mini_ds, pipe)
    (pipe / "classes.json").write_text(json.dumps(CLASSES))
    weights = pipe / "unet" / "diffusion_pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CellbenchError, match="truncated or not a readable PyTorch checkpoint"
    ) as err:
        PhenDiff.load(mini_ds, pipe)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)
    weights.write_bytes(data)
    cfg = json.loads((pipe / "unet" / "config.json").read_text())
    (pipe / "unet" / "config.json").write_text(json.dumps({**cfg, "block_out_channels": [16, 64]}))
    with pytest.raises(CellbenchError, match="do not fit"):
        PhenDiff.load(mini_ds, pipe)
    bad_block = {**cfg, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"]}
    (pipe / "unet" / "config.json").write_text(json.dumps(bad_block))
    with pytest.raises(CellbenchError, match="not supported"):
        PhenDiff.load(mini_ds, pipe)


def test_cli_generate_from_pipeline_folder(mini_root: Path, tmp_path: Path) -> None:
    """`cellbench generate phendiff --checkpoint PIPELINE_FOLDER` answers a protocol."""
    _write_pipeline(tmp_path / "pipe")
    data = ("--dataset", "bbbc021", "--data-dir", str(mini_root))
    env = {"OMP_NUM_THREADS": "1"}
    proto = tmp_path / "p.csv"
    res = run_cli("protocol", *data, "--out", str(proto), env=env)
    assert res.returncode == 0, res.stderr
    # keep the tasks of the pipeline's compounds
    lines = proto.read_text().splitlines()
    col = lines[0].split(",").index("compound")
    kept = [ln for ln in lines[1:] if ln.split(",")[col] in CLASSES][:3]
    assert kept
    proto.write_text("\n".join([lines[0], *kept]) + "\n")
    imgs = tmp_path / "imgs"
    res = run_cli(
        "generate", "phendiff", *data, "--checkpoint", str(tmp_path / "pipe"),
        "--protocol", str(proto), "--out", str(imgs), "--sample-steps", "2", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    record = json.loads((imgs / "generation.json").read_text())
    assert record["sampler"]["method"] == "ddib" and record["sampler"]["ddim_steps"] == 2


def test_paper_network_trains_and_translates_from_a_cellbench_run(
    mini_ds: BBBC021Dataset, tmp_path: Path
) -> None:
    """``network: diffusers`` (the paper preset's) trains with the authors' v-prediction loss,
    saves a cellbench run and translates it by DDIB with the run's scheduler."""
    from cellbench_baselines.config import resolve_config
    from cellbench_baselines.trainer import train

    unet = {k: v for k, v in TINY_UNET.items() if not k.startswith("_")}
    spec = {
        "preset": "paper",
        "batch_size": 2,
        "steps": 2,
        "ckpt_every": 2,
        "log_every": 1,
        "ddim_steps": 2,
        "proba_uncond": 0.5,
        "unet_diffusers": unet,
    }
    cfg = resolve_config(PhenDiff.presets, spec)
    torch.manual_seed(0)
    model = PhenDiff.trainable(mini_ds, cfg)
    assert isinstance(model.unet, DiffusersUNet2D) and model.diffusion is None
    assert model.unet.class_embedding.weight.shape[0] == len(cfg["classes"]) == 4
    train(PhenDiff, "phendiff", mini_ds, cfg, tmp_path / "run")
    gen = PhenDiff.load(mini_ds, tmp_path / "run")
    assert isinstance(gen.unet, DiffusersUNet2D)
    assert gen.sampler_settings() == {
        "method": "ddib",
        "ddim_steps": 2,
        "prediction_type": "v_prediction",
    }
    controls = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:2])
    out = gen.generate(controls, ["taxol", "DMSO"], [1.0, 0.0], seed=0)
    x = torch.from_numpy(controls).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    labels = torch.tensor([cfg["classes"].index("taxol"), 0])
    want = ddib_translate(
        gen.unet, cfg["scheduler"], x, torch.zeros(2, dtype=torch.long), labels, 2
    )
    want_u8 = ((want + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert np.array_equal(out, want_u8.numpy())
