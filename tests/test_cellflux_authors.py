"""The CellFlux authors' checkpoint: the published network, their file layout, the safe loader.

The checkpoints here are written by cellbench's own code in the layout of the authors' release
(docs/generators.md, "The authors' checkpoint"): ``torch.save`` of a dict whose ``model`` is their
EMA wrapper's state (``model.<key>``, ``shadow_params.<i>``, ``num_updates``) under their key
names, next to optimiser state and the run's options as a namespace object.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench_baselines.cellflux import PRESETS, SAMPLING_PRESETS, CellFlux, sampling_time_grid
from cellbench_baselines.cellflux_authors import (
    ALLOWED_GLOBALS,
    authors_key_names,
    authors_model_entry,
    find_authors_file,
    read_authors_checkpoint,
)
from cellbench_baselines.nn.layers import AttentionBlock, Downsample, Upsample
from cellbench_baselines.nn.unet import (
    PUBLISHED_CELLFLUX,
    PUBLISHED_CELLFLUX_PARAMETERS,
    unet_from_config,
)
from cellbench_baselines.sampling import edm_sigmas
from cellbench_baselines.trainer import count_parameters
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the published design at a size that runs in milliseconds (two levels, attention at 48x48)
SMALL = {
    **PUBLISHED_CELLFLUX,
    "base_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [48],
}


class NotAllowed:
    """A class outside the loader's allow-list (pickled by reference, so loading it would run
    this module's code)."""

    def __init__(self) -> None:
        self.x = 1


def _random_unet(cfg: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = unet_from_config(cfg)
    with torch.no_grad():  # no zero-initialised layer left: every weight matters
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    return net


def _write_authors_checkpoint(
    path: Path, cfg: dict, *, args: object = None, seed: int = 0, ema: bool = True
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A checkpoint in the authors' layout; returns (raw network, EMA network)."""
    raw, shadow = _random_unet(cfg, seed), _random_unet(cfg, seed + 1)
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4, betas=(0.9, 0.95))
    raw(torch.zeros(1, 3, 96, 96), torch.zeros(1), torch.zeros(1, cfg["cond_dim"])).sum().backward()
    opt.step()  # optimiser state with tensors, as in a real run
    model = authors_model_entry(raw, shadow, num_updates=12) if ema else authors_state(raw)
    if args is None:
        args = types.SimpleNamespace(
            dataset="bbbc021", cfg_scale=0.2, ode_method="heun2", ode_options={"nfe": 50},
            noise_level=1.0, use_ema=True, output_dir="/somewhere", epochs=200,
        )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model,
            "optimizer": opt.state_dict(),
            "lr_schedule": {"base_lrs": [1e-4], "last_epoch": 3},
            "epoch": 3,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0},
            "args": args,
        },
        path,
    )
    return raw, shadow


def authors_state(net: torch.nn.Module) -> dict:
    from cellbench_baselines.cellflux_authors import authors_state_dict

    return authors_state_dict(net)


# ------------------------------------------------------------------------------ the network
def test_paper_preset_is_the_published_network() -> None:
    """56,201,219 parameters: the authors' UNetModel built with their "bbbc021" configuration
    (counted in a scratch folder with their code; docs/generators.md)."""
    cfg = PRESETS["paper"]
    assert cfg["unet"] == PUBLISHED_CELLFLUX
    with torch.device("meta"):
        net = unet_from_config(cfg["unet"])
    assert count_parameters(net) == PUBLISHED_CELLFLUX_PARAMETERS == 56_201_219
    attn = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    assert len(attn) == 4 + 1 + 5 and all(m.heads == 1 for m in attn)  # 48x48 down/up + middle
    resample = [m for m in net.modules() if isinstance(m, (Downsample, Upsample))]
    assert len(resample) == 4 and all(m.conv is None for m in resample)
    assert all(m.eps == 1e-5 for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
    assert cfg["unet"]["time_scale"] == 1.0 and cfg["noise_per"] == "batch"
    # the published sampler: Heun, 50 steps, guidance 0.2, noise 1, EDM grid from t = 1/81
    assert {k: cfg[k] for k in SAMPLING_PRESETS["published"]} == SAMPLING_PRESETS["published"]
    grid = sampling_time_grid(cfg, 50)
    assert len(grid) == 51 and grid[-1] == 1.0
    assert abs(float(grid[0]) - 1.0 / 81.0) < 1e-15 and float(edm_sigmas(50)[0]) == 80.0
    assert float(sampling_time_grid(PRESETS["cpu-small"], 10)[0]) == 0.0  # cellbench's CPU grid


def test_key_names_cover_every_parameter_in_the_authors_order() -> None:
    with torch.device("meta"):
        net = unet_from_config(PUBLISHED_CELLFLUX)
    names = authors_key_names(net)
    assert len(names) == len(list(net.parameters())) == 392
    theirs = list(names.values())
    assert theirs[:2] == ["mol_embed_transform.weight", "mol_embed_transform.bias"]
    assert theirs[2] == "time_embed.0.weight" and theirs[-1] == "out.2.bias"
    assert names["down.0.0.norm1.weight"] == "input_blocks.1.0.in_layers.0.weight"
    assert names["down.5.1.qkv.weight"] == "input_blocks.6.1.qkv.weight"  # level 1 (48x48)
    assert names["middle.1.proj.bias"] == "middle_block.1.proj_out.bias"
    assert names["up.5.1.proj.weight"] == "output_blocks.5.1.proj_out.weight"
    assert names["up.0.0.skip.weight"] == "output_blocks.0.0.skip_connection.weight"
    assert not any(".op." in k for k in theirs)  # average pooling has no weights


# ------------------------------------------------------------------------------ loading
def test_loads_the_ema_weights_and_matches_the_network(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    raw, shadow = _write_authors_checkpoint(path, SMALL)
    run = read_authors_checkpoint(path)
    assert run.meta["weights"] == "ema" and run.meta["epoch"] == 3
    assert run.meta["args"]["cfg_scale"] == 0.2 and "output_dir" not in run.meta["args"]
    assert run.meta["network"] == "published design, other sizes"
    assert run.config["unet"] == SMALL and run.config["preset"] == "paper"
    assert run.sha256 and run.weights_file == path
    net = unet_from_config(run.config["unet"]).eval()
    net.load_state_dict(run.weights["unet"])
    shadow.eval()
    x, t, c = torch.randn(1, 3, 96, 96), torch.tensor([0.8]), torch.randn(1, 1024)
    with torch.no_grad():
        out = net(x, t, c)
        assert torch.equal(out, shadow(x, t, c))  # the EMA weights, bit for bit
        assert not torch.allclose(out, raw.eval()(x, t, c))
    # the same file as a folder, and in the Hugging Face layout
    assert find_authors_file(tmp_path) == path
    hf = tmp_path / "hf" / "checkpoints" / "cellflux" / "bbbc021" / "checkpoint.pth"
    hf.parent.mkdir(parents=True)
    hf.write_bytes(path.read_bytes())
    assert find_authors_file(tmp_path / "hf", "bbbc021-sim") == hf
    with pytest.raises(
        CellbenchError,
        match=r"no CellFlux checkpoint for .rxrx1. in this folder \(it has bbbc021\)",
    ):
        find_authors_file(tmp_path / "hf", "rxrx1")


def test_generates_from_the_authors_file_with_the_published_sampler(
    mini_ds: BBBC021Dataset, tmp_path: Path
) -> None:
    path = tmp_path / "checkpoint.pth"
    _, shadow = _write_authors_checkpoint(path, SMALL)
    gen = CellFlux.load(mini_ds, path)
    assert gen.checkpoint_path == path and gen.sampler_settings() == {
        **SAMPLING_PRESETS["published"],
        "guidance": 0.2,
    }
    gen.sample_steps = 2
    ctrl = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:1])
    out = gen.generate(ctrl, ["taxol"], [1.0], seed=3)
    # the same ODE by hand with the EMA network: the authors' pixel convention (uniform
    # dequantisation in, floor out), Heun on (1/81, t_1, 1), guidance 0.2
    from cellbench.data.torch_dataset import to_model_range
    from cellbench_baselines.common import fingerprint_batch

    fp = fingerprint_batch(mini_ds, ["taxol"])
    u = torch.rand((1, 3, 96, 96), generator=torch.Generator().manual_seed(3 + 7919))
    noise = torch.randn((1, 3, 96, 96), generator=torch.Generator().manual_seed(3))
    x = to_model_range(ctrl) + u / 127.5 + noise
    shadow.eval()

    def v(z: torch.Tensor, s: float) -> torch.Tensor:
        tt = torch.full((1,), s)
        return 1.2 * shadow(z, tt, fp) - 0.2 * shadow(z, tt, None)

    grid = [float(s) for s in sampling_time_grid(PRESETS["paper"], 2)]
    assert abs(grid[0] - 1 / 81) < 1e-12
    with torch.no_grad():
        for a, b in itertools.pairwise(grid):
            d0 = v(x, a)
            d1 = v(x + (b - a) * d0, b)
            x = x + 0.5 * (b - a) * (d0 + d1)
    want = ((x.clamp(-1, 1) + 1) * 127.5).floor().to(torch.uint8).movedim(1, -1).numpy()
    np.testing.assert_array_equal(out, want)
    assert out.dtype == np.uint8 and 0 < out.mean() < 255


@pytest.mark.parametrize("args", ["namespace", "simple", "none"])
def test_the_allow_list_admits_the_two_namespace_types(tmp_path: Path, args: str) -> None:
    value = {
        "namespace": argparse.Namespace(dataset="bbbc021", cfg_scale=0.2),
        "simple": types.SimpleNamespace(dataset="bbbc021", cfg_scale=0.2),
        "none": {"dataset": "bbbc021"},
    }[args]
    _write_authors_checkpoint(tmp_path / "c.pth", SMALL, args=value)
    run = read_authors_checkpoint(tmp_path / "c.pth")
    assert run.meta["args"] == ({} if args == "none" else {"dataset": "bbbc021", "cfg_scale": 0.2})
    assert set(ALLOWED_GLOBALS) == {argparse.Namespace, types.SimpleNamespace}


def test_refuses_any_other_python_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "evil.pth"
    _write_authors_checkpoint(path, SMALL, args=NotAllowed())
    called = []
    monkeypatch.setattr(NotAllowed, "__setstate__", lambda self, s: called.append(s), raising=False)
    with pytest.raises(CellbenchError) as err:
        read_authors_checkpoint(path)
    text = str(err.value)
    assert "refused to load" in text and "NotAllowed" in text and str(path) in text
    assert "\n" not in text and not called  # never reconstructed


def test_foreign_truncated_and_mismatching_files_are_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "checkpoint.pth"
    _write_authors_checkpoint(good, SMALL)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    no_shadow = tmp_path / "no_shadow.pth"
    entry = authors_model_entry(_random_unet(SMALL, 0))
    torch.save({"model": {k: v for k, v in entry.items() if k != "shadow_params.5"}}, no_shadow)
    reshaped = tmp_path / "reshaped.pth"
    torch.save({"model": {**entry, "shadow_params.5": torch.zeros(7)}}, reshaped)
    alien = tmp_path / "alien.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3, 3)}}, alien)
    cases = {
        cut: "truncated or not a readable PyTorch checkpoint",
        text: "truncated or not a readable PyTorch checkpoint",
        other: "no 'model' state dict",
        no_shadow: "125 EMA shadow parameters for 126 network parameters",
        reshaped: "EMA shadow_params.5 does not match model.",
        alien: "not a CellFlux UNet of the published design",
        tmp_path / "missing.pth": "checkpoint file not found",
    }
    for path, message in cases.items():
        with pytest.raises(CellbenchError) as err:
            read_authors_checkpoint(path)
        assert message in str(err.value) and str(path) in str(err.value)
        assert "\n" not in str(err.value) and "fix:" in str(err.value)


def test_generate_cli_takes_the_authors_file(mini_root: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "hf" / "checkpoints" / "cellflux" / "bbbc021" / "checkpoint.pth"
    _write_authors_checkpoint(ckpt, SMALL)
    args = ["--dataset", "bbbc021", "--data-dir", str(mini_root)]
    proto = tmp_path / "p.csv"
    assert run_cli("protocol", *args, "--out", str(proto)).returncode == 0
    res = run_cli(
        "generate", "cellflux", "--checkpoint", str(tmp_path / "hf"), "--protocol", str(proto),
        *args, "--out", str(tmp_path / "imgs"), "--sample-steps", "1", "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "imgs" / "generation.json").read_text())
    assert record["checkpoint"] == str(ckpt) and record["sampler"]["grid_from_zero"] is False
    assert record["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ckpt.read_bytes()[:1000])
    bad = run_cli(
        "generate", "cellflux", "--checkpoint", str(cut), "--protocol", str(proto), *args,
        "--out", str(tmp_path / "bad"),
    )  # fmt: skip
    assert bad.returncode == 2 and "truncated or not a readable PyTorch checkpoint" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_rl_cli_starts_from_the_authors_file(tmp_path: Path) -> None:
    """`cellbench rl cellflux --checkpoint checkpoint.pth`: the published base, its hash recorded."""
    from cellbench.data.sim import write_sim_dataset

    write_sim_dataset(tmp_path / "bbbc021-sim", seed=0, scale="tiny")
    ckpt = tmp_path / "checkpoint.pth"
    _write_authors_checkpoint(ckpt, SMALL)
    cfg = tmp_path / "rl.json"
    rl = {"preset": "cpu-small", "batch_size": 2, "group_size": 2, "steps": 1, "ckpt_every": 1}
    rl.update(rollout_steps=1, rollout_batch=4, train_batch=4, reward={"nuc_size": 1.0})
    cfg.write_text(json.dumps(rl))
    res = run_cli(
        "rl", "cellflux", "--checkpoint", str(ckpt), "--dataset", "bbbc021-sim",
        "--data-dir", str(tmp_path), "--config", str(cfg), "--out", str(tmp_path / "rl"),
        "--reward-workers", "0", "--threads", "1", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["base_checkpoint"] == str(ckpt.resolve())
    rec = json.loads(next((tmp_path / "rl").glob("checkpoints/step-*/config.json")).read_text())
    assert rec["config"]["base_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert rec["config"]["base_config"]["unet"] == SMALL
    assert rec["config"]["base_config"]["grid_from_zero"] is False
    # a changed base file is refused when the run resumes
    _write_authors_checkpoint(ckpt, SMALL, seed=5)
    res = run_cli(
        "rl", "cellflux", "--checkpoint", str(ckpt), "--dataset", "bbbc021-sim",
        "--data-dir", str(tmp_path), "--config", str(cfg), "--out", str(tmp_path / "rl"),
        "--steps", "2", "--reward-workers", "0", "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 2 and "base_sha256" in res.stderr and "Traceback" not in res.stderr


def test_rl_paper_preset_says_where_each_value_comes_from() -> None:
    from cellbench_baselines.cellflux_rl import PAPER_SOURCES
    from cellbench_baselines.cellflux_rl import PRESETS as RL

    paper = RL["paper"]
    assert set(PAPER_SOURCES) <= set(paper)
    assert set(PAPER_SOURCES.values()) == {"paper", "reference", "cellbench"}
    stated = {k: paper[k] for k, v in PAPER_SOURCES.items() if v != "cellbench"}
    assert stated == {
        "steps": 1200,
        "reward": None,  # None is {"overall": 1}
        "group_size": 24,
        "adv_clip": 5.0,
        "adv_eps": 1e-4,
        "nft_beta": 1.0,
        "ref_penalty": 1e-4,
        "old_decay_rate": 0.001,
        "old_decay_max": 0.5,
        "grad_clip": 1.0,
    }
