"""Predictor steps of a reverse VE-SDE chain, from sigma = sigma(t) to sigma' = sigma(t_next) < sigma.

- `euler_maruyama`: x + g^2 dt score + g sqrt(dt) z, with g^2 dt = d(sigma^2)/dt dt; for a geometric schedule
  g^2 dt / sigma^2 = 2 ln(sigma_max / sigma_min) / steps, which exceeds 1 at a few tens of steps, so modes as stiff
  as 1/sigma^2 (a posterior score's likelihood term) overshoot and the chain diverges;
- `heun`: Heun's second-order step of the probability-flow ODE dx/dsigma = -sigma score (Karras et al. 2022, Alg. 1):
  the Euler step gives x', and the step is taken with the mean of the slopes at (x, sigma) and (x', sigma'). Two
  score calls a step and no noise: given its start the chain is deterministic, so the randomness comes from the
  start (pure noise, or the re-noised state of a partial chain) and from the Langevin corrector, if any;
- `reverse_diffusion` (ancestral): x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z, whose
  coefficient (sigma^2 - sigma'^2) / sigma^2 stays below 1 for any step count (Song et al. 2021, App. E);
- `dpmpp_2m_sde`: a second-order multistep SDE solver written with the denoiser D(x, sigma) = x + sigma^2 score
  (the form of DPM-Solver++(2M), Lu et al. 2022, for the VE SDE with eta = 1). With D held fixed over a step, the
  reverse SDE is solved exactly: x' = r^2 x + (1 - r^2) D + sigma' sqrt(1 - r^2) z, r = sigma' / sigma (the
  Gaussian bridge from x to D); the second-order term adds (1 - r^2) (D - D_prev) / (2 q), q the ratio of the
  previous step's log-sigma length to this one's, which extrapolates D linearly in log sigma. One score call a step
  and unconditionally stable (r^2 < 1), so it keeps its accuracy at ten to a few tens of steps, where Euler-Maruyama
  overshoots. Its first step (no D_prev) is the first-order bridge step.

The stochastic steps add no noise on the chain's last step: the chain ends at the step's mean. Every step has the
signature `step(score_fn, sde, x [B, ...], times: StepTimes, generator) -> x'`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .schedule import StepTimes
from .sde import VESDE, _expand

ScoreFn = Callable[[Tensor, Tensor], Tensor]
PredictorStep = Callable[[ScoreFn, VESDE, Tensor, StepTimes, "torch.Generator | None"], Tensor]


def _drift_and_noise(score_fn: ScoreFn, x: Tensor, times: StepTimes, var: Tensor,
                     generator: torch.Generator | None) -> Tensor:
    """x + var score(x, t) + sqrt(var) z (the noise left out on the last step); var [B], the step's variance."""
    x_mean = x + _expand(var, x) * score_fn(x, times.t)
    if times.last:
        return x_mean
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x_mean + _expand(var.sqrt(), x) * noise


def euler_maruyama(score_fn: ScoreFn, sde: VESDE, x: Tensor, times: StepTimes,
                   generator: torch.Generator | None = None) -> Tensor:
    """Euler-Maruyama: the variance the forward SDE adds over the step, g(t)^2 dt."""
    return _drift_and_noise(score_fn, x, times, sde.diffusion(times.t) ** 2 * times.dt, generator)


def reverse_diffusion(score_fn: ScoreFn, sde: VESDE, x: Tensor, times: StepTimes,
                      generator: torch.Generator | None = None) -> Tensor:
    """Ancestral step: the variance sigma(t)^2 - sigma(t_next)^2 between the two noise levels."""
    return _drift_and_noise(score_fn, x, times, sde.sigma(times.t) ** 2 - sde.sigma(times.t_next) ** 2, generator)


def heun(score_fn: ScoreFn, sde: VESDE, x: Tensor, times: StepTimes,
         generator: torch.Generator | None = None) -> Tensor:
    """Heun's step of the probability-flow ODE (deterministic: `generator` is not used)."""
    sigma, sigma_next = _expand(sde.sigma(times.t), x), _expand(sde.sigma(times.t_next), x)
    slope = -sigma * score_fn(x, times.t)
    euler = x + (sigma_next - sigma) * slope
    return x + (sigma_next - sigma) * 0.5 * (slope - sigma_next * score_fn(euler, times.t_next))


class MultistepBridge:
    """`dpmpp_2m_sde`: one chain's steps (it remembers the previous step's denoised image and log-sigma length,
    so each chain needs its own instance: `predictor_step` makes one per call)."""

    def __init__(self):
        self.previous: tuple[Tensor, Tensor] | None = None  # (D, h) of the step before

    def __call__(self, score_fn: ScoreFn, sde: VESDE, x: Tensor, times: StepTimes,
                 generator: torch.Generator | None = None) -> Tensor:
        sigma, sigma_next = sde.sigma(times.t), sde.sigma(times.t_next)
        denoised = x + _expand(sigma**2, x) * score_fn(x, times.t)
        h = torch.log(sigma / sigma_next)  # [B] > 0: this step's length in -log sigma
        r2 = _expand(torch.exp(-2.0 * h), x)  # (sigma' / sigma)^2
        target = denoised
        if self.previous is not None:
            d_prev, h_prev = self.previous
            target = denoised + (denoised - d_prev) * _expand(h / (2.0 * h_prev), x)
        self.previous = (denoised, h)
        x_next = r2 * x + (1.0 - r2) * target
        if times.last:
            return x_next
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x_next + _expand(sigma_next, x) * (1.0 - r2).sqrt() * noise


STEPS: dict[str, PredictorStep] = {"euler_maruyama": euler_maruyama, "heun": heun,
                                   "reverse_diffusion": reverse_diffusion}
MULTISTEP = {"dpmpp_2m_sde": MultistepBridge}
PREDICTORS = (*STEPS, *MULTISTEP)


def predictor_step(name: str) -> PredictorStep:
    """The predictor step called `name` (one of PREDICTORS); a fresh one for each chain where the step keeps a
    memory (multistep solvers)."""
    if name in MULTISTEP:
        return MULTISTEP[name]()
    if name not in STEPS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {name!r}")
    return STEPS[name]


def tweedie_denoise(score_fn: ScoreFn, sde: VESDE, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's step at the chain's end, t [B]: x + sigma(t)^2 score(x, t), the mean of the clean image given x."""
    return x + _expand(sde.sigma(t) ** 2, x) * score_fn(x, t)
