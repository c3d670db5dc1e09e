"""DiffusionNFT (Zheng et al. 2025) for a control -> treated flow: the pure pieces of the update.

Written for cellbench from the papers' descriptions (docs/cellfluxrl.md; no code copied). All
functions here are pure (no I/O, no global state) so they can be checked by hand in tests.

Notation: a rollout carries the noised control ``x0`` to an image ``x1``; it is re-noised on the
straight path ``x_t = (1 - t) x0 + t x1`` at a fresh ``t`` and the flow-matching target is
``u = x1 - x0``. With ``v_theta`` the trained velocity, ``v_old`` the old (sampling) policy's and
``v_ref`` the frozen base model's:

* advantage ``A = (r - mean of r over the sample's group) / (std of all rewards of the batch + eps)``
  (population std, ``eps = 1e-4``), clipped to ``[-clip, clip]`` (``clip = 5``);
* optimality weight ``w = A / (2 clip) + 0.5`` in ``[0, 1]`` (``A / 10 + 0.5`` for ``clip = 5``);
* implicit positive and negative policies ``v+ = (1 - beta) v_old + beta v_theta`` and
  ``v- = (1 + beta) v_old - beta v_theta`` (``beta``: the *NFT strength*);
* loss ``w ||v+ - u||^2 + (1 - w) ||v- - u||^2 + lambda ||v_theta - v_ref||^2`` (``lambda``: the
  *reference-penalty weight*), each squared norm a mean over the pixels of one sample, then a
  mean over samples. This is the velocity-space form; the reference code works on clean-image
  predictions with an adaptive per-sample weight (docs/cellfluxrl.md: either is accepted; cellbench uses this one).

  At ``v_theta = v_old`` the gradient with respect to ``v_theta`` is ``2 beta (2 w - 1) (v_old - u)``:
  samples better than their group (``w > 1/2``) pull the velocity towards their own path, worse
  ones push it away, and ``w = 1/2`` (zero advantage) contributes nothing;
* the old policy is a moving average of the trained one, updated after every optimiser step:
  ``old <- d old + (1 - d) theta`` with ``d = min(rate * max(step - flat, 0), max)``, rising from 0
  (fully on-policy) to 0.5 (the reference code's default schedule: rate 0.001, max 0.5).

A group whose rewards are all equal has zero advantage for every sample, so it adds no reward
signal; :func:`group_advantages` reports how many such groups a batch had, and the caller logs a
warning (a batch whose rewards are *all* equal gives a step moved only by the reference penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Advantages:
    """Per-sample advantages of one batch of rollouts and what is known about their groups."""

    #: clipped, normalised advantages (N,), float64
    advantages: torch.Tensor
    #: optimality weights ``w`` in [0, 1] (N,), float64
    weights: torch.Tensor
    #: groups whose rewards are all equal (they carry no reward signal)
    degenerate_groups: int
    #: number of groups
    n_groups: int
    #: population std of all rewards of the batch
    batch_std: float
    #: fraction of samples whose advantage was clipped
    clipped_fraction: float


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, *, clip: float = 5.0, eps: float = 1e-4
) -> Advantages:
    """Group-normalised, clipped advantages and the NFT weights ``w = A / (2 clip) + 0.5``.

    Args:
        rewards: (N,) rewards, finite.
        groups: (N,) integer group id of each sample (samples of one (control, compound) pair
            share an id).
        clip: advantages are clipped to ``[-clip, clip]``.
        eps: added to the batch standard deviation (so equal rewards give 0, not NaN).
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    g = torch.as_tensor(groups).flatten()
    if r.shape != g.shape:
        raise ValueError(f"rewards {tuple(r.shape)} and groups {tuple(g.shape)} differ in shape")
    if r.numel() == 0:
        raise ValueError("no rewards")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite (a NaN reward would poison the whole batch)")
    if clip <= 0 or eps <= 0:
        raise ValueError("clip and eps must be positive")
    ids, inverse = torch.unique(g, return_inverse=True)
    n_groups = int(ids.numel())
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, r)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(r))
    centred = r - (sums / counts)[inverse]
    degenerate = 0
    for i in range(n_groups):
        members = r[inverse == i]
        if bool((members == members[0]).all()):
            degenerate += 1
            centred[inverse == i] = 0.0  # exactly 0, not a rounding residue of the mean
    std = float(r.std(correction=0))
    raw = centred / (std + eps)
    adv = raw.clamp(-clip, clip)
    return Advantages(
        advantages=adv,
        weights=nft_weights(adv, clip=clip),
        degenerate_groups=degenerate,
        n_groups=n_groups,
        batch_std=std,
        clipped_fraction=float((raw.abs() > clip).to(torch.float64).mean()),
    )


def nft_weights(advantages: torch.Tensor, *, clip: float = 5.0) -> torch.Tensor:
    """``w = clamp(A / (2 clip) + 0.5, 0, 1)``: 0 for the worst clipped sample, 1 for the best."""
    a = torch.as_tensor(advantages, dtype=torch.float64)
    return (a / (2.0 * clip) + 0.5).clamp(0.0, 1.0)


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    v_ref: torch.Tensor | None,
    target: torch.Tensor,
    weights: torch.Tensor,
    *,
    beta: float = 1.0,
    ref_penalty: float = 1e-4,
    sample_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The NFT loss of one (micro-)batch; ``loss`` carries the gradient, the rest are detached.

    Args:
        v_theta: (N, ...) velocity of the trained network (with gradient).
        v_old: (N, ...) velocity of the old policy (treated as a constant).
        v_ref: (N, ...) velocity of the frozen base model, or None when ``ref_penalty`` is 0.
        target: (N, ...) ``x1 - x0``.
        weights: (N,) optimality weights ``w`` in [0, 1].
        beta: NFT strength (``v+ = (1 - beta) v_old + beta v_theta``).
        ref_penalty: weight ``lambda`` of ``||v_theta - v_ref||^2``.
        sample_weight: optional (N,) factor on every term of each sample (e.g. ``(1 - t)^2``,
            which turns the velocity errors of an image-predicting network into image errors).

    Returns a dict with ``loss`` (scalar, mean over samples), and detached scalars ``positive``
    (mean of ``w ||v+ - u||^2``), ``negative`` (mean of ``(1 - w) ||v- - u||^2``), ``ref`` (mean of
    ``||v_theta - v_ref||^2``, without ``lambda``) and ``old_deviation`` (mean of
    ``||v_theta - v_old||^2``); all but ``old_deviation`` include ``sample_weight``.
    """
    if v_theta.shape != v_old.shape or v_theta.shape != target.shape:
        raise ValueError("v_theta, v_old and target must have the same shape")
    n = v_theta.shape[0]
    w = torch.as_tensor(weights, device=v_theta.device).to(torch.float32).reshape(n)
    if bool(((w < 0) | (w > 1)).any()):
        raise ValueError("weights must lie in [0, 1]")
    dims = tuple(range(1, v_theta.ndim))
    vt = v_theta.float()
    vo = v_old.detach().float()
    u = target.detach().float()
    v_pos = (1.0 - beta) * vo + beta * vt
    v_neg = (1.0 + beta) * vo - beta * vt
    pos = (v_pos - u).square().mean(dim=dims)
    neg = (v_neg - u).square().mean(dim=dims)
    per_sample = w * pos + (1.0 - w) * neg
    if ref_penalty != 0.0:
        if v_ref is None:
            raise ValueError("v_ref is needed when ref_penalty is not 0")
        ref = (vt - v_ref.detach().float()).square().mean(dim=dims)
        per_sample = per_sample + ref_penalty * ref
    else:
        ref = torch.zeros(n, device=vt.device)
    sw = torch.ones(n, device=vt.device)
    if sample_weight is not None:
        sw = torch.as_tensor(sample_weight, device=vt.device).to(torch.float32).reshape(n)
    return {
        "loss": (sw * per_sample).mean(),
        "positive": (sw * w * pos).mean().detach(),
        "negative": (sw * (1.0 - w) * neg).mean().detach(),
        "ref": (sw * ref).mean().detach(),
        "old_deviation": (vt - vo).square().mean().detach(),
    }


def old_policy_decay(
    step: int, *, rate: float = 0.001, maximum: float = 0.5, flat: int = 0
) -> float:
    """Decay of the old policy's moving average after optimiser step ``step`` (0-based).

    ``min(rate * (step - flat), maximum)``, 0 before ``flat``: 0 at the start (the old policy is
    the trained one), rising to ``maximum`` (0.5 after 500 steps with the defaults).
    """
    if step < flat:
        return 0.0
    return float(min(rate * (step - flat), maximum))


@torch.no_grad()
def update_old_policy(old: nn.Module, trained: nn.Module, decay: float) -> None:
    """``old <- decay * old + (1 - decay) * trained`` for every parameter; buffers are copied."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    src = dict(trained.named_parameters())
    for name, p in old.named_parameters():
        p.lerp_(src[name].detach().to(p.dtype), 1.0 - decay)
    src_b = dict(trained.named_buffers())
    for name, b in old.named_buffers():
        b.copy_(src_b[name])
