"""Samplers shared by the reference generators: ODE solvers for flow matching, and DDIM.

**Flow matching (CellFlux).** The model predicts a velocity ``v(x, t)`` on the path
``x_t = (1 - t) x0 + t x1`` from the (noised) control ``x0`` at ``t = 0`` to the treated image at
``t = 1``. :func:`solve_ode` integrates it with Euler or Heun steps on a time grid.

**The EDM time grid, mapped to flow time.** Karras et al. (2022) space the noise levels of ``n``
steps as ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
``i = 0 .. n-1`` (``sigma_min = 0.002``, ``sigma_max = 80``, ``rho = 7``), followed by
``sigma_n = 0``. cellbench maps each level to flow time with ``t = 1 / (1 + sigma)`` (the same
map as CellFlux's training-time distribution: ``sigma = exp(N(-1.2, 1.2^2))``,
``t = 1 / (1 + sigma)``), so ``sigma = 0 -> t = 1`` (the data end) and large sigma -> t near 0. The
first point (``t = 1/81``) is moved to exactly ``t = 0`` so integration starts at the source
sample. The grid has ``n + 1`` points and ``n`` steps; steps are small near ``t = 1``, where the
image detail is formed. (This mapping is cellbench's documented choice; the CellFlux paper names
the grid but not the map.)

**Classifier-free guidance**: ``v = (1 + w) v_cond - w v_uncond`` (:func:`cfg_combine`).

**DDIM (PhenDiff).** A discrete noise schedule ``alpha_bar_k`` (linear betas), deterministic
(eta = 0) DDIM steps between timesteps, and DDIM inversion: the same update run from low to high
noise, which maps an image to the latent that DDIM sampling maps back to it (up to discretisation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Eps = Callable[[torch.Tensor, int], torch.Tensor]


# ------------------------------------------------------------------------------ flow matching
def edm_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """The EDM noise levels of ``n`` steps: ``n`` decreasing sigmas then a final 0 (float64)."""
    if n < 1:
        raise ValueError("need at least one step")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / (n - 1) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + frac * (lo - hi)) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def edm_time_grid(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """``n + 1`` increasing flow times from 0 to 1: ``t = 1 / (1 + sigma)``, first point set to 0."""
    t = 1.0 / (1.0 + edm_sigmas(n, sigma_min, sigma_max, rho))
    t[0] = 0.0
    return t


def uniform_time_grid(n: int) -> torch.Tensor:
    """``n + 1`` evenly spaced times from 0 to 1 (float64)."""
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)


def lognormal_times(
    batch: int, mean: float = -1.2, std: float = 1.2, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training times ``t = 1 / (1 + sigma)``, ``sigma = exp(N(mean, std^2))`` (float32, (B,))."""
    sigma = torch.exp(mean + std * torch.randn(batch, generator=generator))
    return 1.0 / (1.0 + sigma)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: ``(1 + w) v_cond - w v_uncond``."""
    return (1.0 + w) * v_cond - w * v_uncond


def euler_step(f: Velocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One explicit Euler step of dx/dt = f(x, t) from ``t`` to ``t_next``."""
    return x + (t_next - t) * f(x, _time(x, t))


def heun_step(f: Velocity, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Heun step (explicit trapezoid): Euler predictor, then the mean of both slopes."""
    h = t_next - t
    d0 = f(x, _time(x, t))
    x_pred = x + h * d0
    d1 = f(x_pred, _time(x, t_next))
    return x + 0.5 * h * (d0 + d1)


def solve_ode(
    f: Velocity, x0: torch.Tensor, grid: torch.Tensor, method: str = "heun"
) -> torch.Tensor:
    """Integrate dx/dt = f(x, t) from ``grid[0]`` to ``grid[-1]`` with ``len(grid) - 1`` steps."""
    step = {"heun": heun_step, "euler": euler_step}.get(method)
    if step is None:
        raise ValueError(f"unknown ODE method {method!r} (heun, euler)")
    x = x0
    ts = [float(v) for v in grid]
    for t, t_next in itertools.pairwise(ts):
        x = step(f, x, t, t_next)
    return x


def _time(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)


# ------------------------------------------------------------------------------ DDIM
def linear_alpha_bars(
    num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """``alpha_bar_k = prod_{j<=k} (1 - beta_j)`` for linearly spaced betas (float64, (T,))."""
    betas = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(num_steps: int, num_train_steps: int = 1000) -> list[int]:
    """``num_steps`` evenly spaced training timesteps in increasing order, starting at 0."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in [1, {num_train_steps}]")
    stride = num_train_steps // num_steps
    return list(range(0, stride * num_steps, stride))


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_bar: float, alpha_bar_next: float
) -> torch.Tensor:
    """Deterministic DDIM update from noise level ``alpha_bar`` to ``alpha_bar_next``.

    ``x0_hat = (x - sqrt(1 - a) eps) / sqrt(a)``; ``x_next = sqrt(a') x0_hat + sqrt(1 - a') eps``.
    Works in both directions (sampling: a' > a; inversion: a' < a).
    """
    a, a_next = float(alpha_bar), float(alpha_bar_next)
    x0_hat = (x - (1.0 - a) ** 0.5 * eps) / a**0.5
    return a_next**0.5 * x0_hat + (1.0 - a_next) ** 0.5 * eps


def ddim_sample(
    eps_fn: Eps, x_T: torch.Tensor, alpha_bars: torch.Tensor, timesteps: list[int]
) -> torch.Tensor:
    """DDIM sampling from the latent ``x_T`` (at ``timesteps[-1]``) down to a clean image."""
    x = x_T
    for i in reversed(range(len(timesteps))):
        k = timesteps[i]
        a = float(alpha_bars[k])
        a_next = float(alpha_bars[timesteps[i - 1]]) if i > 0 else 1.0
        x = ddim_step(x, eps_fn(x, k), a, a_next)
    return x


def ddim_invert(
    eps_fn: Eps, x0: torch.Tensor, alpha_bars: torch.Tensor, timesteps: list[int]
) -> torch.Tensor:
    """DDIM inversion: run the deterministic update from the clean image up to ``timesteps[-1]``.

    Step ``i`` goes from level ``timesteps[i - 1]`` (the clean image for ``i = 0``) to
    ``timesteps[i]``, with the noise predicted at the current level: the mirror image of
    :func:`ddim_sample`, which evaluates at ``timesteps[i]`` to go down to ``timesteps[i - 1]``.
    """
    x = x0
    for i, k in enumerate(timesteps):
        a = float(alpha_bars[timesteps[i - 1]]) if i > 0 else 1.0
        k_eval = timesteps[i - 1] if i > 0 else 0
        x = ddim_step(x, eps_fn(x, k_eval), a, float(alpha_bars[k]))
    return x
