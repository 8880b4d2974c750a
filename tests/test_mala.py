"""MALA against exact answers: a correlated Gaussian's moments, a periodic (von Mises) target moved on the real line
(and the bias that folding proposals before the proposal density gives), adaptation toward the target acceptance,
its restart, rejection of non-finite points."""

import math

import pytest
import torch
from scipy import integrate, special

from scorelens.inference.mala import MALA, MALATuning

F64 = torch.float64


def gaussian(mean, cov):
    prec = torch.linalg.inv(cov)

    def log_prob(x):
        d = x - mean
        return -0.5 * torch.einsum("bi,ij,bj->b", d, prec, d), -d @ prec

    return log_prob


def test_two_dimensional_gaussian_moments():
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)
    kernel = MALA(gaussian(mean, cov), precond=torch.diagonal(cov).clone())
    g = torch.Generator().manual_seed(0)
    state = kernel.init(torch.zeros(64, 2, dtype=F64), step=0.5)
    state = kernel.run(state, 300, g, adapt=True)
    assert abs(state.acceptance.mean().item() - 0.574) < 0.1
    draws = []
    for _ in range(400):
        state = kernel.step(state, g)
        draws.append(state.x)
    x = torch.cat(draws)
    assert torch.all((x.mean(0) - mean).abs() < 0.05 * mean.abs()), x.mean(0)
    var = x.var(0)
    assert torch.all((var / torch.diagonal(cov) - 1).abs() < 0.05), var
    assert abs(torch.corrcoef(x.T)[0, 1].item() - 0.6 / math.sqrt(0.5)) < 0.05


def test_adaptation_moves_acceptance_toward_target():
    mean = torch.zeros(10, dtype=F64)
    cov = torch.eye(10, dtype=F64)
    kernel = MALA(gaussian(mean, cov), precond=torch.ones(10, dtype=F64))
    g = torch.Generator().manual_seed(1)
    for start in (0.05, 3.0):
        state = kernel.run(kernel.init(torch.zeros(32, 10, dtype=F64), step=start), 400, g, adapt=True)
        after = kernel.init(state.x, state.step)
        after = kernel.run(after, 200, g)
        assert abs(after.acceptance.mean().item() - 0.574) < 0.08, (start, after.acceptance.mean())


def test_nonfinite_proposals_are_rejected_and_counted():
    def half_plane(x):  # standard normal restricted to x0 > 0; NaN on the other side
        lp = -0.5 * (x**2).sum(-1)
        lp = torch.where(x[:, 0] > 0, lp, torch.full_like(lp, math.nan))
        return lp, -x

    kernel = MALA(half_plane, precond=torch.ones(2, dtype=F64))
    g = torch.Generator().manual_seed(2)
    state = kernel.run(kernel.init(torch.full((16, 2), 0.5, dtype=F64), step=1.5), 200, g)
    assert (state.x[:, 0] > 0).all()
    assert state.nonfinite.sum() > 0
    assert torch.isfinite(state.log_prob).all()


def chain_averages(kernel, state, n_steps, stats, generator):
    """Run `n_steps` non-adapting steps; each chain's time average of stats(x) -> [B, K]. Chains are independent, so
    the averages are independent across chains and their spread gives an honest Monte Carlo error."""
    total = 0.0
    for _ in range(n_steps):
        state = kernel.step(state, generator)
        total = total + stats(state.x)
    return total / n_steps


def within_mc_error(averages, truth, n_se=4.0):
    """Whether the mean over chains of averages [B, K] is within n_se standard errors of truth [K]; the z-scores."""
    mean = averages.mean(0)
    se = averages.std(0) / math.sqrt(averages.shape[0])
    z = (mean - torch.as_tensor(truth, dtype=mean.dtype)) / se
    return bool((z.abs() < n_se).all()), z


def test_correlated_anisotropic_gaussian_within_monte_carlo_error():
    """2000 chains with a diagonal preconditioner on a Gaussian of correlation 0.85 and widths 2 and 0.7: mean and
    covariance within 4 Monte Carlo standard errors of the exact ones."""
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    cov = torch.tensor([[4.0, 1.2], [1.2, 0.5]], dtype=F64)
    kernel = MALA(gaussian(mean, cov), precond=torch.diagonal(cov).clone())
    g = torch.Generator().manual_seed(10)
    state = kernel.run(kernel.init(torch.zeros(2000, 2, dtype=F64), step=0.5), 300, g, adapt=True)
    state = kernel.run(state, 200, g)  # forget the adaptation's last moves

    def stats(x):
        d = x - mean
        return torch.stack([x[:, 0], x[:, 1], d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], dim=-1)

    averages = chain_averages(kernel, state, 400, stats, g)
    ok, z = within_mc_error(averages, [1.0, -2.0, 4.0, 1.2, 0.5])
    assert ok, z


VM_KAPPA, VM_MU = 2.0, 0.3  # concentration and mean of the von Mises target; its mass straddles the fold at 0


def von_mises(x):
    """log p and gradient of a von Mises density in the angle x [B, 1], unfolded: periodic on the real line."""
    return VM_KAPPA * torch.cos(x[:, 0] - VM_MU), (-VM_KAPPA * torch.sin(x[:, 0] - VM_MU))[:, None]


def von_mises_truth():
    """E[cos(x - mu)] = I1(k)/I0(k), E[sin(x - mu)] = 0, and P(x folded into [0, 2 pi) lies below pi)."""
    below_pi = integrate.quad(lambda t: math.exp(VM_KAPPA * math.cos(t - VM_MU)), 0.0, math.pi)[0]
    return [special.i1(VM_KAPPA) / special.i0(VM_KAPPA), 0.0, below_pi / (2 * math.pi * special.i0(VM_KAPPA))]


def folded_stats(x):
    """cos and sin of (x - mu), and whether x folded into [0, 2 pi) is below pi (the reported angle): [B, 3]."""
    folded = torch.remainder(x[:, 0], 2 * math.pi)
    return torch.stack([torch.cos(folded - VM_MU), torch.sin(folded - VM_MU), (folded < math.pi).to(x.dtype)], -1)


def test_periodic_target_moved_on_the_real_line_has_von_mises_moments():
    """MALA moves the angle on the real line, folding only to report: the circular moments and the reported
    angle's distribution are exact within Monte Carlo error. The chains start at the fold (x = 0), and with steps
    of about 1.5 radians they cross it all the time."""
    kernel = MALA(von_mises, precond=torch.ones(1, dtype=F64))
    g = torch.Generator().manual_seed(11)
    state = kernel.run(kernel.init(torch.zeros(2000, 1, dtype=F64), step=1.0), 300, g, adapt=True)
    assert state.step.mean() > 1.0  # steps of order the target's width: folds are frequent
    averages = chain_averages(kernel, state, 400, folded_stats, g)
    ok, z = within_mc_error(averages, von_mises_truth())
    assert ok, z


def folded_before_q_step(x, lp, grad, step, generator):
    """One MALA step that folds the proposal into [0, 2 pi) before evaluating the proposal density (the previous
    kernel's behaviour), written out here with its own Gaussian proposal density."""
    def log_q(to, frm, g):
        return -0.5 * ((to - frm - 0.5 * step[:, None] ** 2 * g) ** 2).sum(-1) / step**2

    prop = x + 0.5 * step[:, None] ** 2 * grad + step[:, None] * torch.randn(x.shape, dtype=x.dtype,
                                                                             generator=generator)
    prop = torch.remainder(prop, 2 * math.pi)
    lp_new, grad_new = von_mises(prop)
    log_alpha = lp_new - lp + log_q(x, prop, grad_new) - log_q(prop, x, grad)
    accept = torch.log(torch.rand(lp.shape, dtype=x.dtype, generator=generator)) < log_alpha
    return (torch.where(accept[:, None], prop, x), torch.where(accept, lp_new, lp),
            torch.where(accept[:, None], grad_new, grad))


def test_folding_proposals_before_the_proposal_density_is_biased():
    """The regression behind the Cartesian angles: folding a proposal before q(x | x') is evaluated puts a folded
    point a whole period from where it was drawn, so q no longer matches the move and detailed balance fails. With
    the same steps as the shipped kernel, on the same target, the moments come out tens of standard errors off."""
    kernel = MALA(von_mises, precond=torch.ones(1, dtype=F64))
    g = torch.Generator().manual_seed(12)
    step = kernel.run(kernel.init(torch.zeros(2000, 1, dtype=F64), step=1.0), 300, g, adapt=True).step
    x = torch.zeros(2000, 1, dtype=F64)
    lp, grad = von_mises(x)
    for _ in range(500):
        x, lp, grad = folded_before_q_step(x, lp, grad, step, g)
    total = 0.0
    for _ in range(400):
        x, lp, grad = folded_before_q_step(x, lp, grad, step, g)
        total = total + folded_stats(x)
    ok, z = within_mc_error(total / 400, von_mises_truth(), n_se=10.0)
    assert not ok and z.abs().max() > 10, z


def test_restart_resets_only_the_adaptation_counter():
    """A restarted tuning keeps the step sizes and counters, and its first adapted step takes the full gain
    (k = 1): log h moves by adapt_rate (alpha - target), as in a fresh run."""
    tuning = MALATuning.start(3, 0.7, F64, None)
    tuning.n_adapt = 500
    tuning.temperature = 2.0
    again = tuning.restart()
    assert again.n_adapt == 0 and torch.equal(again.step, tuning.step) and again.temperature == 2.0
    assert torch.equal(again.proposed, tuning.proposed)

    # a flat target accepts every proposal: alpha = 1, so the first step multiplies h by exp(1 - 0.574)
    kernel = MALA(lambda x: (torch.zeros(x.shape[0], dtype=F64), torch.zeros_like(x)), torch.ones(1, dtype=F64))
    g = torch.Generator().manual_seed(0)
    for t, k in ((tuning, 501), (again, 1)):
        state = kernel.step(kernel.resume(torch.zeros(3, 1, dtype=F64), t), g, adapt=True)
        assert state.n_adapt == k
        torch.testing.assert_close(state.step, t.step * math.exp(k**-0.6 * (1 - 0.574)))


@pytest.mark.parametrize("start", [0.0, 2 * math.pi - 1e-3])
def test_periodic_target_is_not_folded_by_the_kernel(start):
    """The kernel never folds: positions leave [0, 2 pi) freely (folding is for reporting only)."""
    kernel = MALA(von_mises, precond=torch.ones(1, dtype=F64))
    g = torch.Generator().manual_seed(13)
    state = kernel.run(kernel.init(torch.full((200, 1), start, dtype=F64), step=1.5), 50, g)
    assert (state.x < 0).any() or (state.x >= 2 * math.pi).any()
