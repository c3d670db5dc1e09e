"""PhenDiff (Bourou et al., MICCAI 2024): translation by DDIM inversion and class-conditional regeneration.

Written for cellbench from the paper and the facts of the authors' public configuration (no code
copied). One class-conditional denoising diffusion model learns the image distribution of every
condition: class 0 is the control (DMSO), class ``k >= 1`` the ``k``-th compound of the training
split. To translate a control crop to compound ``c``:

1. invert it with deterministic DDIM under the control class: ``x_T = invert(x_ctrl | class 0)``;
2. regenerate from that latent with deterministic DDIM under the class of ``c``.

Both steps are deterministic, so the output does not depend on the seed. Training uses the
denoising loss on the controls and the treated targets of each batch (so every batch shows the
model both ends of the translation).

Two networks (config key ``network``):

* ``"diffusers"`` (the ``paper`` preset): the authors' BBBC021 model. Their denoiser
  configuration on :class:`~cellbench_baselines.nn.diffusers_unet.DiffusersUNet2D` (diffusers'
  ``UNet2DModel`` architecture and key names), their DDIM scheduler configuration (3,000 steps,
  scaled-linear betas rescaled to zero terminal SNR, v-prediction), a zero class embedding on a
  ``proba_uncond`` share of the steps, and their DDIB translation with 100 steps each way
  (:mod:`cellbench_baselines.phendiff_release`, which also runs pipeline folders saved by the
  authors' code). The authors publish no trained weights.
* ``"adm"`` (``cpu-small``): cellbench's own ADM UNet, epsilon prediction, linear betas 1e-4 to
  0.02 over 1000 steps, DDIM with ``ddim_steps`` each way.

cellbench's own choices: the class set is the compounds of the training split plus DMSO (a
compound never seen in training cannot be translated: such a task is an error naming the
checkpoint); AdamW with no weight decay, gradient clipping at 1.0.
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
from cellbench.generators import Generator
from cellbench_baselines.checkpoint import LoadedRun, TrainedGenerator, load_module_state
from cellbench_baselines.common import param_count
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
from cellbench_baselines.nn.diffusers_unet import (
    DIFFUSERS_UNET_BOUNDS,
    DiffusersUNet2D,
    diffusers_unet_size_problem,
)
from cellbench_baselines.nn.unet import (
    UNET_BOUNDS,
    UNET_DEFAULTS,
    UNet,
    unet_from_config,
    unet_size_problem,
)
from cellbench_baselines.sampling import (
    ddim_invert,
    ddim_sample,
    ddim_timesteps,
    linear_alpha_bars,
)
from cellbench_baselines.trainer import TrainableModel

CONTROL_CLASS = "DMSO"

#: the authors' BBBC021 denoiser (their models_configs/denoiser/small_denoiser_config.json,
#: launched by their A100 script); num_class_embeds is set to the training classes
AUTHORS_UNET: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "class_embed_type": None,
    "num_class_embeds": 2,
    "sample_size": 96,
}
#: their scheduler (models_configs/noise_scheduler/3k_steps_clipping_rescaling.json)
AUTHORS_SCHEDULER: dict[str, Any] = {
    "beta_schedule": "scaled_linear",
    "beta_end": 0.02,
    "beta_start": 0.0001,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 3000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}

_MODEL_KEYS = {
    "lr": 1e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "ddim_steps": 50,  # DDIM steps of the inversion and of the regeneration
    "classes": [],  # filled by training: [DMSO, compounds of the training split ...]
    # "adm": cellbench's UNet ("unet") and linear-beta epsilon schedule (the keys above);
    # "diffusers": the authors' diffusers UNet2DModel ("unet_diffusers") and DDIM scheduler
    # ("scheduler"), translated by their DDIB (cellbench_baselines.phendiff_release)
    "network": "adm",
    "unet": {**UNET_DEFAULTS, "dropout": 0.1},
    "unet_diffusers": dict(AUTHORS_UNET),
    "scheduler": dict(AUTHORS_SCHEDULER),
    "proba_uncond": 0.0,  # "diffusers": chance of a step with a zero class embedding (CFG)
}

#: the bounds of every PhenDiff config key (cellbench_baselines.config.check_config)
BOUNDS: dict[str, Bound] = {
    **TRAINER_BOUNDS,
    **OPTIMISER_BOUNDS,
    "num_train_timesteps": Int(1, 100_000),
    "beta_start": Float(0.0, 1.0, lo_open=True, hi_open=True),
    "beta_end": Float(0.0, 1.0, lo_open=True, hi_open=True),
    "ddim_steps": Int(1, 100_000),
    "classes": Bound("str_list", min_len=0, max_len=100_000),
    "network": Choice("adm", "diffusers"),
    "unet": Bound("table", table=UNET_BOUNDS, check=unet_size_problem),
    "unet_diffusers": Bound(
        "table", table=DIFFUSERS_UNET_BOUNDS, check=diffusers_unet_size_problem
    ),
    "scheduler": Bound(
        "table",
        table={
            "beta_schedule": Choice("linear", "scaled_linear", "squaredcos_cap_v2"),
            "beta_start": Float(0.0, 1.0, lo_open=True, hi_open=True),
            "beta_end": Float(0.0, 1.0, lo_open=True, hi_open=True),
            "clip_sample": BOOL,
            "clip_sample_range": Float(0.0, 1000.0, lo_open=True),
            "num_train_timesteps": Int(1, 100_000),
            "prediction_type": Choice("epsilon", "v_prediction", "sample"),
            "rescale_betas_zero_snr": BOOL,
            "timestep_spacing": Choice("leading", "trailing", "linspace"),
        },
    ),
    "proba_uncond": Float(0.0, 1.0),
}

PRESETS: dict[str, dict] = {
    # the authors' BBBC021 model: their denoiser and scheduler configs, their training settings
    "paper": {
        **TRAINER_DEFAULTS,
        **_MODEL_KEYS,
        "network": "diffusers",
        "batch_size": 48,  # x2 images per step: 96 a step, their train_batch_size
        "steps": 30_000,  # their max_num_steps
        "ckpt_every": 1000,
        "log_every": 100,
        "lr": 1e-4,
        "ema_decay": 0.9999,
        "ema_warmup": True,
        "ddim_steps": 100,  # their num_inference_steps, both ways
        "proba_uncond": 0.1,
    },
    "cpu-small": {
        **TRAINER_DEFAULTS,
        **_MODEL_KEYS,
        "batch_size": 16,
        "steps": 1000,
        "ckpt_every": 250,
        "ddim_steps": 20,
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
            "patch_size": 4,
        },
    },
}


def training_classes(dataset: BBBC021Dataset, split: str) -> list[str]:
    """``[DMSO, *sorted treated compounds of split]``: the order PairedCropDataset indexes."""
    rows = dataset.split(split)
    return [CONTROL_CLASS, *sorted(str(c) for c in rows[~rows["is_control"]]["CPD_NAME"].unique())]


def _is_diffusers(config: dict) -> bool:
    return config.get("network", "adm") == "diffusers"


def build_network(config: dict) -> torch.nn.Module:
    """The denoiser of ``config``: cellbench's UNet, or the authors' diffusers UNet2DModel."""
    if _is_diffusers(config):
        return DiffusersUNet2D(config["unet_diffusers"])
    if config.get("network", "adm") != "adm":
        raise ValueError(f"network {config['network']!r} is neither 'adm' nor 'diffusers'")
    return unet_from_config(config["unet"])


class _Diffusion:
    """The noise schedule and the epsilon network wrapper shared by training and generation."""

    def __init__(self, config: dict, unet: UNet):
        self.unet = unet
        self.T = int(config["num_train_timesteps"])
        self.alpha_bars = linear_alpha_bars(
            self.T, float(config["beta_start"]), float(config["beta_end"])
        )
        self.timesteps = ddim_timesteps(int(config["ddim_steps"]), self.T)

    def eps(self, x: torch.Tensor, k: torch.Tensor | int, labels: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(k):
            k = torch.full((x.shape[0],), int(k), device=x.device)
        return self.unet(x, k.to(torch.float32) / self.T, labels=labels)


class PhenDiffTrainable(TrainableModel):
    """The class-conditional epsilon UNet, its optimiser and the denoising step."""

    def __init__(self, config: dict):
        self.config = config
        self.unet = build_network(config)
        self.diffusion = None if _is_diffusers(config) else _Diffusion(config, self.unet)
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
        """Denoising loss on the batch's controls (class 0) and targets (their class)."""
        x = torch.cat([batch["control"], batch["target"]])
        cidx = batch["compound_idx"].to(torch.long)
        labels = torch.cat([torch.zeros_like(cidx), cidx + 1]).to(x.device)
        if self.diffusion is None:
            return self._pipeline_loss(x, labels)
        n = x.shape[0]
        k = torch.randint(0, self.diffusion.T, (n,))
        noise = torch.randn(x.shape)
        ab = self.diffusion.alpha_bars[k].to(torch.float32)[:, None, None, None]
        xk = ab.sqrt().to(x.device) * x + (1.0 - ab).sqrt().to(x.device) * noise.to(x.device)
        with self.autocast():
            eps = self.diffusion.eps(xk, k.to(x.device), labels)
        return F.mse_loss(eps.float(), noise.to(x.device))

    def _pipeline_loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The authors' loss: their scheduler's noising, its prediction target, and with chance
        ``proba_uncond`` a step whose class embedding is zero (their classifier-free training)."""
        from cellbench_baselines.phendiff_release import DDIMSchedule

        sched = self.config["scheduler"]
        abars = DDIMSchedule(sched, 1).alphas_cumprod
        k = torch.randint(0, abars.numel(), (x.shape[0],))
        noise = torch.randn(x.shape).to(x.device)
        ab = abars[k].to(x.device)[:, None, None, None]
        xk = ab.sqrt() * x + (1.0 - ab).sqrt() * noise
        kind = sched.get("prediction_type", "epsilon")
        if kind == "v_prediction":
            target = ab.sqrt() * noise - (1.0 - ab).sqrt() * x
        elif kind == "epsilon":
            target = noise
        else:
            target = x
        uncond = float(torch.rand(())) < float(self.config["proba_uncond"])
        emb = torch.zeros(x.shape[0], self.unet.time_embed_dim, device=x.device) if uncond else None
        with self.autocast():
            out = self.unet(xk, k.to(x.device), class_labels=labels, class_emb=emb)
        return F.mse_loss(out.float(), target)

    def training_step(self, batch: dict, step: int) -> dict[str, float]:
        return self.step_single(self.loss(batch), self.unet, self.opt)


class PhenDiff(TrainedGenerator):
    """PhenDiff: DDIM-invert the control under DMSO, regenerate under the compound's class."""

    name = "phendiff"
    version = "1"
    role = "model"
    summary = (
        "model: class-conditional DDIM, control inverted then regenerated under the "
        "compound's class (Bourou et al. 2024); needs --checkpoint from `cellbench train phendiff` "
        "or a pipeline folder saved by the authors' code"
    )
    presets = PRESETS
    config_bounds = BOUNDS

    def __init__(
        self,
        dataset: BBBC021Dataset,
        config: dict,
        unet: UNet,
        device: torch.device,
        source: Path | None = None,
    ) -> None:
        self.dataset = dataset
        self.config = config
        self.classes = list(config["classes"])
        self.unet = unet.to(device).eval()
        self.device = device
        self.source = source
        self.diffusion = None if _is_diffusers(config) else _Diffusion(config, self.unet)

    @classmethod
    def load(  # type: ignore[override]
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> Generator:
        """A ``cellbench train phendiff`` run, or a PhenDiff pipeline folder of the authors' code.

        A folder with ``unet/config.json`` (diffusers' ``save_pretrained`` layout) is run by
        :class:`~cellbench_baselines.phendiff_release.PipelinePhenDiff`; anything else goes to the
        cellbench run loader.
        """
        from cellbench_baselines.phendiff_release import PipelinePhenDiff, is_pipeline_folder

        if checkpoint is not None and is_pipeline_folder(checkpoint):
            return PipelinePhenDiff.load(dataset, checkpoint, device)
        return super().load(dataset, checkpoint, device)

    @classmethod
    def trainable(cls, dataset: BBBC021Dataset, config: dict) -> PhenDiffTrainable:
        classes = training_classes(dataset, config["split"])
        config["classes"] = classes
        config["unet"]["num_classes"] = len(classes)
        config["unet_diffusers"]["num_class_embeds"] = len(classes)
        return PhenDiffTrainable(config)

    @classmethod
    def from_checkpoint(
        cls, dataset: BBBC021Dataset, run: LoadedRun, device: torch.device
    ) -> PhenDiff:
        config = run.config
        try:
            unet = build_network(config)
            n_cls = (
                config["unet_diffusers"]["num_class_embeds"]
                if _is_diffusers(config)
                else config["unet"]["num_classes"]
            )
            if len(config["classes"]) != int(n_cls):
                raise ValueError("classes and the network's class count disagree")
        except (KeyError, TypeError, ValueError) as exc:
            raise CellbenchError(
                f"config.json is not a valid phendiff config ({exc})",
                path=run.path / "config.json",
            ) from None
        load_module_state(unet, run.weights.get("unet", {}), run.path / "model.safetensors")
        return cls(dataset, config, unet, device, source=run.path)

    def n_parameters(self) -> int:
        return param_count(self.unet)

    def sampler_settings(self) -> dict[str, Any]:
        """The DDIM steps of the inversion and of the regeneration (both deterministic)."""
        if self.diffusion is None:
            pred = self.config["scheduler"].get("prediction_type", "epsilon")
            return {
                "method": "ddib",
                "ddim_steps": int(self.config["ddim_steps"]),
                "prediction_type": pred,
            }
        return {"ddim_steps": int(self.config["ddim_steps"])}

    def class_index(self, compound: str) -> int:
        """The class of ``compound`` (an error names the checkpoint when it was not trained on)."""
        if compound not in self.classes:
            raise CellbenchError(
                f"phendiff is class-conditional and this checkpoint was not trained on "
                f"compound {compound!r}",
                path=None if self.source is None else self.source / "config.json",
                fix="train on a split that contains it (e.g. split 'train')",
            )
        return self.classes.index(compound)

    @torch.no_grad()
    def translate(self, controls: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Controls in [-1, 1] -> translations in [-1, 1] under class ``labels`` (deterministic)."""
        x = controls.to(self.device, torch.float32)
        labels = labels.to(self.device)
        src = torch.zeros_like(labels)
        if self.diffusion is None:
            from cellbench_baselines.phendiff_release import ddib_translate

            steps = int(self.config["ddim_steps"])
            return ddib_translate(self.unet, self.config["scheduler"], x, src, labels, steps)
        d = self.diffusion
        latent = ddim_invert(lambda z, k: d.eps(z, k, src), x, d.alpha_bars, d.timesteps)
        out = ddim_sample(lambda z, k: d.eps(z, k, labels), latent, d.alpha_bars, d.timesteps)
        return out.clamp(-1.0, 1.0)

    def generate(
        self, controls: np.ndarray, compounds: list[str], doses: list[float], seed: int
    ) -> np.ndarray:
        labels = torch.tensor([self.class_index(c) for c in compounds], dtype=torch.long)
        return from_model_range(self.translate(to_model_range(controls), labels))
