"""The IMPA reference generator: networks, losses, training signal, checkpoints, generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.torch_dataset import PairedCropDataset
from cellbench.errors import CellbenchError
from cellbench.generators import get_generator_class
from cellbench_baselines.impa import (
    IMPA,
    IMPATrainable,
    MultiTaskDiscriminator,
    build_networks,
    diversity_weight,
    domain_names,
    r1_penalty,
)
from tests.conftest import run_cli

#: a tiny architecture so that a training step takes a fraction of a second on one core
TINY = {
    "dim_in": 4,
    "max_conv_dim": 16,
    "style_dim": 8,
    "z_dim": 4,
    "n_bottleneck": 1,
    "batch_size": 4,
    "log_every": 1,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one intra-op thread is as fast and avoids oversubscribing a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**over: object) -> dict:
    return {**IMPA.presets["cpu-small"], **TINY, **over}


def fixed_batch(ds: BBBC021Dataset, n: int = 4) -> dict:
    pairs = PairedCropDataset(ds, "train", seed=0)
    return default_collate([pairs[i] for i in range(n)])


def test_presets_have_trainer_keys_and_paper_facts() -> None:
    from cellbench_baselines.config import TRAINER_DEFAULTS

    for name in ("cpu-small", "paper"):
        assert set(TRAINER_DEFAULTS) <= set(IMPA.presets[name]), name
    paper = IMPA.presets["paper"]
    # IMPA's BBBC021 fingerprint configuration (bbbc021_all)
    assert (paper["dim_in"], paper["style_dim"], paper["z_dim"], paper["mapping_layers"]) == (
        64,
        64,
        8,
        1,
    )
    assert (paper["lr"], paper["betas"], paper["weight_decay"], paper["batch_size"]) == (
        1e-4,
        [0.0, 0.99],
        1e-4,
        32,
    )
    assert paper["split"] == "train-iid"
    # IMPA decodes the whole image; the residual output is cellbench's CPU-budget choice only
    assert paper["residual_output"] is False and IMPA.presets["cpu-small"]["residual_output"]


def test_forward_shapes() -> None:
    torch.manual_seed(0)
    nets = build_networks(tiny_config(residual_output=False), n_domains=5)
    x = torch.rand(3, 3, 96, 96) * 2 - 1
    fp = torch.rand(3, 1024)
    z = torch.randn(3, 4)
    s = nets["mapping"](fp, z)
    assert s.shape == (3, 8)
    h = nets["generator"].encode(x)
    assert h.shape == (3, 16, 12, 12)  # 96 / 2**3, width 4 -> 8 -> 16 (capped)
    y = nets["generator"].decode(h, s)
    assert y.shape == (3, 3, 96, 96) and torch.isfinite(y).all()
    assert nets["style_encoder"](x).shape == (3, 8)
    assert nets["discriminator"].all_logits(x).shape == (3, 5)
    assert nets["discriminator"](x, torch.tensor([0, 4, 2])).shape == (3,)
    # the style changes the output: the decoder is really conditioned on it
    assert (nets["generator"].decode(h, s + 1.0) - y).abs().mean() > 1e-3


#: the authors' parameter counts, measured by building their networks from their public model.py
#: with their bbbc021_all configuration (generator and mapping network) and at img_size 96
#: (style encoder, discriminator with 27 domains); docs/generators.md, "IMPA", has the command
AUTHORS_COUNTS = {
    "generator": 24_318_595,
    "mapping": 66_112,
    "style_encoder": 14_329_472,
    "discriminator": 14_310_491,
}


def test_paper_parameter_count() -> None:
    """The paper preset has the authors' networks' exact parameter counts (meta device)."""
    with torch.device("meta"):
        nets = build_networks(IMPA.presets["paper"], n_domains=27)
    counts = {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}
    assert counts == AUTHORS_COUNTS
    assert counts["mapping"] == (1024 + 8) * 64 + 64  # one linear layer


def test_multitask_discriminator_selects_each_images_head() -> None:
    torch.manual_seed(0)
    d = MultiTaskDiscriminator(dim_in=4, max_conv_dim=8, n_domains=4)
    x = torch.rand(5, 3, 96, 96)
    domain = torch.tensor([3, 0, 2, 2, 1])
    all_logits = d.all_logits(x)
    picked = d(x, domain)
    assert torch.equal(picked, all_logits[torch.arange(5), domain])
    # with constant heads, the output is the head's bias: head k answers k
    with torch.no_grad():
        d.heads.weight.zero_()
        d.heads.bias.copy_(torch.arange(4.0))
    assert d(x, domain).tolist() == [3.0, 0.0, 2.0, 2.0, 1.0]
    # and only the selected heads receive gradient (counts of each domain in the batch)
    d.zero_grad()
    d(x, domain).sum().backward()
    assert d.heads.bias.grad.tolist() == [1.0, 1.0, 2.0, 1.0]


def test_r1_penalty_and_diversity_schedule() -> None:
    w = torch.tensor([0.5, -2.0, 1.0])
    x = torch.randn(6, 3, requires_grad=True)
    assert r1_penalty(x @ w, x).item() == pytest.approx(0.5 * float((w**2).sum()), rel=1e-6)
    cfg = {"lambda_ds": 2.0, "ds_iters": 100}
    assert [diversity_weight(cfg, s) for s in (0, 25, 100, 150)] == [2.0, 1.5, 0.0, 0.0]
    assert diversity_weight({"lambda_ds": 1.0, "ds_iters": 0}, 0) == 0.0


def test_domains_follow_paired_dataset_order(mini_ds: BBBC021Dataset) -> None:
    doms = domain_names(mini_ds, "train")
    pairs = PairedCropDataset(mini_ds, "train", seed=0)
    assert doms == ["DMSO", *pairs.compounds]
    model = IMPA.trainable(mini_ds, tiny_config())
    assert model.nets["discriminator"].n_domains == len(doms)
    assert model.ema_names() == ("generator", "mapping")
    assert set(model.optimizers()) == set(model.modules())


def _eval_terms(model: IMPATrainable, batch: dict) -> tuple[float, float]:
    """Cycle error and discriminator margin (real target vs translation) at a fixed noise draw."""
    G, M, E, D = (model.nets[k] for k in ("generator", "mapping", "style_encoder", "discriminator"))
    with torch.no_grad():
        z = torch.randn(len(batch["control"]), model.config["z_dim"], generator=torch.Generator())
        s = M(batch["fingerprint"], z)
        fake = G(batch["control"], s)
        cyc = (G(fake, E(batch["control"])) - batch["control"]).abs().mean()
        dom = batch["compound_idx"] + 1
        margin = D(batch["target"], dom).mean() - D(fake, dom).mean()
    return float(cyc), float(margin)


@pytest.mark.slow
def test_training_steps_reduce_cycle_error(mini_ds: BBBC021Dataset) -> None:
    """On a fixed batch, the full IMPA objective (adversarial terms on) must cut the cycle
    reconstruction error by more than 15 % in 15 steps (measured: 1.16 -> 0.86), and the
    discriminator must learn to tell real targets from translations (logit margin -0.1 -> 11.7).
    Both are measured at a fixed noise draw after seeded steps, so the numbers are deterministic."""
    torch.manual_seed(0)
    cfg = tiny_config(lr=3e-3, mapping_lr=3e-3, p_control=0.0, residual_output=False)
    model = IMPA.trainable(mini_ds, cfg)
    batch = fixed_batch(mini_ds)
    cyc0, margin0 = _eval_terms(model, batch)
    logs = [model.training_step(batch, step) for step in range(15)]
    cyc1, margin1 = _eval_terms(model, batch)
    assert cyc1 < 0.85 * cyc0, (cyc0, cyc1)
    assert margin1 > margin0 + 2.0, (margin0, margin1)
    assert logs[-1]["d_loss"] < logs[0]["d_loss"]
    expected = {"d_loss", "d_real", "d_fake", "d_r1", "g_loss", "g_adv", "g_sty", "g_ds", "g_cyc"}
    assert expected | {"lambda_ds"} == set(logs[0])
    assert all(np.isfinite(v) for log in logs for v in log.values())


def test_residual_output_starts_at_identity_and_learns(mini_ds: BBBC021Dataset) -> None:
    """``residual_output``: output = input + decoded change, the change's last conv zero-initialised,
    so the untrained generator is exactly the identity; training moves it away from the identity."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    s = torch.randn(2, 8)
    plain = build_networks(tiny_config(residual_output=False), n_domains=3)["generator"]
    assert (plain(x, s) - x).abs().mean() > 0.1
    model = IMPA.trainable(mini_ds, tiny_config(lr=3e-3, mapping_lr=3e-3, p_control=0.0))
    G = model.nets["generator"]
    assert G.residual and torch.equal(G(x, s), x)
    batch = fixed_batch(mini_ds)
    for step in range(3):
        model.training_step(batch, step)
    change = (G(x, s) - x).abs().mean().item()
    # 3 Adam steps of 3e-3 on the zero-initialised conv: a change of order 1e-2, style-dependent
    assert 1e-3 < change < 0.5, change
    assert (G(x, s + 1.0) - G(x, s)).abs().mean() > 1e-4


def test_p_control_routes_samples_to_the_dmso_head(mini_ds: BBBC021Dataset) -> None:
    """With p_control = 1 every translation targets DMSO: only head 0 of the discriminator learns."""
    torch.manual_seed(0)
    model = IMPA.trainable(mini_ds, tiny_config(p_control=1.0))
    heads = model.nets["discriminator"].heads
    before = heads.bias.detach().clone()
    model.training_step(fixed_batch(mini_ds), 0)
    moved = (heads.bias.detach() - before).abs() > 0
    assert moved.tolist() == [True] + [False] * (len(before) - 1)


def _train_tiny(ds: BBBC021Dataset, out: Path, steps: int = 2) -> Path:
    from cellbench_baselines.trainer import train

    cfg = tiny_config(steps=steps, ckpt_every=steps)
    result = train(IMPA, "impa", ds, cfg, out, steps=steps)
    assert result.checkpoint is not None
    return result.checkpoint


def test_checkpoint_round_trip_and_determinism(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    ckpt = _train_tiny(mini_ds, tmp_path / "run")
    gen = IMPA.load(mini_ds, tmp_path / "run")
    assert get_generator_class("impa") is IMPA
    controls = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:5])
    compounds = ["taxol", "nocodazole", "taxol", "cytochalasin D", "DMSO"]
    out = gen.generate(controls, compounds, [0.3, 1.0, 3.0, 0.3, 0.0], seed=7)
    assert out.shape == (5, 96, 96, 3) and out.dtype == np.uint8
    # same seed -> same images; another seed -> another noise draw -> other images
    again = gen.generate(controls, compounds, [0.3, 1.0, 3.0, 0.3, 0.0], seed=7)
    assert np.array_equal(out, again)
    other = gen.generate(controls, compounds, [0.3, 1.0, 3.0, 0.3, 0.0], seed=8)
    assert not np.array_equal(out, other)
    # the checkpoint folder and its model.safetensors load the same weights
    from_file = IMPA.load(mini_ds, ckpt / "model.safetensors")
    assert np.array_equal(from_file.generate(controls, compounds, [0.0] * 5, seed=7), out)
    # the loaded weights are the EMA weights of the run, not the raw ones
    from safetensors.torch import load_file

    ema = load_file(str(ckpt / "model.safetensors"))
    raw = load_file(str(ckpt / "train_state.safetensors"))
    assert {k.split(".")[0] for k in ema} == {"generator", "mapping"}
    key = "generator.stem.weight"
    assert torch.equal(gen.generator.state_dict()["stem.weight"], ema[key])
    assert not torch.equal(ema[key], raw[key])
    assert gen.n_parameters() == sum(v.numel() for v in ema.values())


def test_bad_checkpoints_are_one_line_errors(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    ckpt = _train_tiny(mini_ds, tmp_path / "run")
    with pytest.raises(CellbenchError, match="needs trained weights"):
        IMPA.load(mini_ds, None)
    with pytest.raises(CellbenchError, match="not found"):
        IMPA.load(mini_ds, tmp_path / "nowhere")
    # truncated weights
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CellbenchError, match="truncated") as err:
        IMPA.load(mini_ds, ckpt)
    assert str(weights) in str(err.value)
    weights.write_bytes(data)
    # weights that do not fit the architecture in config.json
    cfg_path = ckpt / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["config"]["dim_in"] = 8
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(CellbenchError, match="do not match") as err:
        IMPA.load(mini_ds, ckpt)
    assert str(weights) in str(err.value)
    # another model's checkpoint
    meta["model"] = "cellflux"
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(CellbenchError, match="not 'impa'"):
        IMPA.load(mini_ds, ckpt)


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    """IMPA draws its own noise (targets, styles) from torch's RNG: 2 + 2 steps after a resume must
    give exactly the weights and optimiser states of 4 steps in one go."""
    from safetensors.torch import load_file

    from cellbench_baselines.trainer import train

    cfg = tiny_config(steps=4, ckpt_every=2)
    straight = train(IMPA, "impa", mini_ds, cfg, tmp_path / "a").checkpoint
    train(IMPA, "impa", mini_ds, cfg, tmp_path / "b", steps=2)
    resumed = train(IMPA, "impa", mini_ds, cfg, tmp_path / "b")
    assert resumed.resumed_from == 2 and resumed.step == 4
    for name in ("model.safetensors", "train_state.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed.checkpoint / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow
def test_cli_train_then_generate(mini_root: Path, tmp_path: Path) -> None:
    """`cellbench train impa` on the mini dataset, then `cellbench generate impa` answers the
    protocol with images that `cellbench images check` accepts."""

    def cli(*args: str):
        return run_cli(*args, env={"OMP_NUM_THREADS": "1"})  # tiny nets: 1 thread is fastest

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"preset": "cpu-small", **TINY, "ckpt_every": 2}))
    data = ("--dataset", "bbbc021", "--data-dir", str(mini_root))
    run = tmp_path / "run"
    res = cli("train", "impa", *data, "--config", str(cfg), "--steps", "2", "--out", str(run))
    assert res.returncode == 0, res.stderr
    assert (run / "log.csv").read_text().splitlines()[0].startswith("step,epoch,d_fake,d_loss")
    proto = tmp_path / "p.csv"
    assert cli("protocol", *data, "--out", str(proto)).returncode == 0
    imgs = tmp_path / "imgs"
    res = cli(
        "generate", "impa", *data, "--checkpoint", str(run), "--protocol", str(proto),
        "--out", str(imgs),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    check = cli("images", "check", str(imgs), "--protocol", str(proto), "--json")
    assert check.returncode == 0, check.stdout
    # without weights: one line, non-zero exit
    res = cli("generate", "impa", *data, "--protocol", str(proto), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "impa needs trained weights" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ the authors' released checkpoints
def _release_networks(seed: int = 0) -> dict[str, torch.nn.Module]:
    """Small IMPA networks with random weights everywhere (norm affines too), as a trained run."""
    torch.manual_seed(seed)
    nets = build_networks(tiny_config(residual_output=False), n_domains=4)
    with torch.no_grad():
        for net in nets.values():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return nets


def _write_release(nets: dict[str, torch.nn.Module], folder: Path, epoch: int = 200) -> Path:
    """A file in the authors' layout: ``<epoch:06d>_nets.ckpt``, one torch.save of a plain dict."""
    from cellbench_baselines.impa_release import release_container

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{epoch:06d}_nets.ckpt"
    torch.save(release_container(nets), path)
    return path


def test_release_container_has_the_authors_key_names() -> None:
    """The names of the authors' model.py (StarGAN v2 style), written by cellbench's own code."""
    from cellbench_baselines.impa_release import release_container

    c = release_container(_release_networks())
    assert set(c) == {"generator", "mapping_network", "style_encoder", "discriminator"}
    g = c["generator"]
    for key in (
        "from_rgb.weight",
        "encode.0.conv1x1.weight",  # 4 -> 8 channels: a learned shortcut, no bias
        "encode.0.norm2.bias",
        "decode.0.norm1.fc.weight",  # AdaIN: the style's linear layer
        "decode.3.conv1x1.weight",
        "to_rgb.0.weight",  # the instance norm before the RGB convolution
        "to_rgb.2.bias",
    ):
        assert key in g, key
    assert not any(k.startswith(("stem", "encoder", "head")) for k in g)
    assert set(c["mapping_network"]) == {
        "mapping_network.layers.0.weight",
        "mapping_network.layers.0.bias",
    }
    assert "linear.weight" in c["style_encoder"] and "conv.7.weight" in c["style_encoder"]
    assert c["discriminator"]["head.weight"].shape == (4, 16, 1, 1)  # a 1x1 convolution


def test_release_checkpoint_loads_into_the_same_generator(
    mini_ds: BBBC021Dataset, tmp_path: Path
) -> None:
    nets = _release_networks()
    path = _write_release(nets, tmp_path / "checkpoints" / "bbbc021_all")
    _write_release(_release_networks(seed=1), tmp_path / "checkpoints" / "bbbc021_all", epoch=100)
    reference = IMPA(mini_ds, tiny_config(), nets["generator"], nets["mapping"])
    controls = mini_ds.load_crops(mini_ds.index["SAMPLE_KEY"].tolist()[:3])
    compounds, doses = ["taxol", "nocodazole", "DMSO"], [0.3, 1.0, 0.0]
    want = reference.generate(controls, compounds, doses, seed=5)
    # the file, and the folder (its latest epoch), load the same networks
    for given in (path, path.parent):
        gen = IMPA.load(mini_ds, given)
        assert gen.checkpoint_path == path
        assert np.array_equal(gen.generate(controls, compounds, doses, seed=5), want)
    from cellbench.io import sha256_file

    assert gen.checkpoint_sha256 == sha256_file(path)
    # the architecture comes from the tensors
    arch = {k: gen.config[k] for k in ("dim_in", "max_conv_dim", "style_dim", "z_dim")}
    assert arch == {"dim_in": 4, "max_conv_dim": 16, "style_dim": 8, "z_dim": 4}
    assert gen.config["n_bottleneck"] == 1 and gen.config["mapping_layers"] == 1
    assert gen.n_parameters() == sum(
        p.numel() for k in ("generator", "mapping") for p in nets[k].parameters()
    )


def test_release_checkpoint_bad_files_are_one_line_errors(
    mini_ds: BBBC021Dataset, tmp_path: Path
) -> None:
    import argparse

    path = _write_release(_release_networks(), tmp_path / "ok")
    data = path.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    # truncated
    cut = bad / "000001_nets.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CellbenchError, match="truncated or not a readable PyTorch checkpoint"
    ) as err:
        IMPA.load(mini_ds, cut)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)
    # an object weights_only refuses to unpickle (nothing beyond tensors and dicts is allowed)
    foreign = bad / "foreign.ckpt"
    torch.save({"generator": {}, "mapping_network": {}, "args": argparse.Namespace(a=1)}, foreign)
    with pytest.raises(CellbenchError, match=r"refused to load.*argparse\.Namespace"):
        IMPA.load(mini_ds, foreign)
    # a torch file that is not their container
    other = bad / "other.ckpt"
    torch.save({"model": {"w": torch.zeros(1)}}, other)
    with pytest.raises(CellbenchError, match="not an IMPA nets checkpoint") as err:
        IMPA.load(mini_ds, other)
    assert str(other) in str(err.value)
    # tensors that do not fit (a layer missing)
    state = torch.load(path, weights_only=True)
    del state["generator"]["decode.0.conv2.weight"]
    broken = bad / "broken.ckpt"
    torch.save(state, broken)
    with pytest.raises(CellbenchError, match="does not fit") as err:
        IMPA.load(mini_ds, broken)
    assert str(broken) in str(err.value)
    # a mapping network narrower than the dataset's fingerprints
    state = torch.load(path, weights_only=True)
    state["mapping_network"]["mapping_network.layers.0.weight"] = torch.zeros(8, 100)
    narrow = bad / "narrow.ckpt"
    torch.save(state, narrow)
    with pytest.raises(CellbenchError, match="fewer than the dataset's 1024-d"):
        IMPA.load(mini_ds, narrow)


def test_cli_generate_from_release_checkpoint(mini_root: Path, tmp_path: Path) -> None:
    """`cellbench generate impa --checkpoint <epoch>_nets.ckpt` answers a protocol."""
    path = _write_release(_release_networks(), tmp_path / "release")
    data = ("--dataset", "bbbc021", "--data-dir", str(mini_root))
    env = {"OMP_NUM_THREADS": "1"}
    proto = tmp_path / "p.csv"
    assert run_cli("protocol", *data, "--out", str(proto), env=env).returncode == 0
    imgs = tmp_path / "imgs"
    res = run_cli(
        "generate", "impa", *data, "--checkpoint", str(path), "--protocol", str(proto),
        "--out", str(imgs), env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    record = json.loads((imgs / "generation.json").read_text())
    assert record["checkpoint"] == str(path)
    check = run_cli("images", "check", str(imgs), "--protocol", str(proto), "--json", env=env)
    assert check.returncode == 0, check.stdout
