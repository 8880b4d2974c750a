"""The reverse-SDE sampler, proven with exact scores of Gaussian data (no network involved)."""

import pytest
import torch

from scorelens.priors.sampling import sample_reverse_sde
from scorelens.priors.sde import VESDE, _expand


def gaussian_score(sde: VESDE, var: torch.Tensor):
    """Exact score of N(0, diag(var)) convolved with N(0, sigma(t)^2): -x / (var + sigma^2)."""
    def score(x, t):
        return -x / (var + _expand(sde.sigma(t), x) ** 2)
    return score


@pytest.mark.parametrize("smin,smax,scale", [(1e-5, 500.0, 1.0), (1e-5, 200.0, 3.0), (1e-3, 100.0, 0.2)])
def test_samples_reproduce_the_data_variance(smin, smax, scale):
    sde = VESDE(smin, smax)
    # per-pixel variances spanning a factor 9, so a sampler that only gets an average right fails
    var = ((torch.linspace(0.5, 1.5, 32 * 32) * scale) ** 2).reshape(1, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    x = sample_reverse_sde(gaussian_score(sde, var), sde, (400, 1, 32, 32), steps=300, generator=gen)
    ratio = (x.var(0, unbiased=True) / var[0]).flatten()
    # 400 samples give ~7% noise per pixel; pooled over 128 pixels per bin, ~0.6%
    binned = ratio.reshape(8, -1).mean(1)
    assert torch.all((binned - 1).abs() < 0.03), binned
    assert abs(x.mean().item()) < 0.02 * scale


def test_langevin_corrector_keeps_the_variance():
    sde = VESDE(1e-3, 100.0)
    var = torch.full((1, 1, 32, 32), 0.7**2)
    gen = torch.Generator().manual_seed(1)
    x = sample_reverse_sde(gaussian_score(sde, var), sde, (200, 1, 32, 32), steps=100, corrector_steps=2,
                           snr=0.05, generator=gen)
    assert abs(x.var().item() / 0.49 - 1) < 0.03


def test_partial_chain_from_an_intermediate_time_keeps_the_distribution():
    """Re-noising exact samples to sigma(t*) and integrating back from t* keeps N(0, var)."""
    sde = VESDE(1e-3, 100.0)
    var = torch.full((1, 1, 16, 16), 2.0)
    gen = torch.Generator().manual_seed(2)
    x0 = var.sqrt() * torch.randn((500, 1, 16, 16), generator=gen)
    x = sample_reverse_sde(gaussian_score(sde, var), sde, x0.shape, steps=150, t_start=0.6, x_start=x0,
                           generator=gen)
    assert abs(x.var().item() / 2.0 - 1) < 0.03
    # the partial chain is a Gibbs-style update: it must move the state, not return it
    assert (x - x0).abs().mean() > 0.1


def test_same_generator_state_gives_the_same_samples():
    sde = VESDE(1e-2, 10.0)
    score = gaussian_score(sde, torch.ones(1, 1, 8, 8))
    a = sample_reverse_sde(score, sde, (3, 1, 8, 8), steps=20, generator=torch.Generator().manual_seed(5))
    b = sample_reverse_sde(score, sde, (3, 1, 8, 8), steps=20, generator=torch.Generator().manual_seed(5))
    c = sample_reverse_sde(score, sde, (3, 1, 8, 8), steps=20, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_bad_arguments():
    sde = VESDE(1e-2, 10.0)
    score = gaussian_score(sde, torch.ones(1))
    with pytest.raises(ValueError, match="steps"):
        sample_reverse_sde(score, sde, (2, 1), steps=0)
    with pytest.raises(ValueError, match="x_start"):
        sample_reverse_sde(score, sde, (2, 1), t_start=0.5)
    with pytest.raises(ValueError, match="shape"):
        sample_reverse_sde(score, sde, (2, 1), t_start=0.5, x_start=torch.zeros(3, 1))


def test_reverse_diffusion_predictor_samples_the_data_distribution():
    sde = VESDE(1e-3, 100.0)
    var = ((torch.linspace(0.5, 1.5, 16 * 16)) ** 2).reshape(1, 1, 16, 16)
    gen = torch.Generator().manual_seed(4)
    x = sample_reverse_sde(gaussian_score(sde, var), sde, (800, 1, 16, 16), steps=600,
                           predictor="reverse_diffusion", generator=gen)
    binned = (x.var(0) / var[0]).flatten().reshape(4, -1).mean(1)
    assert torch.all((binned - 1).abs() < 0.04), binned


def test_reverse_diffusion_stays_bounded_where_euler_maruyama_overshoots():
    """With a score as stiff as 2 / sigma^2 (a prior and a likelihood term, each ~1/sigma^2) and 12 steps, the
    Euler-Maruyama coefficient g^2 dt / sigma^2 = 2 ln(1e5) / 12 = 1.9 makes the stiff mode grow (|1 - 2 * 1.9| > 1)
    while the reverse-diffusion step's coefficient stays below 1."""
    sde = VESDE(1e-3, 100.0)

    def stiff(x, t):
        return -2.0 * x / _expand(sde.sigma(t), x) ** 2

    gen = torch.Generator().manual_seed(5)
    em = sample_reverse_sde(stiff, sde, (64, 1, 4, 4), steps=12, denoise=False, generator=gen)
    gen = torch.Generator().manual_seed(5)
    rd = sample_reverse_sde(stiff, sde, (64, 1, 4, 4), steps=12, denoise=False, predictor="reverse_diffusion",
                            generator=gen)
    assert rd.abs().max() < 100.0 < em.abs().max()
    with pytest.raises(ValueError, match="predictor"):
        sample_reverse_sde(stiff, sde, (2, 1), steps=2, predictor="runge_kutta")


def test_heun_predictor_samples_the_data_distribution_at_second_order():
    """Exact Gaussian scores: the Heun probability-flow sampler reproduces per-pixel variances spanning a factor 9,
    and its error falls about fourfold when the steps double (second order)."""
    sde = VESDE(1e-3, 50.0)
    var = ((torch.linspace(0.5, 1.5, 16 * 16)) ** 2).reshape(1, 1, 16, 16)

    def error(steps):
        gen = torch.Generator().manual_seed(6)
        x = sample_reverse_sde(gaussian_score(sde, var), sde, (800, 1, 16, 16), steps=steps, predictor="heun",
                               generator=gen, dtype=torch.float64)
        return (x.var(0) / var[0]).flatten().reshape(4, -1).mean(1) - 1

    fine = error(100)
    assert torch.all(fine.abs() < 0.04), fine
    # the same starting noise at both step counts: the difference is the discretisation error alone
    coarse, mid = error(25).mean().item(), error(50).mean().item()
    assert abs(coarse - fine.mean().item()) > 3 * abs(mid - fine.mean().item()), (coarse, mid, fine.mean().item())
