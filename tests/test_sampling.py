"""The reverse-SDE sampler and its pieces (time schedule, predictor steps, Langevin corrector), proven with exact
scores of Gaussian data (no network involved)."""

import math

import pytest
import torch

from scorelens.priors.correctors import langevin_step
from scorelens.priors.predictors import (
    PREDICTORS,
    euler_maruyama,
    heun,
    predictor_step,
    reverse_diffusion,
    tweedie_denoise,
)
from scorelens.priors.sampling import sample_reverse_sde
from scorelens.priors.schedule import ReverseSchedule, StepTimes
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


# ---------------------------------------------------------------- the pieces: schedule, predictors, corrector


def test_schedule_steps_uniformly_in_time_from_start_to_end():
    schedule = ReverseSchedule(t_start=0.8, t_min=0.05, steps=5)
    steps = list(schedule.walk(3, torch.float32, "cpu"))
    assert [s.index for s in steps] == list(range(5)) and [s.last for s in steps] == [False] * 4 + [True]
    assert all(s.t.shape == (3,) and s.t.dtype == torch.float32 for s in steps)
    assert steps[0].t[0].item() == pytest.approx(0.8) and steps[-1].t_next[0].item() == pytest.approx(0.05)
    for a, b in zip(steps, steps[1:], strict=False):  # contiguous, each step 0.15 long
        assert torch.equal(a.t_next, b.t)
    assert all(s.dt.item() == pytest.approx(0.15) and (s.t - s.t_next)[0].item() == pytest.approx(0.15)
               for s in steps)
    assert schedule.end(2, torch.float64, "cpu").tolist() == [0.05, 0.05]
    for bad in (dict(t_start=0.5, t_min=0.5, steps=3), dict(t_start=1.2, t_min=0.0, steps=3),
                dict(t_start=1.0, t_min=-0.1, steps=3)):
        with pytest.raises(ValueError, match="t_min"):
            ReverseSchedule(**bad)


def test_schedule_start_is_pure_noise_or_the_renoised_state():
    sde = VESDE(1e-2, 10.0)
    fresh = ReverseSchedule(1.0, 1e-3, 4).start(sde, (2, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(fresh, 10.0 * torch.randn((2, 3), generator=torch.Generator().manual_seed(0)))
    x0 = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
    partial = ReverseSchedule(0.5, 1e-3, 4).start(sde, (2, 3), x0, generator=torch.Generator().manual_seed(1))
    sigma = 1e-2 * (10.0 / 1e-2) ** 0.5  # the geometric schedule at t = 0.5
    want = x0 + sigma * torch.randn((2, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(partial, want, rtol=1e-12, atol=0)


def linear_score(var):
    """Exact score of N(0, var) noised to sigma(t): -x / (var + sigma^2), given sigma by the caller's SDE."""
    def make(sde):
        return lambda x, t: -x / (var + _expand(sde.sigma(t), x) ** 2)
    return make


def one_step(t, t_next, batch=4, last=False, dtype=torch.float64):
    tt = torch.tensor(t, dtype=torch.float64)
    return StepTimes(0, tt.to(dtype).expand(batch), torch.tensor(t_next, dtype=dtype).expand(batch),
                     (tt - t_next).to(dtype), last)


@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion"])
def test_stochastic_predictor_steps_follow_their_formulas(name):
    """One step by hand: x + v score(x) + sqrt(v) z with v = g(t)^2 dt = 2 ln(smax/smin) sigma(t)^2 dt
    (Euler-Maruyama) or v = sigma(t)^2 - sigma(t')^2 (reverse diffusion); the last step stops at the mean and
    draws nothing."""
    sde = VESDE(1e-2, 20.0)
    score = linear_score(2.0)(sde)
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s, s2 = sde.sigma(torch.tensor(0.6, dtype=torch.float64)), sde.sigma(torch.tensor(0.5, dtype=torch.float64))
    v = 2 * math.log(20.0 / 1e-2) * s**2 * 0.1 if name == "euler_maruyama" else s**2 - s2**2
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = x - v * x / (2.0 + s**2) + v.sqrt() * z
    step = predictor_step(name)
    assert step is {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion}[name]
    got = step(score, sde, x, one_step(0.6, 0.5), torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    mean = step(score, sde, x, one_step(0.6, 0.5, last=True), gen)
    torch.testing.assert_close(mean, x - v * x / (2.0 + s**2), rtol=1e-10, atol=1e-12)
    assert torch.equal(gen.get_state(), state)


def test_heun_step_is_second_order_on_the_probability_flow():
    """For N(0, var) the probability-flow ODE dx/dsigma = -sigma score has the exact solution
    x(sigma') = x sqrt((var + sigma'^2) / (var + sigma^2)); Heun's local error falls ~8x when the step halves
    (third order locally), and the step draws no random numbers."""
    sde = VESDE(1e-2, 20.0)
    score = linear_score(0.5)(sde)
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)

    def error(h):
        gen = torch.Generator().manual_seed(0)
        state = gen.get_state()
        got = heun(score, sde, x, one_step(0.4, 0.4 - h, batch=1), gen)
        assert torch.equal(gen.get_state(), state)
        s, s2 = sde.sigma(torch.tensor(0.4, dtype=torch.float64)), sde.sigma(torch.tensor(0.4 - h, dtype=torch.float64))
        return abs((got - x * ((0.5 + s2**2) / (0.5 + s**2)).sqrt()).item())

    e1, e2 = error(0.02), error(0.01)
    assert 6 < e1 / e2 < 10, (e1, e2)


def test_langevin_corrector_step_size_follows_the_snr():
    """x + eps score + sqrt(2 eps) z with eps = 2 (snr |z| / |score|)^2 per sample."""
    sde = VESDE(1e-2, 20.0)
    score = linear_score(1.5)(sde)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    got = langevin_step(score, x, t, 0.1, torch.Generator().manual_seed(3))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sc = score(x, t)
    eps = 2 * (0.1 * z.flatten(1).norm(dim=1) / sc.flatten(1).norm(dim=1)) ** 2
    torch.testing.assert_close(got, x + eps[:, None, None, None] * sc + (2 * eps).sqrt()[:, None, None, None] * z)


def test_tweedie_denoise_gives_the_posterior_mean_of_a_gaussian():
    """E[x0 | x] = var / (var + sigma^2) x for x0 ~ N(0, var): x + sigma^2 score(x)."""
    sde = VESDE(1e-2, 20.0)
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.full((2,), 0.2, dtype=torch.float64)
    s = sde.sigma(t[0])
    torch.testing.assert_close(tweedie_denoise(linear_score(3.0)(sde), sde, x, t), 3.0 / (3.0 + s**2) * x)


def test_predictor_names():
    assert PREDICTORS == ("euler_maruyama", "heun", "reverse_diffusion", "dpmpp_2m_sde")
    with pytest.raises(ValueError, match="predictor must be one of"):
        predictor_step("rk4")
