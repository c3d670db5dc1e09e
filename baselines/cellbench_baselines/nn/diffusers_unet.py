"""A class-conditional UNet with the architecture and parameter names of diffusers' ``UNet2DModel``.

PhenDiff (Bourou et al., MICCAI 2024) denoises with a ``UNet2DModel`` of the ``diffusers`` library
(their ``CustomCondUNet2DModel``: the same network whose forward also accepts a class embedding
vector), saved by ``save_pretrained`` as ``unet/config.json`` plus ``unet/diffusion_pytorch_model
.bin`` (or ``.safetensors``). This module is cellbench's own implementation of that architecture,
written from the library's documented configuration keys, so that such a folder loads without
installing ``diffusers``: the module tree, and therefore every ``state_dict`` key
(``conv_in``, ``time_embedding.linear_1``, ``class_embedding``, ``down_blocks.i.resnets.j.norm1``,
``down_blocks.i.attentions.j.to_q``, ``down_blocks.i.downsamplers.0.conv``, ``mid_block``,
``up_blocks.i.upsamplers.0.conv``, ``conv_norm_out``, ``conv_out``), is the library's.

Supported configuration: ``DownBlock2D`` / ``AttnDownBlock2D`` and ``UpBlock2D`` / ``AttnUpBlock2D``
blocks, positional (sinusoidal) time embedding, ``resnet_time_scale_shift="default"`` (the time
embedding is added between the two convolutions of each residual block), SiLU, an optional class
embedding table (``num_class_embeds``) and a mid block with attention. Anything else is a
``ValueError`` naming the key. Attention of the deprecated-block kind diffusers builds in these
blocks: a group norm, one linear layer each for query, key and value, ``heads = channels //
attention_head_dim``, softmax scaled by ``attention_head_dim ** -0.5``, an output linear layer and
a residual connection; older saves name those layers ``query``/``key``/``value``/``proj_attn``
(:func:`rename_legacy_attention` maps them).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cellbench_baselines.config import BOOL, Bound, Float, Int, size_problem

#: the ``UNet2DModel`` configuration keys this network reads, with the library's defaults
CONFIG_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1.0,
    "downsample_padding": 1,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}

#: the bounds of the numbers of a ``UNet2DModel`` config (cellbench_baselines.config.check_config;
#: the block types and fixed settings are checked by :func:`check_config` here)
DIFFUSERS_UNET_BOUNDS: dict[str, Bound] = {
    "sample_size": Bound("int", 8, 1024, nullable=True),
    "in_channels": Int(1, 64),
    "out_channels": Int(1, 64),
    "center_input_sample": BOOL,
    "time_embedding_type": Bound("str", max_len=64),
    "freq_shift": Float(-1000.0, 1000.0),
    "flip_sin_to_cos": BOOL,
    "down_block_types": Bound("str_list", min_len=1, max_len=8),
    "up_block_types": Bound("str_list", min_len=1, max_len=8),
    "block_out_channels": Bound("int_list", 1, 8192, min_len=1, max_len=8),
    "layers_per_block": Int(1, 32),
    "mid_block_scale_factor": Float(0.0, 1000.0),
    "downsample_padding": Int(0, 8),
    "act_fn": Bound("str", max_len=64),
    "attention_head_dim": Bound("int", 1, 4096, nullable=True),
    "norm_num_groups": Int(1, 1024),
    "norm_eps": Float(0.0, 1.0, lo_open=True),
    "resnet_time_scale_shift": Bound("str", max_len=64),
    "add_attention": BOOL,
    "class_embed_type": Bound("str", max_len=64, nullable=True),
    "num_class_embeds": Bound("int", 0, 100_000, nullable=True),
}


def diffusers_unet_size_problem(cfg: dict) -> str | None:
    """What is wrong with the size of the network ``cfg`` describes (None if it may be built)."""
    return size_problem(lambda: DiffusersUNet2D(cfg))


#: a config of the diffusers UNet: its keys' bounds, then its size counted without allocating
DIFFUSERS_UNET = Bound("table", table=DIFFUSERS_UNET_BOUNDS, check=diffusers_unet_size_problem)

#: keys of a saved config that carry no architecture (the library's bookkeeping)
_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}


def sinusoidal_embedding(
    timesteps: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float
) -> torch.Tensor:
    """``[sin, cos]`` (or ``[cos, sin]``) of ``t * 10000^(-i / (dim/2 - freq_shift))``, float32."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_1`` -> SiLU -> ``linear_2``."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, conv; + projected time embedding; GroupNorm, SiLU, dropout, conv; + skip."""

    def __init__(
        self, c_in: int, c_out: int, temb: int, groups: int, eps: float, scale: float = 1.0
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.output_scale_factor = scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (skip + h) / self.output_scale_factor


class Attention(nn.Module):
    """Spatial self-attention with a group norm in front and a residual connection."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"attention_head_dim {head_dim} does not divide {channels} channels")
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])
        self.rescale_output_factor = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.group_norm(x).view(b, c, hgt * wid).transpose(1, 2)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.to_q(h)), heads(self.to_k(h)), heads(self.to_v(h))
        )
        out = out.transpose(1, 2).reshape(b, -1, c)
        out = self.to_out[1](self.to_out[0](out))
        out = out.transpose(1, 2).reshape(b, c, hgt, wid)
        return (out + x) / self.rescale_output_factor


class Downsample(nn.Module):
    """A 3x3 convolution of stride 2 (padding ``padding``; 0 pads right and bottom by one)."""

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """``layers`` residual blocks (each followed by attention in ``AttnDownBlock2D``), then down."""

    def __init__(self, c_in: int, c_out: int, temb: int, cfg: dict, *, attn: bool, down: bool):
        super().__init__()
        g, eps = int(cfg["norm_num_groups"]), float(cfg["norm_eps"])
        n = int(cfg["layers_per_block"])
        self.resnets = nn.ModuleList(
            ResnetBlock(c_in if i == 0 else c_out, c_out, temb, g, eps) for i in range(n)
        )
        if attn:
            self.attentions = nn.ModuleList(
                Attention(c_out, _head_dim(cfg, c_out), g, eps) for _ in range(n)
            )
        else:
            self.attentions = None
        if down:
            self.downsamplers = nn.ModuleList([Downsample(c_out, int(cfg["downsample_padding"]))])
        else:
            self.downsamplers = None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, list]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """``layers + 1`` residual blocks on [x, skip] (attention after each in ``AttnUpBlock2D``), up."""

    def __init__(
        self,
        c_prev: int,
        c_out: int,
        c_skip_last: int,
        temb: int,
        cfg: dict,
        *,
        attn: bool,
        up: bool,
    ):
        super().__init__()
        g, eps = int(cfg["norm_num_groups"]), float(cfg["norm_eps"])
        n = int(cfg["layers_per_block"]) + 1
        resnets = []
        for i in range(n):
            skip = c_skip_last if i == n - 1 else c_out
            resnets.append(ResnetBlock((c_prev if i == 0 else c_out) + skip, c_out, temb, g, eps))
        self.resnets = nn.ModuleList(resnets)
        if attn:
            self.attentions = nn.ModuleList(
                Attention(c_out, _head_dim(cfg, c_out), g, eps) for _ in range(n)
            )
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample(c_out)]) if up else None

    def forward(self, x: torch.Tensor, skips: list, temb: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """Residual block, attention (unless ``add_attention`` is false), residual block."""

    def __init__(self, c: int, temb: int, cfg: dict):
        super().__init__()
        g, eps = int(cfg["norm_num_groups"]), float(cfg["norm_eps"])
        scale = float(cfg["mid_block_scale_factor"])
        self.resnets = nn.ModuleList(ResnetBlock(c, c, temb, g, eps, scale) for _ in range(2))
        if cfg["add_attention"]:
            self.attentions = nn.ModuleList([Attention(c, _head_dim(cfg, c), g, eps, scale)])
        else:
            self.attentions = None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, temb)


def _head_dim(cfg: dict, channels: int) -> int:
    return channels if cfg["attention_head_dim"] is None else int(cfg["attention_head_dim"])


def check_config(config: dict) -> dict:
    """The full configuration (defaults filled in); an unsupported or unknown key: ValueError."""
    unknown = set(config) - set(CONFIG_DEFAULTS) - _IGNORED
    if unknown:
        raise ValueError(f"unsupported UNet2DModel config keys {sorted(unknown)}")
    cfg = {**CONFIG_DEFAULTS, **{k: v for k, v in config.items() if k not in _IGNORED}}
    fixed = {
        "time_embedding_type": "positional",
        "act_fn": "silu",
        "resnet_time_scale_shift": "default",
        "class_embed_type": None,
    }
    for key, want in fixed.items():
        if cfg[key] != want:
            raise ValueError(f"{key}={cfg[key]!r} is not supported (only {want!r})")
    levels = len(cfg["block_out_channels"])
    if not (len(cfg["down_block_types"]) == len(cfg["up_block_types"]) == levels) or levels < 1:
        raise ValueError("down_block_types, up_block_types and block_out_channels differ in length")
    for kind in (*cfg["down_block_types"], *cfg["up_block_types"]):
        if kind not in ("DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"):
            raise ValueError(f"block type {kind!r} is not supported")
    return cfg


class DiffusersUNet2D(nn.Module):
    """``UNet2DModel`` of a diffusers config (see the module docstring); its keys are diffusers'."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = check_config(config)
        self.config = cfg
        chans = [int(c) for c in cfg["block_out_channels"]]
        g, eps = int(cfg["norm_num_groups"]), float(cfg["norm_eps"])
        temb = chans[0] * 4
        self.time_embed_dim = temb
        self.conv_in = nn.Conv2d(int(cfg["in_channels"]), chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        n_cls = cfg["num_class_embeds"]
        self.class_embedding = nn.Embedding(int(n_cls), temb) if n_cls is not None else None
        self.down_blocks = nn.ModuleList()
        c_out = chans[0]
        for i, kind in enumerate(cfg["down_block_types"]):
            c_in, c_out = c_out, chans[i]
            self.down_blocks.append(
                DownBlock(
                    c_in, c_out, temb, cfg, attn=kind.startswith("Attn"), down=i < len(chans) - 1
                )
            )
        self.mid_block = MidBlock(chans[-1], temb, cfg)
        rev = list(reversed(chans))
        self.up_blocks = nn.ModuleList()
        c_out = rev[0]
        for i, kind in enumerate(cfg["up_block_types"]):
            c_prev, c_out = c_out, rev[i]
            c_skip = rev[min(i + 1, len(chans) - 1)]
            self.up_blocks.append(
                UpBlock(
                    c_prev,
                    c_out,
                    c_skip,
                    temb,
                    cfg,
                    attn=kind.startswith("Attn"),
                    up=i < len(chans) - 1,
                )
            )
        self.conv_norm_out = nn.GroupNorm(g, chans[0], eps=eps)
        self.conv_out = nn.Conv2d(chans[0], int(cfg["out_channels"]), 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        class_labels: torch.Tensor | None = None,
        class_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noisy ``sample`` (B, C, H, W) at integer ``timestep`` (scalar or (B,)) -> model output.

        ``class_labels`` index the class table; ``class_emb`` replaces the looked-up vector (PhenDiff
        passes zeros for its unconditional branch). A model with a class table needs one of them.
        """
        x = 2 * sample - 1.0 if self.config["center_input_sample"] else sample
        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim == 0:
            t = t[None]
        t = t * torch.ones(x.shape[0], dtype=t.dtype, device=x.device)
        t_emb = sinusoidal_embedding(
            t,
            self.time_embedding.linear_1.in_features,
            flip_sin_to_cos=bool(self.config["flip_sin_to_cos"]),
            freq_shift=float(self.config["freq_shift"]),
        )
        emb = self.time_embedding(t_emb.to(x.dtype))
        if self.class_embedding is not None:
            if class_emb is None:
                if class_labels is None:
                    raise ValueError("this UNet is class-conditional: pass class_labels")
                class_emb = self.class_embedding(class_labels)
            emb = emb + class_emb.to(emb.dtype)
        h = self.conv_in(x)
        skips: list[torch.Tensor] = [h]
        for block in self.down_blocks:
            h, s = block(h, emb)
            skips += s
        h = self.mid_block(h, emb)
        for block in self.up_blocks:
            h = block(h, skips, emb)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_legacy_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Attention weights saved under the old names (``query``, ``key``, ``value``, ``proj_attn``)."""
    pattern = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[f"{m.group(1)}.{_LEGACY[m.group(2)]}.{m.group(3)}" if m else k] = v
    return out
