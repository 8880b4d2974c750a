"""Gaussian likelihood of the exposures, and its convolved form for the posterior SDE.

For exposure e with data y_e, noise variance v_e = ERR_e^2 and mask w_e (1 = used, 0 = masked), and model images m:

    log L = -1/2 sum_e sum_pixels w_e (y_e - m_e)^2 / (T v_e)           (up to a constant)

T >= 1 is a temperature (variance inflation) for annealing; T = 1 is the true likelihood. For a pixelated image x
seen through a linear operator A (with everything else in the model fixed, `rest`), the convolved likelihood of
Adam et al. 2022 (arXiv:2211.03812) at diffusion noise sigma_t replaces x by its noisy version x_t and the variance
by T v + sigma_t^2 diag(A A^T):

    grad_x log p(y | x_t) ~ A^T [ w (y - rest - A x_t) / (T v + sigma_t^2 diag(A A^T)) ]

which tends to the exact Gaussian score as sigma_t -> 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class GaussianLikelihood:
    """Per-pixel Gaussian likelihood of n_exp images.

    Args:
        data, variance: [n_exp, H, W] in data units (and squared units); variance > 0 where mask is True.
        mask: [n_exp, H, W] bool, True where the pixel is used.
    """

    def __init__(self, data: Tensor, variance: Tensor, mask: Tensor):
        if not (data.shape == variance.shape == mask.shape) or data.ndim != 3:
            raise ValueError(f"data, variance and mask must share a shape [n_exp, H, W]; got {tuple(data.shape)}, "
                             f"{tuple(variance.shape)}, {tuple(mask.shape)}")
        mask = mask.bool() & torch.isfinite(data) & torch.isfinite(variance) & (variance > 0)
        if not mask.any():
            raise ValueError("no usable pixel: every pixel is masked, non-finite or has variance <= 0")
        self.mask = mask
        self.data = torch.where(mask, data, torch.zeros_like(data))
        self.variance = torch.where(mask, variance, torch.ones_like(variance))
        self.weight = mask.to(data.dtype) / self.variance
        self.n_pixels = mask.flatten(1).sum(-1)

    def to(self, device=None, dtype=None) -> GaussianLikelihood:
        return GaussianLikelihood(self.data.to(device, dtype), self.variance.to(device, dtype), self.mask.to(device))

    def residual(self, model: Tensor) -> Tensor:
        """Masked residual y - m, [B, n_exp, H, W] (0 on masked pixels)."""
        return (self.data - model) * self.mask

    def chi2(self, model: Tensor) -> Tensor:
        """sum of w (y - m)^2 / v per exposure, [B, n_exp]."""
        r = self.data - model
        return (r * r * self.weight).flatten(-2).sum(-1)

    def reduced_chi2(self, model: Tensor) -> Tensor:
        """chi^2 per used pixel, per exposure, [B, n_exp]."""
        return self.chi2(model) / self.n_pixels

    def log_prob(self, model: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
        """log L at temperature T, [B] (constants dropped)."""
        return -0.5 * self.chi2(model).sum(-1) / temperature

    def normalized_residual(self, model: Tensor) -> Tensor:
        """(y - m) / sqrt(v) on used pixels, 0 elsewhere, [B, n_exp, H, W]."""
        return (self.data - model) * self.mask / self.variance.sqrt()

    def convolved_score(
        self,
        apply: Callable[[Tensor], Tensor],
        adjoint: Callable[[Tensor], Tensor],
        x: Tensor,
        rest: Tensor,
        diag_aat: Tensor,
        sigma: Tensor,
        temperature: float | Tensor = 1.0,
    ) -> Tensor:
        """Score of the convolved likelihood with respect to x (in the units `apply` takes).

        Args:
            apply, adjoint: A and A^T; A maps x [B, ...] to images [B, n_exp, H, W] in data units.
            x: [B, ...] the noisy image x_t.
            rest: [B, n_exp, H, W] the rest of the model (held fixed).
            diag_aat: [B, n_exp, H, W] diag(A A^T).
            sigma: [B] diffusion noise sigma_t in the units of x.
        """
        s2 = (sigma**2).reshape(-1, 1, 1, 1)
        denom = temperature * self.variance + s2 * diag_aat
        r = (self.data - rest - apply(x)) * self.mask / denom
        return adjoint(r)
