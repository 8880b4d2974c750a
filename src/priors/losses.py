"""Denoising score matching for the VE SDE (Vincent 2011; Song et al. 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sde import VESDE, _expand


def dsm_loss(net: Callable[[Tensor, Tensor], Tensor], sde: VESDE, x0: Tensor,
             generator: torch.Generator | None = None, t_eps: float = 1e-5) -> Tensor:
    """Denoising score-matching loss with lambda(t) = sigma(t)^2 weighting, t ~ U(t_eps, 1).

    With x_t = x0 + sigma z, the target score is -z / sigma, so the weighted residual is sigma * s(x_t, sigma) + z,
    of order one at every noise level. Returned as the mean over batch and pixels (a scalar).

    Args:
        net: score network `net(x [B, C, H, W], sigma [B]) -> score [B, C, H, W]`.
        sde: the forward SDE.
        x0: clean images [B, C, H, W] in network units.
        generator: randomness for t and z (a per-step generator makes resumed runs repeat exactly).
        t_eps: smallest training time.
    """
    batch = x0.shape[0]
    t = t_eps + (1.0 - t_eps) * torch.rand(batch, generator=generator, device=x0.device, dtype=x0.dtype)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    sigma = sde.sigma(t)
    score = net(x0 + _expand(sigma, x0) * z, sigma)
    return (_expand(sigma, x0) * score.float() + z).square().mean()
