"""The shared training pieces: config resolution, EMA, the UNet, the samplers, the Trainer."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench_baselines.cellflux import CellFlux
from cellbench_baselines.checkpoint import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAIN_STATE_FILE,
    checkpoint_model,
    complete_checkpoints,
    load_run,
    read_safetensors,
)
from cellbench_baselines.config import backfill_config, resolve_config
from cellbench_baselines.ema import EMA
from cellbench_baselines.nn import UNet, timestep_embedding
from cellbench_baselines.nn.layers import AttentionBlock
from cellbench_baselines.sampling import (
    cfg_combine,
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    edm_sigmas,
    edm_time_grid,
    euler_step,
    heun_step,
    linear_alpha_bars,
    lognormal_times,
    solve_ode,
)
from cellbench_baselines.trainer import train
from tests.conftest import TINY_UNET

TINY = {
    "batch_size": 4,
    "steps": 4,
    "ckpt_every": 2,
    "log_every": 1,
    "sample_steps": 2,
    "unet": TINY_UNET,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**changes) -> dict:
    return resolve_config(CellFlux.presets, {**TINY, **changes})


# ------------------------------------------------------------------------------ config
def test_resolve_config_presets_files_and_errors(tmp_path: Path) -> None:
    cfg = resolve_config(CellFlux.presets, "paper")
    assert cfg["preset"] == "paper" and cfg["batch_size"] == 128 and cfg["lr"] == 1e-4
    assert cfg["unet"]["base_channels"] == 128 and cfg["betas"] == [0.9, 0.95]

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"preset": "paper", "lr": 2e-4, "unet": {"dropout": 0.1}}))
    cfg = resolve_config(CellFlux.presets, str(f), overrides={"steps": 7, "seed": None})
    assert cfg["lr"] == 2e-4 and cfg["unet"]["dropout"] == 0.1 and cfg["steps"] == 7
    assert cfg["unet"]["base_channels"] == 128 and cfg["seed"] == 0  # untouched keys kept

    f.write_text(json.dumps({"lrr": 1e-3}))
    with pytest.raises(CellbenchError, match=r"unknown config key 'lrr'; did you mean 'lr'"):
        resolve_config(CellFlux.presets, str(f))
    f.write_text(json.dumps({"unet": {"base_channels": "wide"}}))
    with pytest.raises(CellbenchError, match=r"'unet.base_channels' must be int"):
        resolve_config(CellFlux.presets, str(f))
    f.write_text("{not json")
    with pytest.raises(CellbenchError, match="unreadable config file") as err:
        resolve_config(CellFlux.presets, str(f))
    assert str(f) in str(err.value)
    with pytest.raises(CellbenchError, match="did you mean 'cpu-small'"):
        resolve_config(CellFlux.presets, "cpu-smal")
    with pytest.raises(CellbenchError, match="'batch_size' must be at least 1"):
        resolve_config(CellFlux.presets, {"batch_size": 0})
    with pytest.raises(CellbenchError, match="'ema_warmup' must be bool"):
        resolve_config(CellFlux.presets, {"ema_warmup": 1})  # bool is strict
    assert CellFlux.presets["cpu-small"]["lr"] == 3e-4  # presets are never mutated


# ------------------------------------------------------------------------------ EMA
def test_ema_update_matches_hand_computation() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, 0.9)
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)
    assert ema.module.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0, abs=1e-7)
    warm = EMA(net, 0.999, warmup=True)  # decay at update 0: min(0.999, 1/10) = 0.1
    with torch.no_grad():
        net.weight.fill_(13.0)
    warm.update(net)
    assert warm.module.weight.item() == pytest.approx(0.1 * 3.0 + 0.9 * 13.0, abs=1e-6)
    assert warm.current_decay() == pytest.approx(2 / 11)
    assert not ema.module.weight.requires_grad


# ------------------------------------------------------------------------------ UNet
def test_unet_shapes_conditioning_and_zero_init() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 96)
    t = torch.tensor([0.1, 0.9])
    for kw in (
        {"channel_mult": [1, 2, 2], "attention_resolutions": [48]},
        {"channel_mult": [1, 2], "attention_resolutions": [12], "patch_size": 4},
    ):
        net = UNet(base_channels=8, num_res_blocks=1, head_channels=8, cond_dim=5, **kw)
        assert net(x, t, torch.randn(2, 5)).shape == (2, 3, 96, 96)
        assert torch.count_nonzero(net(x, t)) == 0  # the output conv starts at zero
    net = UNet(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, num_classes=3)
    emb_a = net.embedding(t, labels=torch.tensor([0, 1]))
    emb_b = net.embedding(t, labels=torch.tensor([0, 2]))
    assert torch.equal(emb_a[0], emb_b[0]) and not torch.equal(emb_a[1], emb_b[1])
    with pytest.raises(ValueError, match="not divisible"):
        UNet(image_size=96, channel_mult=[1] * 7)


def test_null_attention_adds_a_zero_key_and_no_parameters() -> None:
    torch.manual_seed(0)
    plain = AttentionBlock(4, head_channels=4)
    null = AttentionBlock(4, head_channels=4, null_key=True)
    torch.nn.init.normal_(plain.proj.weight)
    null.load_state_dict(plain.state_dict())  # the same weights fit both
    x = torch.randn(1, 4, 2, 3)
    # by hand: one head, 6 tokens; the null token adds exp(0) = 1 to the softmax denominator
    # and nothing to the numerator
    q, k, v = plain.qkv(plain.norm(x)).reshape(3, 4, 6)
    logits = q.T @ k / 2.0  # (query, key), scaled by sqrt(4)
    soft = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    off_by_one = torch.exp(logits) / (1.0 + torch.exp(logits).sum(1, keepdim=True))
    proj = plain.proj.weight[:, :, 0, 0]
    want_plain = x + (proj @ (v @ soft.T) + plain.proj.bias[:, None]).reshape(1, 4, 2, 3)
    want_null = x + (proj @ (v @ off_by_one.T) + plain.proj.bias[:, None]).reshape(1, 4, 2, 3)
    with torch.no_grad():
        assert torch.allclose(plain(x), want_plain, atol=1e-5)
        assert torch.allclose(null(x), want_null, atol=1e-5)
        assert not torch.allclose(null(x), plain(x), atol=1e-3)
        # attention_weights (used by bench/studies/image_diagnostics.py) are the weights forward applies
        weights = null.attention_weights(x)[0, 0]
        assert weights.shape == (6, 7) and torch.allclose(weights[:, :6], off_by_one, atol=1e-6)
        assert torch.allclose(weights.sum(1), torch.ones(6), atol=1e-6)
    a = UNet(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[48])
    b = UNet(
        base_channels=8,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[48],
        null_attention=True,
    )
    assert a.state_dict().keys() == b.state_dict().keys()
    blocks = [m for m in b.modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) == 4 and all(m.null_key for m in blocks)  # 1 down, 1 middle, 2 up


def test_timestep_embedding_values() -> None:
    e = timestep_embedding(torch.tensor([0.0, 2.0]), 4)
    # frequencies 1 and 1e-2 (10000^(-1/2)); columns cos f0, cos f1, sin f0, sin f1
    want = torch.tensor([[1, 1, 0, 0], [math.cos(2), math.cos(0.02), math.sin(2), math.sin(0.02)]])
    assert torch.allclose(e, want.float(), atol=1e-6)


# ------------------------------------------------------------------------------ samplers
def test_edm_time_grid() -> None:
    s = edm_sigmas(3)
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert torch.allclose(s, torch.tensor([80.0, mid, 0.002, 0.0], dtype=torch.float64))
    t = edm_time_grid(3)
    want = [0.0, 1 / (1 + mid), 1 / 1.002, 1.0]
    assert torch.allclose(t, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    t50 = edm_time_grid(50)
    assert len(t50) == 51 and t50[0] == 0 and t50[-1] == 1
    steps = torch.diff(t50)
    assert (steps > 0).all() and steps[-1] < steps[len(steps) // 2]  # fine steps near t = 1


def test_heun_and_euler_steps_hand_computed() -> None:
    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # dx/dt = 2x + t
        return 2 * x + t[:, None]

    x = torch.tensor([[1.0]])
    # Euler from t=0 to 0.5: 1 + 0.5 * (2 + 0) = 2
    assert euler_step(f, x, 0.0, 0.5).item() == pytest.approx(2.0)
    # Heun: d0 = 2, predictor 2, d1 = 2*2 + 0.5 = 4.5, x = 1 + 0.25 * (2 + 4.5) = 2.625
    assert heun_step(f, x, 0.0, 0.5).item() == pytest.approx(2.625)
    # a constant velocity is integrated exactly on any grid
    x1 = solve_ode(lambda x, t: torch.full_like(x, 3.0), torch.zeros(2, 1), edm_time_grid(7))
    assert torch.allclose(x1, torch.full((2, 1), 3.0))
    with pytest.raises(ValueError, match="unknown ODE method"):
        solve_ode(f, x, edm_time_grid(2), "rk4")


def test_cfg_formula() -> None:
    vc, vu = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.allclose(cfg_combine(vc, vu, 0.2), torch.tensor([1.2 * 2 - 0.2, -1.2 - 0.2]))
    assert torch.equal(cfg_combine(vc, vu, 0.0), vc)


def test_lognormal_times_distribution() -> None:
    t = lognormal_times(200_000, generator=torch.Generator().manual_seed(0))
    log_sigma = torch.log(1 / t - 1)
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.01)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.01)
    assert float(t.min()) > 0 and float(t.max()) < 1


def test_ddim_step_inversion_roundtrip() -> None:
    ab = linear_alpha_bars(1000)
    assert float(ab[0]) == pytest.approx(1 - 1e-4) and float(ab[-1]) < 1e-4
    ts = ddim_timesteps(10)
    assert ts == list(range(0, 1000, 100))
    x = torch.randn(3, 4, dtype=torch.float64)
    eps = torch.randn(3, 4, dtype=torch.float64)
    up = ddim_step(x, eps, 0.9, 0.5)
    assert torch.allclose(ddim_step(up, eps, 0.5, 0.9), x)  # the update is its own inverse
    # with an x-independent noise prediction, inversion then sampling is exact
    const = lambda z, k: eps  # noqa: E731
    latent = ddim_invert(const, x, ab, ts)
    assert not torch.allclose(latent, x)
    assert torch.allclose(ddim_sample(const, latent, ab, ts), x, atol=1e-9)


# ------------------------------------------------------------------------------ trainer
def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path)[0]


def _assert_same_run(a: Path, b: Path) -> None:
    for name in (MODEL_FILE, TRAIN_STATE_FILE):
        ta, tb = _tensors(a / name), _tensors(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs"
    oa = torch.load(a / OPTIMIZER_FILE, weights_only=True)
    ob = torch.load(b / OPTIMIZER_FILE, weights_only=True)
    for (ka, va), (kb, vb) in zip(
        oa["unet"]["state"].items(), ob["unet"]["state"].items(), strict=True
    ):
        assert ka == kb and all(torch.equal(va[s], vb[s]) for s in va)


@pytest.mark.slow
def test_resume_gives_identical_result(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    cfg = tiny_config()
    full = train(CellFlux, "cellflux", mini_ds, cfg, tmp_path / "full")
    assert full.step == 4 and full.resumed_from == 0
    half = train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "split", steps=2)
    assert half.step == 2
    # an interrupted later checkpoint (a temporary folder) is ignored on resume
    shutil.copytree(half.checkpoint, tmp_path / "split" / "checkpoints" / ".tmp-step-00000003-1")
    rest = train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "split")
    assert rest.resumed_from == 2 and rest.step == 4
    _assert_same_run(full.checkpoint, rest.checkpoint)
    # 4 steps with batch 4 on 8 pairs cross an epoch: the pairing and order were restored too
    log_a = (tmp_path / "full" / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [r.rsplit(",", 1)[0] for r in log_a] == [r.rsplit(",", 1)[0] for r in log_b]
    assert len(log_a) == 5
    # keep_checkpoints=2: steps 2 and 4 remain
    assert [p.name for p in complete_checkpoints(tmp_path / "full")] == [
        "step-00000002",
        "step-00000004",
    ]
    # a changed config is refused instead of silently mixing runs
    with pytest.raises(CellbenchError, match=r"different config \(keys \['lr'\]"):
        train(CellFlux, "cellflux", mini_ds, tiny_config(lr=1e-3), tmp_path / "full", steps=6)
    # a run made before unet.null_attention existed resumes as if it held the old behaviour...
    meta_path = full.checkpoint / "config.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["unet"]["null_attention"]
    meta_path.write_text(json.dumps(meta))
    assert backfill_config(meta["config"])["unet"]["null_attention"] is False
    more = train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "full", steps=5)
    assert more.resumed_from == 4 and more.step == 5
    # ...and not under the new one
    on = tiny_config(unet={**TINY_UNET, "null_attention": True})
    with pytest.raises(CellbenchError, match=r"different config \(keys \['unet'\]"):
        train(CellFlux, "cellflux", mini_ds, on, tmp_path / "full", steps=6)


@pytest.mark.slow
def test_init_from_another_run(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    full = train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "full")
    half = train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "half", steps=2)
    # the same config from the step-2 checkpoint: the same run as the uninterrupted one
    same = train(
        CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "same", init_from=half.checkpoint
    )
    assert same.resumed_from == 2 and same.step == 4
    _assert_same_run(full.checkpoint, same.checkpoint)
    # a changed recipe part-way (every source noised, a lower lr): allowed, recorded, it differs,
    # and the optimiser runs at the new lr, not the one stored with the moments it took over
    recipe = {"noise_prob": 1.0, "lr": 3e-5}
    assert tiny_config()["lr"] != recipe["lr"]
    fork = train(
        CellFlux,
        "cellflux",
        mini_ds,
        tiny_config(**recipe),
        tmp_path / "fork",
        init_from=tmp_path / "half",
    )
    assert fork.resumed_from == 2 and fork.step == 4
    meta = json.loads((fork.checkpoint / "config.json").read_text())
    assert meta["config"]["noise_prob"] == 1.0
    groups = torch.load(fork.checkpoint / OPTIMIZER_FILE, weights_only=True)["unet"]["param_groups"]
    assert [g["lr"] for g in groups] == [3e-5] * len(groups)
    assert meta["init_from"] == {"checkpoint": str(half.checkpoint), "step": 2}
    a, b = _tensors(full.checkpoint / MODEL_FILE), _tensors(fork.checkpoint / MODEL_FILE)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "fork" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "3", "4"]
    # once the folder has its own checkpoint it resumes from that (and keeps the record)
    more = train(
        CellFlux,
        "cellflux",
        mini_ds,
        tiny_config(**recipe),
        tmp_path / "fork",
        steps=5,
        init_from=tmp_path / "nowhere",
    )
    assert more.resumed_from == 4 and more.step == 5
    meta = json.loads((more.checkpoint / "config.json").read_text())
    assert meta["init_from"]["step"] == 2
    # another model's run, and a folder of generation-only weights, are refused
    other = tmp_path / "other"
    shutil.copytree(half.checkpoint, other)
    m = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**m, "model": "phendiff"}))
    with pytest.raises(CellbenchError, match="not a 'cellflux' training checkpoint"):
        train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "x", init_from=other)
    (other / "config.json").write_text(json.dumps({**m, "format": "something-else"}))
    with pytest.raises(CellbenchError, match="not a cellbench checkpoint config"):
        train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "x", init_from=other)
    (other / "config.json").write_text(json.dumps(m))
    (other / OPTIMIZER_FILE).unlink()
    with pytest.raises(CellbenchError, match="no training state"):
        train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "y", init_from=other)


def test_trainer_rejects_small_split_and_unknown_device(mini_ds: BBBC021Dataset, tmp_path) -> None:
    with pytest.raises(CellbenchError, match="fewer than batch_size 64"):
        train(CellFlux, "cellflux", mini_ds, tiny_config(batch_size=64), tmp_path / "r")
    if not torch.cuda.is_available():
        with pytest.raises(CellbenchError, match="no CUDA device"):
            train(CellFlux, "cellflux", mini_ds, tiny_config(), tmp_path / "r", device="cuda")


@pytest.fixture
def trained_run(mini_ds: BBBC021Dataset, tmp_path: Path) -> Path:
    train(CellFlux, "cellflux", mini_ds, tiny_config(steps=1, ckpt_every=1), tmp_path / "run")
    return tmp_path / "run"


def test_bad_checkpoints_give_one_line_errors(
    trained_run: Path, mini_ds: BBBC021Dataset, tmp_path: Path
) -> None:
    ckpt = complete_checkpoints(trained_run)[-1]
    run = load_run(trained_run, "cellflux")
    assert run.path == ckpt and "unet" in run.weights
    assert checkpoint_model(trained_run) == checkpoint_model(ckpt) == "cellflux"
    assert torch.load(ckpt / OPTIMIZER_FILE, weights_only=True)["unet"]["param_groups"]

    with pytest.raises(CellbenchError, match="is a 'cellflux' model, not 'impa'"):
        load_run(trained_run, "impa")
    with pytest.raises(CellbenchError, match="checkpoint not found"):
        load_run(tmp_path / "nope", "cellflux")
    with pytest.raises(CellbenchError, match="no complete checkpoint"):
        load_run(tmp_path, "cellflux")

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    data = (bad / MODEL_FILE).read_bytes()
    (bad / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CellbenchError, match="truncated or not a safetensors file") as err:
        load_run(bad / MODEL_FILE, "cellflux")
    assert str(bad / MODEL_FILE) in str(err.value)
    (bad / MODEL_FILE).write_bytes(b"PK\x03\x04 this is a zip, not weights")
    with pytest.raises(CellbenchError, match="truncated or not a safetensors file"):
        load_run(bad, "cellflux")

    from safetensors.torch import save_file

    save_file({"unet.other.weight": torch.zeros(2)}, str(bad / MODEL_FILE))
    with pytest.raises(CellbenchError, match="weights do not match the network") as err:
        CellFlux.load(mini_ds, bad)
    assert str(bad / MODEL_FILE) in str(err.value)
    (bad / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CellbenchError, match="not a cellbench checkpoint config"):
        load_run(bad, "cellflux")
    with pytest.raises(CellbenchError, match="not a cellbench checkpoint config"):
        checkpoint_model(bad)
    (bad / "config.json").write_text("{trunc")
    with pytest.raises(CellbenchError, match=r"unreadable checkpoint config\.json"):
        load_run(bad, "cellflux")


_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
torch.set_num_threads(1)
from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.catalog import get_card
from cellbench_baselines.cellflux import CellFlux
from cellbench_baselines.config import resolve_config
from cellbench_baselines.trainer import Trainer, seed_everything
import json
ds = BBBC021Dataset(sys.argv[1], get_card("bbbc021"))
cfg = resolve_config(CellFlux.presets, {**json.loads(sys.argv[3]), "steps": 6,
                                         "cond_drop_prob": 0.5})
seed_everything(0)
m = CellFlux.trainable(ds, cfg)
Trainer(m, ds, sys.argv[2], model_name="cellflux").fit()
flat = torch.cat([p.detach().flatten() for p in m.unet.parameters()])
got = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(got, flat)
if dist.get_rank() == 0:
    print("IDENTICAL" if all(torch.equal(got[0], g) for g in got) else "DIVERGED")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_data_parallel_under_torchrun_keeps_processes_in_sync(mini_root: Path, tmp_path) -> None:
    """2 CPU processes (gloo); the guidance drop differs per process, so gradients of the
    fingerprint layer exist on some processes only: weights must still stay identical."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(script), str(mini_root), str(tmp_path / "run"),
         json.dumps(TINY)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "CELLBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "IDENTICAL" in res.stdout
    assert "x 2 processes" in res.stderr
    assert [p.name for p in complete_checkpoints(tmp_path / "run")][-1] == "step-00000006"
