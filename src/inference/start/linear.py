"""Linear least squares with a Gaussian prior on the amplitudes, and its Bayesian evidence.

For data y (P pixels) with inverse variances w, a model y = A a + n built of K basis images (the columns of A), and
a prior a ~ N(0, diag(s^2)), the amplitudes' posterior is Gaussian with precision H = A^T W A + diag(1/s^2) and mean
a* = H^{-1} A^T W y, and the evidence (the data's marginal likelihood, up to a constant that depends on W only) is

    log Z = -1/2 (y^T W y - a*^T A^T W y) - 1/2 log det H - sum log s

(by the Woodbury identity). Fixed K, so log Z ranks nonlinear settings (mass, centres) fairly: a model that fits
only by using more freedom pays for it in log det H. Everything is differentiable in A.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LinearFit:
    """amplitudes: [B, K] posterior means a*; log_evidence: [B]; chi2: [B] sum of w (y - A a*)^2."""

    amplitudes: Tensor
    log_evidence: Tensor
    chi2: Tensor


def linear_fit(columns: Tensor, data: Tensor, weight: Tensor, prior_sd: Tensor) -> LinearFit:
    """Solve for the amplitudes of basis images and the evidence.

    columns: [B, K, P] basis images (data units per unit amplitude); data, weight: [P] (weight = mask / variance);
    prior_sd: [K] prior standard deviation of each amplitude (data units). Returned in the columns' dtype.
    """
    # whitened by the noise and by the prior (columns c' = s_k sqrt(w) c_k), the matrix to factor is G + I with
    # eigenvalues >= 1. G is formed in float64: with many overlapping blobs and bright data its entries reach
    # 1e10 and more, and float32's rounding of them would swamp the I that makes G + I positive definite
    root_w = weight.sqrt().double()
    white = columns.double() * root_w * prior_sd[:, None].double()
    gram = white @ white.transpose(-1, -2)                      # [B, K, K]
    rhs = white @ (root_w * data.double())                      # [B, K]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + eye)
    amp_w = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
    yy = (data.double() ** 2 * weight.double()).sum()
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_z = -0.5 * (yy - (amp_w * rhs).sum(-1)) - 0.5 * log_det
    log_z = torch.where(info == 0, log_z, torch.full_like(log_z, -torch.inf))  # a failed factorisation ranks last
    out_dtype = columns.dtype
    amp = (amp_w * prior_sd.double()).to(out_dtype)
    resid = data - (amp[:, :, None] * columns).sum(1)
    chi2 = (resid * resid * weight).sum(-1)
    return LinearFit(amp, log_z.to(out_dtype), chi2)
