"""The Variance-Exploding SDE with a geometric noise schedule (Song et al. 2021, arXiv:2011.13456).

    dx = g(t) dw,   sigma(t) = sigma_min (sigma_max / sigma_min)^t,   g(t)^2 = d sigma(t)^2 / dt,   t in [0, 1].

The marginal of a data point x0 at time t is N(x0, sigma(t)^2) per pixel, the usual approximation that neglects
sigma_min^2 against the data scale. Pixel values are in the prior's network units (see
`scorelens.data.training.normalization`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class VESDE:
    """Variance-Exploding SDE.

    Args:
        sigma_min: noise standard deviation at t = 0 (network pixel units), > 0.
        sigma_max: noise standard deviation at t = 1, > sigma_min.
    """

    def __init__(self, sigma_min: float, sigma_max: float):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max < inf, got ({sigma_min}, {sigma_max})")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g})"

    def config(self) -> dict:
        """Plain-dict description, stored in checkpoints."""
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def sigma(self, t: Tensor) -> Tensor:
        """Noise standard deviation sigma(t), same shape as t."""
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of the schedule: the time at which the noise level is sigma."""
        return torch.log(sigma / self.sigma_min) / self._log_ratio

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))."""
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample of the marginal at time t [B] for data x0 [B, ...] given standard normal noise like x0."""
        return x0 + _expand(self.sigma(t), x0) * noise

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device=None, dtype=torch.float32) -> Tensor:
        """Sample of the t = 1 marginal, N(0, sigma_max^2) (data scale neglected against sigma_max)."""
        return self.sigma_max * torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector [B] to broadcast against [B, ...]."""
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))
