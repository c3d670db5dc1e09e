"""Training configs: the trainer keys every preset has, and resolving a preset or file to a config.

A trainable generator's ``presets`` map names (at least ``"cpu-small"`` and ``"paper"``) to
complete configs; :func:`resolve_config` turns a preset name, a JSON/YAML file or a dict (merged
over the preset its ``"preset"`` key names) plus command-line overrides into the config the
Trainer runs (:mod:`cellbench_baselines.trainer`) and the checkpoint stores
(:mod:`cellbench_baselines.checkpoint`). docs/generators.md lists the presets.

Every config is also checked against a declarative table of :class:`Bound` per key
(:func:`check_config`) before any network or buffer is built from it: a config file, a
checkpoint's ``config.json`` or an authors' release with ``num_res_blocks: 1e9``, a negative
channel count, a ``true`` where a number belongs or a NaN learning rate is one line naming the
file, the key and the allowed range. Each model keeps its table beside its presets
(``TRAINER_BOUNDS`` here, ``UNET_BOUNDS`` in :mod:`cellbench_baselines.nn.unet`, ``BOUNDS`` in
each model module); the bounds are generous (every shipped preset and the published networks
pass, ``tests/test_config_bounds.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellbench.errors import CellbenchError
from cellbench.io import loads_json
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


# ------------------------------------------------------------------------------------ bounds
@dataclass(frozen=True)
class Bound:
    """The allowed values of one config key (see :func:`check_config`).

    Attributes:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"choice"``, ``"int_list"``,
            ``"float_list"``, ``"str_list"``, ``"table"`` (a nested config) or ``"mapping"``.
        lo, hi: inclusive numeric range (of the value, or of each list item).
        lo_open, hi_open: the range excludes ``lo`` / ``hi``.
        choices: the allowed values of a ``"choice"``.
        min_len, max_len: the allowed lengths of a list or string.
        table: the bounds of a ``"table"``'s keys.
        check: a last test of a ``"table"`` once its keys pass (e.g. the size of a network built
            from it, counted without allocating); returns what is wrong, or None.
        nullable: ``None`` is allowed too.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[Any, ...] = ()
    min_len: int = 0
    max_len: int = 64
    table: Mapping[str, Bound] = field(default_factory=dict)
    check: Callable[[dict], str | None] | None = None
    nullable: bool = False

    def describe(self) -> str:
        """The allowed values, in words (what the error names)."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = f"a string of {self.min_len} to {self.max_len} characters"
        elif self.kind in ("table", "mapping"):
            text = "a mapping"
        else:
            item = {"int": "an integer", "float": "a finite number"}.get(
                self.kind.removesuffix("_list"), "a string"
            )
            rng = self._range()
            text = f"{item}{' in ' + rng if rng else ''}"
            if self.kind.endswith("_list"):
                text = f"a list of {self.min_len} to {self.max_len} items, each {text}"
                if self.kind == "str_list":
                    text += " of at most 256 characters"
        return text + (" or null" if self.nullable else "")

    def _range(self) -> str:
        if self.lo is None and self.hi is None:
            return ""
        lo = "-inf" if self.lo is None else _num(self.lo)
        hi = "inf" if self.hi is None else _num(self.hi)
        return f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"

    def _in_range(self, x: float) -> bool:
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return self.hi is None or not (x > self.hi or (self.hi_open and x == self.hi))

    def _item_ok(self, kind: str, x: Any) -> bool:
        if isinstance(x, bool):
            return kind == "bool"
        if kind == "int":
            return isinstance(x, int) and self._in_range(x)
        if kind == "float":
            return isinstance(x, (int, float)) and math.isfinite(x) and self._in_range(x)
        if kind == "str":
            lo, hi = (self.min_len, self.max_len) if self.kind == "str" else (0, 256)
            return isinstance(x, str) and lo <= len(x) <= hi
        return False

    def allows(self, value: Any) -> bool:
        """True if ``value`` is allowed (a ``"table"``'s keys are checked by :func:`check_config`)."""
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if self.kind in ("int", "float", "str"):
            return self._item_ok(self.kind, value)
        if self.kind.endswith("_list"):
            return (
                isinstance(value, (list, tuple))
                and self.min_len <= len(value) <= self.max_len
                and all(self._item_ok(self.kind.removesuffix("_list"), x) for x in value)
            )
        if self.kind in ("table", "mapping"):
            return isinstance(value, dict) and len(value) <= 10_000
        raise ValueError(f"unknown Bound kind {self.kind!r}")


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def Int(lo: int, hi: int) -> Bound:
    """An integer in ``[lo, hi]`` (a bool is not an integer here)."""
    return Bound("int", lo, hi)


def Float(
    lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False
) -> Bound:
    """A finite number (integers too) in the range."""
    return Bound("float", lo, hi, lo_open=lo_open, hi_open=hi_open)


def Choice(*choices: Any) -> Bound:
    """One of ``choices`` (compared with their types: ``1`` is not ``True``)."""
    return Bound("choice", choices=choices)


BOOL = Bound("bool")


#: the most parameters the networks of one config may have (the published networks have 12M to
#: 80M; 1e9 float32 weights are 4 GB, 16 GB with Adam's state), counted before allocating
MAX_PARAMETERS = 1_000_000_000


def size_problem(build: Callable[[], Any], limit: int = MAX_PARAMETERS) -> str | None:
    """Build networks on PyTorch's meta device (shapes only, no memory) and count their
    parameters: what is wrong (they cannot be built, or have more than ``limit``), or None.

    ``build`` returns a module or a dict of modules; call it only once the config's keys passed
    their bounds, so that building is quick.
    """
    import contextlib
    from unittest import mock

    import torch

    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.device("meta"))
            for name in dir(torch.nn.init):  # the initialisers: no values to draw on meta
                if name.endswith("_") and not name.startswith("_"):
                    stack.enter_context(mock.patch.object(torch.nn.init, name, _keep))
            nets = build()
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, ZeroDivisionError) as exc:
        return f"does not describe a network ({(str(exc).splitlines() or [''])[0][:160]})"
    modules = nets.values() if isinstance(nets, dict) else [nets]
    n = sum(p.numel() for m in modules for p in m.parameters())
    if n > limit:
        return f"describes networks of {n:,} parameters, more than the {limit:,} allowed"
    return None


def _keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def check_config(
    cfg: Mapping[str, Any],
    bounds: Mapping[str, Bound] | Bound,
    *,
    where: str | Path | None,
    fix: str,
    prefix: str = "",
) -> None:
    """Refuse the first value of ``cfg`` outside its :class:`Bound` with one line that names
    ``where`` (the file), the key and the allowed values.

    ``bounds`` is a table of bounds per key, or a ``"table"`` :class:`Bound` whose ``check``
    then runs on the whole config once its keys pass (e.g. :func:`size_problem`). Keys without
    a bound are left to the config's own checks (``tests/test_config_bounds.py`` checks that
    every preset key has one); missing keys are left to the defaults.

    Raises:
        CellbenchError: the key, its value and what is allowed.
    """
    if isinstance(bounds, Bound):
        check_config(cfg, bounds.table, where=where, fix=fix, prefix=prefix)
        problem = bounds.check(dict(cfg)) if bounds.check is not None else None
        if problem:
            raise CellbenchError(f"config {problem}", path=where, fix=fix)
        return
    if not isinstance(cfg, Mapping):
        raise CellbenchError(
            f"config {prefix.rstrip('.') or 'document'} is not a mapping", path=where, fix=fix
        )
    for key, bound in bounds.items():
        if key not in cfg:
            continue
        value = cfg[key]
        name = f"{prefix}{key}"
        if not bound.allows(value):
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise CellbenchError(
                f"config key {name!r} is {shown}; allowed: {bound.describe()}",
                path=where,
                fix=fix,
            )
        if bound.kind == "table" and value is not None:
            check_config(value, bound.table, where=where, fix=fix, prefix=f"{name}.")
            problem = bound.check(value) if bound.check is not None else None
            if problem:
                raise CellbenchError(f"config key {name!r}: {problem}", path=where, fix=fix)


#: the bounds of the trainer keys (:data:`TRAINER_DEFAULTS`)
TRAINER_BOUNDS: dict[str, Bound] = {
    "seed": Int(0, 2**31 - 1),
    "split": Bound("str", min_len=1, max_len=64),
    "batch_size": Int(1, 65_536),
    "steps": Int(1, 10**9),
    "ckpt_every": Int(1, 10**9),
    "log_every": Int(1, 10**9),
    "keep_checkpoints": Int(1, 1000),
    "ema_decay": Float(0.0, 1.0, hi_open=True),
    "ema_warmup": BOOL,
    "mixed_precision": Choice("bf16", "no"),
}
#: bounds of the optimiser keys most models share
OPTIMISER_BOUNDS: dict[str, Bound] = {
    "lr": Float(0.0, 1.0, lo_open=True),
    "betas": Bound("float_list", 0.0, 1.0, hi_open=True, min_len=2, max_len=2),
    "weight_decay": Float(0.0, 10.0),
    "grad_clip": Float(0.0, 1e6),
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
    bounds: Mapping[str, Bound] | Bound | None = None,
) -> dict:
    """The complete config from a preset name, a JSON/YAML file or a dict, plus ``overrides``.

    A file (or dict) is merged over the preset named by its optional ``"preset"`` key (default
    ``default_preset``). Unknown keys and values of the wrong type are errors, so a typo never
    silently leaves a default in place. The result is checked against ``bounds`` (default
    :data:`TRAINER_BOUNDS`; :func:`check_config`) before it is returned.
    """
    source = "config"
    where: Path | None = None
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
            source, where = str(path), path
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
    check_config(
        cfg,
        TRAINER_BOUNDS if bounds is None else bounds,
        where=where,
        fix="change the value (or the option) to one in the allowed range",
    )
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
            data = loads_json(text)  # depth-limited; NaN, Infinity and 1e999 refused
    except CellbenchError:
        raise
    except RecursionError:  # YAML nested deeper than its parser recurses
        raise CellbenchError(
            "unreadable config file (nested too deeply)",
            path=path,
            fix="write a JSON (or YAML) mapping of config keys",
        ) from None
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError, depth, non-finite
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
