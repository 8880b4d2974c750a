import math

import torch
from scipy.integrate import quad

from scorelens.priors.losses import dsm_loss
from scorelens.priors.sde import VESDE, _expand


def test_dsm_loss_of_the_exact_score_matches_its_analytic_value():
    """For data N(0, s0^2) and the exact noised score, E|sigma s + z|^2 = s0^2 / (s0^2 + sigma^2) per pixel,
    averaged over t ~ U(eps, 1): an integral computed independently with scipy."""
    s0, eps = 2.0, 1e-5
    sde = VESDE(1e-3, 50.0)

    def exact(x, sigma):
        return -x / (s0**2 + _expand(sigma, x) ** 2)

    gen = torch.Generator().manual_seed(0)
    x0 = s0 * torch.randn((4000, 1, 8, 8), generator=gen, dtype=torch.float64)
    loss = dsm_loss(exact, sde, x0, generator=gen, t_eps=eps).item()
    integrand = lambda t: s0**2 / (s0**2 + (1e-3 * (5e4) ** t) ** 2)  # noqa: E731
    expected = quad(integrand, eps, 1.0, limit=200)[0] / (1 - eps)
    assert math.isclose(loss, expected, rel_tol=0.03)

    # any other score does worse: the exact score is the minimiser
    def off(x, sigma):
        return 0.8 * exact(x, sigma)

    worse = dsm_loss(off, sde, x0, generator=torch.Generator().manual_seed(0), t_eps=eps).item()
    assert worse > loss * 1.02


def test_dsm_loss_is_differentiable_and_repeatable():
    sde = VESDE(1e-2, 10.0)
    w = torch.tensor(0.5, requires_grad=True)

    def net(x, sigma):
        return -w * x / _expand(sigma, x) ** 2

    x0 = torch.randn(8, 1, 4, 4)
    a = dsm_loss(net, sde, x0, generator=torch.Generator().manual_seed(1))
    b = dsm_loss(net, sde, x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    a.backward()
    assert torch.isfinite(w.grad)
