"""The Gaussian likelihood and the convolved-likelihood score."""

import pytest
import torch

from scorelens.inference.likelihood import GaussianLikelihood
from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.grid import ExposureGrid, PixelGrid

F64 = torch.float64


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = ExposureGrid.regular((10, 10), 0.1, 2, n_exp=2, offsets=torch.tensor([[0.01, 0.0], [0.0, -0.02]]),
                                dtype=F64)
    fm = ForwardModel(grid, PixelGrid(16, 0.05), PixelGrid(20, 0.05))
    mass = {k: torch.tensor([v], dtype=F64) for k, v in
            dict(theta_E=0.4, gamma=1.0, q=0.8, phi=0.2, x0=0.0, y0=0.0).items()}
    shifts = torch.zeros(1, 2, 2, dtype=F64)
    psf = torch.rand(2, 5, 5, generator=g, dtype=F64)
    psf = psf / psf.sum((-2, -1), keepdim=True)
    data = torch.randn(2, 10, 10, generator=g, dtype=F64)
    var = torch.rand(2, 10, 10, generator=g, dtype=F64) + 0.5
    mask = torch.rand(2, 10, 10, generator=g) > 0.2
    return fm, mass, shifts, psf, GaussianLikelihood(data, var, mask), g


def test_convolved_score_tends_to_the_exact_gaussian_score():
    fm, mass, shifts, psf, like, g = problem()
    op = fm.source_operator(mass, shifts, psf)
    rest = torch.rand(1, 2, 10, 10, generator=g, dtype=F64)
    x = torch.randn(1, 16, 16, generator=g, dtype=F64, requires_grad=True)
    exact = torch.autograd.grad(like.log_prob(op(x) + rest).sum(), x)[0]
    sigma = torch.tensor([1e-9], dtype=F64)
    ours = like.convolved_score(op, op.adjoint, x.detach(), rest, op.diag_AAT(), sigma)
    torch.testing.assert_close(ours, exact, rtol=1e-7, atol=1e-10)


def test_temperature_and_noise_shrink_the_score():
    fm, mass, shifts, psf, like, g = problem(1)
    op = fm.source_operator(mass, shifts, psf)
    x = torch.randn(1, 16, 16, generator=g, dtype=F64)
    rest = torch.zeros(1, 2, 10, 10, dtype=F64)
    diag = op.diag_AAT()
    cold = like.convolved_score(op, op.adjoint, x, rest, diag, torch.tensor([0.0], dtype=F64))
    hot = like.convolved_score(op, op.adjoint, x, rest, diag, torch.tensor([0.0], dtype=F64), temperature=4.0)
    torch.testing.assert_close(hot, cold / 4)
    noisy = like.convolved_score(op, op.adjoint, x, rest, diag, torch.tensor([10.0], dtype=F64))
    assert noisy.norm() < 0.1 * cold.norm()


def test_chi2_and_masks():
    data = torch.tensor([[[1.0, 2.0], [3.0, float("nan")]]], dtype=F64)
    var = torch.tensor([[[1.0, 4.0], [0.0, 1.0]]], dtype=F64)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    like = GaussianLikelihood(data, var, mask)
    model = torch.zeros(1, 1, 2, 2, dtype=F64)
    # the NaN pixel and the zero-variance pixel drop out
    assert like.n_pixels.tolist() == [2]
    assert like.chi2(model).item() == pytest.approx(1.0 + 1.0)
    assert like.reduced_chi2(model).item() == pytest.approx(1.0)
    assert like.log_prob(model, temperature=2.0).item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="no usable pixel"):
        GaussianLikelihood(data, var, torch.zeros_like(mask))
