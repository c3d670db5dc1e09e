"""Building blocks of the ADM-style UNet: timestep embedding, FiLM residual block, attention.

Written for cellbench from the published description of the ADM UNet (Dhariwal and Nichol 2021):
residual blocks whose second normalisation is modulated by a scale and shift predicted from the
time(+condition) embedding ("scale-shift norm", a FiLM layer), self-attention at chosen
resolutions, and down/upsampling either learned (a strided 3x3 convolution; nearest-neighbour
upsampling followed by a 3x3 convolution) or parameter-free (2x2 average pooling;
nearest-neighbour upsampling alone: the published CellFlux network, ``conv_resample`` off).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of a (B,) tensor of (possibly fractional) timesteps -> (B, dim).

    Half the features are cosines and half sines of ``t * f_k`` with frequencies ``f_k`` spaced
    geometrically from 1 down to ``1 / max_period``; an odd ``dim`` gets one zero column.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int, max_groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels, eps=eps)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block: norm-SiLU-conv, FiLM from the embedding, norm-SiLU-dropout-conv, + skip.

    The embedding gives a per-channel ``scale`` and ``shift`` applied after the second
    normalisation: ``h = norm(h) * (1 + scale) + shift``. The last conv starts at zero, so every
    block starts as the identity.
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, norm_eps: float = 1e-6
    ):
        super().__init__()
        self.norm1 = group_norm(in_ch, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection.

    The heads are ``channels // head_channels`` (at least one), or exactly ``heads`` when that is
    positive (the published CellFlux network: one head of all channels). The 1x1 ``qkv``
    convolution's output is split into queries, keys and values first, then each into heads.

    ``null_key=True`` adds one fixed all-zero key and value to every head: each query may put
    attention weight on "nothing" (its logit is always 0), which is softmax with one added to the
    denominator. It adds no parameters, so weights of either kind load into both. Measured in
    cellbench (docs/generators.md): the CPU CellFlux without it piled attention on one corner
    pixel and drew a noise patch there; a run with it from the start drew no such patch.
    """

    def __init__(
        self,
        channels: int,
        head_channels: int = 64,
        null_key: bool = False,
        *,
        heads: int = 0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.heads = int(heads) if heads > 0 else max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.null_key = bool(null_key)
        self.norm = group_norm(channels, eps=norm_eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (b, heads, hw, d); keys and values (b, heads, hw [+ 1 null], d)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        if self.null_key:
            k, v = (F.pad(z, (0, 0, 0, 1)) for z in (k, v))  # one zero token at the end
        return q, k, v

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax weights (b, heads, queries, keys); with ``null_key`` the last key is null."""
        q, k, _ = self._qkv(x)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(*self._qkv(x))
        return x + self.proj(out.transpose(-1, -2).reshape(x.shape))


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 convolution, or (``conv=False``) 2x2 average pooling."""

    def __init__(self, channels: int, conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if conv else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), then a 3x3 convolution unless ``conv=False``."""

    def __init__(self, channels: int, conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if conv else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x
