"""Networks shared by the reference generators (the ADM-style UNet and its blocks)."""

from cellbench_baselines.nn.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    timestep_embedding,
)
from cellbench_baselines.nn.unet import UNet, unet_from_config

__all__ = [
    "AttentionBlock",
    "Downsample",
    "ResBlock",
    "UNet",
    "Upsample",
    "timestep_embedding",
    "unet_from_config",
]
