"""The time grid of a reverse-SDE chain and where the chain starts on it.

A chain runs `steps` steps uniform in t from t_start down to t_min; under the VE SDE's geometric schedule the noise
levels sigma(t) are then geometric. It starts at t_start, either from the SDE's t = 1 marginal N(0, sigma_max^2)
(a fresh draw) or from a given state re-noised to sigma(t_start) (a partial chain, which keeps the state's
distribution when the score is exact).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .sde import VESDE


@dataclass(frozen=True)
class StepTimes:
    """One step of the chain, from time t to t_next < t.

    index: the step's position (0-based); t, t_next: [B] times in the chain's dtype; dt: 0-d t - t_next (taken
    in float64, then cast); last: whether it is the chain's final step.
    """

    index: int
    t: Tensor
    t_next: Tensor
    dt: Tensor
    last: bool


@dataclass(frozen=True)
class ReverseSchedule:
    """`steps` steps uniform in t from `t_start` down to `t_min` (0 <= t_min < t_start <= 1)."""

    t_start: float
    t_min: float
    steps: int

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.t_min < self.t_start <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_start <= 1, got t_min={self.t_min}, t_start={self.t_start}")

    def times(self, device: torch.device | str | None = None) -> Tensor:
        """The steps + 1 times of the grid, t_start first, [steps + 1] float64 (the grid is built in float64 so
        that its spacing does not depend on the chain's dtype)."""
        return torch.linspace(self.t_start, self.t_min, self.steps + 1, device=device, dtype=torch.float64)

    def walk(self, batch: int, dtype: torch.dtype, device: torch.device | str | None) -> Iterator[StepTimes]:
        """The steps in order, with times expanded to the batch [B] in `dtype`."""
        times = self.times(device)
        for i in range(self.steps):
            yield StepTimes(i, times[i].to(dtype).expand(batch), times[i + 1].to(dtype).expand(batch),
                            (times[i] - times[i + 1]).to(dtype), i == self.steps - 1)

    def end(self, batch: int, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
        """The final time t_min as [B] in `dtype` (where the chain's remaining noise is sigma(t_min))."""
        return self.times(device)[-1].to(dtype).expand(batch)

    def start(self, sde: VESDE, shape: tuple[int, ...], x_start: Tensor | None = None,
              generator: torch.Generator | None = None, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """The chain's state at t_start, [B, ...]: a draw of N(0, sigma_max^2) when `x_start` is None (then t_start
        must be 1), else x_start [B, ...] plus N(0, sigma(t_start)^2) noise (in x_start's device and dtype)."""
        if x_start is None:
            if self.t_start != 1.0:
                raise ValueError("t_start < 1 needs x_start, the state to re-noise")
            return sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
        if tuple(x_start.shape) != tuple(shape):
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}, expected {tuple(shape)}")
        device, dtype = x_start.device, x_start.dtype
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        sigma0 = sde.sigma(torch.tensor(self.t_start, device=device, dtype=dtype))
        return x_start + sigma0 * noise
