"""IMPA: image-to-image translation of control cells by a style-conditioned GAN.

IMPA (Palma et al., Nature Communications 2025) is built on the StarGAN v2 recipe. A control crop is
encoded into a spatial content code; the compound's 1024-d Morgan count fingerprint, concatenated
with Gaussian noise, goes through a mapping network to a *style* vector; the decoder renders the
content under that style with adaptive instance normalisation (AdaIN). Training uses

* a **multi-task discriminator**: one real/fake logit per domain, and each image is judged only by
  the head of its own domain (domain 0 is the DMSO control, domains 1..K the training compounds);
* the **adversarial** loss (non-saturating, with an R1 penalty on real images for the discriminator);
* **style reconstruction**: a style encoder must recover the style vector from the generated image;
* **diversity**: two noise draws for the same compound should give different images (its weight
  decays linearly to zero over ``ds_iters`` steps, as in IMPA);
* **cycle consistency**: the translated image, decoded again under the control image's own style
  (the style encoder applied to the control), must give back the control (L1).

Facts taken from IMPA's published configuration for BBBC021 with fingerprints (``bbbc021_all``,
the unseen-compound run): base width 64 (doubling to at most 512, three downsamplings to 12x12 for
a 96x96 input, two bottleneck blocks), style dimension 64, noise dimension 8, a one-layer (linear)
mapping network on the raw fingerprint, all loss weights 1, Adam (lr 1e-4, betas (0, 0.99), weight
decay 1e-4). The ``paper`` generator and mapping network are theirs layer for layer (24,318,595 +
66,112 parameters, counted on their code; the authors' released checkpoints load into them, see
:mod:`cellbench_baselines.impa_release`); the style encoder and discriminator are theirs at
``img_size`` 96 (their ``bbbc021_all`` file says 128, which deepens only those two networks'
last convolution). Batch 32, 150 epochs and the eight CellFlux unseen compounds held out are
cellbench's training schedule (``bbbc021_all`` trains at batch 16 and holds out ten compounds).
cellbench's own choices (IMPA is silent or different):

* **DMSO is a discriminator domain**: with probability ``p_control`` a sample is translated to the
  DMSO style (the DMSO fingerprint) and judged against its real control by the DMSO head, so the
  style space has an anchor for "no treatment" (0.1 in both presets);
* the generator and the mapping network keep an **EMA** copy (decay ``ema_decay``, 0.999 as in
  StarGAN v2) and generation uses the EMA weights; the style encoder and the discriminator are
  needed only in training and have none (so ``model.safetensors`` holds just what generates);
* the adversarial, style and diversity terms share one generator pass per step (the translation
  judged by the discriminator step is the same one the generator step back-propagates through);
* no data augmentation (IMPA flips and rotates training crops); the dose is not an input (IMPA's
  domains are compounds), so all doses of a compound get the same style distribution;
* **residual output, ``cpu-small`` only** (``residual_output``; ``paper`` keeps IMPA's decoder of
  the whole image): the generator returns the input plus the decoded change, and the last 1x1
  convolution of the change starts at zero, so the untrained generator is exactly the identity
  map and the cycle term starts at zero. Within a CPU budget (a few hundred to a thousand Adam
  steps) a whole-image decoder trained from scratch does not get past a uniform grey image; the
  residual form spends the budget on the *change* of phenotype (docs/generators.md, "IMPA", has
  the measurements). The change is decoded from the 12x12 content code by nearest-neighbour
  upsampling (no skip connections), so a short run can only make coarse, blocky changes;
* ``cpu-small`` also uses StarGAN v2's batch of 8 and a learning rate of 1e-3 (more, larger
  optimiser steps per CPU minute), 2,000 steps with the diversity term decayed over the first
  1,000, and a narrower network (base width 8 instead of 64, at most 64 channels, style
  dimension 32, noise dimension 16).

``cpu-small`` is a CPU smoke preset, not a usable IMPA: it scores below the ``identity`` anchor
(docs/generators.md, "IMPA", has what 500, 1,000 and 2,000 steps measured); a usable IMPA needs the
``paper`` preset on a GPU.

Generation: encode the control, style = mapping(fingerprint, noise drawn from the seed), decode
(and add the control, with ``residual_output``), clip to [-1, 1], round to uint8. Same inputs and
seed -> the same images.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellbench.data.bbbc021 import BBBC021Dataset
from cellbench.data.torch_dataset import from_model_range, to_model_range
from cellbench.errors import CellbenchError
from cellbench_baselines.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    LoadedRun,
    TrainedGenerator,
    load_module_state,
)
from cellbench_baselines.common import fingerprint_batch, resolve_device
from cellbench_baselines.config import (
    BOOL,
    OPTIMISER_BOUNDS,
    TRAINER_BOUNDS,
    Bound,
    Float,
    Int,
    size_problem,
)
from cellbench_baselines.trainer import TrainableModel

CONTROL_DOMAIN = "DMSO"
IMG_SIZE = 96

#: the networks whose EMA copies the trainer keeps: the two that generation uses
EMA_MODULES = ("generator", "mapping")
#: the networks the generator step updates
G_STEP_MODULES = ("generator", "mapping", "style_encoder")

_PAPER: dict[str, Any] = {
    # trainer keys (cellbench_baselines.config.TRAINER_DEFAULTS)
    "seed": 0,
    "split": "train-iid",  # IMPA's BBBC021 fingerprint run holds out the 8 CellFlux compounds
    "batch_size": 32,
    "steps": 450_000,  # ~150 epochs of ~98K IID crops at batch 32 (IMPA counts 150 epochs)
    "ckpt_every": 5_000,
    "log_every": 100,
    "keep_checkpoints": 2,
    "ema_decay": 0.999,
    "ema_warmup": False,
    "mixed_precision": "bf16",
    # architecture
    "dim_in": 64,
    "max_conv_dim": 512,
    "n_bottleneck": 2,
    "style_dim": 64,  # IMPA's bbbc021_all configuration
    "z_dim": 8,
    "mapping_layers": 1,
    "mapping_hidden": 512,
    "fingerprint_dim": 1024,  # Morgan count fingerprints (emb_fp.csv)
    "residual_output": False,  # IMPA decodes the whole image (cpu-small: control + decoded change)
    # losses
    "lambda_adv": 1.0,
    "lambda_r1": 1.0,
    "lambda_sty": 1.0,
    "lambda_cyc": 1.0,
    "lambda_ds": 1.0,
    "ds_iters": 100_000,
    "p_control": 0.1,
    # optimisation (Adam)
    "lr": 1e-4,
    "mapping_lr": 1e-4,
    "betas": [0.0, 0.99],
    "weight_decay": 1e-4,
}

_CPU_SMALL: dict[str, Any] = {
    **_PAPER,
    "split": "train",
    "batch_size": 8,  # StarGAN v2's batch; more optimiser steps per CPU minute
    "steps": 2_000,  # ~16 epochs of the 1,030 bbbc021-sim (small) training pairs
    "ckpt_every": 100,
    "log_every": 10,
    "ema_warmup": True,
    "dim_in": 8,
    "max_conv_dim": 64,
    "style_dim": 32,
    "z_dim": 16,
    "ds_iters": 1_000,
    "residual_output": True,
    "lr": 1e-3,
    "mapping_lr": 1e-3,
}

#: the bounds of every IMPA config key (cellbench_baselines.config.check_config); the networks'
#: size is then counted without allocating (BOUNDS.check)
_KEY_BOUNDS: dict[str, Bound] = {
    **TRAINER_BOUNDS,
    **OPTIMISER_BOUNDS,
    "betas": Bound("float_list", 0.0, 1.0, hi_open=True, min_len=2, max_len=2),
    "dim_in": Int(1, 1024),
    "max_conv_dim": Int(1, 4096),
    "n_bottleneck": Int(0, 32),
    "style_dim": Int(1, 4096),
    "z_dim": Int(1, 4096),
    "mapping_layers": Int(1, 32),
    "mapping_hidden": Int(1, 8192),
    "fingerprint_dim": Int(1, 16_384),
    "residual_output": BOOL,
    "lambda_adv": Float(0.0, 1e4),
    "lambda_r1": Float(0.0, 1e4),
    "lambda_sty": Float(0.0, 1e4),
    "lambda_cyc": Float(0.0, 1e4),
    "lambda_ds": Float(0.0, 1e4),
    "ds_iters": Int(0, 10**9),
    "p_control": Float(0.0, 1.0),
    "mapping_lr": Float(0.0, 1.0, lo_open=True),
}


def _size_problem(cfg: dict) -> str | None:
    return size_problem(lambda: build_networks({**_PAPER, **cfg}, 2))


BOUNDS = Bound("table", table=_KEY_BOUNDS, check=_size_problem)

#: architecture keys that must agree between a checkpoint's config and its weights
ARCH_KEYS = ("dim_in", "max_conv_dim", "n_bottleneck", "style_dim", "z_dim", "mapping_layers")


# --------------------------------------------------------------------------------------- blocks
def _channels(dim_in: int, max_conv_dim: int, n: int) -> list[int]:
    """Widths after a stem of ``dim_in`` and ``n`` doubling stages capped at ``max_conv_dim``."""
    widths = [dim_in]
    for _ in range(n):
        widths.append(min(widths[-1] * 2, max_conv_dim))
    return widths


class ResBlock(nn.Module):
    """Pre-activation residual block (optional instance norm, optional 2x average-pool down)."""

    def __init__(self, c_in: int, c_out: int, *, norm: bool, down: bool):
        super().__init__()
        self.down = down
        self.norm1 = nn.InstanceNorm2d(c_in, affine=True) if norm else nn.Identity()
        self.norm2 = nn.InstanceNorm2d(c_in, affine=True) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(self.norm1(x), 0.2))
        if self.down:
            h = F.avg_pool2d(h, 2)
        h = self.conv2(F.leaky_relu(self.norm2(h), 0.2))
        s = self.skip(x)
        if self.down:
            s = F.avg_pool2d(s, 2)
        return (s + h) / math.sqrt(2.0)


class AdaIN(nn.Module):
    """Instance norm whose per-channel scale (1 + gamma) and shift beta come from the style."""

    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.to_params = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.to_params(s)[:, :, None, None].chunk(2, dim=1)
        return (1.0 + gamma) * self.norm(x) + beta


class AdaINResBlock(nn.Module):
    """Decoder block: AdaIN -> LeakyReLU -> (2x nearest up) -> conv, twice, plus a skip."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, *, up: bool):
        super().__init__()
        self.up = up
        self.norm1 = AdaIN(style_dim, c_in)
        self.norm2 = AdaIN(style_dim, c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(x, s), 0.2)
        if self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.leaky_relu(self.norm2(h, s), 0.2))
        return (self.skip(x) + h) / math.sqrt(2.0)


# --------------------------------------------------------------------------------------- networks
class IMPAGenerator(nn.Module):
    """Encoder (content code at 12x12 for 96x96 input) and AdaIN decoder conditioned on a style."""

    n_down = 3

    def __init__(
        self,
        *,
        dim_in: int,
        max_conv_dim: int,
        style_dim: int,
        n_bottleneck: int,
        residual: bool = False,
    ):
        super().__init__()
        self.residual = residual
        widths = _channels(dim_in, max_conv_dim, self.n_down)
        self.stem = nn.Conv2d(3, dim_in, 3, padding=1)
        enc: list[nn.Module] = [
            ResBlock(a, b, norm=True, down=True) for a, b in itertools.pairwise(widths)
        ]
        enc += [
            ResBlock(widths[-1], widths[-1], norm=True, down=False) for _ in range(n_bottleneck)
        ]
        self.encoder = nn.Sequential(*enc)
        dec = [
            AdaINResBlock(widths[-1], widths[-1], style_dim, up=False) for _ in range(n_bottleneck)
        ]
        dec += [
            AdaINResBlock(b, a, style_dim, up=True)
            for a, b in reversed(list(itertools.pairwise(widths)))
        ]
        self.decoder = nn.ModuleList(dec)
        self.head = nn.Sequential(
            nn.InstanceNorm2d(dim_in, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(dim_in, 3, 1)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 96, 96) in [-1, 1] -> content code (B, C, 12, 12)."""
        return self.encoder(self.stem(x))

    def decode(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Content code + style (B, style_dim) -> decoded map (B, 3, 96, 96), unbounded.

        This is the output image, or with ``residual`` the change added to the input image.
        """
        for block in self.decoder:
            h = block(h, s)
        return self.head(h)

    def render(self, x: torch.Tensor, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The output image for input ``x`` whose content code is ``h = encode(x)``."""
        out = self.decode(h, s)
        return x + out if self.residual else out

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.render(x, self.encode(x), s)


class MappingNetwork(nn.Module):
    """[fingerprint, noise] -> style vector: ``layers`` linear layers with ReLU between them."""

    def __init__(self, *, fp_dim: int, style_dim: int, z_dim: int, layers: int, hidden: int):
        super().__init__()
        if layers < 1:
            raise ValueError("mapping_layers must be at least 1")
        dims = [fp_dim + z_dim] + [hidden] * (layers - 1) + [style_dim]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            if i:
                mods.append(nn.ReLU())
            mods.append(nn.Linear(a, b))
        self.net = nn.Sequential(*mods)
        self.z_dim = z_dim

    def forward(self, fingerprint: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([fingerprint, z], dim=1))


def _judge_trunk(dim_in: int, max_conv_dim: int) -> tuple[nn.Sequential, int]:
    """Shared shape of the style encoder and the discriminator: 96x96 -> (B, C) by 5 downsamplings."""
    n_down = int(math.log2(IMG_SIZE // 3))  # 96 -> 3x3
    widths = _channels(dim_in, max_conv_dim, n_down)
    layers: list[nn.Module] = [nn.Conv2d(3, dim_in, 3, padding=1)]
    layers += [ResBlock(a, b, norm=False, down=True) for a, b in itertools.pairwise(widths)]
    layers += [
        nn.LeakyReLU(0.2),
        nn.Conv2d(widths[-1], widths[-1], 3),  # 3x3 -> 1x1
        nn.LeakyReLU(0.2),
        nn.Flatten(),
    ]
    return nn.Sequential(*layers), widths[-1]


class StyleEncoder(nn.Module):
    """Image -> style vector (one shared head: IMPA's single-style setting)."""

    def __init__(self, *, dim_in: int, max_conv_dim: int, style_dim: int):
        super().__init__()
        self.trunk, width = _judge_trunk(dim_in, max_conv_dim)
        self.head = nn.Linear(width, style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class MultiTaskDiscriminator(nn.Module):
    """One real/fake logit per domain; ``forward(x, domain)`` returns each image's own head."""

    def __init__(self, *, dim_in: int, max_conv_dim: int, n_domains: int):
        super().__init__()
        self.trunk, width = _judge_trunk(dim_in, max_conv_dim)
        self.heads = nn.Linear(width, n_domains)
        self.n_domains = n_domains

    def all_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_domains) logits of every head."""
        return self.heads(self.trunk(x))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        logits = self.all_logits(x)
        return logits.gather(1, domain.long().view(-1, 1)).squeeze(1)


def _he_init(module: nn.Module) -> None:
    """Kaiming-normal weights (fan-in, ReLU gain) and zero biases for every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_networks(config: dict, n_domains: int) -> dict[str, nn.Module]:
    """The four networks of ``config`` (He-initialised from torch's current RNG state)."""
    gen, mapping = _inference_networks(config)
    width, cap = int(config["dim_in"]), int(config["max_conv_dim"])
    nets: dict[str, nn.Module] = {
        "generator": gen,
        "mapping": mapping,
        "style_encoder": StyleEncoder(
            dim_in=width, max_conv_dim=cap, style_dim=int(config["style_dim"])
        ),
        "discriminator": MultiTaskDiscriminator(
            dim_in=width, max_conv_dim=cap, n_domains=n_domains
        ),
    }
    for net in nets.values():
        _he_init(net)
    if gen.residual:
        # the decoded change starts at zero: the untrained generator is the identity map
        out_conv = gen.head[-1]
        nn.init.zeros_(out_conv.weight)
        nn.init.zeros_(out_conv.bias)
    return nets


# --------------------------------------------------------------------------------------- losses
def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of the logits against an all-real (1) or all-fake (0) target."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


def r1_penalty(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """0.5 * E[ ||d logit / d x||^2 ] on real images (``x`` must require grad)."""
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()


def diversity_weight(config: dict, step: int) -> float:
    """``lambda_ds`` decayed linearly to 0 at step ``ds_iters`` (a pure function of the step)."""
    if config["ds_iters"] <= 0:
        return 0.0
    return float(config["lambda_ds"]) * max(0.0, 1.0 - step / float(config["ds_iters"]))


def domain_names(dataset: BBBC021Dataset, split: str) -> list[str]:
    """Discriminator domains: DMSO first, then the treated compounds of ``split`` sorted by name.

    The order of the compounds is that of :class:`~cellbench.data.torch_dataset.PairedCropDataset`,
    so a batch's ``compound_idx`` k is domain k + 1.
    """
    rows = dataset.split(split)
    return [CONTROL_DOMAIN, *sorted(rows.loc[~rows["is_control"], "CPD_NAME"].unique())]


def control_fingerprint(dataset: BBBC021Dataset) -> np.ndarray:
    """The DMSO row of the fingerprint table (zeros where the table has none: DMSO has no bits)."""
    if CONTROL_DOMAIN in dataset.fingerprints.index:
        return dataset.fingerprint(CONTROL_DOMAIN)
    return np.zeros(dataset.fingerprints.shape[1], dtype=np.float32)


def _check_fingerprint_dim(dataset: BBBC021Dataset, config: dict, path: Path | None) -> None:
    dim = int(dataset.fingerprints.shape[1])
    if int(config["fingerprint_dim"]) != dim:
        raise CellbenchError(
            f"IMPA config expects {config['fingerprint_dim']}-d fingerprints, the dataset "
            f"{dataset.name} has {dim}",
            path=path,
            fix="set fingerprint_dim to the dataset's or use a checkpoint trained on this dataset",
        )


# --------------------------------------------------------------------------------------- training
class IMPATrainable(TrainableModel):
    """The four IMPA networks, their Adam optimisers and one training step.

    One step: (1) discriminator on real targets (+R1) and the current translations; (2) generator,
    mapping network and style encoder on adversarial + style + cycle - diversity.
    """

    def __init__(self, config: dict, domains: list[str], control_fp: np.ndarray):
        self.config = dict(config)
        self.config["domains"] = list(domains)
        self.domains = list(domains)
        self.nets = build_networks(self.config, len(domains))
        self.control_fp = torch.tensor(np.asarray(control_fp, dtype=np.float32))
        betas = tuple(float(b) for b in self.config["betas"])
        wd = float(self.config["weight_decay"])
        self.opts: dict[str, torch.optim.Optimizer] = {
            name: torch.optim.Adam(
                net.parameters(),
                lr=float(self.config["mapping_lr" if name == "mapping" else "lr"]),
                betas=betas,  # type: ignore[arg-type]
                weight_decay=wd,
            )
            for name, net in self.nets.items()
        }

    # the TrainableModel interface
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.nets)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self.opts)

    def ema_names(self) -> tuple[str, ...]:
        return EMA_MODULES

    def training_step(self, batch: dict, step: int) -> dict[str, float]:
        c = self.config
        G, M, E, D = (
            self.nets[k] for k in ("generator", "mapping", "style_encoder", "discriminator")
        )
        x_ctrl = batch["control"]
        device = x_ctrl.device
        x_trt = batch["target"].to(device)
        fp = batch["fingerprint"].to(device=device, dtype=torch.float32)
        cidx = torch.as_tensor(batch["compound_idx"], device=device).long()
        if int(cidx.min()) < 0 or int(cidx.max()) >= len(self.domains) - 1:
            raise CellbenchError(
                f"batch compound index {int(cidx.max())} outside the model's "
                f"{len(self.domains) - 1} training compounds",
                fix="train on the split the model was built for (config 'split')",
            )
        b = x_ctrl.shape[0]

        # target domain: the treated compound, or DMSO with probability p_control
        to_ctrl = torch.rand(b, device=device) < float(c["p_control"])
        domain = torch.where(to_ctrl, torch.zeros_like(cidx), cidx + 1)
        fp = torch.where(to_ctrl[:, None], self.control_fp.to(device)[None, :], fp)
        x_real = torch.where(to_ctrl[:, None, None, None], x_ctrl, x_trt)
        z1 = torch.randn(b, c["z_dim"], device=device)
        z2 = torch.randn(b, c["z_dim"], device=device)

        # one translation, shared by the discriminator and the generator steps
        with self.autocast():
            h = G.encode(x_ctrl)
            s1 = M(fp, z1)
            x_fake = G.render(x_ctrl, h, s1)

        # ---- discriminator: real targets (+ R1) vs the translations, each by its domain's head
        D.requires_grad_(True)
        x_real = x_real.detach().requires_grad_(True)
        with self.autocast():
            out_real = D(x_real, domain).float()
            out_fake = D(x_fake.detach(), domain).float()
        d_real = adversarial_loss(out_real, True)
        d_r1 = r1_penalty(out_real, x_real)
        d_fake = adversarial_loss(out_fake, False)
        d_loss = d_real + d_fake + float(c["lambda_r1"]) * d_r1
        self.opts["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.opts["discriminator"].step()

        # ---- generator, mapping network, style encoder
        D.requires_grad_(False)
        lam_ds = diversity_weight(c, step)
        with self.autocast():
            g_adv = adversarial_loss(D(x_fake, domain).float(), True)
            g_sty = (E(x_fake).float() - s1.float()).abs().mean()
            if lam_ds > 0:
                with torch.no_grad():
                    x_fake2 = G.render(x_ctrl, h, M(fp, z2))
                g_ds = (x_fake.float() - x_fake2.float()).abs().mean()
            else:
                g_ds = torch.zeros((), device=device)
            x_rec = G(x_fake, E(x_ctrl))
        g_cyc = (x_rec.float() - x_ctrl).abs().mean()
        g_loss = (
            float(c["lambda_adv"]) * g_adv
            + float(c["lambda_sty"]) * g_sty
            - lam_ds * g_ds
            + float(c["lambda_cyc"]) * g_cyc
        )
        for name in G_STEP_MODULES:
            self.opts[name].zero_grad(set_to_none=True)
        g_loss.backward()
        for name in G_STEP_MODULES:
            self.opts[name].step()
        D.requires_grad_(True)

        terms = {"d_loss": d_loss, "d_real": d_real, "d_fake": d_fake, "d_r1": d_r1}
        terms |= {"g_loss": g_loss, "g_adv": g_adv, "g_sty": g_sty, "g_ds": g_ds, "g_cyc": g_cyc}
        return {k: float(v.detach()) for k, v in terms.items()} | {"lambda_ds": lam_ds}


# --------------------------------------------------------------------------------------- generator
class IMPA(TrainedGenerator):
    """The IMPA reference generator (see the module docstring)."""

    name = "impa"
    version = "1"
    role = "model (GAN, StarGAN v2 style)"
    summary = (
        "model: StarGAN-v2-style GAN translating the control, styled by fingerprint + noise "
        "(IMPA, Palma et al. 2025); needs --checkpoint from `cellbench train impa` or the "
        "authors' released <epoch>_nets.ckpt"
    )
    presets: ClassVar[dict[str, dict]] = {"paper": _PAPER, "cpu-small": _CPU_SMALL}
    config_bounds = BOUNDS

    def __init__(
        self,
        dataset: BBBC021Dataset,
        config: dict,
        generator: IMPAGenerator,
        mapping: MappingNetwork,
        device: str | torch.device | None = None,
    ):
        self.dataset = dataset
        self.config = config
        self.device = resolve_device(device)
        self.generator = generator.to(self.device).eval()
        self.mapping = mapping.to(self.device).eval()

    @classmethod
    def trainable(cls, dataset: BBBC021Dataset, config: dict) -> IMPATrainable:
        """A fresh trainable IMPA for the training split ``config['split']`` of ``dataset``."""
        _check_fingerprint_dim(dataset, config, None)
        return IMPATrainable(
            config, domain_names(dataset, config["split"]), control_fingerprint(dataset)
        )

    @classmethod
    def load(
        cls,
        dataset: BBBC021Dataset,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> IMPA:
        """A ``cellbench train impa`` run, or the authors' released ``<epoch>_nets.ckpt``.

        The authors' file (or a folder holding it: the latest epoch) is read by
        :mod:`cellbench_baselines.impa_release`; anything else goes to the cellbench run loader.
        """
        from cellbench.io import sha256_file
        from cellbench_baselines.impa_release import load_release, release_nets_file

        nets_file = None if checkpoint is None else release_nets_file(checkpoint)
        if nets_file is None:
            return super().load(dataset, checkpoint, device)  # type: ignore[return-value]
        rel = load_release(nets_file, int(dataset.fingerprints.shape[1]), dict(_PAPER))
        gen = cls(dataset, rel.config, rel.generator, rel.mapping, device)
        gen.checkpoint_path = nets_file
        gen.checkpoint_sha256 = sha256_file(nets_file)
        return gen

    @classmethod
    def from_checkpoint(cls, dataset: BBBC021Dataset, run: LoadedRun, device: torch.device) -> IMPA:
        """The EMA generator and mapping network of a training run's checkpoint."""
        config, gen, mapping = networks_from_run(run)
        _check_fingerprint_dim(dataset, config, run.path / CONFIG_FILE)
        return cls(dataset, config, gen, mapping, device)

    def n_parameters(self) -> int:
        """Parameters used at generation time (generator + mapping network)."""
        return sum(p.numel() for m in (self.generator, self.mapping) for p in m.parameters())

    @torch.no_grad()
    def translate(
        self, controls: torch.Tensor, fingerprints: torch.Tensor, seed: int
    ) -> torch.Tensor:
        """[-1, 1] controls (B, 3, 96, 96) + fingerprints (B, 1024) -> translations in [-1, 1]."""
        rng = torch.Generator().manual_seed(int(seed))
        z = torch.randn(controls.shape[0], self.mapping.z_dim, generator=rng).to(self.device)
        s = self.mapping(fingerprints.to(self.device, torch.float32), z)
        return self.generator(controls.to(self.device), s).clamp(-1.0, 1.0)

    def generate(
        self, controls: np.ndarray, compounds: list[str], doses: list[float], seed: int
    ) -> np.ndarray:
        fp = fingerprint_batch(self.dataset, compounds)
        out = self.translate(to_model_range(controls), fp, seed)
        return from_model_range(out)


# --------------------------------------------------------------------------------------- checkpoints
def networks_from_run(run: LoadedRun) -> tuple[dict, IMPAGenerator, MappingNetwork]:
    """(config, generator, mapping network) with the EMA weights of a checkpoint of IMPA.

    A config that does not describe an IMPA network, or weights that do not fit it, raise a
    :class:`CellbenchError` naming the file.
    """
    config = run.config
    config_path = run.path / CONFIG_FILE
    missing = [k for k in (*ARCH_KEYS, "mapping_hidden", "fingerprint_dim") if k not in config]
    if missing:
        raise CellbenchError(
            f"checkpoint config lacks the IMPA keys {missing}",
            path=config_path,
            fix="pass a run folder made by `cellbench train impa`",
        )
    try:
        gen, mapping = _inference_networks(config)
    except (TypeError, ValueError) as exc:
        raise CellbenchError(
            f"checkpoint config does not describe an IMPA network ({exc})",
            path=config_path,
            fix="pass a run folder made by `cellbench train impa`",
        ) from None
    weights_path = run.path / MODEL_FILE
    for name, net in (("generator", gen), ("mapping", mapping)):
        if name not in run.weights:
            raise CellbenchError(
                f"no {name} weights in the checkpoint",
                path=weights_path,
                fix="pass a run folder made by `cellbench train impa`",
            )
        load_module_state(net, run.weights[name], weights_path)
    return config, gen, mapping


def _inference_networks(config: dict) -> tuple[IMPAGenerator, MappingNetwork]:
    gen = IMPAGenerator(
        dim_in=int(config["dim_in"]),
        max_conv_dim=int(config["max_conv_dim"]),
        style_dim=int(config["style_dim"]),
        n_bottleneck=int(config["n_bottleneck"]),
        residual=bool(config.get("residual_output", False)),
    )
    mapping = MappingNetwork(
        fp_dim=int(config["fingerprint_dim"]),
        style_dim=int(config["style_dim"]),
        z_dim=int(config["z_dim"]),
        layers=int(config["mapping_layers"]),
        hidden=int(config["mapping_hidden"]),
    )
    return gen, mapping
