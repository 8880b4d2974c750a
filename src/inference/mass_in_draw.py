"""The source drawn by the reverse posterior SDE with the mass and shifts updated inside it, at every SDE step.

Why: with the source clean, the mass block's conditional is far narrower than the mass posterior (a source drawn
for one mass fits the data only near that mass), so Gibbs sweeps move the mass by a sliver of its posterior width.
At diffusion time t of a source draw the image x_t is noisy, and the conditional of the mass given it is wide at
large t and narrows to the clean one as t -> 0:

    p(M | x_t, y) ~ p(M) p(y | M, x_t),   p(y | M, x_t) = integral p(y | M, x_0) p(x_0 | x_t) dx_0,

where p(x_0 | x_t) is the prior's (x_t depends on the data only through x_0). Updating M by a kernel that leaves
p(M | x_t, y) invariant between the SDE's steps leaves the joint p(M, x_t | y) invariant at every t, and each
step of the reverse SDE (for the M then held) carries p(x_t | M, y) to p(x_{t - dt} | M, y): a draw that starts
from a posterior sample re-noised to t_start (which is a draw of p(M, x_{t_start} | y)) ends at another posterior
sample, with the mass moved by as much as p(M | x_t, y) allowed on the way. With t_start high, that is most of its
posterior width per sweep.

The integral is the convolved likelihood that the image draws already use (`likelihood.py`,
`posterior_sde.py`): x_0 | x_t ~ N(x0_hat, sigma_t^2 I) with x0_hat = x_t + sigma_t^2 score_prior(x_t, t)
(Tweedie), A A^T by its row sums (`split.collapsed_log_likelihood` with z = x0_hat, rho = sigma_t). Both are
approximations: sigma_t^2 I overstates the spread of x_0 | x_t where sigma_t exceeds the prior's own spread, which
widens the mass conditional at the draw's start (it wanders more there, and the data pull it back as t falls).
x0_hat costs no network call: the predictor step that follows evaluates the prior's score at the same (x_t, t),
and reuses it (`CachedScore`). The mass moves by MALA steps whose size adapts within the draw, from the clean
conditional's step (where the draw ends) upward, by a constant-gain Robbins-Monro recursion on the acceptance: the
conditional widens by orders of magnitude between t_min and t_start, and no single step size serves both.
(Adapting within a draw, on a target that moves with t, is itself an approximation to the argument above.)

Measured (README "How the mass mixes"): on the linear-Gaussian toy it cuts theta_E's lag-1 autocorrelation from
0.72 to 0.10 (tests/test_mass_in_draw.py); on the demo it does not help and is off by default (stage setting
`mass_in_draw: 0`): from a draw started afresh (t_start = 1) the mass drifts (theta_E 1.28 -> 1.16 in the initial
stage; truth 1.307), the approximate conditional being biased at large t, and from t_start 0.5-0.6 the noisy
source still pins it (within-chain sd of theta_E 0.0003, as without). The spread sigma_t^2 replaced by Tweedie's
Var(x_0 | x_t) (the mean diagonal of the denoiser's Jacobian, one more network call a step) drifted as well
(1.28 -> 1.20).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..priors.sampling import sample_reverse_sde
from .mala import MALA
from .posterior_sde import posterior_score
from .split import collapsed_log_likelihood

# gain of the in-draw step-size recursion: log h moves by GAIN (accepted - target) per MALA step
GAIN = 0.5


class CachedScore:
    """score(x, t) that returns the last value when called again with the same x (same tensor) and t: the mass
    update and the predictor step that follows it both need the prior's score at the state the step starts from."""

    def __init__(self, score: Callable[[Tensor, Tensor], Tensor]):
        self.score = score
        self._key: tuple[Tensor, Tensor] | None = None
        self._value: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self._key is not None and self._key[0] is x and torch.equal(self._key[1], t):
            return self._value
        value = self.score(x, t)
        self._key, self._value = (x, t.clone()), value
        return value


def source_and_mass(problem, precond: Tensor, u: Tensor, lens_light: Tensor, kernels: Tensor, sde_settings, *,
                    x_start: Tensor | None, t_start: float, t_min: float, temperature: float, step: Tensor,
                    mala_steps: int, target_accept: float, generator: torch.Generator,
                    covariance: str = "rowsum") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One source draw with `mala_steps` MALA steps on the free mass and shift coordinates before each predictor
    step (module docstring).

    problem: the sampler's `Problem`; precond [D_free]: MALA's preconditioner; u [B, D]: the sampled vector at the
    draw's start; lens_light [B, m, m] (flux), held fixed; kernels: the forward model's PSFs; x_start [B, n, n] the
    current source (flux) re-noised to t_start (None: drawn afresh from t = 1); step [B]: the chains' MALA step
    sizes for the clean conditional, where the in-draw steps start.
    Returns the source [B, n, n] (flux), u [B, D], and the in-draw MALA steps accepted and proposed per chain [B].
    """
    space, model, likelihood = problem.space, problem.model, problem.likelihood
    prior, flux = problem.priors["source"], problem.flux["source"]
    prior_score = CachedScore(prior.score)
    current = {"u": u}

    def build(u_now: Tensor):
        mass, shifts = space.unpack(u_now)
        op = model.source_operator(mass, shifts, kernels)
        rest = model.lens_light_operator(shifts, kernels)(lens_light)
        return posterior_score(prior_score, prior.sde.sigma, likelihood, op, rest, flux, temperature,
                               covariance=sde_settings.covariance)

    current["score"] = build(u)
    h = step.clone()
    accepted = torch.zeros_like(step, dtype=torch.long)
    proposed = torch.zeros_like(step, dtype=torch.long)

    def update_mass(x: Tensor, t: Tensor) -> None:
        nonlocal h, accepted, proposed
        sigma = prior.sde.sigma(t)
        x0_hat = x + (sigma**2).reshape(-1, *([1] * (x.ndim - 1))) * prior_score(x, t)
        z = flux.to_flux(x0_hat[:, 0])
        rho = float(sigma[0]) * flux.scale
        u0 = current["u"]

        log_prob = space.free_log_prob(u0, lambda mass, shifts: collapsed_log_likelihood(
            model, likelihood, mass, shifts, {"source": z, "lens_light": lens_light}, {"source": rho}, kernels,
            temperature, covariance))
        kernel = MALA(log_prob, precond, target_accept=target_accept)
        chain = kernel.init(space.free_part(u0), h)
        for _ in range(mala_steps):
            before = chain.accepted
            chain = kernel.step(chain, generator)
            h = chain.step = h * torch.exp(GAIN * ((chain.accepted - before).to(h) - target_accept))
        accepted = accepted + chain.accepted
        proposed = proposed + chain.proposed
        if bool(chain.accepted.any()):
            current["u"] = space.embed(chain.x, u0)
            current["score"] = build(current["u"])

    b, n = lens_light.shape[0], model.source.n
    start = None if x_start is None else flux.to_net(x_start)[:, None]
    x = sample_reverse_sde(
        lambda xx, tt: current["score"](xx, tt), prior.sde, (b, 1, n, n), steps=sde_settings.steps,
        corrector_steps=sde_settings.corrector_steps, snr=sde_settings.snr, t_min=t_min,
        predictor=sde_settings.predictor, t_start=t_start, x_start=start, generator=generator,
        device=lens_light.device, dtype=lens_light.dtype, before_step=update_mass)
    return flux.to_flux(x[:, 0]), current["u"], accepted, proposed

