"""PhenDiff pipeline folders (the authors' ``save_pretrained`` format) and their DDIB translation.

The PhenDiff authors publish their code (github.com/thethomasboyer/PhenDiff) but no trained
weights. Their training script saves, with the EMA weights in place, a ``diffusers`` pipeline
folder: ``model_index.json``, ``unet/config.json`` with ``unet/diffusion_pytorch_model.bin``
(``torch.save`` of the state dict: diffusers 0.18.2, their pinned version, writes ``.bin`` by
default) or ``.safetensors``, and ``scheduler/scheduler_config.json`` (a ``DDIMScheduler``).
cellbench reads such a folder without ``diffusers``: the UNet is
:class:`~cellbench_baselines.nn.diffusers_unet.DiffusersUNet2D` (the library's architecture and
key names), the ``.bin`` is read with ``torch.load(weights_only=True)`` (a plain dict of tensors:
no allow-list), and the scheduler arithmetic is :class:`DDIMSchedule` / :class:`DDIMInverseSchedule`.

Translation is the authors' ``ddib`` class transfer: invert the control under the source class
with the DDIM inverse scheduler built from the pipeline's scheduler config, then generate under
the target class with DDIM from that latent (``eta = 0``, no guidance), the same number of steps
both ways (100 in their BBBC021 runs). The two schedules are those of diffusers 0.18.2, with its
behaviour kept where it matters: the inverse scheduler of that version has no
``rescale_betas_zero_snr`` and no ``timestep_spacing`` (it always spaces ``leading`` and ends
at alpha-bar 0), so an inversion under a zero-SNR, ``trailing`` config runs on another schedule
than the generation. Deterministic: the seed plays no part.

The folder does not record which class index is which compound: ``classes.json`` beside
``model_index.json`` lists the class names in index order (the training ``ImageFolder``'s sorted
folder names); one of them must be ``DMSO``, the source class of every inversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.torch_dataset import from_model_range, to_model_range
from cellbench.errors import CellbenchError
from cellbench.generators import Generator
from cellbench.io import read_json, read_json_object, sha256_file
from cellbench_baselines.config import check_config as check_bounds
from cellbench_baselines.nn.diffusers_unet import (
    DIFFUSERS_UNET,
    DiffusersUNet2D,
    check_config,
    rename_legacy_attention,
)

CONTROL_CLASS = "DMSO"
UNET_CONFIG = Path("unet") / "config.json"
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
WEIGHT_FILES = (
    Path("unet") / "diffusion_pytorch_model.safetensors",
    Path("unet") / "diffusion_pytorch_model.bin",
)
CLASSES_FILE = "classes.json"
#: DDIM steps of the inversion and of the generation in the authors' BBBC021 runs
PAPER_STEPS = 100

_FIX = (
    "pass a PhenDiff pipeline folder (model_index.json, unet/, scheduler/) saved by their train.py"
)


def is_pipeline_folder(path: str | Path) -> bool:
    """True for a folder in the diffusers pipeline layout (``unet/config.json`` inside)."""
    p = Path(path)
    return p.is_dir() and (p / UNET_CONFIG).is_file()


# ---------------------------------------------------------------------------------- schedules
def _betas(cfg: dict) -> torch.Tensor:
    n = int(cfg.get("num_train_timesteps", 1000))
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    kind = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        return torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    raise ValueError(f"beta_schedule {kind!r} is not supported (linear, scaled_linear)")


def zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last alpha-bar is 0: sqrt(alpha-bar) shifted to end at 0, rescaled to keep the first."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def _predictions(
    kind: str, output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted clean image, predicted noise) from the network output of ``kind``."""
    beta = 1.0 - abar
    if kind == "epsilon":
        return (x - beta**0.5 * output) / abar**0.5, output
    if kind == "v_prediction":
        return abar**0.5 * x - beta**0.5 * output, abar**0.5 * output + beta**0.5 * x
    if kind == "sample":
        return output, (x - abar**0.5 * output) / beta**0.5
    raise ValueError(f"prediction_type {kind!r} is not supported")


class DDIMSchedule:
    """Deterministic DDIM (``eta = 0``) of a ``DDIMScheduler`` config, diffusers 0.18.2 arithmetic."""

    def __init__(self, cfg: dict, steps: int):
        self.cfg = cfg
        self.T = int(cfg.get("num_train_timesteps", 1000))
        if not 1 <= steps <= self.T:
            raise ValueError(f"{steps} DDIM steps for {self.T} training timesteps")
        if cfg.get("thresholding"):
            raise ValueError("thresholding is not supported")
        betas = _betas(cfg)
        if cfg.get("rescale_betas_zero_snr"):
            betas = zero_terminal_snr(betas)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.final = (
            torch.tensor(1.0) if cfg.get("set_alpha_to_one", True) else self.alphas_cumprod[0]
        )
        self.steps = steps
        self.stride = self.T // steps
        spacing = cfg.get("timestep_spacing", "leading")
        if spacing == "linspace":
            ts = np.linspace(0, self.T - 1, steps).round()[::-1].astype(np.int64)
        elif spacing == "leading":
            ts = (np.arange(0, steps) * self.stride).round()[::-1].astype(np.int64)
            ts = ts + int(cfg.get("steps_offset", 0))
        elif spacing == "trailing":
            ts = np.round(np.arange(self.T, 0, -self.T / steps)).astype(np.int64) - 1
        else:
            raise ValueError(f"timestep_spacing {spacing!r} is not supported")
        self.timesteps = [int(t) for t in ts]

    def step(self, output: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        prev = t - self.stride
        abar = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final
        x0, eps = _predictions(self.cfg.get("prediction_type", "epsilon"), output, x, abar)
        if self.cfg.get("clip_sample", True):
            r = float(self.cfg.get("clip_sample_range", 1.0))
            x0 = x0.clamp(-r, r)
        return abar_prev**0.5 * x0 + (1.0 - abar_prev) ** 0.5 * eps


class DDIMInverseSchedule:
    """diffusers 0.18.2's ``DDIMInverseScheduler`` built ``from_config`` of a DDIM config.

    That class reads only the beta keys, ``clip_sample(_range)``, ``steps_offset`` and
    ``prediction_type``: ``leading`` timesteps ``0, T/N, ...``, no zero-SNR rescaling, and the
    step past the last training timestep goes to alpha-bar 0.
    """

    def __init__(self, cfg: dict, steps: int):
        self.cfg = cfg
        self.T = int(cfg.get("num_train_timesteps", 1000))
        self.alphas_cumprod = torch.cumprod(1.0 - _betas(cfg), dim=0)
        self.stride = self.T // steps
        offset = int(cfg.get("steps_offset", 0))
        self.timesteps = [int(i * self.stride) + offset for i in range(steps)]

    def step(self, output: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        nxt = t + self.stride
        abar = self.alphas_cumprod[t]
        abar_next = self.alphas_cumprod[nxt] if nxt < self.T else torch.tensor(0.0)
        x0, eps = _predictions(self.cfg.get("prediction_type", "epsilon"), output, x, abar)
        if self.cfg.get("clip_sample", True):
            r = float(self.cfg.get("clip_sample_range", 1.0))
            x0 = x0.clamp(-r, r)
        return abar_next**0.5 * x0 + (1.0 - abar_next) ** 0.5 * eps


@torch.no_grad()
def ddib_translate(
    unet: torch.nn.Module,
    scheduler_cfg: dict,
    x: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Invert ``x`` under class ``source``, regenerate under ``target`` (the authors' ``ddib``).

    Returns the generated images in [-1, 1] (clamped), before any rounding.
    """
    inv = DDIMInverseSchedule(scheduler_cfg, steps)
    for t in inv.timesteps:
        x = inv.step(unet(x, torch.tensor(t), class_labels=source), t, x)
    fwd = DDIMSchedule(scheduler_cfg, steps)
    for t in fwd.timesteps:
        x = fwd.step(unet(x, torch.tensor(t), class_labels=target), t, x)
    return x.clamp(-1.0, 1.0)


# ---------------------------------------------------------------------------------- reading
def _json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CellbenchError(f"{what} is missing", path=path, fix=_FIX)
    return read_json_object(path, what, _FIX)


def read_unet_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The UNet state dict of a pipeline folder (``.safetensors`` first, else ``.bin``)."""
    from cellbench_baselines.checkpoint import load_torch_file, read_safetensors

    for rel in WEIGHT_FILES:
        path = folder / rel
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            return path, read_safetensors(path)[0]
        state = load_torch_file(path, fix=_FIX)
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CellbenchError("not a UNet state dict of tensors", path=path, fix=_FIX)
        return path, state
    raise CellbenchError(
        "no UNet weights (unet/diffusion_pytorch_model.safetensors or .bin)",
        path=folder / "unet",
        fix=_FIX,
    )


def load_pipeline(folder: Path) -> tuple[DiffusersUNet2D, dict, Path]:
    """(UNet with the folder's weights, scheduler config, weights file) of a pipeline folder."""
    unet_cfg = _json(folder / UNET_CONFIG, "unet/config.json")
    sched_cfg = _json(folder / SCHEDULER_CONFIG, "scheduler/scheduler_config.json")
    check_bounds(unet_cfg, DIFFUSERS_UNET, where=folder / UNET_CONFIG, fix=_FIX)
    try:
        check_config(unet_cfg)
        unet = DiffusersUNet2D(unet_cfg)
        DDIMSchedule(sched_cfg, 1)
    except (TypeError, ValueError, KeyError) as exc:
        raise CellbenchError(
            f"pipeline config is not one cellbench can run ({exc})", path=folder, fix=_FIX
        ) from None
    weights_path, state = read_unet_weights(folder)
    try:
        unet.load_state_dict(rename_legacy_attention(state), strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])[:300]
        raise CellbenchError(
            f"UNet weights do not fit unet/config.json ({detail})", path=weights_path, fix=_FIX
        ) from None
    return unet.eval(), sched_cfg, weights_path


def read_classes(folder: Path, n_classes: int | None) -> list[str]:
    """The class names of ``classes.json`` (index order), checked against the class table."""
    path = folder / CLASSES_FILE
    fix = (
        f"write {CLASSES_FILE} beside model_index.json: a JSON list of the class names in "
        "index order (the training ImageFolder's sorted folder names), DMSO among them"
    )
    if not path.is_file():
        raise CellbenchError("the pipeline folder does not name its classes", path=path, fix=fix)
    names = read_json(path, "class list", fix)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CellbenchError("the class list is not a JSON list of names", path=path, fix=fix)
    if n_classes is None or len(names) != n_classes or CONTROL_CLASS not in names:
        raise CellbenchError(
            f"{len(names)} class names for a UNet with {n_classes} classes"
            + ("" if CONTROL_CLASS in names else f", and no {CONTROL_CLASS}"),
            path=path,
            fix=fix,
        )
    return names


class PipelinePhenDiff(Generator):
    """A PhenDiff pipeline folder as a cellbench generator (``PhenDiff.load`` returns it)."""

    name = "phendiff"
    version = "1"

    @classmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> PipelinePhenDiff:
        """The pipeline folder ``checkpoint`` on ``device``."""
        from cellbench_baselines.common import resolve_device

        if checkpoint is None or not is_pipeline_folder(checkpoint):
            raise CellbenchError("not a PhenDiff pipeline folder", path=checkpoint, fix=_FIX)
        return cls(dataset, Path(checkpoint), resolve_device(device))

    def __init__(self, dataset: BBBC021Dataset, folder: Path, device: torch.device) -> None:
        self.dataset = dataset
        self.unet, self.scheduler_config, weights = load_pipeline(folder)
        self.classes = read_classes(folder, self.unet.config["num_class_embeds"])
        self.device = device
        self.unet.to(device)
        self.sample_steps = PAPER_STEPS
        self.folder = folder
        self.checkpoint_path: Path | None = folder
        self.checkpoint_sha256: str | None = sha256_file(weights)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def sampler_settings(self) -> dict[str, Any]:
        """The class transfer: DDIB (DDIM inversion then DDIM generation), steps each way."""
        sched = {
            k: self.scheduler_config.get(k)
            for k in ("prediction_type", "num_train_timesteps", "timestep_spacing")
        }
        return {"method": "ddib", "ddim_steps": self.sample_steps, **sched}

    def class_index(self, compound: str) -> int:
        if compound not in self.classes:
            raise CellbenchError(
                f"this PhenDiff pipeline has no class {compound!r} (it knows {self.classes})",
                path=self.folder / CLASSES_FILE,
                fix="score it on a protocol of the compounds it was trained on",
            )
        return self.classes.index(compound)

    @torch.no_grad()
    def translate(self, controls: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = controls.to(self.device, torch.float32)
        source = torch.full_like(labels, self.classes.index(CONTROL_CLASS)).to(self.device)
        return ddib_translate(
            self.unet, self.scheduler_config, x, source, labels.to(self.device), self.sample_steps
        )

    def generate(
        self, controls: np.ndarray, compounds: list[str], doses: list[float], seed: int
    ) -> np.ndarray:
        labels = torch.tensor([self.class_index(c) for c in compounds], dtype=torch.long)
        return from_model_range(self.translate(to_model_range(controls), labels))
