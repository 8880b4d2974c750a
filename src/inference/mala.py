"""Metropolis-adjusted Langevin (MALA) for batches of independent chains, with a diagonal preconditioner.

Proposal for chain b with step size h_b and preconditioner M = diag(m) (the squared scale of each coordinate):

    x' = x + (h^2 / 2) M grad log p(x) + h sqrt(M) xi,    xi ~ N(0, I)

accepted with probability min(1, p(x') q(x | x') / (p(x) q(x' | x))), with q the Gaussian above evaluated at the
proposal exactly as drawn. The kernel moves on the real line in every coordinate: a periodic coordinate must not
be folded into its period between drawing x' and evaluating q (the folded point is at a distance of about one
period from x, which breaks detailed balance); sample such quantities through unconstrained coordinates
(`parameters.py` samples angles through Cartesian pairs) or fold them only when reporting. Proposals whose log
density or gradient is not finite (outside the prior's support, a NaN from the model) are rejected and counted.
During burn-in the step size of each chain follows a Robbins-Monro recursion toward the target acceptance rate
(0.574 is optimal for MALA in high dimension, Roberts & Rosenthal 1998): the k-th adapted step multiplies h by
exp(adapt_rate k^-0.6 (alpha - target)), k counted from the last restart (each Gibbs stage restarts it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

LogProbFn = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class MALAState:
    """x: [B, D] positions; log_prob: [B]; grad: [B, D]; step: [B] step sizes; accepted, proposed, nonfinite: [B]
    counters (int64); n_adapt: adaptation steps taken since the last restart (`MALATuning.restart`)."""

    x: Tensor
    log_prob: Tensor
    grad: Tensor
    step: Tensor
    accepted: Tensor
    proposed: Tensor
    nonfinite: Tensor
    n_adapt: int = 0

    @property
    def acceptance(self) -> Tensor:
        """Acceptance rate so far per chain, [B]."""
        return self.accepted.double() / self.proposed.clamp(min=1).double()

    def tuning(self, temperature: float | None = None) -> MALATuning:
        """What carries over to the next run of the kernel on another target (the next Gibbs sweep): step sizes
        and counters, with the temperature they were used at."""
        return MALATuning(self.step, self.accepted, self.proposed, self.nonfinite, self.n_adapt,
                          None if temperature is None else float(temperature))


@dataclass
class MALATuning:
    """The part of MALA's state that lives from one Gibbs sweep to the next, for B chains (the position, log
    density and gradient do not: the target changes with the images between sweeps).

    step: [B] step sizes, in units of the preconditioner's scales; accepted, proposed, nonfinite: [B] counts
    (int64); n_adapt: adaptation steps taken since the last restart (the current stage's start); temperature: the
    likelihood temperature the step sizes were last used at (None before the first sweep).
    """

    step: Tensor
    accepted: Tensor
    proposed: Tensor
    nonfinite: Tensor
    n_adapt: int = 0
    temperature: float | None = None

    @classmethod
    def start(cls, chains: int, step: float, dtype: torch.dtype, device: torch.device | str | None) -> MALATuning:
        """`chains` chains with step size `step`, nothing proposed yet."""
        zeros = lambda: torch.zeros(chains, dtype=torch.long, device=device)  # noqa: E731
        return cls(torch.full((chains,), step, dtype=dtype, device=device), zeros(), zeros(), zeros())

    def restart(self) -> MALATuning:
        """The same step sizes and counters with the adaptation counter at zero: the next adapted step takes the
        Robbins-Monro recursion's first, largest gain, as at the start of a run (a Gibbs stage's burn-in adapts
        from scratch, starting from the step sizes the previous stage ended with)."""
        return replace(self, n_adapt=0)

    def at_temperature(self, temperature: float) -> MALATuning:
        """The step sizes carried to `temperature`: where the likelihood dominates, the conditional's width scales
        as sqrt(T), so a step tuned at an earlier, hotter sweep is rescaled by sqrt(T / T_before)."""
        step = self.step
        if self.temperature is not None and self.temperature != temperature:
            step = step * math.sqrt(temperature / self.temperature)
        return replace(self, step=step, temperature=float(temperature))

    def repeat(self, k: int) -> MALATuning:
        """The tuning of k copies of the chains, copy-major ([k B]: copy j of chain b at j B + b), as when every
        chain branches into k (`GibbsSampler.branch`)."""
        rep = lambda t: t.repeat(k)  # noqa: E731
        return replace(self, step=rep(self.step), accepted=rep(self.accepted), proposed=rep(self.proposed),
                       nonfinite=rep(self.nonfinite))

    def take(self, index: Tensor) -> MALATuning:
        """The tuning of chains `index` ([B'] chain indices), as when chains restart from others' states
        (`GibbsSampler.reseed`)."""
        return replace(self, step=self.step[index], accepted=self.accepted[index], proposed=self.proposed[index],
                       nonfinite=self.nonfinite[index])

    def state_dict(self) -> dict:
        """Plain tensors and numbers (`torch.load(weights_only=True)` reads them)."""
        return {"step": self.step, "accepted": self.accepted, "proposed": self.proposed, "nonfinite": self.nonfinite,
                "n_adapt": self.n_adapt, "temperature": self.temperature}

    @classmethod
    def from_state_dict(cls, d: dict) -> MALATuning:
        return cls(d["step"], d["accepted"], d["proposed"], d["nonfinite"], int(d["n_adapt"]),
                   None if d["temperature"] is None else float(d["temperature"]))


def _log_q(to: Tensor, frm: Tensor, grad_frm: Tensor, step: Tensor, precond: Tensor) -> Tensor:
    """log q(to | frm) up to a constant that cancels: the Gaussian of the Langevin proposal, [B]."""
    mean = frm + 0.5 * step[:, None] ** 2 * precond * grad_frm
    return -0.5 * ((to - mean) ** 2 / (step[:, None] ** 2 * precond)).sum(-1)


class MALA:
    """MALA kernel.

    Args:
        log_prob: maps x [B, D] to (log p(x) [B], grad [B, D]); -inf or NaN marks a point to reject.
        precond: [D] diagonal preconditioner (variances: roughly the posterior variance of each coordinate).
        target_accept: acceptance rate the step sizes are adapted toward.
        adapt_rate: scale of the adaptation steps; the k-th step moves log h by adapt_rate k^-0.6 (acc - target).
    """

    def __init__(self, log_prob: LogProbFn, precond: Tensor, target_accept: float = 0.574, adapt_rate: float = 1.0):
        self.log_prob = log_prob
        self.precond = precond
        self.target_accept = target_accept
        self.adapt_rate = adapt_rate

    def init(self, x: Tensor, step: float | Tensor) -> MALAState:
        lp, g = self.log_prob(x)
        b = x.shape[0]
        step = torch.as_tensor(step, dtype=x.dtype, device=x.device).expand(b).clone()
        zeros = torch.zeros(b, dtype=torch.long, device=x.device)
        return MALAState(x, lp, g, step, zeros, zeros.clone(), zeros.clone())

    def resume(self, x: Tensor, tuning: MALATuning) -> MALAState:
        """A state at x [B, D] that continues `tuning`'s step sizes and counters."""
        state = self.init(x, tuning.step)
        return replace(state, accepted=tuning.accepted, proposed=tuning.proposed, nonfinite=tuning.nonfinite,
                       n_adapt=tuning.n_adapt)

    def step(self, state: MALAState, generator: torch.Generator | None = None, adapt: bool = False) -> MALAState:
        x, lp, g, h = state.x, state.log_prob, state.grad, state.step
        m = self.precond.to(x)
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        prop = x + 0.5 * h[:, None] ** 2 * m * g + h[:, None] * m.sqrt() * noise
        lp_new, g_new = self.log_prob(prop)
        finite = torch.isfinite(lp_new) & torch.isfinite(g_new).all(-1)
        lp_new = torch.where(finite, lp_new, torch.full_like(lp_new, -math.inf))
        g_safe = torch.where(finite[:, None], g_new, torch.zeros_like(g_new))
        log_alpha = lp_new - lp + _log_q(x, prop, g_safe, h, m) - _log_q(prop, x, g, h, m)
        log_alpha = torch.where(finite, log_alpha, torch.full_like(log_alpha, -math.inf))
        u = torch.rand(lp.shape, dtype=x.dtype, device=x.device, generator=generator)
        accept = torch.log(u) < log_alpha
        new = replace(
            state,
            x=torch.where(accept[:, None], prop, x),
            log_prob=torch.where(accept, lp_new, lp),
            grad=torch.where(accept[:, None], g_safe, g),
            accepted=state.accepted + accept.long(),
            proposed=state.proposed + 1,
            nonfinite=state.nonfinite + (~finite).long(),
        )
        if adapt:
            k = state.n_adapt + 1
            alpha = torch.exp(torch.clamp(log_alpha, max=0.0))
            new.step = h * torch.exp(self.adapt_rate * k**-0.6 * (alpha - self.target_accept))
            new.n_adapt = k
        return new

    def run(self, state: MALAState, n_steps: int, generator: torch.Generator | None = None,
            adapt: bool = False) -> MALAState:
        for _ in range(n_steps):
            state = self.step(state, generator, adapt)
        return state
