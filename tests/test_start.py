"""The start finder (`lens.init_from: auto`): its closed-form SIE, its linear solve and evidence, its blurred
light basis, each against an independent answer, and the whole search on a lens rendered by the forward model."""

from __future__ import annotations

import math

import pytest
import torch

from scorelens.errors import InputError
from scorelens.inference.likelihood import GaussianLikelihood
from scorelens.inference.start import StartFinder, StartSettings
from scorelens.inference.start.basis import light_gaussians
from scorelens.inference.start.chains import chain_starts
from scorelens.inference.start.linear import linear_fit
from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.grid import ExposureGrid, PixelGrid
from scorelens.lensing.mass import deflection
from scorelens.lensing.sie import sie_deflection

D = torch.float64


@pytest.mark.parametrize("q, phi", [(0.4, 0.3), (0.75, -1.2), (0.95, 2.5), (0.999, 0.0)])
def test_sie_closed_form_is_the_power_law_at_slope_one(q, phi):
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(200, generator=g, dtype=D) - 0.5) * 4, (torch.rand(200, generator=g, dtype=D) - 0.5) * 4
    t = lambda v: torch.tensor(v, dtype=D)  # noqa: E731
    ref = deflection({"theta_E": t(1.3), "gamma": t(1.0), "q": t(q), "phi": t(phi), "x0": t(0.1), "y0": t(-0.05)},
                     x, y)
    got = sie_deflection(x, y, t(1.3), t(q), t(phi), t(0.1), t(-0.05))
    # at q = 0.999 the closed form holds q below 1 - 1e-4: the difference is that of the two profiles, ~1e-5
    tol = 1e-10 if q < 0.99 else 1e-4
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a, b, atol=tol, rtol=0)


def test_linear_evidence_is_the_gaussian_marginal_likelihood():
    g = torch.Generator().manual_seed(1)
    p, k = 30, 4
    cols = torch.randn(2, k, p, generator=g, dtype=D)
    w = torch.rand(p, generator=g, dtype=D) + 0.5
    sd = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=D)
    y = torch.randn(p, generator=g, dtype=D) * 2
    fit = linear_fit(cols, y, w, sd)
    for b in range(2):
        a = cols[b].T  # [P, K]
        cov = torch.diag(1 / w) + a @ torch.diag(sd**2) @ a.T
        exact = torch.distributions.MultivariateNormal(torch.zeros(p, dtype=D), cov).log_prob(y)
        # log Z drops 1/2 sum log w - P/2 log 2 pi, which depend on the data's noise only
        const = 0.5 * torch.log(w).sum() - 0.5 * p * math.log(2 * math.pi)
        assert float(fit.log_evidence[b] + const) == pytest.approx(float(exact), abs=1e-8)
        # the amplitudes: the ridge solution of the weighted least squares
        h = a.T @ torch.diag(w) @ a + torch.diag(1 / sd**2)
        assert torch.allclose(fit.amplitudes[b], torch.linalg.solve(h, a.T @ (w * y)), atol=1e-10)
        assert float(fit.chi2[b]) == pytest.approx(float((w * (y - a @ fit.amplitudes[b]) ** 2).sum()), rel=1e-10)


def test_blurred_light_gaussian_is_the_numerical_convolution():
    n, step = 161, 0.01
    a = (torch.arange(n, dtype=D) - n // 2) * step
    yy, xx = torch.meshgrid(a, a, indexing="ij")
    centre = torch.tensor([[0.05, -0.03]], dtype=D)
    e1, e2 = torch.tensor([0.2], dtype=D), torch.tensor([-0.1], dtype=D)
    sig = torch.tensor([0.12], dtype=D)
    blur = 0.08
    sharp = light_gaussians(xx[None], yy[None], centre, e1, e2, sig)[0, 0]
    kernel = torch.exp(-0.5 * (xx**2 + yy**2) / blur**2)
    kernel = kernel / kernel.sum()
    conv = torch.fft.irfft2(torch.fft.rfft2(sharp) * torch.fft.rfft2(torch.fft.ifftshift(kernel)), s=(n, n))
    analytic = light_gaussians(xx[None], yy[None], centre, e1, e2, sig, blur=blur)[0, 0]
    inner = slice(40, -40)
    assert torch.allclose(conv[inner, inner], analytic[inner, inner], atol=1e-6)


def _rendered_lens(mass: dict, noise: float = 0.02, source_flux: float = 1.0):
    """Two dithered 40 x 40 exposures at 0.05 arcsec of an EPL + shear lens with a Gaussian PSF, a two-clump source
    and an elliptical exponential lens light, rendered by the forward model (not by the finder's own model)."""
    grid = ExposureGrid.regular((40, 40), 0.05, 1, n_exp=2, offsets=torch.tensor([[0.0, 0.0], [0.012, -0.02]]),
                                dtype=D)
    src_grid, light_grid = PixelGrid(64, 0.025), PixelGrid(64, 0.04)
    model = ForwardModel(grid, src_grid, light_grid, detector="sample")
    sx, sy = src_grid.coordinates(D)
    source = source_flux * (torch.exp(-0.5 * ((sx - 0.08) ** 2 + (sy + 0.05) ** 2 / 0.5) / 0.12**2)
                            + 0.6 * torch.exp(-0.5 * ((sx + 0.15) ** 2 + (sy - 0.1) ** 2) / 0.06**2))
    lx, ly = light_grid.coordinates(D)
    light = 3.0 * torch.exp(-torch.sqrt((lx * 0.9) ** 2 + (ly / 0.9) ** 2) / 0.3)
    k = torch.arange(11, dtype=D) - 5
    psf = torch.exp(-0.5 * (k[:, None] ** 2 + k[None] ** 2) / 0.9**2)
    psf = (psf / psf.sum()).expand(2, 11, 11)
    m = {key: torch.tensor([v], dtype=D) for key, v in mass.items()}
    clean = model(m, torch.zeros(1, 2, 2, dtype=D), source[None], light[None], psf)[0]
    g = torch.Generator().manual_seed(5)
    data = clean + noise * torch.randn(clean.shape, generator=g, dtype=D)
    like = GaussianLikelihood(data, torch.full_like(data, noise**2), torch.ones_like(data, dtype=torch.bool))
    return model, like, psf, src_grid, light_grid


TRUE = {"theta_E": 0.8, "gamma": 1.0, "q": 0.7, "phi": 0.6, "x0": 0.02, "y0": -0.03, "gamma_ext": 0.03,
        "phi_ext": 1.9, "a3": 0.0, "phi3": 0.0, "a4": 0.0, "phi4": 0.0}


def test_finder_finds_the_lens_from_data_alone_and_spreads_the_chains():
    model, like, psf, src_grid, light_grid = _rendered_lens(TRUE)
    settings = StartSettings(starts=16, steps=40, refine_steps=60, light_steps=40, theta_E=(0.3, 1.5),
                             source_fov=0.8, source_blobs=(6, 8), bin=1, systematic=0.0)
    finder = StartFinder(model, like, psf, settings)
    result = finder.search()
    best = result.modes[0].mass()
    assert best["theta_E"] == pytest.approx(TRUE["theta_E"], rel=0.02)
    assert best["q"] == pytest.approx(TRUE["q"], abs=0.08)
    # the angle of the major axis, modulo pi
    assert abs(math.remainder(best["phi"] - TRUE["phi"], math.pi)) < 0.15
    assert result.modes == sorted(result.modes, key=lambda m: -m.log_evidence)
    start = chain_starts(result, 6, src_grid, light_grid, jitter=1.0, evidence_gap=10.0,
                         generator=torch.Generator().manual_seed(0), dtype=D)
    assert start.source.shape == (6, 64, 64) and start.lens_light.shape == (6, 64, 64)
    assert set(start.mass) == set(TRUE)
    te = start.mass["theta_E"]
    assert float(te.std()) > 0  # overdispersed, not six copies of one point
    assert torch.all((te / TRUE["theta_E"] - 1).abs() < 0.05)
    # the chains' first lens light is the fitted one: brighter at the centre than far out, near the true peak
    centre = start.lens_light[0, 32, 32]
    assert float(centre) == pytest.approx(3.0, rel=0.35) and float(start.lens_light[0, 0, 0]) < 0.1 * float(centre)


def test_chains_from_a_given_mass_start_with_the_fitted_lens_light():
    """`StartFinder.lens_light` (the first L of catalogue and `init` starts): on a lens without source light, the
    concentric Gaussians fitted to the data reproduce the true exponential light where the data see it."""
    model, like, psf, _, light_grid = _rendered_lens(TRUE, source_flux=0.0)
    finder = StartFinder(model, like, psf, StartSettings(light_steps=60, bin=1, systematic=0.0))
    light = finder.lens_light(light_grid)
    lx, ly = light_grid.coordinates(D)
    true = 3.0 * torch.exp(-torch.sqrt((lx * 0.9) ** 2 + (ly / 0.9) ** 2) / 0.3)
    seen = (lx.abs() < 0.9) & (ly.abs() < 0.9)  # inside the 2-arcsec exposures
    assert float(light[seen].sum() / true[seen].sum()) == pytest.approx(1.0, abs=0.02)
    assert float(torch.corrcoef(torch.stack([light[seen], true[seen]]))[0, 1]) > 0.999
    # the model image of the fitted light against the data: a few per cent of the peak, worst at the cusp
    image = model({k: torch.tensor([v], dtype=D) for k, v in TRUE.items()}, torch.zeros(1, 2, 2, dtype=D),
                  torch.zeros(1, 64, 64, dtype=D), light[None], psf)[0]
    assert float((image - like.data).abs().max()) < 0.06 * float(like.data.max())


def test_start_settings_name_a_bad_key():
    with pytest.raises(InputError, match="start: unknown setting"):
        StartSettings.from_config({"strats": 3})
    with pytest.raises(InputError, match="start.theta_E"):
        StartSettings.from_config({"theta_E": [2.0, 1.0]})


def test_start_config_matches_the_settings_defaults():
    """conf/start/default.yaml is where the settings live; the dataclass's defaults (for callers outside Hydra)
    must say the same."""
    import dataclasses

    from .conftest import compose_infer

    cfg = compose_infer(["lens=mock"])
    from omegaconf import OmegaConf

    given = StartSettings.from_config(OmegaConf.to_container(cfg.start, resolve=True))
    defaults = StartSettings()
    assert {f.name for f in dataclasses.fields(StartSettings)} == set(cfg.start)
    assert given == defaults
