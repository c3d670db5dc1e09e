"""Training configs: the trainer keys every preset has, and resolving a preset or file to a config.

A trainable generator's ``presets`` map names (at least ``"cpu-small"`` and ``"paper"``) to
complete configs; :func:`resolve_config` turns a preset name, a JSON/YAML file or a dict (merged
over the preset its ``"preset"`` key names) plus command-line overrides into the config the
Trainer runs (:mod:`cellbench_baselines.trainer`) and the checkpoint stores
(:mod:`cellbench_baselines.checkpoint`). docs/generators.md lists the presets.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cellbench.errors import CellbenchError
from cellbench.registry import suggest

#: keys every trainable model's config has (its presets include them); read by the Trainer
TRAINER_DEFAULTS: dict[str, Any] = {
    "seed": 0,  # seeds weights init, data order, control pairing and the training noise
    "split": "train",  # dataset split whose treated crops are the targets
    "batch_size": 32,  # global batch (split over processes under torchrun)
    "steps": 1000,  # total optimiser steps of the run
    "ckpt_every": 500,  # checkpoint period in steps (and always at the end)
    "log_every": 10,  # log.csv period in steps
    "keep_checkpoints": 2,  # complete checkpoints kept (older ones are deleted)
    "ema_decay": 0.999,
    "ema_warmup": True,  # decay min(ema_decay, (1+n)/(10+n)) at update n
    "mixed_precision": "bf16",  # "bf16" or "no"; autocast is used on CUDA only
}
#: config keys that may change when a run is resumed (they do not change the result per step)
RESUMABLE_KEYS = frozenset({"steps", "ckpt_every", "log_every", "keep_checkpoints"})

#: config keys added after runs already existed, with the value that gives the older behaviour:
#: a run folder whose config.json lacks one is resumed as if it held that value
BACKFILLED_KEYS: dict[tuple[str, ...], Any] = {
    ("unet", "null_attention"): False,
    ("unet", "resample"): "conv",
    ("unet", "attention_heads"): 0,
    ("unet", "norm_eps"): 1e-6,
    ("noise_per",): "image",
    ("grid_from_zero",): True,
    ("pixel_io",): "round",
}
#: a backfilled key listed here is filled only in configs that hold the named key (top-level
#: keys of one model must not appear in another model's config)
BACKFILL_ONLY_WITH: dict[tuple[str, ...], str] = {
    ("noise_per",): "time_grid",
    ("grid_from_zero",): "time_grid",
    ("pixel_io",): "time_grid",
}


def backfill_config(cfg: dict) -> dict:
    """A copy of a stored run config with each missing :data:`BACKFILLED_KEYS` entry filled in."""
    out = copy.deepcopy(cfg)
    for path, value in BACKFILLED_KEYS.items():
        if path in BACKFILL_ONLY_WITH and BACKFILL_ONLY_WITH[path] not in out:
            continue
        node: Any = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(path[-1], value)
    return out


def resolve_config(
    presets: dict[str, dict],
    spec: str | Path | dict | None = None,
    *,
    overrides: dict | None = None,
    default_preset: str = "cpu-small",
) -> dict:
    """The complete config from a preset name, a JSON/YAML file or a dict, plus ``overrides``.

    A file (or dict) is merged over the preset named by its optional ``"preset"`` key (default
    ``default_preset``). Unknown keys and values of the wrong type are errors, so a typo never
    silently leaves a default in place.
    """
    source = "config"
    if spec is None:
        spec = default_preset
    if isinstance(spec, str) and spec in presets:
        cfg = copy.deepcopy(presets[spec])
        cfg["preset"] = spec
        source = f"preset {spec!r}"
        user: dict = {}
    else:
        if isinstance(spec, dict):
            user = copy.deepcopy(spec)
        else:
            path = Path(spec)
            if not path.is_file():
                raise suggest(str(spec), list(presets), "preset or config file") from None
            user = _read_config_file(path)
            source = str(path)
        base = user.pop("preset", default_preset)
        if base not in presets:
            err = suggest(str(base), list(presets), "preset")
            err.path = None if isinstance(spec, dict) else str(spec)
            raise err
        cfg = copy.deepcopy(presets[base])
        cfg["preset"] = base
    _merge_checked(cfg, user, source, prefix="")
    if overrides:
        _merge_checked(cfg, {k: v for k, v in overrides.items() if v is not None}, "option", "")
    _check_trainer_keys(cfg, source)
    return cfg


def _read_config_file(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                raise CellbenchError(
                    "reading a YAML config needs PyYAML, which is not installed",
                    path=path,
                    fix="pip install 'cellbench[yaml]', or write the config as JSON",
                ) from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except CellbenchError:
        raise
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise CellbenchError(
            f"unreadable config file ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            path=path,
            fix="write a JSON (or YAML) mapping of config keys",
        ) from None
    if not isinstance(data, dict):
        raise CellbenchError(
            "config file must hold a mapping of keys to values", path=path, fix="see --help"
        )
    return data


def _merge_checked(base: dict, user: dict, source: str, prefix: str) -> None:
    for key, value in user.items():
        full = f"{prefix}{key}"
        if key not in base:
            err = suggest(str(key), list(base), "config key")
            err.message = f"{err.message} (in {source})"
            err.fix = f"valid keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(base)}"
            raise err
        old = base[key]
        if isinstance(old, dict):
            if not isinstance(value, dict):
                raise CellbenchError(f"config key {full!r} must be a mapping (in {source})")
            _merge_checked(old, value, source, prefix=f"{full}.")
            continue
        if not _type_ok(old, value):
            raise CellbenchError(
                f"config key {full!r} must be {type(old).__name__}, got {value!r} (in {source})",
                fix=f"the default is {old!r}",
            )
        base[key] = float(value) if isinstance(old, float) else copy.deepcopy(value)


def _type_ok(old: Any, value: Any) -> bool:
    if old is None:
        return True
    if isinstance(old, bool) or isinstance(value, bool):
        return isinstance(old, bool) and isinstance(value, bool)
    if isinstance(old, float):
        return isinstance(value, (int, float))
    if isinstance(old, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(old))


def _check_trainer_keys(cfg: dict, source: str) -> None:
    missing = [k for k in TRAINER_DEFAULTS if k not in cfg]
    if missing:
        raise CellbenchError(f"config lacks the trainer keys {missing} ({source})")
    for key in ("batch_size", "steps", "ckpt_every", "log_every", "keep_checkpoints"):
        if int(cfg[key]) < 1:
            raise CellbenchError(f"config key {key!r} must be at least 1, got {cfg[key]}")
    if not 0.0 <= float(cfg["ema_decay"]) < 1.0:
        raise CellbenchError(f"config key 'ema_decay' must be in [0, 1), got {cfg['ema_decay']}")
    if cfg["mixed_precision"] not in ("bf16", "no"):
        raise CellbenchError(
            f"config key 'mixed_precision' must be 'bf16' or 'no', got {cfg['mixed_precision']!r}"
        )
