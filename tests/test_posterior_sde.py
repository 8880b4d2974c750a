"""The posterior SDE on linear-Gaussian problems, whose posteriors are known in closed form."""

from types import SimpleNamespace

import pytest
import torch

from scorelens.inference.likelihood import GaussianLikelihood
from scorelens.inference.posterior_sde import FluxMap, sample_component
from scorelens.inference.sde_settings import SDESettings
from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.grid import ExposureGrid, PixelGrid
from scorelens.priors.sde import VESDE

F64 = torch.float64


def dense(op, n):
    cols = []
    for j in range(n * n):
        e = torch.zeros(1, n * n, dtype=F64)
        e[0, j] = 1
        cols.append(op(e.reshape(1, n, n)).reshape(-1))
    return torch.stack(cols, -1)


def gaussian_prior(sde):
    """N(0, 1) per pixel in network units: the noised score is -x / (1 + sigma_t^2)."""
    return SimpleNamespace(sde=sde, score=lambda x, t: -x / (1.0 + sde.sigma(t)[:, None, None, None] ** 2))


@pytest.mark.parametrize("which, covariance, corrector, tol_mean, tol_var", [
    # A = I: the convolved likelihood is close; its flat-prior approximation of p(x_0 | x_t) biases the mean a little
    ("lens_light", "diag", 0, 0.5, 0.2),
    # lensing + PSF, ill-conditioned: the diagonal of A A^T over-disperses the samples (variance up to ~2x here,
    # ~6x without the Langevin corrector); this bounds that behaviour so a regression shows
    ("source", "diag", 2, 0.8, 1.2),
])  # 400 steps: ~30 s on 2 CPU cores for the three cases
def test_samples_against_the_closed_form_posterior(which, covariance, corrector, tol_mean, tol_var, steps=400):
    s, mean, cov = run_problem(which, covariance, corrector, steps)
    sd = cov.diagonal().sqrt()
    assert ((s.mean(0) - mean).abs() / sd).max() < tol_mean
    assert ((s.var(0) / cov.diagonal()).mean() - 1).abs() < tol_var


def test_row_sums_keep_a_short_chain_stable_where_the_diagonal_diverges():
    s, _, _ = run_problem("source", "diag", 0, steps=20)
    assert not torch.isfinite(s).all() or s.abs().max() > 1e6
    s, mean, cov = run_problem("source", "rowsum", 0, steps=20)
    assert torch.isfinite(s).all() and ((s.mean(0) - mean).abs() / cov.diagonal().sqrt()).max() < 20


@pytest.mark.parametrize("which", ["lens_light", "source"])
def test_fast_solver_agrees_with_the_long_one(which):
    """The second-order multistep solver (`dpmpp_2m_sde`) at 20 steps draws what Euler-Maruyama draws at 400
    (both under the row-sum convolved likelihood, whose own error against the exact posterior is the other tests'
    business): the two sets of 256 draws have the same mean in every pixel (z-scores of the difference below 4 in
    all 36, which pure chance exceeds with probability 0.002) and variances within 15%."""
    fast, _, _ = run_problem(which, "rowsum", 0, steps=20, predictor="dpmpp_2m_sde")
    long, _, _ = run_problem(which, "rowsum", 0, steps=400)
    z = (fast.mean(0) - long.mean(0)) / ((fast.var(0) + long.var(0)) / fast.shape[0]).sqrt()
    assert z.abs().max() < 4
    assert abs(float(fast.var(0).mean() / long.var(0).mean()) - 1) < 0.15
    # at 10 steps Euler-Maruyama's steps overshoot (g^2 dt > sigma^2) and its draws blow up
    short, _, _ = run_problem(which, "rowsum", 0, steps=10)
    assert float(short.var(0).mean() / long.var(0).mean()) > 100


def run_problem(which, covariance, corrector, steps, predictor="euler_maruyama"):
    n, b = 6, 256
    grid = ExposureGrid.regular((6, 6), 0.1, 1, n_exp=1, dtype=F64)
    fm = ForwardModel(grid, PixelGrid(n, 0.12), PixelGrid(n, 0.1))
    mass = {k: torch.tensor([v], dtype=F64) for k, v in
            dict(theta_E=0.15, gamma=1.0, q=0.9, phi=0.0, x0=0.0, y0=0.0).items()}
    if which == "lens_light":
        psf = torch.ones(1, 1, 1, dtype=F64)
    else:
        psf = torch.tensor([[[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]]], dtype=F64)

    def operator(batch):
        m = {k: v.expand(batch) for k, v in mass.items()}
        shifts = torch.zeros(batch, 1, 2, dtype=F64)
        return fm.source_operator(m, shifts, psf) if which == "source" else fm.lens_light_operator(shifts, psf)

    A = dense(operator(1), n)
    g = torch.Generator().manual_seed(0)
    flux = FluxMap(scale=10.0, offset=1.0)  # prior in flux: N(1, 100) per pixel
    truth = flux.to_flux(torch.randn(n * n, generator=g, dtype=F64))
    y = (A @ truth).reshape(1, 6, 6) + 0.3 * torch.randn(1, 6, 6, generator=g, dtype=F64)
    like = GaussianLikelihood(y, torch.full((1, 6, 6), 0.09, dtype=F64), torch.ones(1, 6, 6, dtype=torch.bool))
    cov = torch.linalg.inv(A.T @ A / 0.09 + torch.eye(n * n, dtype=F64) / 100.0)
    mean = cov @ (A.T @ y.reshape(-1) / 0.09 + torch.ones(n * n, dtype=F64) / 100.0)

    prior = gaussian_prior(VESDE(1e-3, 30.0))
    rest = torch.zeros(b, 1, 6, 6, dtype=F64)
    settings = SDESettings(steps=steps, corrector_steps=corrector, covariance=covariance, predictor=predictor)
    s = sample_component(prior, like, operator(b), rest, flux, settings, x_start=None, t_start=1.0,
                         generator=g).reshape(b, -1)
    return s, mean, cov
