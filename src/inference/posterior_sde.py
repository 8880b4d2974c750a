"""Posterior samples of a pixelated image (source, lens light or PSF) by the reverse-time SDE.

The score of the noised posterior is the prior's score plus the convolved likelihood's score (see
`likelihood.py`). The prior works in its network units x; the model needs fluxes, f = a x + c, with (a, c) the
component's flux map at inference (`FluxMap`): the data's units per network unit, chosen for the data at hand and
stated in the config. The linear operator in network units is then A_net x = a A x + A c, and the diffusion noise
sigma_t in network units is a sigma_t in flux.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..priors.sampling import sample_reverse_sde
from .likelihood import GaussianLikelihood
from .sde_settings import COVARIANCES, SDESettings


@dataclass(frozen=True)
class FluxMap:
    """flux = scale * x_net + offset, with flux in data units per detector pixel."""

    scale: float
    offset: float = 0.0

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"a flux map needs scale > 0, got {self.scale}")

    def to_flux(self, x: Tensor) -> Tensor:
        return x * self.scale + self.offset

    def to_net(self, f: Tensor) -> Tensor:
        return (f - self.offset) / self.scale


def posterior_score(
    prior_score: Callable[[Tensor, Tensor], Tensor],
    sigma_of_t: Callable[[Tensor], Tensor],
    likelihood: GaussianLikelihood,
    operator,
    rest: Tensor,
    flux: FluxMap,
    temperature: float = 1.0,
    diag_aat: Tensor | None = None,
    covariance: str = "diag",
) -> Callable[[Tensor, Tensor], Tensor]:
    """score(x [B, 1, n, n], t [B]) of the noised posterior of one pixelated component, in network units.

    `operator` maps flux images [B, n, n] to model images [B, n_exp, H, W] (A, with `.adjoint`, `.diag_AAT` and
    `.rowsum_AAT`); `rest` [B, n_exp, H, W] is the rest of the model, held fixed. `covariance` picks the diagonal
    that stands for A A^T in the convolved likelihood: "diag", its diagonal (Adam et al. 2022), or "rowsum", A A^T 1,
    which bounds A A^T from above (so the likelihood is never more confident than the exact convolved one) and
    keeps the score's stiffness near 1/sigma_t^2, so the reverse SDE stays stable at a few tens of steps where
    neighbouring detector pixels share source pixels.
    """
    if diag_aat is not None:
        diag = diag_aat
    elif covariance == "diag":
        diag = operator.diag_AAT()
    elif covariance == "rowsum":
        diag = operator.rowsum_AAT()
    else:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    a = flux.scale
    const = operator(torch.full_like(rest[:, 0, :1, :1].expand(-1, operator.n, operator.n), flux.offset))
    rest_all = rest + const

    def apply(x):
        return a * operator(x)

    def adjoint(y):
        return a * operator.adjoint(y)

    def score(x: Tensor, t: Tensor) -> Tensor:
        prior = prior_score(x, t)
        sigma = sigma_of_t(t)
        like = likelihood.convolved_score(apply, adjoint, x[:, 0], rest_all, a * a * diag, sigma, temperature)
        return prior + like[:, None]

    return score


def sample_component(
    prior,
    likelihood: GaussianLikelihood,
    operator,
    rest: Tensor,
    flux: FluxMap,
    settings: SDESettings,
    *,
    x_start: Tensor | None,
    t_start: float | None = None,
    t_min: float | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """New flux images [B, n, n] of one component by the reverse posterior SDE of `settings` (steps, predictor,
    corrector, covariance), from t_start (re-noising x_start, flux [B, n, n]) or from t = 1 (x_start None) down to
    t_min; t_start and t_min default to the settings' own (a caller passes them when it resolves them per draw)."""
    score = posterior_score(prior.score, prior.sde.sigma, likelihood, operator, rest, flux, temperature,
                            covariance=settings.covariance)
    b, n = rest.shape[0], operator.n
    start = None if x_start is None else flux.to_net(x_start)[:, None]
    x = sample_reverse_sde(
        score, prior.sde, (b, 1, n, n), steps=settings.steps, corrector_steps=settings.corrector_steps,
        snr=settings.snr, t_min=settings.t_min if t_min is None else t_min, predictor=settings.predictor,
        t_start=settings.t_start if t_start is None else t_start, x_start=start, generator=generator,
        device=rest.device, dtype=rest.dtype, progress=progress,
    )
    return flux.to_flux(x[:, 0])
