"""CellFluxRL: the NFT pieces against hand computations, best-of-N, and RL runs end to end."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cellbench.best_of_n import select_best, write_generated_best_of_n
from cellbench.data.bbbc021 import BBBC021Dataset, open_dataset
from cellbench.errors import CellbenchError
from cellbench.generation import GENERATION_FILE, read_generation_record
from cellbench.generators import write_generated
from cellbench.protocol import build_protocol
from cellbench_baselines.nft import (
    group_advantages,
    nft_loss,
    nft_weights,
    old_policy_decay,
    update_old_policy,
)
from tests.conftest import TINY_UNET, run_cli


# ------------------------------------------------------------------------------ advantages
def test_group_advantages_hand_computed() -> None:
    r = torch.tensor([1.0, 3.0, 2.0, 6.0])
    adv = group_advantages(r, torch.tensor([0, 0, 1, 1]))
    # group means 2 and 4 -> centred (-1, 1, -2, 2); population std of (1, 3, 2, 6) = sqrt(3.5)
    std = math.sqrt(3.5)
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0], dtype=torch.float64) / (std + 1e-4)
    assert torch.allclose(adv.advantages, expected, rtol=0, atol=1e-12)
    assert torch.allclose(adv.weights, expected / 10 + 0.5, rtol=0, atol=1e-12)
    assert adv.batch_std == pytest.approx(std, abs=1e-12)
    assert adv.degenerate_groups == 0 and adv.n_groups == 2 and adv.clipped_fraction == 0.0
    # group ids need not be sorted or contiguous
    shuffled = group_advantages(r[[2, 0, 3, 1]], torch.tensor([7, 3, 7, 3]))
    assert torch.allclose(shuffled.advantages, expected[[2, 0, 3, 1]], rtol=0, atol=1e-12)


def test_all_equal_rewards_give_zero_advantage_not_nan() -> None:
    # one group all equal (0.1 three times: its float mean is not exactly 0.1), one group varied
    adv = group_advantages(
        torch.tensor([0.1, 0.1, 0.1, 1.0, 2.0, 3.0]), torch.tensor([0, 0, 0, 1, 1, 1])
    )
    assert adv.degenerate_groups == 1
    assert torch.equal(adv.advantages[:3], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(adv.weights[:3], torch.full((3,), 0.5, dtype=torch.float64))
    assert adv.advantages[3] < 0 < adv.advantages[5]
    # the whole batch equal: std 0, eps keeps it finite, every weight exactly 0.5
    flat = group_advantages(torch.full((6,), -3.7), torch.tensor([0, 0, 0, 1, 1, 1]))
    assert flat.batch_std == 0.0 and flat.degenerate_groups == 2
    assert torch.equal(flat.weights, torch.full((6,), 0.5, dtype=torch.float64))


def test_advantage_clipping_and_extreme_weights() -> None:
    # one outlier in a group of 40: raw A = (39/40) / (sqrt(39)/40 + 1e-4) = 6.24 -> clipped to 5
    r = torch.zeros(40)
    r[7] = 1.0
    adv = group_advantages(r, torch.zeros(40, dtype=torch.long))
    std = math.sqrt(39) / 40
    assert adv.advantages[7] == 5.0 and adv.weights[7] == 1.0
    assert adv.advantages[0].item() == pytest.approx(-(1 / 40) / (std + 1e-4), abs=1e-12)
    assert adv.clipped_fraction == pytest.approx(1 / 40)
    low = group_advantages(-r, torch.zeros(40, dtype=torch.long))
    assert low.advantages[7] == -5.0 and low.weights[7] == 0.0
    # a smaller clip clips more and maps to w = A / (2 clip) + 0.5
    tight = group_advantages(r, torch.zeros(40, dtype=torch.long), clip=0.1)
    assert tight.advantages.abs().max() == 0.1 and tight.weights.min() == 0.0
    assert torch.equal(
        nft_weights(torch.tensor([-7.0, -5.0, 0.0, 2.5, 9.0])).float(),
        torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0]),
    )


def test_group_advantages_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="shape"):
        group_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 0, 1]))


# ------------------------------------------------------------------------------ loss
def test_nft_loss_hand_computed() -> None:
    vt = torch.tensor([[2.0]], requires_grad=True)
    vo, vr, u = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[0.5]])
    w = torch.tensor([0.75])
    out = nft_loss(vt, vo, vr, u, w, beta=1.0, ref_penalty=0.1)
    # v+ = 2, v- = 0: 0.75 * 1.5^2 + 0.25 * 0.5^2 + 0.1 * 2^2
    assert out["loss"].item() == pytest.approx(0.75 * 2.25 + 0.25 * 0.25 + 0.4, abs=1e-7)
    assert out["positive"].item() == pytest.approx(0.75 * 2.25, abs=1e-7)
    assert out["negative"].item() == pytest.approx(0.25 * 0.25, abs=1e-7)
    assert out["ref"].item() == pytest.approx(4.0) and out["old_deviation"].item() == 1.0
    # beta 0.5: v+ = 1.5, v- = 0.5
    half = nft_loss(vt, vo, vr, u, w, beta=0.5, ref_penalty=0.1)
    assert half["loss"].item() == pytest.approx(0.75 * 1.0 + 0.25 * 0.0 + 0.4, abs=1e-7)
    # the gradient at v_theta = v_old is 2 beta (2w - 1)(v_old - u): zero for w = 1/2
    for weight, beta, grad in ((0.75, 1.0, 0.5), (0.5, 1.0, 0.0), (0.0, 2.0, -2.0)):
        v = torch.tensor([[1.0]], requires_grad=True)
        nft_loss(v, vo, None, u, torch.tensor([weight]), beta=beta, ref_penalty=0.0)[
            "loss"
        ].backward()
        assert v.grad.item() == pytest.approx(grad, abs=1e-7)


def test_nft_loss_extreme_weights_and_pixel_means() -> None:
    g = torch.Generator().manual_seed(0)
    vt, vo, vr, u = (torch.randn(3, 3, 4, 4, generator=g) for _ in range(4))
    w = torch.tensor([1.0, 0.0, 0.3])
    out = nft_loss(vt, vo, vr, u, w, beta=1.0, ref_penalty=1e-4)
    # w = 1: plain flow matching of v_theta; w = 0: only the mirrored velocity 2 v_old - v_theta
    per = [
        ((vt[0] - u[0]) ** 2).mean(),
        ((2 * vo[1] - vt[1] - u[1]) ** 2).mean(),
        0.3 * ((vt[2] - u[2]) ** 2).mean() + 0.7 * ((2 * vo[2] - vt[2] - u[2]) ** 2).mean(),
    ]
    ref = [((vt[i] - vr[i]) ** 2).mean() for i in range(3)]
    expected = sum(p + 1e-4 * q for p, q in zip(per, ref, strict=True)) / 3
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # a per-sample factor (an image-predicting base uses (1 - t)^2) scales every term of a sample
    sw = torch.tensor([1.0, 0.5, 2.0])
    scaled = nft_loss(vt, vo, vr, u, w, beta=1.0, ref_penalty=1e-4, sample_weight=sw)
    expected_sw = sum(s * (p + 1e-4 * q) for s, p, q in zip(sw.tolist(), per, ref, strict=True)) / 3
    assert scaled["loss"].item() == pytest.approx(expected_sw.item(), rel=1e-6)
    assert scaled["positive"].item() + scaled["negative"].item() + 1e-4 * scaled[
        "ref"
    ].item() == pytest.approx(scaled["loss"].item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nft_loss(vt, vo, vr, u, torch.tensor([1.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="v_ref"):
        nft_loss(vt, vo, None, u, w, ref_penalty=1e-4)


# ------------------------------------------------------------------------------ old policy
def test_old_policy_decay_schedule() -> None:
    assert old_policy_decay(0) == 0.0
    assert old_policy_decay(100) == pytest.approx(0.1)
    assert old_policy_decay(499) == pytest.approx(0.499)
    assert old_policy_decay(10_000) == 0.5
    assert old_policy_decay(50, rate=0.01, maximum=0.9, flat=75) == 0.0
    assert old_policy_decay(85, rate=0.01, maximum=0.9, flat=75) == pytest.approx(0.1)


def test_update_old_policy_is_a_moving_average() -> None:
    torch.manual_seed(0)
    old, new = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    w_old, w_new = old.weight.detach().clone(), new.weight.detach().clone()
    update_old_policy(old, new, 0.25)
    assert torch.allclose(old.weight, 0.25 * w_old + 0.75 * w_new, rtol=0, atol=1e-7)
    update_old_policy(old, new, 0.0)
    assert torch.equal(old.weight, new.weight) and torch.equal(old.bias, new.bias)
    with pytest.raises(ValueError):
        update_old_policy(old, new, 1.5)


# ------------------------------------------------------------------------------ best-of-N
def test_select_best_nan_and_ties() -> None:
    cands = np.arange(3 * 4).reshape(3, 4, 1)  # candidate k of task t holds 4k + t
    scores = np.array([[0.0, 5.0, np.nan, 1.0], [2.0, 5.0, -9.0, 1.0], [1.0, 4.0, np.nan, 1.0]])
    best, index = select_best(cands, scores)
    assert index.tolist() == [1, 0, 1, 0]  # ties -> lowest k; NaN ranks below any number
    assert best[:, 0].tolist() == [4, 1, 6, 3]
    scores[:, 2] = np.nan
    with pytest.raises(ValueError, match="task 2"):
        select_best(cands, scores)
    with pytest.raises(ValueError, match="start with"):
        select_best(cands, scores[:, :3])


class _SeedGen:
    """A generator whose output brightness is a function of the seed (for best-of-N tests)."""

    name = "seedgen"
    version = "1"

    def generate(self, controls, compounds, doses, seed):
        rng = np.random.default_rng(seed)
        level = rng.integers(1, 250, size=len(controls))
        return np.broadcast_to(level[:, None, None, None], controls.shape).astype(np.uint8)


class _MeanReward:
    """Scores an image by its mean pixel (so the brightest candidate must win)."""

    def __call__(self, images, moas):
        assert len(images) == len(moas)
        return {"overall": torch.from_numpy(images.reshape(len(images), -1).mean(1) * 1.0)}


def test_best_of_n_writes_the_best_and_a_record(mini_ds: BBBC021Dataset, tmp_path: Path) -> None:
    table = build_protocol(mini_ds, "test", seed=0)
    gen = _SeedGen()
    out = tmp_path / "best"
    rec = write_generated_best_of_n(
        gen,
        mini_ds,
        table,
        out,
        n=4,
        model="seedgen",
        seed=3,
        batch_size=3,
        reward_model=_MeanReward(),
    )
    # the same candidates as write_generated's <task>_<k> images
    write_generated(gen, mini_ds, table, tmp_path / "all", n_per_task=4, seed=3, batch_size=3)
    for j, task in enumerate(table["task_id"]):
        levels = [int(np.load(tmp_path / "all" / f"{task}_{k}.npy")[0, 0, 0]) for k in range(4)]
        assert int(np.load(out / f"{task}.npy")[0, 0, 0]) == max(levels)
        assert rec["selection"]["chosen_index"][j] == levels.index(max(levels))
    saved = read_generation_record(out)
    assert saved == rec and saved["best_of_n"] == 4 and saved["selection_reward"] == "overall"
    assert saved["model"] == "seedgen" and saved["seed"] == 3 and saved["checkpoint_sha256"] is None
    assert sum(saved["selection"]["chosen_index_counts"]) == len(table)
    assert saved["selection"]["mean_selected"] >= saved["selection"]["mean_of_candidates"]
    # best-of-1 is exactly the plain generation
    write_generated_best_of_n(
        gen,
        mini_ds,
        table,
        tmp_path / "one",
        n=1,
        model="seedgen",
        seed=3,
        batch_size=3,
        reward_model=_MeanReward(),
    )
    write_generated(gen, mini_ds, table, tmp_path / "plain", seed=3, batch_size=3)
    for task in table["task_id"]:
        assert np.array_equal(
            np.load(tmp_path / "one" / f"{task}.npy"), np.load(tmp_path / "plain" / f"{task}.npy")
        )
    assert read_generation_record(tmp_path / "one")["selection_reward"] is None
    (out / GENERATION_FILE).write_text('{"format": "cellbench-generation", "best_of_n": 0}')
    with pytest.raises(CellbenchError, match="best_of_n must be a positive integer"):
        read_generation_record(out)


# ------------------------------------------------------------------------------ RL end to end
TINY_CELLFLUX = {
    "batch_size": 4,
    "steps": 2,
    "ckpt_every": 2,
    "log_every": 1,
    "sample_steps": 2,
    "unet": TINY_UNET,
}
#: a fast RL config: 2 groups of 3, 2 rollout steps, rewards without the Inception pass
TINY_RL = {
    "batch_size": 2,
    "group_size": 3,
    "rollout_steps": 2,
    "steps": 2,
    "ckpt_every": 1,
    "lr": 1e-3,
    "old_decay_rate": 0.25,
    # rewards that vary within a group of the 2-step network's rollouts (with segmenter v3 its
    # blurry images hold no cell of 200 px or more, so cyto_size is -25 for every rollout)
    "reward": {"nuc_size": 1.0, "cyto_count": 1.0},
}


@pytest.fixture(scope="module")
def sim_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny bbbc021-sim (it ships reference statistics) and a 2-step tiny CellFlux on it."""
    from cellbench.data.sim import write_sim_dataset
    from cellbench_baselines.cellflux import CellFlux
    from cellbench_baselines.config import resolve_config
    from cellbench_baselines.trainer import train

    root = tmp_path_factory.mktemp("rl")
    write_sim_dataset(root / "bbbc021-sim", seed=0, scale="tiny")
    ds = open_dataset("bbbc021-sim", root)
    train(CellFlux, "cellflux", ds, resolve_config(CellFlux.presets, TINY_CELLFLUX), root / "base")
    return root, root / "base"


def _state(ckpt: Path) -> dict[str, torch.Tensor]:
    from cellbench_baselines.checkpoint import TRAIN_STATE_FILE, read_safetensors

    return read_safetensors(ckpt / TRAIN_STATE_FILE)[0]


@pytest.mark.slow
def test_rl_runs_logs_and_generates(sim_base: tuple[Path, Path], tmp_path: Path) -> None:
    from cellbench_baselines.cellflux_rl import CellFluxRL, resolve_rl_config, run_rl
    from cellbench_baselines.checkpoint import MODEL_FILE, complete_checkpoints, read_safetensors

    root, base = sim_base
    ds = open_dataset("bbbc021-sim", root)
    cfg = resolve_rl_config(TINY_RL, base)
    assert cfg["reward"] == {"nuc_size": 1.0, "cyto_count": 1.0}
    assert cfg["base_config"]["unet"]["base_channels"] == 8 and len(cfg["base_sha256"]) == 64
    result = run_rl(ds, cfg, tmp_path / "run")
    assert result.step == 2
    with open(tmp_path / "run" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["1", "2"]
    for key in (
        "r_nuc_size",
        "r_cyto_size",
        "r_nuc_in_cyto",
        "r_cyto_count",
        "reward",
        "loss",
        "positive",
        "negative",
        "ref",
        "grad_norm",
        "degenerate_groups",
        "time_rollout",
        "time_reward",
        "time_update",
        "time_step",
    ):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    assert "r_moa" not in rows[0]  # not computed for this objective, never logged as NaN
    r1 = rows[0]
    assert float(r1["reward"]) == pytest.approx(
        float(r1["r_nuc_size"]) + float(r1["r_cyto_count"]), abs=1e-4
    )
    assert float(r1["time_step"]) >= float(r1["time_rollout"]) + float(r1["time_update"]) - 1e-3
    # old policy: decay 0 after step 1 (old = trained), 0.25 after step 2
    first, second = complete_checkpoints(tmp_path / "run")
    s1, s2 = _state(first), _state(second)
    keys = [k[len("unet.") :] for k in s1 if k.startswith("unet.")]
    assert all(torch.equal(s1[f"unet.{k}"], s1[f"old.{k}"]) for k in keys)
    assert all(
        torch.allclose(s2[f"old.{k}"], 0.25 * s1[f"old.{k}"] + 0.75 * s2[f"unet.{k}"], atol=1e-6)
        for k in keys
    )
    base_w = read_safetensors(base / "checkpoints" / "step-00000002" / MODEL_FILE)[0]
    assert any(not torch.equal(base_w[f"unet.{k}"], s2[f"unet.{k}"]) for k in keys)
    gen = CellFluxRL.load(ds, tmp_path / "run")
    assert gen.guidance == 0.0 and gen.sample_steps == 2
    crops = ds.load_crops(ds.split("test")["SAMPLE_KEY"].tolist()[:3])
    a = gen.generate(crops, ["taxol"] * 3, [1.0] * 3, seed=5)
    assert a.shape == crops.shape and a.dtype == np.uint8
    assert np.array_equal(a, gen.generate(crops, ["taxol"] * 3, [1.0] * 3, seed=5))


@pytest.mark.slow
def test_rl_resume_gives_the_same_weights(sim_base: tuple[Path, Path], tmp_path: Path) -> None:
    from cellbench_baselines.cellflux_rl import resolve_rl_config, run_rl
    from cellbench_baselines.checkpoint import complete_checkpoints

    root, base = sim_base
    ds = open_dataset("bbbc021-sim", root)
    cfg = resolve_rl_config({**TINY_RL, "steps": 3}, base)
    run_rl(ds, cfg, tmp_path / "full")
    run_rl(ds, cfg, tmp_path / "split", steps=1)  # "interrupted" after one step
    resumed = run_rl(ds, cfg, tmp_path / "split")
    assert resumed.resumed_from == 1 and resumed.step == 3
    full = _state(complete_checkpoints(tmp_path / "full")[-1])
    split = _state(complete_checkpoints(tmp_path / "split")[-1])
    assert full.keys() == split.keys()
    assert all(torch.equal(full[k], split[k]) for k in full)
    # a different config cannot continue this run
    other = resolve_rl_config({**TINY_RL, "steps": 4, "nft_beta": 0.5}, base)
    with pytest.raises(CellbenchError, match="different config"):
        run_rl(ds, other, tmp_path / "split")


@pytest.mark.slow
def test_all_equal_rewards_warn_and_do_not_move_the_weights(
    sim_base: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from cellbench_baselines import cellflux_rl
    from cellbench_baselines.checkpoint import complete_checkpoints, read_safetensors

    def constant(self, handles):
        n = sum(len(h[1]) for h in handles)
        return {name: np.full(n, -2.0) for name in self.names}

    monkeypatch.setattr(cellflux_rl.RolloutRewards, "collect", constant)
    root, base = sim_base
    ds = open_dataset("bbbc021-sim", root)
    cfg = cellflux_rl.resolve_rl_config({**TINY_RL, "steps": 1, "ref_penalty": 0.0}, base)
    with caplog.at_level(logging.WARNING, logger="cellbench.rl"):
        result = cellflux_rl.run_rl(ds, cfg, tmp_path / "run")
    assert "all 6 rewards of the batch are equal" in caplog.text
    assert result.losses["grad_norm"] == 0.0 and result.losses["degenerate_groups"] == 2.0
    assert all(math.isfinite(v) for v in result.losses.values())
    s = _state(complete_checkpoints(tmp_path / "run")[-1])
    base_w = read_safetensors(base / "checkpoints" / "step-00000002" / "model.safetensors")[0]
    assert all(torch.equal(s[k], base_w[k]) for k in base_w)  # no signal, no penalty: no move


def test_rl_config_errors(sim_base: tuple[Path, Path], tmp_path: Path) -> None:
    from cellbench_baselines.cellflux_rl import NFTTrainable, resolve_rl_config

    root, base = sim_base
    with pytest.raises(CellbenchError, match="unknown reward 'nuc_in_cytoo'; did you mean"):
        resolve_rl_config({"reward": {"nuc_in_cytoo": 1}}, base)
    with pytest.raises(CellbenchError, match="every reward weight is 0"):
        resolve_rl_config({"reward": {"overall": 0}}, base)
    with pytest.raises(CellbenchError, match="group_size must be at least 2"):
        resolve_rl_config({"group_size": 1}, base)
    with pytest.raises(CellbenchError, match="unknown config key 'nft_betta'"):
        resolve_rl_config({"nft_betta": 1.0}, base)
    with pytest.raises(CellbenchError, match="checkpoint not found"):
        resolve_rl_config("cpu-small", tmp_path / "missing")
    ds = open_dataset("bbbc021-sim", root)
    from cellbench_baselines.cellflux_rl import PRESETS

    with pytest.raises(CellbenchError, match="rl cellflux --checkpoint"):
        NFTTrainable(ds, dict(PRESETS["cpu-small"], reward={"overall": 1.0}))


@pytest.mark.slow
def test_rl_cli_and_generate(sim_base: tuple[Path, Path], tmp_path: Path) -> None:
    root, base = sim_base
    cfg = tmp_path / "rl.json"
    cfg.write_text(json.dumps({**TINY_RL, "steps": 1}))
    res = run_cli(
        "rl",
        "cellflux",
        "--checkpoint",
        str(base),
        "--dataset",
        "bbbc021-sim",
        "--data-dir",
        str(root),
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "run"),
        "--json",
        "--threads",
        "1",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["step"] == 1 and summary["reward"] == TINY_RL["reward"]
    assert summary["base_checkpoint"].endswith("step-00000002")
    bad = run_cli(
        "rl",
        "cellflux",
        "--checkpoint",
        str(base),
        "--data-dir",
        str(root),
        "--config",
        "cpu-smal",
        "--out",
        str(tmp_path / "x"),
    )
    assert bad.returncode == 2 and "did you mean 'cpu-small'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x").exists()
    ds = open_dataset("bbbc021-sim", root)
    proto = tmp_path / "p.csv"
    build_protocol(ds, "test", seed=0).head(4).to_csv(proto, index=False)
    gen = run_cli(
        "generate",
        "cellfluxrl",
        "--protocol",
        str(proto),
        "--dataset",
        "bbbc021-sim",
        "--data-dir",
        str(root),
        "--checkpoint",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "imgs"),
    )
    assert gen.returncode == 0, gen.stderr
    assert len(list((tmp_path / "imgs").glob("*.npy"))) == 4


@pytest.mark.slow
def test_generate_best_of_cli_records_n_and_eval_reports_it(
    sim_base: tuple[Path, Path], tmp_path: Path
) -> None:
    """`cellbench generate --best-of 2` writes one image per task plus generation.json, and
    `cellbench eval` reads the folder as complete and records best_of_n = 2."""
    root, _ = sim_base
    ds = open_dataset("bbbc021-sim", root)
    proto = tmp_path / "p.csv"
    build_protocol(ds, "test", seed=0).head(6).to_csv(proto, index=False)
    common = ["--dataset", "bbbc021-sim", "--data-dir", str(root), "--protocol", str(proto)]
    images = tmp_path / "imgs"
    res = run_cli("generate", "identity", *common, "--out", str(images), "--best-of", "2")
    assert res.returncode == 0, res.stderr
    assert len(list(images.glob("*.npy"))) == 6
    record = json.loads((images / "generation.json").read_text())
    assert record["best_of_n"] == 2 and record["selection_reward"] == "overall"
    out = tmp_path / "r.json"
    res = run_cli("eval", str(images), *common, "--no-fid", "--out", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["best_of_n"] == 2 and doc["generation"]["model"] == "identity"
    assert doc["images"]["n_problems"] == 0 and doc["images"]["missing_tasks"] == 0
    assert "best-of-2" in res.stdout
    bad = run_cli(
        "generate",
        "identity",
        *common,
        "--out",
        str(tmp_path / "x"),
        "--best-of",
        "2",
        "--n-per-task",
        "2",
    )
    assert bad.returncode == 2 and "--best-of keeps one image per task" in bad.stderr


@pytest.mark.slow
def test_plain_generate_records_the_checkpoint_and_eval_keeps_it(
    sim_base: tuple[Path, Path], tmp_path: Path
) -> None:
    """A plain `cellbench generate` of a trained checkpoint writes generation.json with the sha256
    of the weights it loaded, its size and sampler settings; `cellbench eval` copies it."""
    from cellbench.io import sha256_file
    from cellbench_baselines.cellflux import CellFlux
    from cellbench_baselines.checkpoint import complete_checkpoints

    root, base = sim_base
    ds = open_dataset("bbbc021-sim", root)
    proto = tmp_path / "p.csv"
    build_protocol(ds, "test", seed=0).head(4).to_csv(proto, index=False)
    common = ["--dataset", "bbbc021-sim", "--data-dir", str(root), "--protocol", str(proto)]
    images = tmp_path / "imgs"
    res = run_cli(
        "generate", "cellflux", *common, "--checkpoint", str(base), "--out", str(images),
        "--seed", "5", "--batch-size", "3", "--sample-steps", "3",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    last = complete_checkpoints(base)[-1]
    record = read_generation_record(images)
    assert record is not None
    assert record["checkpoint_sha256"] == sha256_file(last / "model.safetensors")
    assert record["checkpoint"] == str(last)
    assert record["n_parameters"] == CellFlux.load(ds, base).n_parameters() > 0
    assert record["sampler"] == {
        "sampler": "heun",
        "sample_steps": 3,
        "time_grid": "edm",
        "guidance": 0.2,
        "noise_std": 1.0,
        "rho": 7.0,
        "grid_from_zero": True,
        "pixel_io": "round",
    }
    assert record["model"] == "cellflux" and record["generator_version"] == "1"
    assert (record["seed"], record["batch_size"], record["n_per_task"]) == (5, 3, 1)
    assert record["best_of_n"] == 1 and record["selection_reward"] is None
    assert record["complete"] is True and record["protocol_sha256"] == sha256_file(proto)
    out = tmp_path / "r.json"
    res = run_cli("eval", str(images), *common, "--no-fid", "--out", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["generation"] == record and doc["best_of_n"] == 1
    assert doc["images"]["n_problems"] == 0 and doc["images"]["missing_tasks"] == 0
