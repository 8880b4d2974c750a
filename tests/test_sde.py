import math

import pytest
import torch

from scorelens.priors.sde import VESDE


@pytest.mark.parametrize("smin,smax", [(1e-5, 500.0), (1e-5, 200.0), (1e-3, 100.0)])
def test_sigma_is_the_geometric_schedule(smin, smax):
    sde = VESDE(smin, smax)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    expected = torch.tensor([smin * (smax / smin) ** float(ti) for ti in t], dtype=torch.float64)
    torch.testing.assert_close(sde.sigma(t), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.t_of_sigma(sde.sigma(t)), t, rtol=0, atol=1e-12)


def test_diffusion_squared_is_the_derivative_of_the_variance():
    sde = VESDE(1e-3, 100.0)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-6
    dvar = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(sde.diffusion(t) ** 2, dvar, rtol=1e-7, atol=0)


def test_perturb_and_prior_sample_statistics():
    sde = VESDE(1e-2, 50.0)
    gen = torch.Generator().manual_seed(3)
    x = sde.prior_sample((200_000,), generator=gen, dtype=torch.float64)
    assert abs(x.std().item() / 50.0 - 1) < 0.01
    x0 = torch.full((4, 3), 2.0, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    noise = torch.ones_like(x0)
    torch.testing.assert_close(sde.perturb(x0, t, noise), 2.0 + sde.sigma(t)[:, None].expand(4, 3))


@pytest.mark.parametrize("args", [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (-1.0, 3.0), (1e-3, math.inf)])
def test_invalid_ranges_are_rejected(args):
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(*args)
