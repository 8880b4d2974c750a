"""Sampling a VE SDE backwards in time: a predictor step (`predictors.py`: Euler-Maruyama, Heun or reverse
diffusion) on the time grid of `schedule.py`, each followed by optional Langevin corrector steps (`correctors.py`),
and a final denoising step.

Works with any score function `score_fn(x, t) -> score` (x [B, ...], t [B]): the prior's network, an analytic
score in tests, or a posterior score (`scorelens.inference.posterior_sde`). Independent chains never interact:
step sizes are per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .correctors import langevin_step
from .predictors import PREDICTORS, ScoreFn, predictor_step, tweedie_denoise
from .schedule import ReverseSchedule
from .sde import VESDE

__all__ = ["PREDICTORS", "ScoreFn", "langevin_step", "sample_reverse_sde"]


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
    start_noised: bool = False,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
    before_step: Callable[[Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Integrate the reverse-time SDE dx = -g(t)^2 score(x, t) dt + g(t) dw from t_start down to t_min.

    Args:
        score_fn: score of the noised distribution, `score_fn(x [B, ...], t [B]) -> [B, ...]`.
        sde: the forward SDE (its schedule sets the time grid's noise levels).
        shape: output shape [B, ...].
        steps: number of predictor steps, uniform in t (geometric in sigma).
        corrector_steps: Langevin corrector steps after each predictor step (0: predictor only).
        predictor: "euler_maruyama", "heun" or "reverse_diffusion" (see `predictors.py`).
        snr: signal-to-noise ratio setting the Langevin step size (Song et al. 2021, Alg. 4).
        t_min: final time (sigma(t_min) is the remaining noise, removed by `denoise`).
        t_start: initial time; with `x_start` given, x_start is re-noised to sigma(t_start) (a partial chain),
            otherwise the chain starts from N(0, sigma_max^2) and t_start must be 1.
        x_start: optional state [B, ...] to re-noise and start from.
        start_noised: x_start is already a state at t_start (noise sigma(t_start) in it): start from it as it is.
        denoise: finish with the Tweedie step x + sigma(t_min)^2 score(x, t_min).
        generator: source of randomness (same generator state gives the same samples).
        progress: optional callback `progress(step, steps)` called after each step.
        before_step: optional callback `before_step(x, t [B])` called before each predictor step with the state it
            steps from (a caller that updates what `score_fn` depends on, e.g. the mass during a source draw).

    Returns:
        Samples of the given shape, in the units the score function works in.
    """
    schedule = ReverseSchedule(t_start, t_min, steps)
    predict = predictor_step(predictor)
    if start_noised and x_start is not None:
        if tuple(x_start.shape) != tuple(shape):
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}, expected {tuple(shape)}")
        x = x_start
    else:
        x = schedule.start(sde, shape, x_start, generator, device, dtype)
    batch = shape[0]
    for times in schedule.walk(batch, x.dtype, x.device):
        if before_step is not None:
            before_step(x, times.t)
        x = predict(score_fn, sde, x, times, generator)
        for _ in range(corrector_steps):
            x = langevin_step(score_fn, x, times.t_next, snr, generator)
        if progress is not None:
            progress(times.index + 1, steps)
    if denoise:
        x = tweedie_denoise(score_fn, sde, x, schedule.end(batch, x.dtype, x.device))
    return x

