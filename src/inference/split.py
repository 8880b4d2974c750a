"""Split Gibbs for the pixelated images, and the mass update it allows with the images integrated out.

With the images held fixed, the mass block of the plain Gibbs sweep barely moves: a source drawn for one mass fits
the data only near that mass, so each sweep's conditional of the mass is far narrower than its posterior (the
chains' autocorrelation time is hundreds of sweeps). Split Gibbs (the form of diffusion-prior sampling of PnP-DM,
Wu et al. 2024, arXiv:2405.18782) gives every image i (source, lens light) two copies, z_i (the clean image, under
the score prior) and x_i (the image the data see), coupled by N(x_i; z_i, rho_i^2 I):

    p(M, x, z | y) ~ p(M) p(y | M, x) prod_i N(x_i; z_i, rho_i^2 I) p_i(z_i)

Its marginal in (M, x) is the posterior under the priors p_i convolved with N(0, rho_i^2 I), which tends to the
posterior as rho -> 0. One sweep, for each chain (`GibbsSampler.split_sweep`):

1. mass and shifts | z, with x integrated out: p(y | M, z) = N(y; A_M z + rest, T V + sum_i rho_i^2 A_i A_i^T),
   sampled by MALA (`collapsed_log_likelihood`). The x_i's freedom of rho_i per pixel is what lets the mass move:
   the images no longer pin it;
2. x | z, M: Gaussian, an exact matrix-free draw (`gaussian_draw.py`), source and lens light jointly;
3. z_i | x_i: the prior's posterior given the noisy image x_i at noise rho_i, which is the prior's own reverse SDE
   started at x_i at the time where sigma(t) = rho_i (`denoise`): no likelihood enters, and it is exact up to the
   discretisation (no convolved-likelihood approximation).

Steps 1-2 together draw (M, x) | z; step 3 draws z | x: the chain leaves the split target invariant. The
covariance of step 1 is exact when `covariance: exact` (dense; small problems only, as in the tests); at image
scale `rowsum` stands for A A^T by its row sums, the convolved likelihood's diagonal (`posterior_sde.py`), which
makes step 1 approximate. rho_i is set per stage as a multiple of the tempered data noise (`Stage.rho`), in the
images' flux units, so that rho_i^2 A A^T is that many times T V wherever a pixel sees one image pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from ..lensing.forward import ForwardModel
from ..lensing.interpolation import bilinear_weights
from ..lensing.operators import ImagingOperator
from ..priors.sampling import sample_reverse_sde
from .likelihood import GaussianLikelihood
from .posterior_sde import FluxMap
from .sde_settings import SDESettings

COLLAPSED_COVARIANCES = ("rowsum", "exact")
# the dense covariance of `exact` holds (used pixels)^2 numbers per chain
EXACT_MAX_PIXELS = 4096


@dataclass(frozen=True)
class SplitSettings:
    """conf/sampler's `split`: covariance of the collapsed mass update (rowsum or exact) and the tolerance and
    iteration cap of the conjugate gradients of the image draw."""

    covariance: str = "rowsum"
    cg_tol: float = 1e-5
    cg_max_iter: int = 200

    def __post_init__(self):
        if self.covariance not in COLLAPSED_COVARIANCES:
            raise InputError(f"sampler.split.covariance must be one of {COLLAPSED_COVARIANCES}, got "
                             f"{self.covariance!r}")
        if not self.cg_tol > 0 or not self.cg_max_iter >= 1:
            raise InputError(f"sampler.split: need cg_tol > 0 and cg_max_iter >= 1, got {self.cg_tol}, "
                             f"{self.cg_max_iter}")

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> SplitSettings:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"sampler.split: unknown setting(s) {unknown}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**cfg)


def differentiable_operators(model: ForwardModel, mass: Mapping[str, Tensor], shifts: Tensor,
                             kernels: Tensor) -> dict[str, ImagingOperator]:
    """The source and lens-light operators of `model` with weights differentiable in the mass and shifts (the
    model's own `source_operator` detaches them)."""
    bx, by = model.source_positions(mass, shifts)
    x, y = model.image_positions(shifts)
    ops = {}
    for kind, grid, (px, py) in (("source", model.source, (bx, by)), ("lens_light", model.lens_light, (x, y))):
        index, weight = bilinear_weights(grid, px, py)
        ops[kind] = ImagingOperator(index, weight, grid.n, kernels, model.upsample, model.detector, model.crop)
    return ops


def dense(op: ImagingOperator) -> Tensor:
    """A as a matrix [B, n_exp H W, n n], by applying it to every basis image (differentiable)."""
    b, n = op.index.shape[0], op.n
    k = n * n
    basis = torch.eye(k, dtype=op.weight.dtype, device=op.weight.device).reshape(k, n, n)
    rep = ImagingOperator(op.index.repeat_interleave(k, 0), op.weight.repeat_interleave(k, 0), n,
                          op.psf if op.psf.ndim == 3 else op.psf.repeat_interleave(k, 0), op.upsample, op.detector,
                          op.crop)
    cols = rep(basis.repeat(b, 1, 1))  # [B k, n_exp, H, W]
    return cols.reshape(b, k, -1).transpose(1, 2)


def collapsed_log_likelihood(model: ForwardModel, likelihood: GaussianLikelihood, mass: Mapping[str, Tensor],
                             shifts: Tensor, images: Mapping[str, Tensor], rho: Mapping[str, float],
                             kernels: Tensor, temperature: float, covariance: str = "rowsum") -> Tensor:
    """log N(y; A_M z + rest, T V + sum_i rho_i^2 A_i A_i^T) over the used pixels, [B], up to a constant.

    images: {"source": z_S [B, n, n], "lens_light": z_L [B, m, m]} (flux); rho: the coupling noise of each
    image that is split (flux units; an image not in `rho` is held fixed, rho = 0). Differentiable in the mass and
    shifts. covariance: "rowsum" (A A^T by its row sums, a diagonal) or "exact" (dense, <= EXACT_MAX_PIXELS used
    pixels).
    """
    if covariance not in COLLAPSED_COVARIANCES:
        raise InputError(f"sampler.split.covariance must be one of {COLLAPSED_COVARIANCES}, got {covariance!r}")
    # the mean through the same operators as the covariance: one ray trace per evaluation, not two
    ops = differentiable_operators(model, mass, shifts, kernels)
    mean = ops["source"](images["source"]) + ops["lens_light"](images["lens_light"])
    lk = likelihood
    tv = temperature * lk.variance
    if covariance == "rowsum":
        var = tv.expand_as(mean)
        for kind, r in rho.items():
            var = var + (r * r) * ops[kind].rowsum_AAT()
        resid = (lk.data - mean) * lk.mask
        terms = (resid * resid / var + torch.log(var)) * lk.mask
        return -0.5 * terms.flatten(1).sum(1)
    used = lk.mask.flatten()
    n_used = int(used.sum())
    if n_used > EXACT_MAX_PIXELS:
        raise InputError(f"sampler.split.covariance=exact needs <= {EXACT_MAX_PIXELS} used pixels, got {n_used}; "
                         f"use rowsum")
    cov = torch.diag_embed(tv.flatten()[used]).expand(mean.shape[0], n_used, n_used)
    for kind, r in rho.items():
        a = dense(ops[kind])[:, used]
        cov = cov + (r * r) * a @ a.transpose(1, 2)
    resid = (lk.data - mean).flatten(1)[:, used]
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)[..., 0]
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * ((white * white).sum(-1) + logdet)


def denoise(prior, flux: FluxMap, x: Tensor, rho: float, settings: SDESettings,
            generator: torch.Generator | None = None) -> Tensor:
    """A draw of the clean image z given its noisy copy x [B, n, n] (flux) at noise rho (flux units): the prior's
    reverse SDE from the time where sigma(t) = rho / flux.scale, started at x as it is, down to settings.t_min,
    with settings.steps (predictor, corrector, snr) over that interval. Returns z [B, n, n] in flux units.

    With rho above the prior's sigma_max the draw starts at t = 1 from x (then x is far noisier than the prior's
    widest marginal, and the draw is only approximately the conditional).
    """
    sde = prior.sde
    sigma = rho / flux.scale
    t_rho = float(sde.t_of_sigma(torch.tensor(sigma, dtype=torch.float64)))
    t_rho = min(t_rho, 1.0)
    if t_rho <= settings.t_min:
        return x  # the coupling is below the prior's smallest noise level: z = x to within sigma_min
    start = flux.to_net(x)[:, None]
    z = sample_reverse_sde(prior.score, sde, tuple(start.shape), steps=settings.steps,
                           corrector_steps=settings.corrector_steps, snr=settings.snr, predictor=settings.predictor,
                           t_min=settings.t_min, t_start=t_rho, x_start=start, start_noised=True,
                           generator=generator, device=x.device, dtype=x.dtype)
    return flux.to_flux(z[:, 0])


def coupling(rho: float, temperature: float, noise: float) -> float:
    """The coupling noise in flux units: `rho` times the tempered data noise sqrt(T) noise."""
    return rho * math.sqrt(temperature) * noise
