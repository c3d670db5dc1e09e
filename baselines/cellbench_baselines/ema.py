"""Exponential moving average (EMA) of a network's weights, shared by every trainable generator.

``ema = d * ema + (1 - d) * weights`` after every optimiser step. With ``warmup`` the decay used
at update ``n`` is ``min(decay, (1 + n) / (10 + n))`` so that a short run (the CPU presets) is not
dominated by the random initial weights; the ``paper`` presets switch the warm-up off and use the
published constant decay. Buffers (none in the UNets here) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An EMA copy of ``module`` (kept on the same device, in eval mode, without gradients).

    Args:
        module: the network being trained.
        decay: the EMA decay (e.g. 0.999).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update ``n``.
    """

    def __init__(self, module: nn.Module, decay: float, *, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(module).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards ``module``'s current weights."""
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in module.named_parameters():
            ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in module.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, as the module's own state dict."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore the averaged weights and the update counter (strict key check)."""
        self.module.load_state_dict(state, strict=True)
        self.num_updates = int(num_updates)
