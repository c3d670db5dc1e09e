"""The checkpoint format of the trainable generators: writing, finding and reading it, in one place.

This module is the ``save_pretrained``/``from_pretrained`` pair of the reference generators. The
Trainer (:mod:`cellbench_baselines.trainer`) writes checkpoints with :func:`write_checkpoint`;
generation reads them through :meth:`TrainedGenerator.load`, which every trainable generator
inherits: it resolves the path (:func:`resolve_checkpoint`, the one resolver), checks the record,
reads the EMA weights and hands them to the class's :meth:`TrainedGenerator.from_checkpoint`, and
sets the generator's ``checkpoint_path`` and ``checkpoint_sha256`` (recorded by ``cellbench
generate`` in ``generation.json``). Nothing here imports the training loop at import time (the
``train`` hook imports it when called).

A checkpoint folder ``RUN_DIR/checkpoints/step-NNNNNNNN/`` holds:

=========================  =====================================================================
``model.safetensors``      EMA weights of the generator networks, keys ``<module>.<param>`` (all
                           that generation needs; with ``config.json`` this is what ships)
``config.json``            ``{"format": "cellbench-run", "model": ..., "config": {...}, ...}``
``train_state.safetensors`` the raw (non-EMA) weights of every trained network
``optimizer.pt``           optimiser state dicts (tensors and numbers only: ``weights_only=True``)
``state.json``             step, epoch, position in the epoch, EMA update counts, RNG states
=========================  =====================================================================

A checkpoint path given by a user is a run folder (its last complete checkpoint), a checkpoint
folder, or that folder's ``model.safetensors`` (docs/generators.md, "Checkpoints").
"""

from __future__ import annotations

import abc
import io
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench.generators import Generator
from cellbench.io import read_json_object, sha256_file
from cellbench_baselines.common import resolve_device
from cellbench_baselines.config import TRAINER_BOUNDS, Bound, check_config, resolve_config

if TYPE_CHECKING:
    from cellbench_baselines.trainer import TrainableModel

RUN_FORMAT = "cellbench-run"
RUN_FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
TRAIN_STATE_FILE = "train_state.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
CKPT_DIR = "checkpoints"


# ---------------------------------------------------------------------------------------- files
def prefixed_state(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-network state dicts as one flat dict with keys ``<network>.<param>`` (on the CPU)."""
    out = {}
    for name, state in states.items():
        for k, v in state.items():
            out[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    return out


def split_prefixed(flat: dict[str, torch.Tensor], names: list[str]) -> dict[str, dict]:
    """The inverse of :func:`prefixed_state` (``names`` are present even when empty)."""
    out: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
    for key, v in flat.items():
        name, _, rest = key.partition(".")
        if name not in out:
            out.setdefault(name, {})
        out[name][rest] = v
    return out


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a truncated or foreign file is a CellbenchError."""
    from safetensors import safe_open

    if not path.is_file():
        raise CellbenchError("weights file is missing", path=path, fix="check the checkpoint path")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CellbenchError(
            f"truncated or not a safetensors file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})",
            path=path,
            fix="re-run training or copy the checkpoint again",
        ) from None
    return tensors, meta


def read_json(path: Path, what: str) -> dict:
    """A JSON object file of a checkpoint; missing, unreadable or not an object: CellbenchError."""
    if not path.is_file():
        raise CellbenchError(f"{what} is missing", path=path, fix="check the checkpoint path")
    return read_json_object(path, what, "re-run training")


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    ckpts = Path(run_dir) / CKPT_DIR
    if not ckpts.is_dir():
        return []
    found = [
        p
        for p in ckpts.iterdir()
        if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a run folder, a checkpoint folder or its ``model.safetensors``."""
    p = Path(path)
    if p.is_file():
        return p.parent
    if not p.exists():
        raise CellbenchError(
            "checkpoint not found", path=p, fix="pass a run folder made by `cellbench train`"
        )
    if (p / MODEL_FILE).is_file() or (p / CONFIG_FILE).is_file():
        return p
    found = complete_checkpoints(p)
    if not found:
        raise CellbenchError(
            "no complete checkpoint in this folder",
            path=p,
            fix="pass a run folder made by `cellbench train` (or a folder with model.safetensors "
            "and config.json)",
        )
    return found[-1]


@dataclass
class LoadedRun:
    """What generation needs from a checkpoint: the config and the EMA weights per network."""

    path: Path
    model: str
    config: dict
    weights: dict[str, dict[str, torch.Tensor]]
    meta: dict = field(default_factory=dict)
    #: sha256 of the ``model.safetensors`` the weights were read from
    sha256: str | None = None
    #: the file the weights were read from (None: ``path / model.safetensors``)
    file: Path | None = None

    @property
    def weights_file(self) -> Path:
        """The file the weights were read from (what ``sha256`` is the hash of)."""
        return self.file if self.file is not None else self.path / MODEL_FILE


def run_record(checkpoint: str | Path) -> tuple[Path, dict]:
    """The checkpoint folder and its checked config.json record."""
    folder = resolve_checkpoint(checkpoint)
    meta = read_json(folder / CONFIG_FILE, "checkpoint config.json")
    if meta.get("format") != RUN_FORMAT or "config" not in meta:
        raise CellbenchError(
            "not a cellbench checkpoint config (no 'format: cellbench-run')",
            path=folder / CONFIG_FILE,
            fix="pass a run folder made by `cellbench train`",
        )
    return folder, meta


def checkpoint_model(checkpoint: str | Path) -> str:
    """The generator name a run folder's (or checkpoint folder's) config.json records."""
    return str(run_record(checkpoint)[1].get("model"))


#: the fix named when a checkpoint's config.json is outside its bounds
CONFIG_BOUNDS_FIX = "this config.json was not written by `cellbench train`; use another checkpoint"


def load_run(
    checkpoint: str | Path, model: str, *, bounds: Mapping[str, Bound] | Bound | None = None
) -> LoadedRun:
    """Read the EMA weights and config of a checkpoint of ``model`` (CellbenchError if foreign).

    The config is checked against ``bounds`` (:func:`cellbench_baselines.config.check_config`)
    before the weights are read or anything is built from it.
    """
    folder, meta = run_record(checkpoint)
    if meta.get("model") != model:
        raise CellbenchError(
            f"checkpoint is a {meta.get('model')!r} model, not {model!r}",
            path=folder / CONFIG_FILE,
            fix=f"use `cellbench generate {meta.get('model')}` or a {model} checkpoint",
        )
    check_config(
        meta["config"],
        TRAINER_BOUNDS if bounds is None else bounds,
        where=folder / CONFIG_FILE,
        fix=CONFIG_BOUNDS_FIX,
    )
    flat, _ = read_safetensors(folder / MODEL_FILE)
    weights = split_prefixed(flat, [])
    sha = sha256_file(folder / MODEL_FILE)
    return LoadedRun(folder, model, meta["config"], weights, meta, sha256=sha)


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``module.load_state_dict(state)`` with a one-line error when the weights do not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:300]
        raise CellbenchError(
            f"weights do not match the network built from config.json ({detail})",
            path=path,
            fix="the weights and config.json must come from the same run",
        ) from None


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    record: dict,
    ema: dict[str, dict[str, torch.Tensor]],
    train: dict[str, dict[str, torch.Tensor]],
    optimizers: dict[str, dict],
    state: dict,
    keep: int,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir``; returns its folder.

    ``record`` is the ``config.json`` document (``format``, ``model``, ``config`` ...), ``ema``
    and ``train`` the EMA and raw state dicts per network, ``optimizers`` the optimiser state
    dicts, ``state`` the ``state.json`` document. Written into a temporary folder renamed into
    place, so a checkpoint folder that exists is complete; all but the last ``keep`` complete
    checkpoints are deleted afterwards.
    """
    from safetensors.torch import save_file

    ckpts = Path(run_dir) / CKPT_DIR
    final = ckpts / f"step-{step:08d}"
    tmp = ckpts / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = {"format": RUN_FORMAT, "model": str(record["model"]), "step": str(step)}
    save_file(prefixed_state(ema), str(tmp / MODEL_FILE), metadata=meta)
    save_file(prefixed_state(train), str(tmp / TRAIN_STATE_FILE), metadata=meta)
    buf = io.BytesIO()
    torch.save(optimizers, buf)
    (tmp / OPTIMIZER_FILE).write_bytes(buf.getvalue())
    (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class TrainingState:
    """What resuming needs from a checkpoint besides its config (see :func:`read_training_state`)."""

    train: dict[str, dict[str, torch.Tensor]]
    ema: dict[str, dict[str, torch.Tensor]]
    state: dict
    optimizers: dict[str, Any]


def read_training_state(ckpt: Path, device: torch.device | str = "cpu") -> TrainingState:
    """The raw and EMA weights per network, ``state.json`` and the optimiser states of ``ckpt``.

    The optimiser file is read with ``torch.load(weights_only=True)`` (tensors and numbers only).
    A checkpoint with only generation weights, or an unreadable file, is a CellbenchError.
    """
    if not (ckpt / TRAIN_STATE_FILE).is_file() or not (ckpt / OPTIMIZER_FILE).is_file():
        raise CellbenchError(
            "checkpoint has no training state (only EMA weights for generation)",
            path=ckpt,
            fix="pass a checkpoint folder written by `cellbench train` itself",
        )
    train, _ = read_safetensors(ckpt / TRAIN_STATE_FILE)
    ema, _ = read_safetensors(ckpt / MODEL_FILE)
    state = read_json(ckpt / STATE_FILE, "checkpoint state.json")
    try:
        optimizers = torch.load(ckpt / OPTIMIZER_FILE, map_location=device, weights_only=True)
    except Exception as exc:
        raise CellbenchError(
            f"unreadable optimizer state ({type(exc).__name__})",
            path=ckpt / OPTIMIZER_FILE,
            fix="delete this checkpoint folder to resume from the one before",
        ) from None
    return TrainingState(split_prefixed(train, []), split_prefixed(ema, []), state, optimizers)


# ---------------------------------------------------------------------------------------- class
class TrainedGenerator(Generator):
    """A generator whose weights are a checkpoint of this format, trained by the shared Trainer.

    Subclasses set ``presets`` and implement :meth:`from_checkpoint` (build the networks from a
    :class:`LoadedRun`) and :meth:`trainable` (the :class:`~cellbench_baselines.trainer.
    TrainableModel` of a config); :meth:`load`, :meth:`training_config` and :meth:`train` (the
    hooks ``cellbench generate`` and ``cellbench train`` call) are done here once.
    """

    #: the command whose ``--out RUN_DIR`` makes this generator's checkpoints (for the error text)
    made_by: ClassVar[str] = ""
    #: the bounds of this generator's config keys (checked before anything is built from a
    #: config file or a checkpoint's config.json; cellbench_baselines.config.check_config)
    config_bounds: ClassVar[Mapping[str, Bound] | Bound] = TRAINER_BOUNDS

    @classmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> TrainedGenerator:
        """The generator of ``checkpoint`` (a run folder, checkpoint folder or its weights file)."""
        if checkpoint is None:
            raise CellbenchError(
                f"{cls.name} needs trained weights",
                fix=f"pass --checkpoint RUN_DIR from "
                f"`{cls.made_by or 'cellbench train ' + cls.name} --out RUN_DIR`",
            )
        run = load_run(checkpoint, cls.name, bounds=cls.config_bounds)
        gen = cls.from_checkpoint(dataset, run, resolve_device(device))
        gen.checkpoint_path = run.path
        gen.checkpoint_sha256 = run.sha256
        return gen

    @classmethod
    @abc.abstractmethod
    def from_checkpoint(
        cls, dataset: BBBC021Dataset, run: LoadedRun, device: torch.device
    ) -> TrainedGenerator:
        """Build the generator from a checkpoint's config and EMA weights (errors name the file)."""

    @classmethod
    @abc.abstractmethod
    def trainable(cls, dataset: BBBC021Dataset, config: dict) -> TrainableModel:
        """The freshly initialised networks and optimisers of ``config`` (seeded by the caller)."""

    @classmethod
    def training_config(
        cls, spec: str | Path | dict | None, *, overrides: dict | None = None
    ) -> dict:
        return resolve_config(
            dict(cls.presets), spec, overrides=overrides, bounds=cls.config_bounds
        )

    @classmethod
    def train(
        cls,
        dataset: BBBC021Dataset,
        config: dict,
        out_dir: str | Path,
        *,
        device: str = "cpu",
        init_from: str | Path | None = None,
    ) -> dict[str, Any]:
        from cellbench_baselines.trainer import train  # trainer.py imports this module

        return train(
            cls, cls.name, dataset, config, out_dir, device=device, init_from=init_from
        ).summary()


#: the largest foreign torch file :func:`load_torch_file` decodes (checked before reading it)
MAX_TORCH_FILE_BYTES = 4 * 1024**3


def load_torch_file(path: Path, *, fix: str, allowed_globals: tuple[type, ...] = ()) -> Any:
    """A torch file someone else wrote (an authors' release), read on CPU without trusting it.

    The size is checked before anything is decoded; ``torch.load(weights_only=True)`` accepts
    tensors, numbers, strings and containers plus exactly the types of ``allowed_globals``; any
    other Python object is refused, never built. Every failure is one :class:`CellbenchError`
    naming the file, with ``fix`` as its fix.
    """
    import pickle
    import re

    size = path.stat().st_size
    if size > MAX_TORCH_FILE_BYTES:
        raise CellbenchError(
            f"checkpoint is {size / 1024**3:.1f} GiB, more than the "
            f"{MAX_TORCH_FILE_BYTES // 1024**3} GiB limit for a network checkpoint",
            path=path,
            fix=fix,
        )
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure of an untrusted file
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and found:
            raise CellbenchError(
                f"refused to load: the file holds a Python object ({found.group(1)}) "
                "that is not tensors, numbers or an allowed type",
                path=path,
                fix=fix,
            ) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CellbenchError(
            f"truncated or not a readable PyTorch checkpoint ({type(exc).__name__}: {first})",
            path=path,
            fix=f"download the file again; {fix}",
        ) from None
