"""The ADM-style UNet used by CellFlux and PhenDiff.

Conditioning enters through one embedding vector per image: the sinusoidal time embedding
through a 2-layer MLP, plus (optionally) a linear projection of a condition vector (CellFlux: the
compound's 1024-d fingerprint) and/or a learned class embedding (PhenDiff). Every residual block
turns that vector into a FiLM scale and shift. Passing ``cond=None`` / ``labels=None`` leaves the
corresponding term out (the unconditional model used by classifier-free guidance).

The published CellFlux network (the authors' BBBC021 configuration) is :data:`PUBLISHED_CELLFLUX`:
``base_channels=128, channel_mult=[2, 2, 2], num_res_blocks=4``, attention at 48x48 with one head,
``dropout=0.3``, a 1024-d condition, parameter-free down/upsampling (``resample="pool"``),
GroupNorm eps 1e-5 and the time embedded as given in [0, 1] (``time_scale=1``): 56,201,219
parameters at 96x96 (the count of the authors' own UNet built with that configuration; see
docs/generators.md, "The authors' checkpoint"). The defaults of :data:`UNET_DEFAULTS` differ from
it in the learned (strided-convolution) resampling, 64-channel heads, eps 1e-6 and
``time_scale=1000``: cellbench's earlier choices, kept for the CPU presets and their checkpoints.
``patch_size`` > 1 (a cellbench addition for the CPU presets) folds p x p pixel blocks into
channels first, so the UNet runs at 1/p of the resolution (``attention_resolutions`` then count in
folded pixels). ``null_attention`` (another cellbench addition, off in the published
configuration) lets every attention layer attend to a zero key and value as well as to the pixels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cellbench_baselines.config import BOOL, Bound, Choice, Float, Int, size_problem
from cellbench_baselines.nn.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
)

#: every key of a UNet config (a model's config holds them under "unet")
UNET_DEFAULTS: dict[str, Any] = {
    "image_size": 96,
    "in_channels": 3,
    "out_channels": 3,
    "base_channels": 128,
    "channel_mult": [2, 2, 2],
    "num_res_blocks": 4,
    "attention_resolutions": [48],
    "head_channels": 64,
    "dropout": 0.3,
    "cond_dim": 0,  # size of a condition vector added (through a linear layer) to the embedding
    "num_classes": 0,  # size of a class embedding table added to the embedding
    "time_scale": 1000.0,  # t in [0, 1] is multiplied by this before the sinusoidal embedding
    "patch_size": 1,  # >1: pixel-unshuffle the input by this factor (and shuffle the output back)
    "null_attention": False,  # True: attention may attend to a zero key (see AttentionBlock)
    "resample": "conv",  # "conv": strided-conv down, upsample + conv; "pool": avg-pool / nearest
    "attention_heads": 0,  # >0: exactly this many heads (else channels // head_channels)
    "norm_eps": 1e-6,  # GroupNorm epsilon
}

#: the published CellFlux UNet for BBBC021 (3 channels, 96x96, 1024-d Morgan fingerprints)
PUBLISHED_CELLFLUX: dict[str, Any] = {
    **UNET_DEFAULTS,
    "base_channels": 128,
    "channel_mult": [2, 2, 2],
    "num_res_blocks": 4,
    "attention_resolutions": [48],
    "attention_heads": 1,
    "dropout": 0.3,
    "cond_dim": 1024,
    "time_scale": 1.0,
    "resample": "pool",
    "norm_eps": 1e-5,
}
#: its parameter count (the authors' UNetModel built with their "bbbc021" configuration)
PUBLISHED_CELLFLUX_PARAMETERS = 56_201_219


def unet_size_problem(cfg: dict) -> str | None:
    """What is wrong with the size of the UNet ``cfg`` describes (None if it may be built):
    see :func:`cellbench_baselines.config.size_problem`."""
    return size_problem(lambda: unet_from_config(cfg))


def _unet_bounds() -> dict[str, Bound]:
    return {
        "image_size": Int(8, 1024),
        "in_channels": Int(1, 64),
        "out_channels": Int(1, 64),
        "base_channels": Int(1, 2048),
        "channel_mult": Bound("int_list", 1, 16, min_len=1, max_len=8),
        "num_res_blocks": Int(1, 32),
        "attention_resolutions": Bound("int_list", 1, 1024, min_len=0, max_len=16),
        "head_channels": Int(1, 4096),
        "dropout": Float(0.0, 1.0, hi_open=True),
        "cond_dim": Int(0, 16_384),
        "num_classes": Int(0, 100_000),
        "time_scale": Float(0.0, 1e6, lo_open=True),
        "patch_size": Int(1, 16),
        "null_attention": BOOL,
        "resample": Choice("conv", "pool"),
        "attention_heads": Int(0, 256),
        "norm_eps": Float(0.0, 1.0, lo_open=True),
    }


#: the bounds of every key of :data:`UNET_DEFAULTS` (see cellbench_baselines.config.check_config)
UNET_BOUNDS = _unet_bounds()


class _Seq(nn.ModuleList):
    """A list of layers applied in turn; each receives the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    """ADM-style UNet: (x, t, cond, labels) -> a tensor shaped like x (velocity or noise)."""

    def __init__(
        self,
        *,
        image_size: int = 96,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 128,
        channel_mult: list[int] | tuple[int, ...] = (2, 2, 2),
        num_res_blocks: int = 4,
        attention_resolutions: list[int] | tuple[int, ...] = (48,),
        head_channels: int = 64,
        dropout: float = 0.3,
        cond_dim: int = 0,
        num_classes: int = 0,
        time_scale: float = 1000.0,
        patch_size: int = 1,
        null_attention: bool = False,
        resample: str = "conv",
        attention_heads: int = 0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if resample not in ("conv", "pool"):
            raise ValueError(f"resample must be 'conv' or 'pool', not {resample!r}")
        learned = resample == "conv"

        def res_block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, norm_eps)

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(
                ch, head_channels, null_attention, heads=int(attention_heads), norm_eps=norm_eps
            )

        levels = len(channel_mult)
        self.patch_size = int(patch_size)
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch {patch_size}")
        image_size //= self.patch_size
        if levels < 1 or image_size % (2 ** (levels - 1)):
            raise ValueError(f"image size {image_size} is not divisible by 2^{levels - 1}")
        self.base_channels = base_channels
        self.time_scale = float(time_scale)
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        self.class_emb = nn.Embedding(num_classes, emb_dim) if num_classes else None
        attn = {int(r) for r in attention_resolutions}

        ch = base_channels * channel_mult[0]
        self.input_conv = nn.Conv2d(in_channels * self.patch_size**2, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_chs = [ch]
        res = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out_ch = base_channels * mult
                block = [res_block(ch, out_ch)]
                if res in attn:
                    block.append(attention(out_ch))
                self.down.append(_Seq(block))
                ch = out_ch
                skip_chs.append(ch)
            if level < levels - 1:
                self.down.append(_Seq([Downsample(ch, learned)]))
                skip_chs.append(ch)
                res //= 2
        self.middle = _Seq([res_block(ch, ch), attention(ch), res_block(ch, ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            mult = channel_mult[level]
            for i in range(num_res_blocks + 1):
                out_ch = base_channels * mult
                block = [res_block(ch + skip_chs.pop(), out_ch)]
                if res in attn:
                    block.append(attention(out_ch))
                ch = out_ch
                if level > 0 and i == num_res_blocks:
                    block.append(Upsample(ch, learned))
                    res *= 2
                self.up.append(_Seq(block))
        self.out_norm = group_norm(ch, eps=norm_eps)
        self.out_conv = nn.Conv2d(ch, out_channels * self.patch_size**2, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def embedding(
        self, t: torch.Tensor, cond: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The per-image embedding: time MLP + condition projection + class embedding."""
        emb = self.time_mlp(timestep_embedding(t * self.time_scale, self.base_channels))
        if cond is not None:
            if self.cond_proj is None:
                raise ValueError("this UNet was built without a condition input (cond_dim=0)")
            emb = emb + self.cond_proj(cond.to(emb.dtype))
        if labels is not None:
            if self.class_emb is None:
                raise ValueError("this UNet was built without classes (num_classes=0)")
            emb = emb + self.class_emb(labels)
        return emb

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W), t (B,) or scalar in [0, 1] -> (B, out_channels, H, W)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.embedding(t, cond, labels)
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)
        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block[0](torch.cat([h, skips.pop()], dim=1), emb)
            for layer in block[1:]:
                h = layer(h, emb)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out


def unet_from_config(cfg: dict, **extra: Any) -> UNet:
    """A UNet from a config dict (keys of :data:`UNET_DEFAULTS`; missing keys take defaults)."""
    unknown = set(cfg) - set(UNET_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown UNet config keys {sorted(unknown)}")
    return UNet(**{**UNET_DEFAULTS, **cfg, **extra})
