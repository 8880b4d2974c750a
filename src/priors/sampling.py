"""Sampling a VE SDE backwards in time: Euler-Maruyama, Heun or reverse-diffusion predictor, optional Langevin
corrector.

The predictors differ in the step taken from sigma to sigma' < sigma:
- "euler_maruyama": x + g^2 dt score + g sqrt(dt) z, with g^2 dt = d(sigma^2)/dt dt; for a geometric schedule
  g^2 dt / sigma^2 = 2 ln(sigma_max / sigma_min) / steps, which exceeds 1 at a few tens of steps, so modes as stiff
  as 1/sigma^2 (a posterior score's likelihood term) overshoot and the chain diverges;
- "heun": Heun's second-order step of the probability-flow ODE dx/dsigma = -sigma score (Karras et al. 2022, Alg. 1):
  the Euler step gives x', and the step is taken with the mean of the slopes at (x, sigma) and (x', sigma'). Two
  score calls a step and no noise: given its start the chain is deterministic, so the randomness comes from the
  start (pure noise, or the re-noised state of a partial chain) and from the Langevin corrector, if any;
- "reverse_diffusion" (ancestral): x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z, whose
  coefficient (sigma^2 - sigma'^2) / sigma^2 stays below 1 for any step count (Song et al. 2021, App. E).

Works with any score function `score_fn(x, t) -> score` (x [B, ...], t [B]); the prior's network, an analytic
score in tests, or (later) a posterior score. Independent chains never interact: step sizes are per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sde import VESDE, _expand

ScoreFn = Callable[[Tensor, Tensor], Tensor]
PREDICTORS = ("euler_maruyama", "heun", "reverse_diffusion")


@torch.no_grad()
def sample_reverse_sde(
    score_fn: ScoreFn,
    sde: VESDE,
    shape: tuple[int, ...],
    *,
    steps: int = 1000,
    corrector_steps: int = 0,
    snr: float = 0.16,
    predictor: str = "euler_maruyama",
    t_min: float = 1e-5,
    t_start: float = 1.0,
    x_start: Tensor | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Integrate the reverse-time SDE dx = -g(t)^2 score(x, t) dt + g(t) dw from t_start down to t_min.

    Args:
        score_fn: score of the noised distribution, `score_fn(x [B, ...], t [B]) -> [B, ...]`.
        sde: the forward SDE (its schedule sets the time grid's noise levels).
        shape: output shape [B, ...].
        steps: number of predictor steps, uniform in t (geometric in sigma).
        corrector_steps: Langevin corrector steps after each predictor step (0: predictor only).
        predictor: "euler_maruyama", "heun" or "reverse_diffusion" (see the module docstring).
        snr: signal-to-noise ratio setting the Langevin step size (Song et al. 2021, Alg. 4).
        t_min: final time (sigma(t_min) is the remaining noise, removed by `denoise`).
        t_start: initial time; with `x_start` given, x_start is re-noised to sigma(t_start) (a partial chain),
            otherwise the chain starts from N(0, sigma_max^2) and t_start must be 1.
        x_start: optional state [B, ...] to re-noise and start from.
        denoise: finish with the Tweedie step x + sigma(t_min)^2 score(x, t_min).
        generator: source of randomness (same generator state gives the same samples).
        progress: optional callback `progress(step, steps)` called after each step.

    Returns:
        Samples of the given shape, in the units the score function works in.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if not 0.0 <= t_min < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_start <= 1, got t_min={t_min}, t_start={t_start}")
    if x_start is None:
        if t_start != 1.0:
            raise ValueError("t_start < 1 needs x_start, the state to re-noise")
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        if tuple(x_start.shape) != tuple(shape):
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}, expected {tuple(shape)}")
        device, dtype = x_start.device, x_start.dtype
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        sigma0 = sde.sigma(torch.tensor(t_start, device=device, dtype=dtype))
        x = x_start + sigma0 * noise

    batch = shape[0]
    times = torch.linspace(t_start, t_min, steps + 1, device=x.device, dtype=torch.float64)
    for i in range(steps):
        t = times[i].to(x.dtype).expand(batch)
        t_next = times[i + 1].to(x.dtype).expand(batch)
        if predictor == "reverse_diffusion":
            var = sde.sigma(t) ** 2 - sde.sigma(t_next) ** 2
        else:
            dt = (times[i] - times[i + 1]).to(x.dtype)
            var = sde.diffusion(t) ** 2 * dt  # variance added by the forward SDE over the step
        if predictor == "heun":
            sigma, sigma_next = _expand(sde.sigma(t), x), _expand(sde.sigma(t_next), x)
            slope = -sigma * score_fn(x, t)
            euler = x + (sigma_next - sigma) * slope
            x = x + (sigma_next - sigma) * 0.5 * (slope - sigma_next * score_fn(euler, t_next))
        else:
            x_mean = x + _expand(var, x) * score_fn(x, t)
            if i < steps - 1:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x_mean + _expand(var.sqrt(), x) * noise
            else:
                x = x_mean  # the last step adds no noise: the chain ends at the mean
        for _ in range(corrector_steps):
            x = langevin_step(score_fn, x, t_next, snr, generator)
        if progress is not None:
            progress(i + 1, steps)
    if denoise:
        t_end = times[-1].to(x.dtype).expand(batch)
        x = x + _expand(sde.sigma(t_end) ** 2, x) * score_fn(x, t_end)
    return x


def langevin_step(score_fn: ScoreFn, x: Tensor, t: Tensor, snr: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """One Langevin MCMC step at fixed noise level, with step size 2 (snr |z| / |score|)^2 per sample."""
    score = score_fn(x, t)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    score_norm = torch.linalg.vector_norm(score.flatten(1), dim=1)
    noise_norm = torch.linalg.vector_norm(noise.flatten(1), dim=1)
    step = 2.0 * (snr * noise_norm / score_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return x + _expand(step, x) * score + _expand((2.0 * step).sqrt(), x) * noise
