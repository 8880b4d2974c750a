"""MALA on Gaussian targets: moments, adaptation toward the target acceptance, rejection of non-finite points."""

import math

import torch

from scorelens.inference.mala import MALA

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
