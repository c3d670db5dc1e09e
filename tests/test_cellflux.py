"""CellFlux: the flow-matching step, guidance, sampling, checkpoints and the train/generate CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.catalog import get_card
from cellbench.data.torch_dataset import PairedCropDataset, to_model_range
from cellbench.errors import CellbenchError, UnknownNameError
from cellbench.generators import get_generator_class
from cellbench_baselines.cellflux import CellFlux
from cellbench_baselines.config import resolve_config
from cellbench_baselines.nn.unet import unet_from_config
from cellbench_baselines.sampling import cfg_combine, edm_time_grid
from cellbench_baselines.trainer import count_parameters, train
from tests.conftest import TINY_UNET, run_cli

TINY = {
    "batch_size": 4,
    "steps": 2,
    "ckpt_every": 2,
    "log_every": 1,
    "sample_steps": 3,
    "unet": TINY_UNET,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(ds: BBBC021Dataset, n: int = 4) -> dict:
    pairs = PairedCropDataset(ds, "train", seed=0)
    from torch.utils.data import default_collate

    return default_collate([pairs[i] for i in range(n)])


def test_paper_preset_has_about_56m_parameters() -> None:
    cfg = CellFlux.presets["paper"]
    with torch.device("meta"):
        net = unet_from_config(cfg["unet"])
    n = count_parameters(net)
    assert 50e6 <= n <= 62e6, n
    assert cfg["unet"]["base_channels"] == 128 and cfg["unet"]["channel_mult"] == [2, 2, 2]
    assert cfg["unet"]["num_res_blocks"] == 4 and cfg["unet"]["attention_resolutions"] == [48]
    assert cfg["unet"]["dropout"] == 0.3 and cfg["guidance"] == 0.2 and cfg["sample_steps"] == 50
    assert (cfg["lr"], cfg["betas"], cfg["ema_decay"]) == (1e-4, [0.9, 0.95], 0.999)
    assert (cfg["cond_drop_prob"], cfg["noise_prob"], cfg["rho"]) == (0.2, 0.5, 7.0)


@pytest.mark.slow
def test_training_steps_reduce_the_loss_on_a_fixed_batch(mini_ds: BBBC021Dataset) -> None:
    torch.manual_seed(0)
    cfg = resolve_config(CellFlux.presets, {**TINY, "lr": 3e-3, "cond_drop_prob": 0.0})
    model = CellFlux.trainable(mini_ds, cfg)
    batch = _batch(mini_ds)

    def fixed_loss() -> float:  # same noise, times and mask each call: a fixed objective
        torch.manual_seed(123)
        with torch.no_grad():
            return float(model.loss(batch))

    before = fixed_loss()
    v = model.unet(batch["control"], torch.full((4,), 0.5), batch["fingerprint"])
    assert v.shape == batch["target"].shape  # forward shape
    for step in range(25):
        out = model.training_step(batch, step)
        assert set(out) == {"loss", "grad_norm"} and np.isfinite(out["loss"])
    after = fixed_loss()
    assert after < 0.95 * before, (before, after)  # measured: 0.589 -> 0.534


@pytest.mark.parametrize("prediction", ["velocity", "x1", "edm"])
def test_loss_is_the_velocity_regression(mini_ds: BBBC021Dataset, prediction: str) -> None:
    cfg = resolve_config(
        CellFlux.presets,
        {**TINY, "noise_prob": 0.0, "cond_drop_prob": 0.0, "prediction": prediction},
    )
    torch.manual_seed(0)
    model = CellFlux.trainable(mini_ds, cfg)
    with torch.no_grad():  # non-zero outputs
        for p in model.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = _batch(mini_ds)
    torch.manual_seed(5)
    loss = model.loss(batch)
    # replay the same draws: noise, mask, times, drop (in the order loss() takes them)
    torch.manual_seed(5)
    torch.randn(batch["target"].shape)
    torch.rand(4)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(4))
    t = 1 / (1 + sigma)
    x0, x1 = batch["control"], batch["target"]  # noise_prob 0: x0 is the control itself
    tb = t[:, None, None, None]
    xt = (1 - tb) * x0 + tb * x1
    with torch.no_grad():
        if prediction == "velocity":
            want = ((model.unet(xt, t, batch["fingerprint"]) - (x1 - x0)) ** 2).mean()
        elif prediction == "edm":  # the loss is the network's own error against its target
            sd, s = 0.5, 1.0
            d = torch.sqrt((tb * sd) ** 2 + ((1 - tb) * s) ** 2)
            c_skip, c_out = tb * sd**2 / d**2, (1 - tb) * sd * s / d
            f = model.unet.net(xt, t, batch["fingerprint"])
            want = ((f - (x1 - c_skip * xt) / c_out) ** 2).mean()
            v = model.unet(xt, t, batch["fingerprint"])
            assert torch.allclose(v, (c_skip * xt + c_out * f - xt) / (1 - tb), atol=1e-4)
            for edge in (torch.zeros(4), torch.ones(4)):  # finite at both ends of the path
                assert torch.isfinite(model.unet(xt, edge, None)).all()
        else:  # the network predicts x1; the loss is the image error (t < 0.99: no clamping)
            assert float(t.max()) < 0.99
            want = ((model.unet.net(xt, t, batch["fingerprint"]) - x1) ** 2).mean()
            v = model.unet(xt, t, batch["fingerprint"])
            x1_hat = model.unet.net(xt, t, batch["fingerprint"])
            assert torch.allclose(v, (x1_hat - xt) / (1 - tb), atol=1e-5)
            assert torch.isfinite(model.unet(xt, torch.ones(4), None)).all()  # t = 1 clamped
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)


@pytest.fixture
def run_dir(mini_ds: BBBC021Dataset, tmp_path: Path) -> Path:
    cfg = resolve_config(CellFlux.presets, TINY)
    train(CellFlux, "cellflux", mini_ds, cfg, tmp_path / "run")
    return tmp_path / "run"


def test_guidance_formula_and_sampling(run_dir: Path, mini_ds: BBBC021Dataset) -> None:
    gen = CellFlux.load(mini_ds, run_dir)
    assert gen.n_parameters() > 0 and gen.guidance == 0.2
    # perturb the weights so conditional and unconditional velocities differ
    with torch.no_grad():
        for p in gen.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 96, 96)
    t = torch.tensor([0.3, 0.7])
    cond = torch.from_numpy(np.stack([mini_ds.fingerprint("taxol")] * 2))
    with torch.no_grad():
        vc, vu = gen.unet(x, t, cond), gen.unet(x, t, None)
        assert not torch.allclose(vc, vu)
        assert torch.allclose(gen.velocity(x, t, cond), 1.2 * vc - 0.2 * vu, atol=1e-5)
        assert torch.allclose(gen.velocity(x, t, cond), cfg_combine(vc, vu, 0.2))
    assert torch.equal(gen.time_grid(), edm_time_grid(3))

    ctrl = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:3])
    a = gen.generate(ctrl, ["taxol", "nocodazole", "taxol"], [0.3, 1.0, 3.0], seed=7)
    b = gen.generate(ctrl, ["taxol", "nocodazole", "taxol"], [0.3, 1.0, 3.0], seed=7)
    c = gen.generate(ctrl, ["taxol", "nocodazole", "taxol"], [0.3, 1.0, 3.0], seed=8)
    assert a.shape == ctrl.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # generate() is the documented sampler: Heun on the EDM grid from control + N(0, 1)
    g = torch.Generator().manual_seed(7)
    x = to_model_range(ctrl) + torch.randn((3, 3, 96, 96), generator=g)
    fps = torch.from_numpy(np.stack([mini_ds.fingerprint(n) for n in ["taxol", "nocodazole"]]))
    cond = fps[[0, 1, 0]]
    grid = [float(v) for v in edm_time_grid(3)]
    with torch.no_grad():
        for t0, t1 in itertools.pairwise(grid):
            d0 = gen.velocity(x, torch.full((3,), t0), cond)
            d1 = gen.velocity(x + (t1 - t0) * d0, torch.full((3,), t1), cond)
            x = x + 0.5 * (t1 - t0) * (d0 + d1)
    want = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(want.astype(int) - a.astype(int)).max() <= 1
    with pytest.raises(UnknownNameError, match="did you mean 'taxol'"):
        gen.generate(ctrl[:1], ["taxoll"], [1.0], seed=0)


def test_save_load_round_trip(run_dir: Path, mini_ds: BBBC021Dataset) -> None:
    from cellbench_baselines.checkpoint import complete_checkpoints

    ckpt = complete_checkpoints(run_dir)[-1]
    g1 = CellFlux.load(mini_ds, run_dir)
    g2 = CellFlux.load(mini_ds, ckpt / "model.safetensors")
    for (k, a), (k2, b) in zip(
        g1.unet.state_dict().items(), g2.unet.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    ctrl = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:2])
    assert np.array_equal(
        g1.generate(ctrl, ["taxol"] * 2, [0.3] * 2, 1),
        g2.generate(ctrl, ["taxol"] * 2, [0.3] * 2, 1),
    )
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["model"] == "cellflux" and meta["n_parameters"]["unet"] == g1.n_parameters()
    with pytest.raises(CellbenchError, match="needs trained weights"):
        CellFlux.load(mini_ds, None)
    with pytest.raises(CellbenchError, match="is a 'cellflux' model, not 'phendiff'"):
        get_generator_class("phendiff").load(mini_ds, run_dir)


@pytest.mark.slow
def test_train_and_generate_cli(mini_root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    args = ["--dataset", "bbbc021", "--data-dir", str(mini_root)]
    res = run_cli("train", "cellflux", *args, "--config", str(cfg), "--out", str(run), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["step"] == 2 and out["resumed_from"] == 0
    assert "unet 0." in res.stderr and "parameters" in res.stderr  # the count is printed
    assert (run / "log.csv").read_text().startswith("step,epoch,grad_norm,loss,images_per_s\n")
    res = run_cli(
        "train",
        "cellflux",
        *args,
        "--config",
        str(cfg),
        "--out",
        str(run),
        "--steps",
        "3",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["resumed_from"] == 2 and json.loads(res.stdout)["step"] == 3
    fork_cfg = tmp_path / "fork.json"
    fork_cfg.write_text(json.dumps({**TINY, "noise_prob": 1.0}))
    res = run_cli(
        "train", "cellflux", *args, "--config", str(fork_cfg), "--out", str(tmp_path / "fork"),
        "--init-from", str(run), "--steps", "4", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (
        json.loads(res.stdout)["resumed_from"] == 3 and "starting cellflux at step 3" in res.stderr
    )
    bad = run_cli(
        "train", "cellflux", *args, "--config", str(cfg), "--out", str(tmp_path / "nope"),
        "--init-from", str(tmp_path / "missing"),
    )  # fmt: skip
    assert bad.returncode == 2 and "checkpoint not found" in bad.stderr
    assert not (tmp_path / "nope").exists()  # a refused --init-from leaves no run folder

    proto = tmp_path / "p.csv"
    assert run_cli("protocol", *args, "--out", str(proto)).returncode == 0
    imgs = tmp_path / "imgs"
    res = run_cli(
        "generate", "cellflux", "--checkpoint", str(run), "--protocol", str(proto), *args,
        "--out", str(imgs), "--device", "cpu", "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    check = run_cli("images", "check", str(imgs), "--protocol", str(proto), "--json")
    assert check.returncode == 0, check.stdout
    # --sample-steps overrides the checkpoint's 3 solver steps
    res = run_cli(
        "generate", "cellflux", "--checkpoint", str(run), "--protocol", str(proto), *args,
        "--out", str(tmp_path / "s1"), "--sample-steps", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    first = sorted(imgs.glob("*.npy"))[0]
    assert not np.array_equal(np.load(first), np.load(tmp_path / "s1" / first.name))
    gen = CellFlux.load(BBBC021Dataset(mini_root, get_card("bbbc021")), run)
    gen.sample_steps = 1
    assert len(gen.time_grid()) == 2
    bad = run_cli(
        "generate", "identity", "--protocol", str(proto), *args, "--out", str(tmp_path / "i"),
        "--sample-steps", "5",
    )  # fmt: skip
    assert bad.returncode == 2 and "has no solver steps" in bad.stderr
    assert not (tmp_path / "i").exists()
    if not torch.cuda.is_available():  # asking for a GPU that is not there: one line, exit 2
        bad = run_cli(
            "generate", "cellflux", "--checkpoint", str(run), "--protocol", str(proto), *args,
            "--out", str(tmp_path / "gpu"), "--device", "cuda",
        )  # fmt: skip
        assert bad.returncode == 2 and "no CUDA device" in bad.stderr, bad.stderr
        assert not (tmp_path / "gpu").exists()
    bad = run_cli(
        "generate", "cellflux", "--checkpoint", str(run), "--protocol", str(proto), *args,
        "--out", str(tmp_path / "t0"), "--threads", "0",
    )  # fmt: skip
    assert bad.returncode == 2 and "--threads must be at least 1" in bad.stderr

    bad = run_cli("train", "cellflux", *args, "--config", "papr", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "did you mean 'paper'" in bad.stderr
    bad = run_cli("train", "identity", *args, "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "not trainable" in bad.stderr
    (run / "checkpoints" / "step-00000003" / "model.safetensors").write_bytes(b"\x00" * 10)
    bad = run_cli(
        "generate", "cellflux", "--checkpoint", str(run), "--protocol", str(proto), *args,
        "--out", str(tmp_path / "imgs2"),
    )  # fmt: skip
    assert bad.returncode == 2 and "truncated or not a safetensors file" in bad.stderr
    assert "step-00000003/model.safetensors" in bad.stderr and "Traceback" not in bad.stderr


SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "cellflux-long"
SHIPPED_SHA256 = "edc9c51c343284d16e8bf3f337eabf21b96cc00f5fcde59a6109a97d8ea505c1"


@pytest.mark.slow
def test_shipped_cellflux_long_checkpoint(tmp_path: Path) -> None:
    """The committed CellFlux of docs/generators.md loads and samples as it did when shipped."""
    from cellbench.data.bbbc021 import open_dataset
    from cellbench.data.sim import write_sim_dataset
    from cellbench.io import sha256_file
    from cellbench.protocol import build_protocol

    write_sim_dataset(tmp_path / "bbbc021-sim", seed=0, scale="tiny")
    ds = open_dataset("bbbc021-sim", tmp_path)
    gen = CellFlux.load(ds, SHIPPED)
    assert gen.n_parameters() == 1_328_780
    cfg = gen.config
    assert (cfg["prediction"], cfg["noise_prob"], cfg["unet"]["patch_size"]) == ("edm", 1.0, 2)
    rows = build_protocol(ds, "test", seed=0).iloc[:2]
    controls = ds.load_crops(list(rows["control_key"]))
    args = (controls, list(rows["compound"]), list(rows["dose"]))
    gen.sample_steps = 2
    a, b = gen.generate(*args, seed=0), gen.generate(*args, seed=0)
    assert a.shape == (2, 96, 96, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    # channel means when shipped (2 Heun steps, seed 0). Another seed moves them by 0.4-2.5, the
    # checkpoint 250 steps earlier by 0.25-0.35; float rounding by far less than the tolerance
    np.testing.assert_allclose(a.reshape(-1, 3).mean(0), [45.766, 51.949, 42.015], atol=0.02)
    digest = sha256_file(SHIPPED / "model.safetensors")
    assert digest == SHIPPED_SHA256  # the weights docs/generators.md scored
