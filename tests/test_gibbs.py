"""The Gibbs sampler on a small lens with an analytic Gaussian source prior: stages, recovery, resume."""

import io
import math
from types import SimpleNamespace

import pytest
import torch

from scorelens.errors import InputError
from scorelens.inference.gibbs import GibbsSampler, Problem, Stage
from scorelens.inference.likelihood import GaussianLikelihood
from scorelens.inference.parameters import ParameterSpace
from scorelens.inference.posterior_sde import FluxMap
from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.grid import ExposureGrid, PixelGrid
from scorelens.priors.sde import VESDE

F64 = torch.float64
P = math.pi
TRUTH = dict(theta_E=0.8, gamma=1.0, q=0.8, phi=0.5, x0=0.0, y0=0.0, gamma_ext=0.02, phi_ext=0.3,
             a3=0.0, phi3=0.0, a4=0.0, phi4=0.0)
PARAMS = dict(theta_E=dict(uniform=[0.3, 2], scale=0.005), gamma=dict(normal=[1, 0.2], scale=0.01),
              q=dict(uniform=[0.2, 1], scale=0.01), phi=dict(periodic=P, scale=0.02),
              x0=dict(uniform=[-0.5, 0.5], scale=0.003), y0=dict(uniform=[-0.5, 0.5], scale=0.003),
              gamma_ext=dict(uniform=[0, 0.3], scale=0.005), phi_ext=dict(periodic=P, scale=0.05),
              a3=dict(normal=[0, 0.01], scale=0.003), phi3=dict(periodic=2 * P / 3, scale=0.1),
              a4=dict(normal=[0, 0.01], scale=0.003), phi4=dict(periodic=P / 2, scale=0.1))
STAGES = [
    dict(name="init", sweeps=3, temperature=[20, 5], first_t_start=1.0, sde_steps=50, covariance="rowsum",
         mala_steps=20, burn_in=3),
    dict(name="anneal", sweeps=8, temperature=[5, 1], sde_steps=30, covariance="rowsum", mala_steps=10, burn_in=4),
    dict(name="finetune", sweeps=4, temperature=1, t_start=0.2, sde_steps=20, covariance="rowsum", mala_steps=10,
         record=3),
]


def build():
    grid = ExposureGrid.regular((24, 24), 0.1, 1, n_exp=2, offsets=torch.tensor([[0.0, 0.0], [0.05, 0.03]]),
                                dtype=F64)
    fm = ForwardModel(grid, PixelGrid(16, 0.06), PixelGrid(24, 0.1))
    xs, ys = PixelGrid(16, 0.06).coordinates(dtype=F64)
    src = (10 * torch.exp(-((xs - 0.05) ** 2 + (ys + 0.03) ** 2) / (2 * 0.1**2)))[None]
    a = torch.arange(5, dtype=F64) - 2
    psf = torch.exp(-(a[:, None] ** 2 + a[None] ** 2) / 2)
    psf = (psf / psf.sum()).expand(2, 5, 5).clone()
    truth = {k: torch.tensor([v], dtype=F64) for k, v in TRUTH.items()}
    img = fm(truth, torch.zeros(1, 2, 2, dtype=F64), src, torch.zeros(1, 24, 24, dtype=F64), psf)[0]
    g = torch.Generator().manual_seed(1)
    data = img + 0.1 * torch.randn(img.shape, generator=g, dtype=F64)
    like = GaussianLikelihood(data, torch.full_like(img, 0.01), torch.ones_like(data, dtype=torch.bool))
    sde = VESDE(1e-3, 30.0)
    prior = SimpleNamespace(sde=sde, score=lambda x, t: -x / (1.0 + sde.sigma(t)[:, None, None, None] ** 2))
    space = ParameterSpace(PARAMS, 2, 0.2, 0.002)
    problem = Problem(fm, like, space, {"source": prior, "lens_light": None}, {"source": FluxMap(5.0)}, psf)
    init = dict(TRUTH, theta_E=0.75, q=0.7, gamma_ext=0.0)
    return GibbsSampler(problem), init


@pytest.fixture(scope="module")
def finished():
    sampler, init = build()
    stages = [Stage.from_config(s) for s in STAGES]
    seen = []
    state = sampler.run(sampler.initial_state(init, 6, seed=3), stages,
                        on_sweep=lambda stage, k, m: seen.append((stage.name, k, m)))
    return sampler, state, seen


def test_stages_run_in_order_with_their_schedules(finished):
    _, state, seen = finished
    assert [(n, k) for n, k, _ in seen] == [(s["name"], k) for s in STAGES for k in range(s["sweeps"])]
    temps = [m["temperature"] for n, _, m in seen if n == "anneal"]
    assert temps[0] == pytest.approx(5.0) and temps[-1] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(temps, temps[1:], strict=False))
    assert len(state["records"]) == 3 and state["stage"] == len(STAGES)
    # MALA adapts toward its target during burn-in, and stays finite
    accept = [m["acceptance"] for *_, m in seen]
    assert 0.05 < sum(accept) / len(accept) < 0.95
    assert all(math.isfinite(c) for *_, m in seen for c in m["chi2"])


def test_recovers_the_einstein_radius(finished):
    sampler, state, seen = finished
    v = torch.cat([r["v"] for r in state["records"]])
    mass, _ = sampler.p.space.split(v)
    assert abs(mass["theta_E"].median().item() - TRUTH["theta_E"]) < 0.02 * TRUTH["theta_E"]
    assert seen[-1][2]["chi2"][0] < seen[0][2]["chi2"][0]


def test_resumed_run_equals_uninterrupted(finished):
    _, reference, _ = finished
    sampler, init = build()
    stages = [Stage.from_config(s) for s in STAGES]
    saved = {}

    class Killed(Exception):
        pass

    def save(state, limit=[6]):  # noqa: B006 - a counter shared across calls
        buf = io.BytesIO()
        torch.save(state, buf)
        saved["bytes"] = buf.getvalue()
        limit[0] -= 1
        if limit[0] == 0:
            raise Killed

    with pytest.raises(Killed):
        sampler.run(sampler.initial_state(init, 6, seed=3), stages, save=save)
    state = torch.load(io.BytesIO(saved["bytes"]), weights_only=True)
    sampler, _ = build()
    state = sampler.run(state, stages)
    torch.testing.assert_close(state["v"], reference["v"], rtol=0, atol=0)
    torch.testing.assert_close(state["source"], reference["source"], rtol=0, atol=0)


def test_bad_stage_settings_are_named():
    with pytest.raises(ValueError, match="unknown setting"):
        Stage.from_config(dict(name="x", sweeps=2, temprature=3))
    with pytest.raises(ValueError, match="temperatures must be >= 1"):
        Stage.from_config(dict(name="x", sweeps=2, temperature=[0.5, 1]))
    with pytest.raises(ValueError, match="burn_in <= sweeps - record"):
        Stage.from_config(dict(name="x", sweeps=4, burn_in=3, record=2))
    with pytest.raises(ValueError, match="sigma_end"):
        Stage.from_config(dict(name="x", sweeps=2, sigma_end=0.0))
    with pytest.raises(InputError, match="predictor"):  # one line at the command line, not a traceback
        Stage.from_config(dict(name="x", sweeps=2, predictor="heun2"))
    assert Stage.from_config(dict(name="x", sweeps=2, predictor="heun")).predictor == "heun"


def test_sde_ends_at_the_data_noise_and_mala_steps_follow_the_temperature(monkeypatch):
    """sigma_end: the image update stops where the diffusion noise is that fraction of the tempered data noise
    (in the prior's units); the MALA step adapted at one temperature is rescaled by sqrt(T'/T) at the next."""
    import scorelens.inference.gibbs as gibbs

    sampler, init = build()
    seen = {}

    def fake_sample(prior, likelihood, op, rest, flux, **kw):
        seen.update(kw, scale=flux.scale)
        return torch.zeros(rest.shape[0], op.n, op.n, dtype=rest.dtype)

    monkeypatch.setattr(gibbs, "sample_component", fake_sample)
    state = sampler.initial_state(init, 2, seed=0)
    stage = Stage(name="x", sweeps=1, t_start=0.9, sigma_end=0.1)
    sampler.update_image(state, "source", stage, 4.0, 0.9, sampler.generator(state))
    sde = sampler.p.priors["source"].sde
    want = 0.1 * math.sqrt(4.0) * 0.1 / 5.0  # noise sd 0.1 (variance 0.01), flux scale 5
    assert float(sde.sigma(torch.tensor(seen["t_min"], dtype=F64))) == pytest.approx(want, rel=1e-6)
    # without sigma_end the chain runs to the prior's smallest time
    sampler.update_image(state, "source", Stage(name="x", sweeps=1), 1.0, 0.9, sampler.generator(state))
    assert seen["t_min"] == 1e-5

    gen = sampler.generator(state)
    sampler.update_mass(state, Stage(name="x", sweeps=1, mala_steps=1), 16.0, adapt=False, gen=gen)
    step = state["mala_step"].clone()
    sampler.update_mass(state, Stage(name="x", sweeps=1, mala_steps=1), 4.0, adapt=False, gen=gen)
    torch.testing.assert_close(state["mala_step"], step * 0.5)


def test_posterior_mean_model_is_the_mean_of_the_samples_models():
    """chi2.csv's model: the average of each sample's model images (chains in different modes must not blur into
    the model of an average sample), computed in batches."""
    from scorelens.inference.run import mean_components

    sampler, init = build()
    state = sampler.initial_state(init, 5, seed=1)
    g = torch.Generator().manual_seed(0)
    v = state["v"] + 0.01 * torch.randn(state["v"].shape, generator=g, dtype=F64)
    source = torch.rand(5, 16, 16, generator=g, dtype=F64)
    light = torch.rand(5, 24, 24, generator=g, dtype=F64)
    parts = mean_components(sampler, v, source, light, batch=2)
    mass, shifts = sampler.p.space.split(v)
    each = sampler.p.model(mass, shifts, source, light, sampler.p.psf)
    torch.testing.assert_close(parts["source"] + parts["lens_light"], each.mean(0))


def test_psf_step_draws_each_chains_psfs_at_start_and_every_nth_sweep():
    """With a PSF model, each chain has its own P (drawn when the chain starts and before every `every`-th sweep),
    and the forward model runs with each chain's kernels."""
    import numpy as np

    from scorelens.inference.psf.stars import KernelMap, StarList, psf_rows
    from scorelens.inference.psf.step import PSFModel, PSFStep

    sampler, init = build()
    p = sampler.p
    n = 9  # P spans 9 detector pixels (o = 1); the model's kernels are its central 5 x 5
    a = np.arange(n) - n // 2
    truth = np.exp(-(a[:, None] ** 2 + a[None] ** 2) / 2)
    truth /= truth.sum()
    size = 11
    pix = np.arange(size, dtype=float)
    centre = (5.1, 4.8)
    star = 50.0 * psf_rows(pix - centre[0], n, 1.0, "effective") @ truth @ psf_rows(pix - centre[1], n, 1.0,
                                                                                      "effective").T
    stars = StarList(star[None], np.full((1, size, size), 0.01), np.ones((1, size, size), bool),
                     np.array([centre]), np.array([50.0]), np.ones(1))
    rows = torch.as_tensor(psf_rows(np.arange(5) - 2, n, 1.0, "effective"), dtype=F64).expand(2, 5, n)
    kernels = KernelMap(rows, torch.tensor([0, 0]), p.psf)
    sde = VESDE(1e-3, 1.0)
    prior = SimpleNamespace(sde=sde, score=lambda x, t: -(x - 1.0) / (1.0 + sde.sigma(t)[:, None, None, None] ** 2),
                            net=SimpleNamespace(config={"resolution": n}))
    p.psf_model = PSFModel(prior, FluxMap(0.05), stars, [0], 1, [1.0], "effective", kernels,
                           PSFStep(every=2, sde_steps=20), dtype=F64)
    state = sampler.initial_state(init, 3, seed=0)
    assert state["psf"].shape == (3, 1, n, n) and torch.isfinite(state["psf"]).all()
    assert not torch.equal(state["psf"][0], state["psf"][1])  # chains draw their own
    stage = Stage.from_config(dict(name="s", sweeps=3, sde_steps=5, covariance="rowsum", mala_steps=2, record=3))
    seen = [state["psf"].clone()]
    for k in range(3):
        m = sampler.sweep(state, stage, k)
        seen.append(state["psf"].clone())
        assert math.isfinite(m["psf_chi2"])
    # drawn when the chain starts and at the start of the third sweep (after 2 done), not after the last sweep:
    # a record pairs the images and mass with the P they were drawn under
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2]) and not torch.equal(seen[2], seen[3])
    assert torch.equal(state["records"][-1]["psf"], state["psf"])
    k = sampler.kernels(state)
    assert k.shape == (3, 2, 5, 5) and torch.allclose(k[:, 1], state["psf"][:, 0, 2:7, 2:7])
    mass, shifts = p.space.split(state["v"])
    assert torch.allclose(sampler.model_images(state),
                          p.model(mass, shifts, state["source"], state["lens_light"], k))
    assert all("psf" in r for r in state["records"])
    # the draws fit the star to its noise (one star at one sub-pixel position leaves P itself partly free, so the
    # check is on the star's pixels): chi^2 per pixel of order 1, against ~550 for P = 0
    assert p.psf_model.reduced_chi2(state["psf"]).max() < 3
    assert p.psf_model.reduced_chi2(torch.zeros_like(state["psf"])).min() > 100
