"""The PSF Gibbs step: each chain's PSFs P drawn from the stars (or a given PSF) with the PSF prior.

The stars of exposure i are data of P_i alone: they do not depend on the lens model, so P's update needs neither
the source, the lens light nor the mass, and is the same reverse posterior SDE as theirs (`posterior_sde.py`) with
the stars' Gaussian likelihood at temperature 1 (`stars.StarOperator`). Exposures with their own stars have
their own P; exposures with too few share one P drawn from the stars of all exposures (a PSF group); a co-add's
given PSF is kept, or P is drawn around it (`psf.given: sample`). Each chain draws its own P at its start and again
every `every` sweeps, so the samples carry the PSF's uncertainty.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

from ...errors import InputError
from ..likelihood import GaussianLikelihood
from ..posterior_sde import FluxMap, sample_component
from ..sde_settings import SDESettings, SettingError, as_int, check_keys
from .stars import KernelMap, StarList, fit_star, star_operator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PSFStep:
    """Settings of the PSF draws (`sampler.psf` in conf/sampler/): every: sweeps between draws (0: only the draw at
    the chain's start); sde: the reverse-SDE settings of a draw (`sampler.sde` with `sampler.psf.sde` in place;
    t_start 1.0 draws afresh, less re-noises the current P, cheaper and correlated; a draw ends at t_min)."""

    every: int = 1
    sde: SDESettings = field(default_factory=SDESettings)

    def __post_init__(self):
        try:
            as_int("every", self.every, 0)
        except SettingError as e:
            raise InputError(f"sampler.psf.{e.key} {e.reason}") from None
        if self.sde.sigma_end is not None:
            raise InputError("sampler.psf.sde.sigma_end: the PSF draws end at t_min (sigma_end is the lens images'); "
                             "set it to null")

    @classmethod
    def from_config(cls, cfg: Mapping | None, sde: Mapping | SDESettings | None = None) -> PSFStep:
        """From `sampler.psf` ({every, sde}); its `sde` overrides `sde`, the shared `sampler.sde`."""
        cfg = dict(cfg or {})
        check_keys(cfg, [f.name for f in fields(cls)], "sampler.psf")
        shared = sde if isinstance(sde, SDESettings) else SDESettings.from_config(sde, "sampler.sde")
        return cls(every=cfg.get("every", 1), sde=shared.override(cfg.get("sde"), "sampler.psf.sde"))


class PSFModel:
    """What the PSF step needs: the PSF prior and its flux map (P = scale x + offset), the stars of the G PSF
    groups (their operator and Gaussian likelihood), and the map from P to the forward model's kernels.

    Args:
        prior: the PSF `ScorePrior` ([1, n, n] images).
        flux: its flux map.
        stars: every group's stars (`stars.StarList`); group [N] says whose, oversampling [N] at how many P
            pixels per detector pixel of the star's exposure P is read, `response` how (`stars.psf_rows`).
        kernels: P -> kernels of the forward model.
        settings: the SDE settings of the draws.
    """

    def __init__(self, prior, flux: FluxMap, stars: StarList, group, groups: int, oversampling, response: str,
                 kernels: KernelMap, settings: PSFStep, dtype=torch.float32, device=None):
        self.prior, self.flux, self.kernels, self.settings = prior, flux, kernels, settings
        self.stars, self.group, self.oversampling = stars, np.asarray(group), np.asarray(oversampling, dtype=float)
        self.response, self.dtype, self.device = response, dtype, device
        self.n = int(prior.net.config["resolution"])
        self._groups = groups
        self._build()

    def _build(self) -> None:
        self.operator, mask = star_operator(self.stars, self.group, self._groups, self.n, self.oversampling,
                                            self.response, self.dtype, self.device)
        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        self.likelihood = GaussianLikelihood(as_t(self.stars.data), as_t(self.stars.variance), mask)

    def refine_stars(self, generator: torch.Generator, rounds: int = 2, chains: int = 4) -> None:
        """Star centres and fluxes measured again against each group's mean of `chains` PSF draws, `rounds`
        times: the centres the ePSF gave are off by hundredths of a pixel when the group's PSF differs from the
        ePSF's, enough to blur P where stars are bright. A given PSF's pseudo-star keeps its centre and flux."""
        for _ in range(rounds):
            mean = self.sample(None, chains, generator).mean(0).double().cpu().numpy()  # [G, n, n]
            weights = np.where(self.stars.mask, 1.0 / np.sqrt(self.stars.variance), 0.0)
            moved, kept = [], 0
            for k in range(len(self.stars)):
                if not self.stars.measured[k]:
                    continue
                psf = mean[self.group[k]]
                fit = fit_star(self.stars.data[k], weights[k], self.stars.centres[k], self.stars.fluxes[k], psf,
                               self.oversampling[k], self.response)
                if fit is None:
                    kept += 1
                    continue
                # fluxes stay in the unit-sum convention whatever the draws' sum (flux and P trade off exactly);
                # a draw far from the stars (a poor prior) must not drag them: large jumps are refused
                centre, flux = fit[0], fit[1] * float(psf.sum())
                step = float(np.hypot(*(centre - self.stars.centres[k])))
                if step > 0.5 or not 0.7 < flux / self.stars.fluxes[k] < 1.3:
                    kept += 1
                    continue
                moved.append(step)
                self.stars.centres[k], self.stars.fluxes[k] = centre, flux
            if kept:
                log.warning("%d PSF star(s) kept their ePSF centres: the PSF draws fit them poorly", kept)
            self._build()
            log.info("PSF stars re-measured against the PSF draws: centres moved by %.3f pixels at most, "
                     "star chi2 per pixel %.3f", max(moved, default=0.0),
                     float(self.reduced_chi2(torch.as_tensor(mean, dtype=self.dtype, device=self.device)[None])))

    @property
    def groups(self) -> int:
        return self._groups

    def due(self, done: int) -> bool:
        """Whether the sweep that follows `done` sweeps of the run runs under a new P (drawn by the PSF block that
        closes the sweep before it; the chain's first P is drawn when it starts)."""
        return self.settings.every > 0 and done > 0 and done % self.settings.every == 0

    def sample(self, psf: Tensor | None, chains: int, generator: torch.Generator | None) -> Tensor:
        """New P [B, G, n, n] for `chains` chains, from the current `psf` (re-noised to t_start) or, when `psf` is
        None or t_start is 1, from pure noise."""
        s = self.settings.sde
        ref = self.operator.rows
        n_stars, size = self.operator.rows.shape[:2]
        rest = torch.zeros(chains * self.groups, n_stars, size, size, dtype=ref.dtype, device=ref.device)
        start = None if (psf is None or s.t_start >= 1.0) else psf.flatten(0, 1)
        x = sample_component(self.prior, self.likelihood, self.operator.batched(chains), rest, self.flux, s,
                             x_start=start, t_start=1.0 if start is None else s.t_start, t_min=s.t_min,
                             generator=generator)
        return x.reshape(chains, self.groups, self.n, self.n)

    def reduced_chi2(self, psf: Tensor) -> Tensor:
        """chi^2 per used star pixel of each chain's P, [B] (over the stars of its groups)."""
        model = self.operator(psf.flatten(0, 1))  # [B * G, N, S, S]
        member = self.operator.amp != 0  # [G, N]
        chi2 = self.likelihood.chi2(model).reshape(psf.shape[0], self.groups, -1)  # [B, G, N]
        chi2 = (chi2 * member).sum((1, 2))
        pixels = (self.likelihood.n_pixels[None, :] * member).sum()
        return chi2 / pixels.clamp(min=1)


def check_psf_prior_scale(pixel_scale: float, detector_scales, n: int) -> None:
    """Refuse a prior grid that does not cover a few detector pixels of every exposure."""
    for s in detector_scales:
        span = n * pixel_scale / s
        if not math.isfinite(span) or span < 3:
            raise InputError(f"the PSF prior's {n} pixels of {pixel_scale} arcsec span {span:.2g} detector pixels "
                             f"of {s} arcsec; check priors.psf.pixel_scale")
