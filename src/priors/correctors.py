"""The Langevin corrector of a reverse-SDE chain (Song et al. 2021, Alg. 4): MCMC steps at a fixed noise level that
pull the chain back toward the noised distribution after a predictor step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sde import _expand

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def langevin_step(score_fn: ScoreFn, x: Tensor, t: Tensor, snr: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """One Langevin step at time t [B] for x [B, ...]: x + eps score + sqrt(2 eps) z, with the step size
    eps = 2 (snr |z| / |score|)^2 per sample (norms over each sample's pixels)."""
    score = score_fn(x, t)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    score_norm = torch.linalg.vector_norm(score.flatten(1), dim=1)
    noise_norm = torch.linalg.vector_norm(noise.flatten(1), dim=1)
    step = 2.0 * (snr * noise_norm / score_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return x + _expand(step, x) * score + _expand((2.0 * step).sqrt(), x) * noise
