"""The Gibbs sampler on a small lens with an analytic Gaussian source prior: stages, recovery, resume."""

import io
import math
from types import SimpleNamespace

import pytest
import torch

from scorelens.errors import InputError
from scorelens.inference.gibbs import GibbsSampler, Problem
from scorelens.inference.likelihood import GaussianLikelihood
from scorelens.inference.parameters import ParameterSpace
from scorelens.inference.posterior_sde import FluxMap
from scorelens.inference.sde_settings import SDESettings
from scorelens.inference.stages import Stage, stages_from_config
from scorelens.inference.state import SamplerState
from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.grid import ExposureGrid, PixelGrid
from scorelens.priors.sde import VESDE

F64 = torch.float64
TRUTH = dict(theta_E=0.8, gamma=1.0, q=0.8, phi=0.5, x0=0.0, y0=0.0, gamma_ext=0.02, phi_ext=0.3,
             a3=0.0, phi3=0.0, a4=0.0, phi4=0.0)
PARAMS = dict(theta_E=dict(uniform=[0.3, 2], scale=0.005), gamma=dict(normal=[1, 0.2], scale=0.01),
              x0=dict(uniform=[-0.5, 0.5], scale=0.003), y0=dict(uniform=[-0.5, 0.5], scale=0.003),
              ellipticity=dict(normal=0.2, max=0.667, scale=0.006), shear=dict(normal=0.05, max=0.3, scale=0.005),
              multipole3=dict(normal=0.01, scale=0.003), multipole4=dict(normal=0.01, scale=0.003))
SAMPLER = {  # the `sampler` config's SDE defaults and stages, as conf/sampler/ writes them
    "sde": dict(corrector_steps=1, covariance="rowsum", t_start=0.3, sigma_end=None),
    "stages": dict(
        init=dict(sweeps=3, temperature=[20, 5], first_t_start=1.0, mala_steps=20, burn_in=3, sde=dict(steps=50)),
        anneal=dict(sweeps=8, temperature=[5, 1], mala_steps=10, burn_in=4, sde=dict(steps=30)),
        finetune=dict(sweeps=4, temperature=1, mala_steps=10, record=3, sde=dict(steps=20, t_start=0.2)),
    ),
}
STAGES = SAMPLER["stages"]


def build(params=PARAMS):
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
    space = ParameterSpace(params, 2, 0.2, 0.002)
    problem = Problem(fm, like, space, {"source": prior, "lens_light": None}, {"source": FluxMap(5.0)}, psf)
    init = dict(TRUTH, theta_E=0.75, q=0.7, gamma_ext=0.0)
    return GibbsSampler(problem), init


@pytest.fixture(scope="module")
def finished():
    sampler, init = build()
    stages = stages_from_config(SAMPLER)
    seen = []
    state = sampler.run(sampler.initial_state(init, 6, seed=3), stages,
                        on_sweep=lambda stage, k, m: seen.append((stage.name, k, m)))
    return sampler, state, seen


def test_stages_run_in_order_with_their_schedules(finished):
    _, state, seen = finished
    assert [(n, k) for n, k, _ in seen] == [(name, k) for name, s in STAGES.items() for k in range(s["sweeps"])]
    temps = [m["temperature"] for n, _, m in seen if n == "anneal"]
    assert temps[0] == pytest.approx(5.0) and temps[-1] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(temps, temps[1:], strict=False))
    assert len(state.records) == 3 and state.stage == len(STAGES)
    # MALA adapts toward its target during burn-in, and stays finite
    accept = [m["acceptance"] for *_, m in seen]
    assert 0.05 < sum(accept) / len(accept) < 0.95
    assert all(math.isfinite(c) for *_, m in seen for c in m["chi2"])


def test_recovers_the_einstein_radius(finished):
    sampler, state, seen = finished
    v = torch.cat([r.v for r in state.records])  # records hold the physical parameters
    mass, _ = sampler.p.space.split(v)
    assert abs(mass["theta_E"].median().item() - TRUTH["theta_E"]) < 0.02 * TRUTH["theta_E"]
    assert seen[-1][2]["chi2"][0] < seen[0][2]["chi2"][0]


class Killed(Exception):
    """Stands for a kill of the process right after a save."""


def run_until_killed(sampler, state, stages, saves):
    """Run, saving the state (in memory, as `SamplerState.save` would write it) after every sweep, and stop by
    `Killed` after `saves` saves; returns the last saved state, loaded back."""
    saved = {}

    def save(st, left=[saves]):  # noqa: B006 - a counter shared across calls
        buf = io.BytesIO()
        torch.save(st.state_dict(), buf)
        saved["bytes"] = buf.getvalue()
        left[0] -= 1
        if left[0] == 0:
            raise Killed

    with pytest.raises(Killed):
        sampler.run(state, stages, save=save)
    return SamplerState.from_state_dict(torch.load(io.BytesIO(saved["bytes"]), weights_only=True))


def test_resumed_run_equals_uninterrupted(finished):
    _, reference, _ = finished
    sampler, init = build()
    stages = stages_from_config(SAMPLER)
    state = run_until_killed(sampler, sampler.initial_state(init, 6, seed=3), stages, 6)
    sampler, _ = build()
    state = sampler.run(state, stages)
    torch.testing.assert_close(state.u, reference.u, rtol=0, atol=0)
    torch.testing.assert_close(state.source, reference.source, rtol=0, atol=0)
    assert len(state.records) == len(reference.records)
    for r, q in zip(state.records, reference.records, strict=True):
        assert torch.equal(r.v, q.v) and torch.equal(r.lens_light, q.lens_light)


def test_bad_stage_settings_are_named():
    with pytest.raises(ValueError, match="unknown setting"):
        Stage.from_config("x", dict(sweeps=2, temperature=1, temprature=3))
    with pytest.raises(ValueError, match="temperatures must be >= 1"):
        Stage.from_config("x", dict(sweeps=2, temperature=[0.5, 1]))
    with pytest.raises(ValueError, match="burn_in <= sweeps - record"):
        Stage.from_config("x", dict(sweeps=4, temperature=1, burn_in=3, record=2))
    with pytest.raises(ValueError, match="sigma_end"):
        Stage.from_config("x", dict(sweeps=2, temperature=1, sde=dict(sigma_end=0.0)))
    with pytest.raises(InputError, match="predictor"):  # one line at the command line, not a traceback
        Stage.from_config("x", dict(sweeps=2, temperature=1, sde=dict(predictor="heun2")))
    assert Stage.from_config("x", dict(sweeps=2, temperature=1, sde=dict(predictor="heun"))).sde.predictor == "heun"


@pytest.mark.parametrize("sampler, match", [
    # the errors name the key to fix, with its place in the config
    ({"stages": {"init": {"sweeps": 2, "temperature": 1, "swepes": 3}}}, r"sampler\.stages\.init: unknown .*swepes"),
    ({"stages": {"init": {"sweeps": 2, "temperature": 1, "sde": {"stpes": 3}}}},
     r"sampler\.stages\.init\.sde: unknown .*stpes"),
    ({"stages": {"init": {"sweeps": 0, "temperature": 1}}}, r"sampler\.stages\.init\.sweeps must be an integer >= 1"),
    ({"stages": {"init": {"sweeps": 2, "temperature": 1, "sde": {"t_start": 1.5}}}},
     r"sampler\.stages\.init\.sde\.t_start must be in"),
    ({"sde": {"covariance": "full"}, "stages": {"init": {"sweeps": 2, "temperature": 1}}},
     r"sampler\.sde\.covariance must be one of"),
    ({"sde": {"steps": "many"}, "stages": {"init": {"sweeps": 2, "temperature": 1}}},
     r"sampler\.sde\.steps must be an integer"),
    # a stage name misspelt in an override is a new stage without its own sweeps and temperature: refused
    ({"stages": {"init": {"sweeps": 2, "temperature": 1}, "anneall": {"sweeps": 40}}},
     r"sampler\.stages\.anneall: missing \['temperature'\]"),
    ({"stages": [{"name": "init", "sweeps": 2}]}, "must map stage names"),  # the list of old configs
    ({"stages": {"init": None}}, "no stage"),
])
def test_stage_config_errors_name_the_key(sampler, match):
    with pytest.raises(InputError, match=match) as err:
        stages_from_config(sampler)
    assert "\n" not in str(err.value)


def test_stages_inherit_the_shared_sde_settings_and_run_in_mapping_order():
    stages = stages_from_config({
        "sde": {"steps": 40, "corrector_steps": 0, "sigma_end": 0.1},
        "stages": {"init": {"sweeps": 2, "temperature": [50, 10], "first_t_start": 1.0, "sde": {"steps": 60}},
                   "skipped": None,  # left out, as an experiment does with `stages: {NAME: null}`
                   "finetune": {"sweeps": 3, "temperature": 1.0, "record": 2, "sde": {"t_start": 0.5}}},
    })
    assert [s.name for s in stages] == ["init", "finetune"]
    init, fine = stages
    assert init.sde == SDESettings(steps=60, corrector_steps=0, sigma_end=0.1)
    assert fine.sde == SDESettings(steps=40, corrector_steps=0, sigma_end=0.1, t_start=0.5)
    assert init.temperature == (50.0, 10.0) and fine.temperature == (1.0, 1.0)
    assert [init.t_start_at(k) for k in range(2)] == [1.0, 1.0] and fine.t_start_at(0) == 0.5
    assert [fine.records(k) for k in range(3)] == [False, True, True]
    assert [init.temperature_at(k) for k in range(2)] == pytest.approx([50.0, 10.0])


def test_sde_ends_at_the_data_noise_and_mala_steps_follow_the_temperature(monkeypatch):
    """sigma_end: the image update stops where the diffusion noise is that fraction of the tempered data noise
    (in the prior's units); the MALA step adapted at one temperature is rescaled by sqrt(T'/T) at the next."""
    import scorelens.inference.gibbs as gibbs

    sampler, init = build()
    seen = {}

    def fake_sample(prior, likelihood, op, rest, flux, settings, **kw):
        seen.update(kw, scale=flux.scale)
        return torch.zeros(rest.shape[0], op.n, op.n, dtype=rest.dtype)

    monkeypatch.setattr(gibbs, "sample_component", fake_sample)
    state = sampler.initial_state(init, 2, seed=0)
    kernels = sampler.kernels(state.psf)
    sampler.image_block("source", state, kernels, SDESettings(t_start=0.9, sigma_end=0.1), 4.0, 0.9,
                        state.generator())
    sde = sampler.p.priors["source"].sde
    want = 0.1 * math.sqrt(4.0) * 0.1 / 5.0  # noise sd 0.1 (variance 0.01), flux scale 5
    assert float(sde.sigma(torch.tensor(seen["t_min"], dtype=F64))) == pytest.approx(want, rel=1e-6)
    # without sigma_end the chain runs to the prior's smallest time
    sampler.image_block("source", state, kernels, SDESettings(), 1.0, 0.9, state.generator())
    assert seen["t_min"] == 1e-5

    gen = state.generator()
    stage = Stage(name="x", sweeps=1, mala_steps=1)
    state.u, state.mala = sampler.mass_block(state, kernels, stage, 16.0, adapt=False, gen=gen)
    step = state.mala.step.clone()
    state.u, state.mala = sampler.mass_block(state, kernels, stage, 4.0, adapt=False, gen=gen)
    torch.testing.assert_close(state.mala.step, step * 0.5)
    assert state.mala.temperature == 4.0 and int(state.mala.proposed.sum()) == 2 * 2


def test_each_stage_adapts_from_a_restarted_counter():
    """MALA's Robbins-Monro counter restarts at each stage's first sweep (step sizes carry over): after stage b's
    sweeps it counts b's adapted steps only, not a's as well."""
    sampler, init = build()
    stages = stages_from_config({
        "sde": dict(steps=5, corrector_steps=0, t_start=0.3, sigma_end=None),
        "stages": {"a": dict(sweeps=2, temperature=[4, 2], mala_steps=3, burn_in=2),
                   "b": dict(sweeps=3, temperature=1, mala_steps=2, burn_in=1, record=1)},
    })
    seen = []
    sampler.run(sampler.initial_state(init, 2, seed=0), stages,
                save=lambda s: seen.append((s.stage, s.sweep, s.mala.n_adapt)))
    # saved after every sweep (stage, next sweep) and when a stage ends (next stage, sweep 0)
    assert seen == [(0, 1, 3), (0, 2, 6), (1, 0, 6), (1, 1, 2), (1, 2, 2), (1, 3, 2), (2, 0, 2)]


def test_mass_block_under_a_flat_likelihood_samples_the_pair_priors():
    """The shipped mass block (the model, the sampled coordinates, MALA) with a negligible likelihood (T = 1e12):
    the shear's and the m = 3 multipole's reported amplitudes and angles follow their priors, from a start at
    gamma_ext = a3 = 0 (the polar singularity, as SLACS starts). E[gamma1^2 + gamma2^2] = r^2 / 2 and P(|gamma| <
    r/2) = 1/4 for the disk of radius r; E[|a|^2] = 2 sd^2 for the Gaussian; each angle uniform over its period;
    all within 4 Monte Carlo standard errors over 300 chains. (A 4 x 4 image keeps the model cheap: only the
    prior matters here.)"""
    params = {k: dict(v, fixed=True) for k, v in PARAMS.items()}
    params.update(shear=dict(disk=0.1, scale=0.04), multipole3=dict(normal=0.01, scale=0.008))
    fm = ForwardModel(ExposureGrid.regular((4, 4), 0.2, 1, dtype=F64), PixelGrid(4, 0.2), PixelGrid(4, 0.2))
    psf = torch.full((1, 3, 3), 1 / 9, dtype=F64)
    like = GaussianLikelihood(torch.ones(1, 4, 4, dtype=F64), torch.ones(1, 4, 4, dtype=F64),
                              torch.ones(1, 4, 4, dtype=torch.bool))
    space = ParameterSpace(params, 1, 0.2, 0.002)
    sampler = GibbsSampler(Problem(fm, like, space, {"source": None, "lens_light": None}, {}, psf))
    state = sampler.initial_state(dict(TRUTH, gamma_ext=0.0, a3=0.0), 300, seed=0)
    state.source = torch.rand(300, 4, 4, dtype=F64)
    kernels, gen = sampler.kernels(None), state.generator()
    names = sampler.p.space.names
    for adapt, sweeps, steps in ((True, 6, 25), (False, 30, 5)):
        total = 0.0
        for _ in range(sweeps):
            state.u, state.mala = sampler.mass_block(state, kernels, Stage(name="flat", sweeps=1, mala_steps=steps),
                                                     1e12, adapt=adapt, gen=gen)
            v = sampler.p.space.to_physical(state.u)
            p = {n: v[:, i] for i, n in enumerate(names)}
            total = total + torch.stack([p["gamma_ext"] ** 2, (p["gamma_ext"] < 0.05).to(F64), p["phi_ext"],
                                         torch.cos(2 * p["phi_ext"]), p["a3"] ** 2, p["phi3"],
                                         torch.sin(3 * p["phi3"])], -1)
    averages = total / 30
    truth = torch.tensor([0.1**2 / 2, 0.25, math.pi / 2, 0.0, 2 * 0.01**2, math.pi / 3, 0.0], dtype=F64)
    z = (averages.mean(0) - truth) / (averages.std(0) / math.sqrt(averages.shape[0]))
    assert (z.abs() < 4).all(), z
    assert 0.3 < float(state.mala.accepted.sum() / state.mala.proposed.sum()) < 0.9


def test_state_checkpoint_round_trip(tmp_path):
    """The state saves itself atomically as plain tensors and numbers that torch.load(weights_only=True) reads,
    and loads back equal: sample, MALA tuning, generator, progress, records and metrics."""
    sampler, init = build()
    state = sampler.initial_state(init, 3, seed=4)
    stage = Stage.from_config("s", dict(sweeps=2, temperature=[4, 2], record=1, mala_steps=2, burn_in=1,
                                        sde=dict(steps=5)))
    for k in range(2):
        sampler.sweep(state, stage, k)
    state.stage, state.sweep, state.config_hash = 1, 0, "abc"
    path = state.save(tmp_path / "state.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["stage"] == 1 and raw["mala"]["temperature"] == 2.0 and "psf" not in raw
    back = SamplerState.load(path)
    for name in ("u", "source", "lens_light", "rng"):
        assert torch.equal(getattr(back, name), getattr(state, name)), name
    for name in ("step", "accepted", "proposed", "nonfinite"):
        assert torch.equal(getattr(back.mala, name), getattr(state.mala, name)), name
    assert (back.mala.n_adapt, back.mala.temperature) == (state.mala.n_adapt, state.mala.temperature) == (2, 2.0)
    assert (back.stage, back.sweep, back.config_hash, back.psf) == (1, 0, "abc", None)
    assert back.history == state.history and len(back.records) == 1
    assert torch.equal(back.records[0].source, state.records[0].source) and back.records[0].psf is None
    # the generator continues where it was
    assert torch.equal(torch.rand(3, generator=back.generator()), torch.rand(3, generator=state.generator()))
    torch.save({"v": state.u}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a sampler state"):
        SamplerState.load(tmp_path / "other.pt")
    # a state of the previous version (physical parameters under "v", no version) is refused in one line
    old = state.state_dict()
    old["v"] = old.pop("u")
    del old["version"]
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(InputError, match="not a sampler state of this version") as err:
        SamplerState.load(tmp_path / "old.pt")
    assert "\n" not in str(err.value)


def test_posterior_mean_model_is_the_mean_of_the_samples_models():
    """chi2.csv's model: the average of each sample's model images (chains in different modes must not blur into
    the model of an average sample), computed in batches."""
    from scorelens.inference.run import mean_components

    sampler, init = build()
    state = sampler.initial_state(init, 5, seed=1)
    g = torch.Generator().manual_seed(0)
    v = sampler.p.space.to_physical(state.u)
    v = v + 0.01 * torch.randn(v.shape, generator=g, dtype=F64)
    source = torch.rand(5, 16, 16, generator=g, dtype=F64)
    light = torch.rand(5, 24, 24, generator=g, dtype=F64)
    parts = mean_components(sampler, v, source, light, batch=2)
    mass, shifts = sampler.p.space.split(v)
    each = sampler.p.model(mass, shifts, source, light, sampler.p.psf)
    torch.testing.assert_close(parts["source"] + parts["lens_light"], each.mean(0))
    # each sample's reduced chi^2 (mean over exposures), from the residuals written out here
    lk = sampler.p.likelihood
    chi2 = (((lk.data - each) ** 2 / lk.variance) * lk.mask).sum((2, 3)) / lk.mask.sum((1, 2))
    torch.testing.assert_close(parts["chi2"], chi2.mean(1))


def test_psf_step_draws_each_chains_psfs_at_start_and_every_nth_sweep():
    """With a PSF model, each chain has its own P (drawn when the chain starts and for every `every`-th sweep, by
    the PSF block that closes the sweep before it), and the forward model runs with each chain's kernels."""
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
                           PSFStep(every=2, sde=SDESettings(steps=20)), dtype=F64)
    state = sampler.initial_state(init, 3, seed=0)
    assert state.psf.shape == (3, 1, n, n) and torch.isfinite(state.psf).all()
    assert not torch.equal(state.psf[0], state.psf[1])  # chains draw their own
    stage = Stage.from_config("s", dict(sweeps=3, temperature=1, mala_steps=2, record=3,
                                        sde=dict(steps=5, t_start=0.3, corrector_steps=1)))
    seen = [state.psf.clone()]
    for k in range(3):
        m = sampler.sweep(state, stage, k, next_sweep=k < 2)  # as `run` calls them: no sweep follows the last
        seen.append(state.psf.clone())
        assert math.isfinite(m["psf_chi2"])
    # the P each sweep ran under (its record pairs the images and mass with the P they were drawn under): the
    # chain's first for sweeps 0 and 1, a new one for the third sweep (after 2 done), drawn as the second closed;
    # none drawn after the last sweep
    used = [r.psf for r in state.records]
    assert torch.equal(used[0], seen[0]) and torch.equal(used[1], seen[0]) and not torch.equal(used[2], seen[0])
    assert torch.equal(seen[1], seen[0]) and torch.equal(seen[2], used[2]) and torch.equal(seen[3], used[2])
    k = sampler.kernels(state.psf)
    unit = state.psf[:, 0] / state.psf[:, 0].sum((-1, -2), keepdim=True)
    assert k.shape == (3, 2, 5, 5) and torch.allclose(k[:, 1], unit[:, 2:7, 2:7])
    mass, shifts = p.space.unpack(state.u)
    assert torch.allclose(sampler.model_images(state), p.model(mass, shifts, state.source, state.lens_light, k))
    assert all(r.psf is not None for r in state.records)
    # the draws fit the star to its noise (one star at one sub-pixel position leaves P itself partly free, so the
    # check is on the star's pixels): chi^2 per pixel of order 1, against ~550 for P = 0
    assert p.psf_model.reduced_chi2(state.psf).max() < 3
    assert p.psf_model.reduced_chi2(torch.zeros_like(state.psf)).min() > 100


BRANCHING = {  # the anneal stage records 2 sweeps, and fine-tuning starts one chain from each of them
    "sde": SAMPLER["sde"],
    "stages": dict(
        init=dict(STAGES["init"]),
        anneal=dict(STAGES["anneal"], record=2),
        finetune=dict(STAGES["finetune"], branch=True, reseed=5.0),
    ),
}


def test_finetuning_branches_from_every_recorded_annealed_sample():
    sampler, init = build()
    stages = stages_from_config(BRANCHING)
    state = sampler.initial_state(init, 3, seed=5)
    branched = {}
    original = sampler.branch

    def spy(st):
        branched["records"] = [(r.v.clone(), r.source.clone()) for r in st.records]
        branched["step"] = st.mala.step.clone()
        out = original(st)
        branched["u"], branched["source"] = out.u.clone(), out.source.clone()
        return out

    sampler.branch = spy
    state = sampler.run(state, stages)
    # 3 chains x 2 annealed records -> 6 chains, record j of chain b at j * 3 + b
    assert state.chains == 6 and len(branched["records"]) == 2
    v = torch.cat([r for r, _ in branched["records"]])
    torch.testing.assert_close(sampler.p.space.to_physical(branched["u"]), v, rtol=0, atol=1e-12)
    torch.testing.assert_close(branched["source"], torch.cat([s for _, s in branched["records"]]), rtol=0, atol=0)
    # the branch points are not samples: only the fine-tuning's recorded sweeps are, each of all 6 chains
    assert len(state.records) == STAGES["finetune"]["record"]
    assert all(r.v.shape[0] == 6 for r in state.records)
    assert state.mala.step.shape == (6,)


def test_resume_before_the_first_branched_sweep_branches_again_identically():
    sampler, init = build()
    stages = stages_from_config(BRANCHING)
    reference = sampler.run(sampler.initial_state(init, 2, seed=7), stages)
    n_before = sum(s.sweeps for s in stages[:2]) + 2  # saves: one per sweep and one at each stage's end
    sampler, _ = build()
    state = run_until_killed(sampler, sampler.initial_state(init, 2, seed=7), stages, n_before)
    assert (state.stage, state.sweep, state.chains, len(state.records)) == (2, 0, 2, 2)  # killed at the branch
    sampler, _ = build()
    state = sampler.run(state, stages)
    torch.testing.assert_close(state.u, reference.u, rtol=0, atol=0)
    assert all(torch.equal(r.v, q.v) for r, q in zip(state.records, reference.records, strict=True))


@pytest.mark.parametrize("stages, match", [
    (dict(a=dict(sweeps=2, temperature=1, record=1, branch=True)), "first stage"),
    (dict(a=dict(sweeps=2, temperature=1), b=dict(sweeps=2, temperature=1, branch=True)), "a.record is 0"),
    (dict(a=dict(sweeps=2, temperature=1, record=1), b=dict(sweeps=2, temperature=1, record=1),
          c=dict(sweeps=2, temperature=1, branch=True)), "before the branch points"),
])
def test_branching_needs_branch_points(stages, match):
    with pytest.raises(InputError, match=match):
        stages_from_config({"stages": stages})


def test_chains_in_clearly_worse_modes_restart_from_the_best():
    """`reseed`: a chain whose chi^2 exceeds the best by more than k T sqrt(2 N) takes a good chain's whole state
    (the best first); chains within the limit, and the limit's scale with T, as documented."""
    sampler, init = build()
    lk = sampler.p.likelihood
    # chain 0 at the truth, chain 1 near it, chain 2 at a wrong Einstein radius, chain 3 with a non-finite image
    state = sampler.initial_state({**TRUTH, "theta_E": torch.tensor([0.8, 0.801, 0.6, 0.8], dtype=F64)}, 4, seed=0)
    xs, ys = PixelGrid(16, 0.06).coordinates(dtype=F64)
    state.source = (10 * torch.exp(-((xs - 0.05) ** 2 + (ys + 0.03) ** 2) / (2 * 0.1**2))).expand(4, 16, 16).clone()
    state.source[3, 0, 0] = math.nan
    state.mala.step = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    chi2 = lk.chi2(sampler.model_images(state)).sum(-1)
    n = float(lk.n_pixels.sum())
    assert chi2[1] - chi2[0] < 5 * math.sqrt(2 * n) < chi2[2] - chi2[0]  # the toy's modes, as the test means them
    u, source = state.u.clone(), state.source.clone()

    out = sampler.reseed(state, temperature=1.0, sigmas=5.0)
    best, second = (0, 1) if chi2[0] <= chi2[1] else (1, 0)
    torch.testing.assert_close(out.u[:2], u[:2], rtol=0, atol=0)
    torch.testing.assert_close(out.u[2], u[best], rtol=0, atol=0)
    torch.testing.assert_close(out.u[3], u[second], rtol=0, atol=0)
    torch.testing.assert_close(out.source[3], source[second], rtol=0, atol=0)
    assert out.mala.step.tolist() == [0.1, 0.2, [0.1, 0.2][best], [0.1, 0.2][second]]
    # at a temperature where the wrong mode's excess is within the tempered scatter, it is kept
    state = sampler.initial_state({**TRUTH, "theta_E": torch.tensor([0.8, 0.6], dtype=F64)}, 2, seed=0)
    state.source = source[:2].clone()
    excess = float(chi2[2] - chi2[0])
    u = state.u.clone()
    kept = sampler.reseed(state, temperature=1.01 * excess / (5 * math.sqrt(2 * n)), sigmas=5.0)
    torch.testing.assert_close(kept.u, u, rtol=0, atol=0)


def test_reseed_limit_widens_with_the_chains_own_chi2_scatter():
    from scorelens.inference.gibbs import chi2_scatter

    history = [{"stage": "a", "chain_chi2": [1.0, 2.0]}] * 3 + [
        {"stage": "b", "chain_chi2": [10.0 + d, 20.0 + 2 * d]} for d in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)]
    # the last 5 sweeps of stage b: sd of (1..5) and of (2..10); their median (the mean of two)
    sd = torch.tensor([1.0, 2, 3, 4, 5], dtype=F64).std().item()
    assert chi2_scatter(history, "b") == pytest.approx(1.5 * sd)
    assert chi2_scatter(history, "c") == 0.0 and chi2_scatter(history[:4], "b") == 0.0
    # a wrong mode that the statistical limit drops is kept when the chains' own chi^2 varies more than it
    sampler, _ = build()
    lk = sampler.p.likelihood
    state = sampler.initial_state({**TRUTH, "theta_E": torch.tensor([0.8, 0.6], dtype=F64)}, 2, seed=0)
    xs, ys = PixelGrid(16, 0.06).coordinates(dtype=F64)
    state.source = (10 * torch.exp(-((xs - 0.05) ** 2 + (ys + 0.03) ** 2) / (2 * 0.1**2))).expand(2, 16, 16).clone()
    chi2 = lk.chi2(sampler.model_images(state)).sum(-1)
    excess = float(chi2[1] - chi2[0])
    assert excess > 5 * math.sqrt(2 * float(lk.n_pixels.sum()))
    u = state.u.clone()
    kept = sampler.reseed(state, 1.0, 5.0, scatter=1.01 * excess / (5 * math.sqrt(2)))
    torch.testing.assert_close(kept.u, u, rtol=0, atol=0)
    dropped = sampler.reseed(state, 1.0, 5.0, scatter=0.99 * excess / (5 * math.sqrt(2)))
    torch.testing.assert_close(dropped.u[1], u[0], rtol=0, atol=0)


def test_reseed_settings_are_checked():
    assert Stage.from_config("a", dict(sweeps=2, temperature=1, reseed=5)).reseed == 5
    with pytest.raises(InputError, match=r"sampler\.stages\.a\.reseed"):
        Stage.from_config("a", dict(sweeps=2, temperature=1, reseed=0))
    # a stage that runs first (the others left out, as `~sampler.stages.init ~sampler.stages.anneal` does) has no
    # earlier chains to compare: it runs, without reseeding
    stages = stages_from_config({"stages": dict(a=dict(sweeps=1, temperature=1, mala_steps=1, record=1, reseed=5.0,
                                                       sde=dict(steps=5)), b=None)})
    sampler, init = build()
    calls = []
    sampler.reseed = lambda *a, **k: calls.append(1)
    state = sampler.run(sampler.initial_state(init, 2, seed=0), stages)
    assert calls == [] and len(state.records) == 1
