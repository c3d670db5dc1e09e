"""CellFlux (Zhang et al., ICML 2025): flow matching from the control image to the treated image.

Written for cellbench from the paper's description and the facts of the authors' public code
(no code copied):

* source ``x0 = control + N(0, noise_std^2)``; in training the noise is added with probability
  ``noise_prob`` = 0.5, decided once per batch as in the authors' code (``noise_per: "batch"``,
  the ``paper`` preset) or per image (``"image"``, cellbench's CPU preset); always at sampling;
  target ``x1`` = the treated crop;
* path ``x_t = (1 - t) x0 + t x1``; loss ``|| v(x_t, t, c) - (x1 - x0) ||^2`` (mean squared error);
* training times ``t = 1 / (1 + sigma)``, ``sigma = exp(N(-1.2, 1.2^2))`` (log-normal, skewed to
  the data end), clipped below at 1e-4;
* ADM UNet; the compound's fingerprint through a linear layer added to the time embedding
  (``paper``: the published network, :data:`~cellbench_baselines.nn.unet.PUBLISHED_CELLFLUX`);
* classifier-free guidance: the condition dropped for the whole batch with probability 0.2;
  sampling with ``v = (1 + w) v_cond - w v_uncond``, ``w = 0.2``;
* Heun solver, 50 steps on the EDM time grid (rho 7) mapped to flow time with
  ``t = 1 / (1 + sigma)`` (see :mod:`cellbench_baselines.sampling`); the published sampler starts
  at ``t = 1/81`` (``grid_from_zero: false``), cellbench's CPU preset at 0. These settings are the
  named sampling preset :data:`SAMPLING_PRESETS` ``["published"]``;
* AdamW lr 1e-4, betas (0.9, 0.95), batch 128, EMA 0.999;
* pixels (``pixel_io``): the authors add ``U(0, 1)`` dequantisation noise to the 8-bit pixels
  before scaling to [-1, 1] (training and sampling) and floor the output to 8 bits
  (``"authors"``, the ``published`` sampler); cellbench's CPU preset scales the pixels as they are
  and rounds (``"round"``).

``cellbench generate cellflux --checkpoint checkpoint.pth`` also reads the authors' released
checkpoint (:mod:`cellbench_baselines.cellflux_authors`).

cellbench's own choices where the paper is silent: no weight decay, gradient clipping at 1.0, the
unconditional model is the UNet without the fingerprint term (not a learned null vector), dose is
not an input (the compound fingerprint is the whole condition, as in the paper).

The ``cpu-small`` preset reparametrises the network (``prediction: "x1"``): the UNet outputs the
treated image and the velocity is ``(x1_hat - x_t) / (1 - t)`` (:class:`VelocityFromX1`), with
the velocity loss weighted by ``(1 - t)^2`` (= the image error). Observed: a 1.3M-parameter UNet
trained for 750 steps with the direct velocity output still returned the N(0, 1) source noise
almost untouched (it must cancel that noise pixel by pixel); predicting the image removes that
burden. ``paper`` keeps the direct velocity output of CellFlux. ``prediction: "edm"``
(:class:`EDMVelocity`) is a third, opt-in reparametrisation with EDM's skip and output scalings
(docs/generators.md has what each measured).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.torch_dataset import from_model_range, to_model_range
from cellbench.errors import CellbenchError
from cellbench_baselines.checkpoint import (
    LoadedRun,
    TrainedGenerator,
    load_module_state,
    load_run,
)
from cellbench_baselines.common import fingerprint_batch, param_count, resolve_device
from cellbench_baselines.config import (
    BOOL,
    OPTIMISER_BOUNDS,
    TRAINER_BOUNDS,
    TRAINER_DEFAULTS,
    Bound,
    Choice,
    Float,
    Int,
)
from cellbench_baselines.nn.unet import (
    PUBLISHED_CELLFLUX,
    UNET_BOUNDS,
    UNET_DEFAULTS,
    UNet,
    unet_from_config,
    unet_size_problem,
)
from cellbench_baselines.sampling import (
    cfg_combine,
    edm_sigmas,
    edm_time_grid,
    lognormal_times,
    solve_ode,
    uniform_time_grid,
)
from cellbench_baselines.trainer import TrainableModel

_MODEL_KEYS = {
    "lr": 1e-4,
    "betas": [0.9, 0.95],
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "noise_std": 1.0,  # std of the Gaussian noise added to the control (images in [-1, 1])
    "noise_prob": 0.5,  # probability that training adds that noise
    "noise_per": "image",  # "image": drawn per image; "batch": once per batch (the authors')
    "time_mean": -1.2,  # log-normal training times: sigma = exp(N(mean, std^2)), t = 1/(1+sigma)
    "time_std": 1.2,
    "cond_drop_prob": 0.2,  # classifier-free guidance: drop the condition for the whole batch
    "guidance": 0.2,  # w in v = (1 + w) v_cond - w v_uncond
    "sampler": "heun",  # "heun" or "euler"
    "sample_steps": 50,
    "time_grid": "edm",  # "edm" (rho below) or "uniform"
    "rho": 7.0,
    # True: the EDM grid's first point (t = 1/81) moved to 0 (cellbench's); False: the published
    # sampler's grid, which starts at 1/81
    "grid_from_zero": True,
    # pixels in and out: "round" (x / 127.5 - 1 in, rounded out: cellbench's) or "authors"
    # (uniform dequantisation noise added to the 8-bit input, (x + u) / 127.5 - 1, in training
    # and sampling; the output floored: floor(127.5 (y + 1)), as the authors' evaluation saves it)
    "pixel_io": "round",
    # "velocity": the UNet outputs v (CellFlux); "x1": it outputs the treated image and
    # v = (x1_hat - x_t) / max(1 - t, 0.01); "edm": EDM-style skip/output scaling of that image
    # (cellbench's CPU reparametrisations, see the docstring)
    "prediction": "velocity",
    "sigma_data": 0.5,  # "edm" only: the assumed std of the treated images (in [-1, 1])
}

#: named sampling settings; "published": the authors' BBBC021 evaluation (Heun, 50 steps on the
#: EDM grid from t = 1/81, guidance 0.2, source noise std 1)
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "published": {
        "sampler": "heun",
        "sample_steps": 50,
        "time_grid": "edm",
        "rho": 7.0,
        "grid_from_zero": False,
        "guidance": 0.2,
        "noise_std": 1.0,
        "pixel_io": "authors",
    },
}

PRESETS: dict[str, dict] = {
    # the published configuration (56.2M parameters, the authors' network layer for layer), for
    # a GPU: 200 epochs of the ~98K in-distribution BBBC021 crops at batch 128 is ~153K steps.
    # The authors' EMA warms up (decay min(0.999, (1+n)/(10+n))) and adds the source noise per
    # batch; the batch of 128 is the paper's (their launch script: 32 per GPU on 4 GPUs)
    "paper": {
        **TRAINER_DEFAULTS,
        **_MODEL_KEYS,
        **SAMPLING_PRESETS["published"],
        "split": "train-iid",
        "batch_size": 128,
        "steps": 153_000,
        "ckpt_every": 5000,
        "log_every": 100,
        "noise_per": "batch",
        "ema_decay": 0.999,
        "ema_warmup": True,
        "unet": {**PUBLISHED_CELLFLUX},
    },
    # a small network that trains in minutes on 2 CPU cores (bbbc021-sim): the UNet runs on 4x4
    # pixel blocks (24x24x48) with 32-64 channels; higher lr and a warmed-up EMA for short runs;
    # 10 Heun steps at sampling (the paper's 50 cost 5x more; see docs/generators.md)
    "cpu-small": {
        **TRAINER_DEFAULTS,
        **_MODEL_KEYS,
        "batch_size": 32,
        "steps": 750,
        "ckpt_every": 250,
        "sample_steps": 10,
        "prediction": "x1",
        "log_every": 10,
        "lr": 3e-4,
        "ema_decay": 0.995,
        "ema_warmup": True,
        "unet": {
            **UNET_DEFAULTS,
            "base_channels": 32,
            "channel_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [6],
            "head_channels": 32,
            "dropout": 0.0,
            "cond_dim": 1024,
            "patch_size": 4,
        },
    },
}


PREDICTIONS = ("velocity", "x1", "edm")

#: the bounds of every CellFlux config key (checked before a network is built from a config file,
#: a checkpoint or the authors' release; cellbench_baselines.config.check_config)
BOUNDS: dict[str, Bound] = {
    **TRAINER_BOUNDS,
    **OPTIMISER_BOUNDS,
    "noise_std": Float(0.0, 100.0),
    "noise_prob": Float(0.0, 1.0),
    "noise_per": Choice("image", "batch"),
    "time_mean": Float(-20.0, 20.0),
    "time_std": Float(0.0, 20.0),
    "cond_drop_prob": Float(0.0, 1.0),
    "guidance": Float(-100.0, 100.0),
    "sampler": Choice("heun", "euler"),
    "sample_steps": Int(1, 10_000),
    "time_grid": Choice("edm", "uniform"),
    "rho": Float(0.0, 100.0, lo_open=True),
    "grid_from_zero": BOOL,
    "pixel_io": Choice("round", "authors"),
    "prediction": Choice(*PREDICTIONS),
    "sigma_data": Float(0.0, 100.0, lo_open=True),
    "unet": Bound("table", table=UNET_BOUNDS, check=unet_size_problem),
}


def read_cellflux_base(checkpoint: str | Path, dataset: str = "bbbc021") -> LoadedRun:
    """The CellFlux weights and config of ``checkpoint``: a ``cellbench train cellflux`` run or
    checkpoint, or the authors' released file (see :func:`find_authors_file`)."""
    from cellbench_baselines.cellflux_authors import find_authors_file, read_authors_checkpoint

    authors = find_authors_file(checkpoint, dataset)
    if authors is not None:
        return read_authors_checkpoint(authors)
    return load_run(checkpoint, "cellflux", bounds=BOUNDS)


def _check_config(cfg: dict) -> None:
    if cfg["sampler"] not in ("heun", "euler"):
        raise CellbenchError(f"cellflux sampler must be 'heun' or 'euler', got {cfg['sampler']!r}")
    if cfg["time_grid"] not in ("edm", "uniform"):
        raise CellbenchError(
            f"cellflux time_grid must be 'edm' or 'uniform', not {cfg['time_grid']!r}"
        )
    if int(cfg["sample_steps"]) < 1:
        raise CellbenchError("cellflux sample_steps must be at least 1")
    if cfg.get("pixel_io", "round") not in ("round", "authors"):
        raise CellbenchError(
            f"cellflux pixel_io must be 'round' or 'authors', not {cfg['pixel_io']!r}"
        )
    if cfg.get("noise_per", "image") not in ("image", "batch"):
        raise CellbenchError(
            f"cellflux noise_per must be 'image' or 'batch', not {cfg['noise_per']!r}"
        )
    if cfg["prediction"] not in PREDICTIONS:
        raise CellbenchError(
            f"cellflux prediction must be one of {', '.join(PREDICTIONS)}, "
            f"not {cfg['prediction']!r}"
        )
    if cfg["prediction"] == "edm" and not (
        float(cfg.get("sigma_data", 0.5)) > 0 and float(cfg["noise_std"]) > 0
    ):
        raise CellbenchError("cellflux prediction 'edm' needs positive sigma_data and noise_std")


class VelocityFromX1(torch.nn.Module):
    """A network predicting the treated image, exposed as a velocity: ``(x1_hat - x_t) / (1 - t)``.

    The flow, the ODE and the velocity interface are unchanged (a reparametrisation); the
    denominator is clamped at ``min_gap`` so t = 1 stays finite.
    """

    def __init__(self, net: UNet, min_gap: float = 0.01):
        super().__init__()
        self.net = net
        self.min_gap = float(min_gap)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        gap = (1.0 - t.to(x.dtype)).clamp_min(self.min_gap)[:, None, None, None]
        return (self.net(x, t, cond) - x) / gap

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight that turns the squared velocity error into the image error."""
        return (1.0 - t.float()).clamp_min(self.min_gap) ** 2


class EDMVelocity(torch.nn.Module):
    """EDM-style preconditioning (Karras et al. 2022) of the image prediction, as a velocity.

    On the path ``x_t = (1 - t) x0 + t x1``, ``x_t / t = x1 + sigma x0`` with ``sigma = (1 - t)
    / t`` (the same map as the time grid), so the EDM scalings for data of std ``sigma_data``
    (s_d) under noise of std ``source_std`` (s) give ``x1_hat = c_skip x_t + c_out F`` with
    ``D = sqrt(t^2 s_d^2 + (1 - t)^2 s^2)``, ``c_skip = t s_d^2 / D^2`` and
    ``c_out = (1 - t) s_d s / D``. Near t = 1 the output is mostly the input (fine detail is
    carried through), near t = 0 mostly the network (no noise to cancel). The velocity
    ``(x1_hat - x_t) / (1 - t)`` simplifies to ``((t s_d^2 - (1 - t) s^2) x_t + s_d s D F) /
    D^2``: finite for every t in [0, 1].
    """

    def __init__(self, net: UNet, sigma_data: float = 0.5, source_std: float = 1.0):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.source_std = float(source_std)

    def _d2(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.sigma_data) ** 2 + ((1.0 - t) * self.source_std) ** 2

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        tt = t.to(x.dtype)
        d2 = self._d2(tt)[:, None, None, None]
        tb = tt[:, None, None, None]
        sd, s = self.sigma_data, self.source_std
        a = (tb * sd * sd - (1.0 - tb) * s * s) / d2
        return a * x + (sd * s / d2.sqrt()) * self.net(x, t, cond)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight that turns the squared velocity error into the network's own
        (unit-scale) error: ``D^2 / (s_d s)^2``."""
        return self._d2(t.float()) / (self.sigma_data * self.source_std) ** 2


def dequantise(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` (images in [-1, 1] from 8-bit pixels) plus ``U(0, 1)`` of a pixel step, seeded."""
    g = torch.Generator().manual_seed(int(seed) + 7919)  # a stream apart from the source noise
    return x + torch.rand(x.shape, generator=g) / 127.5


def authors_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3) as the authors save: floored."""
    x = ((images.detach().to(torch.float32).cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).floor()
    return x.clamp(0, 255).to(torch.uint8).movedim(-3, -1).numpy()


def sampling_time_grid(config: dict, steps: int) -> torch.Tensor:
    """``steps + 1`` solver times of a CellFlux config (``time_grid``, ``rho``, ``grid_from_zero``)."""
    if config.get("time_grid", "edm") == "edm":
        grid = edm_time_grid(steps, rho=float(config.get("rho", 7.0)))
        if not config.get("grid_from_zero", True):
            grid[0] = 1.0 / (1.0 + edm_sigmas(steps, rho=float(config.get("rho", 7.0)))[0])
        return grid
    return uniform_time_grid(steps)


def velocity_network(config: dict) -> torch.nn.Module:
    """The network that maps (x_t, t, fingerprint or None) to a velocity, per ``prediction``."""
    unet = unet_from_config(config["unet"])
    kind = config.get("prediction", "velocity")
    if kind == "x1":
        return VelocityFromX1(unet)
    if kind == "edm":
        return EDMVelocity(
            unet, float(config.get("sigma_data", 0.5)), float(config.get("noise_std", 1.0))
        )
    return unet


def velocity_loss_weight(net: torch.nn.Module, t: torch.Tensor) -> torch.Tensor | None:
    """The per-sample weight of the squared velocity error for ``net`` (None: unweighted)."""
    weight = getattr(net, "loss_weight", None)
    return None if weight is None else weight(t)


class CellFluxTrainable(TrainableModel):
    """The CellFlux network, its optimiser and the flow-matching step."""

    def __init__(self, config: dict, cond_dim: int):
        _check_config(config)
        if int(config["unet"]["cond_dim"]) != cond_dim:
            raise CellbenchError(
                f"config unet.cond_dim {config['unet']['cond_dim']} differs from the dataset's "
                f"fingerprint size {cond_dim}",
                fix=f"set unet.cond_dim to {cond_dim}",
            )
        self.config = config
        self.unet = velocity_network(config)
        self.opt = torch.optim.AdamW(
            self.unet.parameters(),
            lr=float(config["lr"]),
            betas=tuple(config["betas"]),
            weight_decay=float(config["weight_decay"]),
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": self.opt}

    def loss(self, batch: dict) -> torch.Tensor:
        """The flow-matching loss of one batch (draws noise, times and the CFG drop)."""
        cfg = self.config
        x1 = batch["target"]
        b = x1.shape[0]
        control = batch["control"]
        if cfg.get("pixel_io", "round") == "authors":  # the authors' uniform dequantisation
            x1 = x1 + torch.rand(x1.shape).to(x1.device) / 127.5
            control = control + torch.rand(control.shape).to(control.device) / 127.5
        noise = torch.randn(x1.shape) * float(cfg["noise_std"])
        draws = 1 if cfg.get("noise_per", "image") == "batch" else b
        add = (torch.rand(draws) < float(cfg["noise_prob"])).to(noise.dtype)[:, None, None, None]
        x0 = control + (noise * add).to(x1.device)
        t = lognormal_times(b, float(cfg["time_mean"]), float(cfg["time_std"]))
        t = t.clamp_min(1e-4).to(x1.device)
        drop = bool(torch.rand(()) < float(cfg["cond_drop_prob"]))
        tb = t[:, None, None, None]
        xt = (1.0 - tb) * x0 + tb * x1
        cond = None if drop else batch["fingerprint"]
        with self.autocast():
            v = self.unet(xt, t, cond)
        w = velocity_loss_weight(self.unet, t)
        if w is not None:  # a reparametrised network: its own output error (see the docstring)
            return (w[:, None, None, None] * (v.float() - (x1 - x0)) ** 2).mean()
        return F.mse_loss(v.float(), x1 - x0)

    def training_step(self, batch: dict, step: int) -> dict[str, float]:
        return self.step_single(self.loss(batch), self.unet, self.opt)


class CellFlux(TrainedGenerator):
    """CellFlux: the noised control image carried to the treated image by a learned flow."""

    name = "cellflux"
    version = "1"
    role = "model"
    summary = (
        "model: flow matching from the noised control to the treated image (Zhang et al. "
        "2025); needs --checkpoint from `cellbench train cellflux`"
    )
    presets = PRESETS
    config_bounds = BOUNDS
    post_trainer = "cellfluxrl"

    def __init__(
        self,
        dataset: BBBC021Dataset,
        config: dict,
        unet: torch.nn.Module,
        device: torch.device,
    ) -> None:
        _check_config(config)
        self.dataset = dataset
        self.config = config
        self.unet = unet.to(device).eval()
        self.device = device
        self.guidance = float(config["guidance"])
        self.sample_steps = int(config["sample_steps"])
        self.sampler = str(config["sampler"])

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> CellFlux:
        """A ``cellbench train cellflux`` checkpoint, or the authors' released ``checkpoint.pth``
        (the file, a folder holding it, or a folder in their Hugging Face layout)."""
        if checkpoint is not None and cls.name == "cellflux":  # not CellFluxRL (a subclass)
            run = read_cellflux_base(checkpoint, dataset.name)
            gen = cls.from_checkpoint(dataset, run, resolve_device(device))
            gen.checkpoint_path = run.path
            gen.checkpoint_sha256 = run.sha256
            return gen
        return super().load(dataset, checkpoint, device)  # type: ignore[return-value]

    @classmethod
    def trainable(cls, dataset: BBBC021Dataset, config: dict) -> CellFluxTrainable:
        return CellFluxTrainable(config, cond_dim=int(dataset.fingerprints.shape[1]))

    @classmethod
    def from_checkpoint(
        cls, dataset: BBBC021Dataset, run: LoadedRun, device: torch.device
    ) -> CellFlux:
        config = run.config
        where = run.file if run.file is not None else run.path / "config.json"
        try:
            config.setdefault("prediction", "velocity")
            unet = velocity_network(config)
        except (KeyError, TypeError, ValueError) as exc:
            raise CellbenchError(
                f"config.json has an invalid unet section ({exc})", path=where
            ) from None
        load_module_state(unet, run.weights.get("unet", {}), run.weights_file)
        dim = int(dataset.fingerprints.shape[1])
        if int(config["unet"].get("cond_dim", 0)) != dim:
            raise CellbenchError(
                f"checkpoint expects {config['unet'].get('cond_dim')}-d fingerprints, the dataset "
                f"has {dim}",
                path=where,
                fix="use a checkpoint trained on this dataset",
            )
        return cls(dataset, config, unet, device)

    def n_parameters(self) -> int:
        return param_count(self.unet)

    def sampler_settings(self) -> dict[str, Any]:
        """Solver, steps, time grid, guidance and source noise of the sampling ODE."""
        out: dict[str, Any] = {
            "sampler": self.sampler,
            "sample_steps": self.sample_steps,
            "time_grid": str(self.config["time_grid"]),
            "guidance": self.guidance,
            "noise_std": float(self.config["noise_std"]),
        }
        if out["time_grid"] == "edm":
            out["rho"] = float(self.config["rho"])
            out["grid_from_zero"] = bool(self.config.get("grid_from_zero", True))
        out["pixel_io"] = str(self.config.get("pixel_io", "round"))
        return out

    # ------------------------------------------------------------------ sampling
    def time_grid(self) -> torch.Tensor:
        """The solver's time points (``sample_steps + 1``, ending at 1)."""
        return sampling_time_grid(self.config, self.sample_steps)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The guided velocity ``(1 + w) v(x, t, c) - w v(x, t, none)`` (plain ``v_c`` at w=0)."""
        v_cond = self.unet(x, t, cond)
        if self.guidance == 0.0:
            return v_cond
        return cfg_combine(v_cond, self.unet(x, t, None), self.guidance)

    @torch.no_grad()
    def sample(self, controls: torch.Tensor, fingerprints: torch.Tensor, seed: int) -> torch.Tensor:
        """Controls in [-1, 1] (N, 3, H, W) + fingerprints (N, D) -> predictions in [-1, 1]."""
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(controls.shape, generator=g) * float(self.config["noise_std"])
        x0 = (controls.to(torch.float32).cpu() + noise).to(self.device)
        cond = fingerprints.to(self.device, torch.float32)
        x1 = solve_ode(lambda x, t: self.velocity(x, t, cond), x0, self.time_grid(), self.sampler)
        return x1.clamp(-1.0, 1.0)

    def generate(
        self, controls: np.ndarray, compounds: list[str], doses: list[float], seed: int
    ) -> np.ndarray:
        fps = fingerprint_batch(self.dataset, compounds)
        x = to_model_range(controls)
        if self.config.get("pixel_io", "round") == "authors":
            return authors_to_uint8(self.sample(dequantise(x, seed), fps, seed))
        return from_model_range(self.sample(x, fps, seed))
