"""The one training loop of the project, and what a trainable generator provides to it.

A trainable generator (CellFlux, PhenDiff, IMPA ...) is a
:class:`cellbench_baselines.checkpoint.TrainedGenerator` with a ``presets`` dict (at least
``"cpu-small"`` and ``"paper"``, resolved by :mod:`cellbench_baselines.config`) and a classmethod
``trainable(dataset, config) -> TrainableModel``. The :class:`TrainableModel` owns its networks and
optimisers and does one optimisation step in :meth:`TrainableModel.training_step`; everything else
is done once, here, by :class:`Trainer`:

* seeding (torch's global RNG; the data order comes from its own seeded generator);
* iterating the treated crops of the training split as (control, target) pairs
  (:class:`cellbench.data.torch_dataset.PairedCropDataset`; the control pairing is redrawn per
  epoch from the seed);
* EMA copies of the networks named by :meth:`TrainableModel.ema_names`;
* a loss log (``log.csv``), a progress bar on stderr;
* checkpoints every ``ckpt_every`` steps and at the end, in the format of
  :mod:`cellbench_baselines.checkpoint` (written into a temporary folder and renamed into place, so
  a checkpoint folder that exists is complete);
* resuming from the last complete checkpoint: the weights, EMA, optimiser state, RNG state and
  data position are restored, so N steps in one go and N/2 + N/2 after an interruption give the
  same weights (tested, single process);
* bf16 autocast on CUDA (:meth:`TrainableModel.autocast`), and data parallel training under
  ``torchrun`` (gradients averaged over processes before each optimiser step).
"""

from __future__ import annotations

import abc
import base64
import contextlib
import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.errors import CellbenchError
from cellbench.io import atomic_path, atomic_write_text
from cellbench_baselines.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    TRAIN_STATE_FILE,
    complete_checkpoints,
    load_module_state,
    read_json,
    read_training_state,
    run_record,
    write_checkpoint,
)
from cellbench_baselines.common import resolve_device
from cellbench_baselines.config import (
    RESUMABLE_KEYS,
    TRAINER_BOUNDS,
    backfill_config,
    check_config,
)
from cellbench_baselines.ema import EMA

LOG_FILE = "log.csv"


# ---------------------------------------------------------------------------------------- model
class TrainableModel(abc.ABC):
    """The networks and optimisers of one generator, and its optimisation step.

    Subclasses set ``self.config`` (the complete, JSON-able config that rebuilds the networks) and
    build their networks in ``__init__``; the Trainer moves them with :meth:`to`.
    """

    config: dict
    device: torch.device = torch.device("cpu")
    _autocast_dtype: torch.dtype | None = None

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every trained network, by name (the names prefix the checkpoint keys)."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser, by name."""

    @abc.abstractmethod
    def training_step(self, batch: dict, step: int) -> dict[str, float]:
        """Forward, backward and ``optimizer.step()`` for all optimisers; returns the loss terms.

        ``batch`` holds ``control`` and ``target`` (float32 Bx3x96x96 in [-1, 1], on
        :attr:`device`), ``fingerprint`` (Bx1024), ``compound_idx``, ``moa_idx``, ``dose`` and the
        crop keys. Use :meth:`autocast` around forward passes.
        """

    def ema_names(self) -> tuple[str, ...]:
        """Networks that get an EMA copy (default: all); the EMA weights are what generates."""
        return tuple(self.modules())

    def to(self, device: str | torch.device) -> TrainableModel:
        """Move every network to ``device`` (parameters keep their identity: optimisers stay valid)."""
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when the Trainer enabled it (CUDA only), else a no-op context."""
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def step_single(
        self, loss: torch.Tensor, module: nn.Module, opt: torch.optim.Optimizer
    ) -> dict:
        """Backward, gradient clipping at ``config["grad_clip"]`` and one step of ``opt``: the
        whole update of a model with one network and one optimiser. Returns the logged terms."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(module.parameters(), float(self.config["grad_clip"]))
        opt.step()
        return {"loss": float(loss.detach()), "grad_norm": float(gn)}

    def n_parameters(self) -> dict[str, int]:
        """Trainable parameters per network."""
        return {k: count_parameters(m) for k, m in self.modules().items()}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (works on the meta device too)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    """Summary of a :meth:`Trainer.fit` call."""

    step: int
    checkpoint: Path | None
    resumed_from: int
    images_per_s: float
    wall_s: float
    losses: dict[str, float]

    def summary(self) -> dict:
        """The JSON-able summary the training commands print with ``--json``."""
        return {
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "step": self.step,
            "resumed_from": self.resumed_from,
            "wall_s": round(self.wall_s, 3),
            "train_images_per_s": round(self.images_per_s, 3),
            "last_losses": self.losses,
        }


def _rng_state() -> dict:
    state = {"torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        state["torch_cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def _set_rng_state(state: dict) -> None:
    raw = np.frombuffer(base64.b64decode(state["torch_cpu"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [
                torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())
                for s in state["torch_cuda"]
            ]
        )


class Trainer:
    """Trains a :class:`TrainableModel` on a dataset's training pairs; checkpoints and resumes.

    Args:
        model: the trainable model (its ``config`` holds the trainer keys of
            :data:`TRAINER_DEFAULTS`).
        dataset: the dataset whose ``config["split"]`` treated crops are the targets.
        out_dir: the run folder (created; resumed when it holds a complete checkpoint).
        model_name: the registered generator name, written into ``config.json``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under ``torchrun`` the local rank's GPU.
        extra_meta: more JSON-able fields for ``config.json`` (e.g. the generator version).
        init_from: a checkpoint (or run folder) of another run of the same model to start from
            when ``out_dir`` has no checkpoint: its weights, EMA, optimiser state, step and random
            state carry over and the config may differ (a change of recipe part-way, e.g.
            ``noise_prob``); the network shapes must match. Recorded in ``config.json``.
    """

    def __init__(
        self,
        model: TrainableModel,
        dataset: BBBC021Dataset,
        out_dir: str | Path,
        *,
        model_name: str,
        device: str | torch.device = "cpu",
        extra_meta: dict | None = None,
        init_from: str | Path | None = None,
    ):
        from cellbench.data.torch_dataset import PairedCropDataset

        self.model = model
        self.cfg = model.config
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.model_name = model_name
        self.extra_meta = dict(extra_meta or {})
        self.init_from = init_from
        self.world, self.rank = _dist_setup()
        device = resolve_device(device)
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        self.device = device
        self.model.to(device)
        if device.type == "cuda" and self.cfg["mixed_precision"] == "bf16":
            self.model._autocast_dtype = torch.bfloat16
        self.pairs = PairedCropDataset(dataset, self.cfg["split"], seed=int(self.cfg["seed"]))
        self.batch_size = int(self.cfg["batch_size"])
        if self.batch_size % self.world:
            raise CellbenchError(
                f"batch_size {self.batch_size} is not divisible by the {self.world} processes",
                fix="choose a batch_size that is a multiple of the number of processes",
            )
        if len(self.pairs) < self.batch_size:
            raise CellbenchError(
                f"split {self.cfg['split']!r} has {len(self.pairs)} treated crops, fewer than "
                f"batch_size {self.batch_size}",
                path=dataset.index_path,
                fix="lower batch_size in the config",
            )
        self.steps_per_epoch = len(self.pairs) // self.batch_size
        mods = model.modules()
        unknown = [n for n in model.ema_names() if n not in mods]
        if unknown:
            raise ValueError(f"ema_names() lists unknown modules {unknown}")
        self.emas = {
            n: EMA(mods[n], float(self.cfg["ema_decay"]), warmup=bool(self.cfg["ema_warmup"]))
            for n in model.ema_names()
        }
        if self.world > 1:
            _broadcast_and_hook(mods, model.optimizers())
            for n, ema in self.emas.items():
                ema.module.load_state_dict(mods[n].state_dict())
        self.step = 0
        self.epoch = 0
        self._log_keys: list[str] | None = None

    # ------------------------------------------------------------------ data
    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(int(self.cfg["seed"]) * 7919 + epoch)
        return torch.randperm(len(self.pairs), generator=g).tolist()

    def _batches(self) -> Iterator[dict]:
        """Batches from the current (epoch, step) position on, forever."""
        while True:
            epoch, pos = divmod(self.step, self.steps_per_epoch)
            if epoch != self.pairs.epoch:
                self.pairs.set_epoch(epoch)
            self.epoch = epoch
            order = self._epoch_order(epoch)
            for b in range(pos, self.steps_per_epoch):
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                idx = idx[self.rank :: self.world]
                batch = default_collate([self.pairs[i] for i in idx])
                yield {
                    k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                    for k, v in batch.items()
                }

    # ------------------------------------------------------------------ checkpoints
    def _run_meta(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "model": self.model_name,
            **self.extra_meta,
            "config": self.cfg,
            "n_parameters": self.model.n_parameters(),
            "dataset": {
                "name": self.dataset.name,
                "index_sha256": self.dataset.index_sha256,
                "split": self.cfg["split"],
                "n_train_pairs": len(self.pairs),
            },
        }

    def save_checkpoint(self) -> Path:
        """Write the checkpoint of the current step (atomically, as one folder)."""
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "ema_updates": {n: e.num_updates for n, e in self.emas.items()},
            "rng": _rng_state(),
            "world_size": self.world,
        }
        return write_checkpoint(
            self.out_dir,
            self.step,
            record=self._run_meta(),
            ema={n: e.state_dict() for n, e in self.emas.items()},
            train={n: m.state_dict() for n, m in self.model.modules().items()},
            optimizers={n: o.state_dict() for n, o in self.model.optimizers().items()},
            state=state,
            keep=int(self.cfg["keep_checkpoints"]),
        )

    def _resume(self) -> tuple[int, bool]:
        """Load the last complete checkpoint of the run folder, if any; return its step and
        whether it came from the run folder itself.

        A run folder without a checkpoint starts from ``init_from`` when one was given.
        """
        found = complete_checkpoints(self.out_dir)
        if not found:
            if self.init_from is None:
                return 0, False
            ckpt, meta = run_record(self.init_from)
            if meta.get("model") != self.model_name:
                raise CellbenchError(
                    f"--init-from is not a {self.model_name!r} training checkpoint",
                    path=ckpt / CONFIG_FILE,
                    fix=f"pass a run or checkpoint folder made by `cellbench train "
                    f"{self.model_name}`",
                )
            step = self._load_state(ckpt)
            self.extra_meta["init_from"] = {"checkpoint": str(ckpt), "step": step}
            return step, False
        ckpt = found[-1]
        meta = read_json(ckpt / CONFIG_FILE, "checkpoint config.json")
        if meta.get("model") != self.model_name:
            raise CellbenchError(
                f"run folder holds a {meta.get('model')!r} run, not {self.model_name!r}",
                path=self.out_dir,
                fix="choose another --out folder",
            )
        stored = backfill_config(meta.get("config", {}))
        old = {k: v for k, v in stored.items() if k not in RESUMABLE_KEYS}
        new = {k: v for k, v in self.cfg.items() if k not in RESUMABLE_KEYS}
        if json.loads(json.dumps(old)) != json.loads(json.dumps(new)):
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CellbenchError(
                f"run folder was trained with a different config (keys {diff} differ)",
                path=ckpt / CONFIG_FILE,
                fix="resume with the same config (only steps/ckpt_every/log_every may change) "
                "or choose another --out folder",
            )
        if "init_from" in meta:
            self.extra_meta["init_from"] = meta["init_from"]
        return self._load_state(ckpt), True

    def _load_state(self, ckpt: Path) -> int:
        """Load weights, EMA, optimiser, step and RNG state of a checkpoint; return its step."""
        saved = read_training_state(ckpt, self.device)
        mods = self.model.modules()
        for name in saved.train:
            if name not in mods:
                raise CellbenchError(
                    f"checkpoint has weights of an unknown network {name!r}",
                    path=ckpt / TRAIN_STATE_FILE,
                )
        for name, module in mods.items():
            load_module_state(module, saved.train.get(name, {}), ckpt / TRAIN_STATE_FILE)
        state = saved.state
        for name in saved.ema:
            if name not in self.emas:
                raise CellbenchError(f"unexpected EMA network {name!r}", path=ckpt / MODEL_FILE)
        for name, ema in self.emas.items():
            try:
                ema.load_state_dict(saved.ema.get(name, {}), state["ema_updates"][name])
            except (RuntimeError, KeyError) as exc:
                raise CellbenchError(
                    f"EMA weights do not fit ({type(exc).__name__})", path=ckpt / MODEL_FILE
                ) from None
        opt_states = saved.optimizers
        for name, opt in self.model.optimizers().items():
            # the hyperparameters (lr, betas, weight decay) are the config's, not the stored ones:
            # the same on a resume, and the new recipe's after --init-from
            hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            try:
                opt.load_state_dict(opt_states[name])
            except (KeyError, ValueError) as exc:
                raise CellbenchError(
                    f"optimizer state does not fit ({type(exc).__name__})",
                    path=ckpt / OPTIMIZER_FILE,
                ) from None
            for group, h in zip(opt.param_groups, hyper, strict=True):
                group.update(h)
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        if int(state.get("world_size", 1)) == self.world:
            _set_rng_state(state["rng"])
        if self.world > 1:
            torch.manual_seed(int(self.cfg["seed"]) * 1009 + self.step * 31 + self.rank)
        return self.step

    # ------------------------------------------------------------------ log
    def _trim_log(self, step: int) -> None:
        """Drop log rows written after the checkpoint being resumed from."""
        path = self.out_dir / LOG_FILE
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return
        header, body = rows[0], [r for r in rows[1:] if r and int(r[0]) <= step]
        self._log_keys = [k for k in header if k not in ("step", "epoch", "images_per_s")]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *body])
        atomic_write_text(path, buf.getvalue())

    def _log(self, losses: dict[str, float], images_per_s: float) -> None:
        path = self.out_dir / LOG_FILE
        if self._log_keys is None or not path.is_file():
            self._log_keys = sorted(losses)
            with atomic_path(path) as tmp:
                tmp.write_text(",".join(["step", "epoch", *self._log_keys, "images_per_s"]) + "\n")
        row = [str(self.step), str(self.epoch)]
        row += [f"{losses[k]:.6g}" if k in losses else "" for k in self._log_keys]
        row.append(f"{images_per_s:.3f}")
        with open(path, "a") as fh:
            fh.write(",".join(row) + "\n")

    # ------------------------------------------------------------------ loop
    def fit(self, steps: int | None = None) -> TrainResult:
        """Train until ``steps`` (default ``config["steps"]``) total steps; resume if possible."""
        from cellbench.ui import info, progress

        total = int(steps if steps is not None else self.cfg["steps"])
        resumed, own = self._resume()  # a refused --init-from leaves no run folder behind
        self.out_dir.mkdir(parents=True, exist_ok=True)
        main = self.rank == 0
        if main:
            if own:
                self._trim_log(resumed)
                info(f"resuming {self.model_name} from step {resumed} in {self.out_dir}")
            else:
                (self.out_dir / LOG_FILE).unlink(missing_ok=True)
                if resumed:
                    info(f"starting {self.model_name} at step {resumed} from {self.init_from}")
            n_par = self.model.n_parameters()
            info(
                f"{self.model_name}: "
                + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in n_par.items())
                + f" parameters; {len(self.pairs)} training pairs, batch {self.batch_size}, "
                f"{self.steps_per_epoch} steps/epoch, device {self.device}"
                + (f" x {self.world} processes" if self.world > 1 else "")
            )
        for m in self.model.modules().values():
            m.train()
        ckpt: Path | None = None
        losses: dict[str, float] = {}
        t_start = time.perf_counter()
        t_log, n_log = t_start, 0
        done_images = 0
        with progress(f"training {self.model_name}", total) as update:
            update(self.step, total)
            batches = self._batches()
            while self.step < total:
                batch = next(batches)
                losses = self.model.training_step(batch, self.step)
                bad = [k for k, v in losses.items() if not math.isfinite(float(v))]
                if bad:
                    raise CellbenchError(
                        f"{self.model_name} training diverged at step {self.step} "
                        f"(non-finite {bad})",
                        path=self.out_dir,
                        fix="lower the learning rate; the last good checkpoint is kept",
                    )
                mods = self.model.modules()
                for n, ema in self.emas.items():
                    ema.update(mods[n])
                self.step += 1
                n_log += 1
                done_images += self.batch_size
                if main and (self.step % int(self.cfg["log_every"]) == 0 or self.step == total):
                    now = time.perf_counter()
                    self._log(losses, n_log * self.batch_size / max(now - t_log, 1e-9))
                    t_log, n_log = now, 0
                if self.step % int(self.cfg["ckpt_every"]) == 0 or self.step == total:
                    if main:
                        ckpt = self.save_checkpoint()
                    if self.world > 1:
                        torch.distributed.barrier()
                update(self.step, total)
        wall = time.perf_counter() - t_start
        if ckpt is None and main:
            found = complete_checkpoints(self.out_dir)
            ckpt = found[-1] if found else None
        return TrainResult(
            step=self.step,
            checkpoint=ckpt,
            resumed_from=resumed,
            images_per_s=done_images / wall if wall > 0 and done_images else 0.0,
            wall_s=wall,
            losses={k: float(v) for k, v in losses.items()},
        )


# ---------------------------------------------------------------------------------------- DDP
def _dist_setup() -> tuple[int, int]:
    """(world size, rank); initialises torch.distributed when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_world_size(), dist.get_rank()


def _broadcast_and_hook(
    modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> None:
    """Same initial weights on every process; gradients averaged before every optimiser step.

    Averaging in a step pre-hook works for any model (one or several optimisers, GANs) without
    the model knowing it runs distributed.
    """
    import torch.distributed as dist

    world = dist.get_world_size()
    with torch.no_grad():
        for m in modules.values():
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, src=0)

    def average_grads(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # a parameter may have a gradient on some processes only (e.g. the fingerprint layer
        # when one process drew the classifier-free-guidance drop): agree on which ones first,
        # so every process runs the same collectives; a missing gradient counts as zero
        params = [p for g in opt.param_groups for p in g["params"]]
        dev = params[0].device if params else torch.device("cpu")
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
        dist.all_reduce(has, op=dist.ReduceOp.SUM)
        for p, n in zip(params, has.tolist(), strict=True):
            if n == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)

    for opt in optimizers.values():
        opt.register_step_pre_hook(average_grads)


# ---------------------------------------------------------------------------------------- API
def train(
    generator_cls: type,
    model_name: str,
    dataset: BBBC021Dataset,
    config: dict,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    device: str = "cpu",
    init_from: str | Path | None = None,
) -> TrainResult:
    """Build ``generator_cls.trainable(dataset, config)`` (seeded) and train it in ``out_dir``.

    ``init_from``: start from another run's checkpoint (see :class:`Trainer`).
    """
    if not hasattr(generator_cls, "trainable") or not hasattr(generator_cls, "presets"):
        raise CellbenchError(
            f"model {model_name!r} has no training recipe",
            fix="choose a trainable model (`cellbench ls models`)",
        )
    check_config(
        config,
        getattr(generator_cls, "config_bounds", TRAINER_BOUNDS),
        where=None,
        fix="change the config value to one in the allowed range",
    )  # before anything is allocated
    seed_everything(int(config["seed"]))
    model = generator_cls.trainable(dataset, config)
    trainer = Trainer(
        model,
        dataset,
        out_dir,
        model_name=model_name,
        device=device,
        extra_meta={"generator_version": str(getattr(generator_cls, "version", "0"))},
        init_from=init_from,
    )
    return trainer.fit(steps)
