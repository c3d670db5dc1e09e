"""Model and training configs are checked against their bounds tables before anything is built.

Each model keeps one declarative table (cellbench_baselines.config.check_config): every shipped
preset (and the published networks) must pass it and every preset key must have a bound; a value
outside its bound in a config file, a checkpoint's config.json or a dict handed to ``train`` is
one line naming the file, the key and the allowed values, raised before a weight is read or a
network built. A refused ``--init-from`` leaves no run folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cellbench.errors import CellbenchError
from cellbench_baselines.cellflux import BOUNDS as CELLFLUX_BOUNDS
from cellbench_baselines.cellflux import PRESETS as CELLFLUX_PRESETS
from cellbench_baselines.cellflux import CellFlux, read_cellflux_base
from cellbench_baselines.cellflux_authors import published_config
from cellbench_baselines.cellflux_rl import CellFluxRL
from cellbench_baselines.config import Bound, check_config, resolve_config
from cellbench_baselines.impa import IMPA
from cellbench_baselines.nn.diffusers_unet import DIFFUSERS_UNET
from cellbench_baselines.nn.unet import PUBLISHED_CELLFLUX
from cellbench_baselines.phendiff import AUTHORS_UNET, PhenDiff
from cellbench_baselines.trainer import train

MODELS = {"cellflux": CellFlux, "impa": IMPA, "phendiff": PhenDiff, "cellfluxrl": CellFluxRL}


def _table(bounds: Any) -> dict:
    return dict(bounds.table if isinstance(bounds, Bound) else bounds)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_preset_passes_its_bounds_and_every_key_has_one(model: str) -> None:
    cls = MODELS[model]
    for name, preset in cls.presets.items():
        check_config(preset, cls.config_bounds, where=name, fix="-")
        unbounded = [k for k in preset if k not in _table(cls.config_bounds)]
        assert unbounded == [], f"{model} preset {name}: keys without a bound {unbounded}"
        for key, value in preset.items():  # nested configs: every key bounded too
            bound = _table(cls.config_bounds)[key]
            if bound.kind == "table" and isinstance(value, dict) and bound.table:
                assert [k for k in value if k not in bound.table] == [], (model, key)


def test_the_published_networks_pass() -> None:
    check_config(published_config(PUBLISHED_CELLFLUX), CELLFLUX_BOUNDS, where="x", fix="-")
    check_config({**AUTHORS_UNET, "num_class_embeds": 36}, DIFFUSERS_UNET, where="x", fix="-")
    rl = copy.deepcopy(CellFluxRL.presets["paper"])
    rl["base_config"] = published_config(PUBLISHED_CELLFLUX)
    check_config(rl, CellFluxRL.config_bounds, where="x", fix="-")


def _set(cfg: dict, path: str, value: Any) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return out


def _checkpoint(folder: Path, model: str, config: dict) -> Path:
    folder.mkdir(parents=True)
    record = {"format": "cellbench-run", "model": model, "config": config}
    (folder / "config.json").write_text(json.dumps(record))
    return folder  # no weights: the config must be refused before they are looked for


CELLFLUX_CASES = [
    ("unet.num_res_blocks", 10**9, "an integer in [1, 32]"),
    ("unet.base_channels", -8, "an integer in [1, 2048]"),
    ("unet.channel_mult", [2, -1], "a list of 1 to 8 items, each an integer in [1, 16]"),
    ("unet.num_res_blocks", True, "an integer in [1, 32]"),  # bool where int
    ("unet.dropout", "0.1", "a finite number in [0, 1)"),  # str where float
    ("unet", "wide", "a mapping"),
    ("batch_size", 0, "an integer in [1, 65536]"),
    ("steps", -5, "an integer in [1, 1000000000]"),
    ("lr", "0.001", "a finite number in (0, 1]"),
    ("lr", 0.0, "a finite number in (0, 1]"),
    ("ema_decay", 1.0, "a finite number in [0, 1)"),
    ("sampler", "rk4", "one of 'heun', 'euler'"),
    ("sample_steps", 10**7, "an integer in [1, 10000]"),
    ("mixed_precision", 16, "one of 'bf16', 'no'"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), CELLFLUX_CASES)
def test_checkpoint_config_outside_its_bounds_is_refused_before_the_weights(
    tmp_path: Path, key: str, value: Any, allowed: str
) -> None:
    cfg = _set(CELLFLUX_PRESETS["cpu-small"], key, value)
    ckpt = _checkpoint(tmp_path / "run", "cellflux", cfg)
    with pytest.raises(CellbenchError) as err:
        read_cellflux_base(ckpt)
    text = str(err.value)
    assert f"config key {key!r} is {value!r}; allowed: {allowed}" in text
    assert str(ckpt / "config.json") in text and "\n" not in text


def test_an_absurd_network_is_refused_from_its_parameter_count(tmp_path: Path) -> None:
    cfg = _set(CELLFLUX_PRESETS["paper"], "unet.base_channels", 2048)
    cfg = _set(cfg, "unet.channel_mult", [16, 16, 16])  # each key within its bound
    ckpt = _checkpoint(tmp_path / "run", "cellflux", cfg)
    with pytest.raises(CellbenchError, match=r"'unet': describes networks of [\d,]+ parameters"):
        read_cellflux_base(ckpt)


@pytest.mark.parametrize(
    ("model", "key", "value", "allowed"),
    [
        ("impa", "dim_in", -1, "an integer in [1, 1024]"),
        ("impa", "n_bottleneck", 10**9, "an integer in [0, 32]"),
        ("impa", "lr", float("inf"), "a finite number in (0, 1]"),
        ("phendiff", "unet_diffusers.layers_per_block", 10**9, "an integer in [1, 32]"),
        ("phendiff", "unet_diffusers.block_out_channels", [128, -256], "each an integer"),
        ("phendiff", "scheduler.num_train_timesteps", 0, "an integer in [1, 100000]"),
        ("phendiff", "ddim_steps", False, "an integer in [1, 100000]"),
        ("cellfluxrl", "group_size", 0, "an integer in [1, 4096]"),
        ("cellfluxrl", "base_config.unet.num_res_blocks", 10**9, "an integer in [1, 32]"),
        ("cellfluxrl", "adv_eps", float("nan"), "a finite number in (0, 1]"),
    ],
)
def test_every_model_checks_its_checkpoint_config(
    mini_ds, tmp_path: Path, model: str, key: str, value: Any, allowed: str
) -> None:
    cls = MODELS[model]
    cfg = copy.deepcopy(cls.presets["cpu-small"])
    if model == "cellfluxrl":
        cfg["base_config"] = copy.deepcopy(CELLFLUX_PRESETS["cpu-small"])
    cfg = _set(cfg, key, value)
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    record = {"format": "cellbench-run", "model": model, "config": cfg}
    (ckpt / "config.json").write_text(json.dumps(record))  # NaN/inf: Python's JSON writes them
    with pytest.raises(CellbenchError) as err:
        cls.load(mini_ds, ckpt)
    text = str(err.value)
    assert str(ckpt / "config.json") in text and "\n" not in text
    if (isinstance(value, float) and value != value) or value == float("inf"):
        assert "is not a finite number" in text  # refused by the JSON reader already
    else:
        assert f"config key {key!r} is {value!r}; allowed:" in text and allowed in text


def test_non_finite_values_are_refused_by_the_table_too() -> None:
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(CellbenchError, match=r"config key 'lr' is .*; allowed: a finite"):
            check_config({"lr": value}, CELLFLUX_BOUNDS, where="c.yaml", fix="-")


# ------------------------------------------------------------------------ config files, train()
@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        (
            '{"unet": {"num_res_blocks": 1000000000}}',
            ".json",
            "'unet.num_res_blocks' is 1000000000",
        ),
        ('{"unet": {"base_channels": -3}}', ".json", "'unet.base_channels' is -3"),
        ('{"lr": 1e999}', ".json", "1e999 is not a finite number"),
        ('{"lr": NaN}', ".json", "NaN is not a finite number"),
        ("lr: .nan\n", ".yaml", "config key 'lr' is nan; allowed: a finite number"),
        ("[" * 100_000 + "]" * 100_000, ".json", "nested 100000 levels deep"),
        ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", ".yaml", "nested too deeply"),
    ],
)
def test_a_training_config_file_outside_its_bounds_is_one_line(
    tmp_path: Path, text: str, suffix: str, message: str
) -> None:
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    path = tmp_path / f"cfg{suffix}"
    path.write_text(text)
    with pytest.raises(CellbenchError) as err:
        CellFlux.training_config(str(path))
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_train_checks_a_dict_config_before_building_anything(
    mini_ds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_allocation(*a: object, **k: object) -> None:
        raise AssertionError("the networks were built before the config was checked")

    monkeypatch.setattr(CellFlux, "trainable", classmethod(no_allocation))
    cfg = _set(resolve_config(CELLFLUX_PRESETS), "unet.num_res_blocks", 10**9)
    with pytest.raises(CellbenchError, match=r"'unet\.num_res_blocks' is 1000000000"):
        train(CellFlux, "cellflux", mini_ds, cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_refused_init_from_leaves_no_run_folder(mini_ds, tmp_path: Path) -> None:
    from tests.test_training import tiny_config

    for bad in (tmp_path / "missing", _checkpoint(tmp_path / "foreign", "impa", {})):
        out = tmp_path / "run"
        with pytest.raises(CellbenchError):
            train(CellFlux, "cellflux", mini_ds, tiny_config(), out, init_from=bad)
        assert not out.exists()
