"""The PSF step's data model: stars and kernels as linear maps of an upsampled PSF, checked against independent
references (scipy's 2-D interpolation, analytic pixel integrals, the mock's exact star rendering, dense matrices)
and the PSF posterior against its closed form on a linear-Gaussian problem."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.special import erf

from scorelens.data.psf.epsf import effective_psf_kernel, kernel_offsets
from scorelens.data.simulate.hst_psf import hst_like_psf
from scorelens.inference.posterior_sde import FluxMap
from scorelens.inference.psf.stars import (
    KernelMap,
    StarList,
    fit_star,
    fit_stars,
    given_psf_star,
    psf_rows,
    star_operator,
)
from scorelens.inference.psf.step import PSFModel, PSFStep
from scorelens.inference.sde_settings import SDESettings
from scorelens.priors.sde import VESDE
from tests.conftest import compose_infer

F64 = torch.float64


def gaussian_psf(n, o, sigma, centre=(0.0, 0.0)):
    """A Gaussian integrated over the n x n pixels of 1/o detector pixels (pixel n // 2 at the origin), unit sum
    over the plane; sigma and centre in detector pixels."""
    edges = (np.arange(n + 1) - n // 2 - 0.5) / o

    def axis(c):
        cdf = 0.5 * (1 + erf((edges - c) / (np.sqrt(2) * sigma)))
        return np.diff(cdf)

    return np.outer(axis(centre[0]), axis(centre[1]))


def test_effective_rows_match_scipys_2d_interpolation_of_the_epsf_kernel():
    rng = np.random.default_rng(0)
    n, o, s, k = 41, 4, 2, 15
    epsf = gaussian_psf(n, o, 1.1) + 1e-7 * rng.random((n, n))
    epsf /= epsf.sum()
    # the model's "sample" detector reads sub-pixel s // 2 of each pixel: half a sub-pixel off centre for even s
    offsets = (np.arange(k) - k // 2 - 0.5) / s
    np.testing.assert_allclose(kernel_offsets(k, s), offsets)
    rows = psf_rows(offsets, n, o, "effective", 1.0 / s)
    ours = rows @ epsf @ rows.T
    ref = effective_psf_kernel(epsf, o, s, k)  # 2-D map_coordinates, unit sum
    np.testing.assert_allclose(ours / ours.sum(), ref, atol=1e-6 * ref.max())
    # the kernel is the ePSF density at sub-pixel spacing: it sums to about 1 already
    assert ours.sum() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("o", [2, 3])
def test_optical_rows_integrate_the_psf_over_detector_pixels(o):
    """A Gaussian P at `o` pixels per detector pixel, read as an optical PSF, gives the Gaussian's integrals over
    detector pixels at any sub-pixel offset (erf, exact)."""
    sigma, n, size = 1.3, 64, 15
    p = gaussian_psf(n, o, sigma)
    pix = np.arange(size, dtype=float)
    for centre in [(7.0, 7.0), (7.23, 6.61), (6.5, 7.5)]:
        stamp = psf_rows(pix - centre[0], n, o, "optical") @ p @ psf_rows(pix - centre[1], n, o, "optical").T
        edges = np.arange(size + 1) - 0.5
        ref = np.outer(np.diff(0.5 * (1 + erf((edges - centre[0]) / (np.sqrt(2) * sigma)))),
                       np.diff(0.5 * (1 + erf((edges - centre[1]) / (np.sqrt(2) * sigma)))))
        np.testing.assert_allclose(stamp, ref, atol=2e-3 * ref.max())


def test_a_star_of_the_mock_is_its_optical_psf_read_by_the_operator():
    """The mock draws a star by integrating its PSF over detector pixels at the star's offset; the same PSF on
    0.025-arcsec pixels, read as "optical" at 2 per 0.05-arcsec detector pixel, gives that star to 1.5% of its peak."""
    settings = dict(blur_sigma=0.02, ellipticity=0.05, ellipticity_angle=0.4, halo_fraction=0.04)
    # both normalised over nearly the same 2.6 arcsec (the halo reaches beyond the 0.8 arcsec that P keeps)
    p = hst_like_psf(103, 0.025, **settings)[35:67, 35:67]
    size, offset = 25, (0.31, -0.22)
    star = hst_like_psf(51, 0.05, offset=offset, **settings)[13:38, 13:38]
    pix = np.arange(size, dtype=float)
    centre = (size // 2 + offset[0], size // 2 + offset[1])
    ours = psf_rows(pix - centre[0], 32, 2.0, "optical") @ p @ psf_rows(pix - centre[1], 32, 2.0, "optical").T
    core = (np.abs(pix - centre[0])[:, None] < 7) & (np.abs(pix - centre[1])[None] < 7)
    assert np.abs(ours - star)[core].max() < 0.015 * star.max()
    # and a fit of the star against P finds its centre and flux
    fit = fit_star(1e5 * star, np.ones_like(star), (12.0, 12.0), 8e4, p, 2.0, "optical")
    assert fit is not None
    np.testing.assert_allclose(fit[0], centre, atol=0.02)
    assert fit[1] == pytest.approx(1e5, rel=0.01)


def _operator(dtype=F64):
    rng = np.random.default_rng(1)
    n, size = 8, 7
    stars = StarList(rng.normal(size=(3, size, size)), np.ones((3, size, size)), np.ones((3, size, size), bool),
                     np.array([[3.2, 2.9], [3.0, 3.4], [2.7, 3.1]]), np.array([2.0, 0.5, 1.5]), np.ones(3))
    return star_operator(stars, np.array([0, 1, 1]), 2, n, np.array([2.0, 2.0, 1.5]), "effective", dtype)


def dense(op, chains):
    n = op.n
    cols = []
    for j in range(chains * op.groups * n * n):
        e = torch.zeros(chains * op.groups * n * n, dtype=F64)
        e[j] = 1
        cols.append(op(e.reshape(-1, n, n)).reshape(-1))
    return torch.stack(cols, -1)


def test_star_operator_adjoint_and_diagonals_against_its_dense_matrix():
    op, _ = _operator()
    op = op.batched(2)
    a = dense(op, 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, op.n, op.n, dtype=F64, generator=g)
    y = torch.randn(4, 3, 7, 7, dtype=F64, generator=g)
    assert torch.allclose((op(x) * y).sum(), (x * op.adjoint(y)).sum())
    assert torch.allclose(op.adjoint(y).reshape(-1), a.T @ y.reshape(-1))
    aat = a @ a.T
    assert torch.allclose(op.diag_AAT().reshape(-1), aat.diagonal())
    # the rowsum diagonal is |A A^T| 1: the spline rows' negative lobes make A A^T 1 no bound of A A^T
    assert (aat < 0).any() and (aat.sum(1) < aat.diagonal() - 1e-12).any()
    assert torch.allclose(op.rowsum_AAT().reshape(-1), aat.abs().sum(1))
    assert torch.linalg.eigvalsh(torch.diag(op.rowsum_AAT().reshape(-1)) - aat).min() > -1e-10
    # stars of the other group are no data of a group's P
    z = op(x).reshape(2, 2, 3, 7, 7)
    assert z[:, 0, 1:].abs().max() == 0 and z[:, 1, 0].abs().max() == 0


def test_kernel_map_puts_each_group_on_its_exposures_and_keeps_fixed_ones():
    n, k = 8, 5
    rows = torch.rand(3, k, n, dtype=F64)
    fixed = torch.rand(3, k, k, dtype=F64)
    km = KernelMap(rows, torch.tensor([1, -1, 0]), fixed)
    psf = torch.rand(2, 2, n, n, dtype=F64)
    unit = psf / psf.sum((-1, -2), keepdim=True)
    out = km(psf)
    assert out.shape == (2, 3, k, k)
    assert torch.allclose(out[:, 0], rows[0] @ unit[:, 1] @ rows[0].T)
    assert torch.allclose(out[:, 1], fixed[1].expand(2, k, k))
    assert torch.allclose(out[:, 2], rows[2] @ unit[:, 0] @ rows[2].T)
    # P's scale is the stars' flux's business: the kernels see P's shape only
    assert torch.allclose(km(0.6 * psf), out)
    # a P without positive total (a draw gone wrong) leaves that chain the exposure's fixed kernel
    bad = psf.clone()
    bad[1, 0] = -bad[1, 0]
    assert torch.allclose(km(bad)[1, 2], fixed[2]) and torch.allclose(km(bad)[0], out[0])


def test_given_psf_pseudo_star_reads_back_the_given_psf():
    """A given PSF at 2 samples per detector pixel, as a pseudo-star, is reproduced by P = that PSF on the same
    grid, read as an effective PSF (the pseudo-star's pixels are P's own pixels)."""
    p = gaussian_psf(15, 2, 1.0)
    star = given_psf_star(p, 2, 0.01)
    op, mask = star_operator(star, np.array([0]), 1, 15, np.array([2.0]), "effective", F64)
    model = op(torch.as_tensor(p)[None])[0, 0]
    assert torch.allclose(model[mask[0]], torch.as_tensor(star.data[0])[mask[0]], atol=1e-9)


def test_psf_draws_follow_the_closed_form_posterior():
    """N(0, 1) prior per pixel (network units) and two noisy stars: the draws of the PSF step have the exact
    posterior's mean and variance, up to the convolved likelihood's approximation."""
    n, size = 6, 5
    rng = np.random.default_rng(2)
    centres = np.array([[2.1, 1.9], [1.8, 2.2]])
    truth = rng.normal(size=(n, n))
    scale = 0.1  # flux units per network unit
    stars = StarList(np.zeros((2, size, size)), np.full((2, size, size), 0.04), np.ones((2, size, size), bool),
                     centres, np.array([3.0, 2.0]), np.ones(2))
    op, _ = star_operator(stars, np.array([0, 0]), 1, n, np.array([1.0, 1.0]), "effective", F64)
    clean = op(torch.as_tensor(truth * scale)[None])[0]
    data = clean + 0.2 * torch.as_tensor(rng.normal(size=clean.shape))
    stars.data = data.numpy()
    sde = VESDE(1e-3, 30.0)
    prior = SimpleNamespace(sde=sde, score=lambda x, t: -x / (1.0 + sde.sigma(t)[:, None, None, None] ** 2),
                            net=SimpleNamespace(config={"resolution": n}))
    km = KernelMap(torch.zeros(1, 3, n, dtype=F64), torch.tensor([0]), torch.zeros(1, 3, 3, dtype=F64))
    model = PSFModel(prior, FluxMap(scale), stars, [0, 0], 1, [1.0, 1.0], "effective", km,
                     PSFStep(sde=SDESettings(steps=300, covariance="diag", corrector_steps=1)), dtype=F64)
    draws = model.sample(None, 400, torch.Generator().manual_seed(0))[:, 0].reshape(400, -1) / scale
    # closed form in network units: x ~ N(0, I), y = scale A x + noise (variance 0.04)
    a = dense(op.batched(1), 1)[:, : n * n] * scale
    used = model.likelihood.mask.reshape(-1)
    a = a[used]
    prec = torch.eye(n * n, dtype=F64) + a.T @ a / 0.04
    cov = torch.linalg.inv(prec)
    mean = cov @ a.T @ data.reshape(-1)[used] / 0.04
    sd = cov.diagonal().sqrt()
    assert ((draws.mean(0) - mean).abs() / sd).max() < 0.5
    assert ((draws.var(0) / cov.diagonal()).mean() - 1).abs() < 0.25
    chi2 = model.reduced_chi2(torch.as_tensor(mean * scale).reshape(1, 1, n, n))
    assert chi2.shape == (1,) and torch.isfinite(chi2).all()


def test_psf_step_settings_reject_typos():
    with pytest.raises(ValueError, match="unknown"):
        PSFStep.from_config({"evrey": 2})
    with pytest.raises(ValueError, match="every"):
        PSFStep.from_config({"every": -1})
    assert PSFStep.from_config(None).every == 1
    with pytest.raises(ValueError, match=r"sampler\.psf\.sde: unknown .*stpes"):
        PSFStep.from_config({"sde": {"stpes": 20}})
    with pytest.raises(ValueError, match=r"sampler\.psf\.sde\.sigma_end"):  # the stars' draws end at t_min
        PSFStep.from_config({"every": 2}, {"sigma_end": 0.1})


def test_psf_step_inherits_the_shared_sde_settings():
    """`sampler.psf.sde` overrides `sampler.sde` key by key, as the stages do."""
    step = PSFStep.from_config({"every": 10, "sde": {"steps": 60, "sigma_end": None}},
                               {"steps": 40, "corrector_steps": 0, "sigma_end": 0.1, "t_start": 0.6})
    assert step.every == 10
    assert step.sde == SDESettings(steps=60, corrector_steps=0, t_start=0.6)


def test_star_operator_rejects_batches_that_are_not_whole_groups():
    op, _ = _operator()
    with pytest.raises(ValueError, match="multiple"):
        op(torch.zeros(3, op.n, op.n, dtype=F64))


def test_star_list_concatenate_pads_smaller_stamps_as_unused():
    a = StarList(np.ones((1, 3, 3)), np.ones((1, 3, 3)), np.ones((1, 3, 3), bool), np.ones((1, 2)), np.ones(1),
                 np.ones(1))
    b = StarList(np.ones((2, 5, 5)), np.ones((2, 5, 5)), np.ones((2, 5, 5), bool), np.ones((2, 2)), np.ones(2),
                 np.ones(2))
    c = StarList.concatenate([a, b])
    assert c.data.shape == (3, 5, 5) and c.mask[0].sum() == 9 and c.mask[1:].all()


def _stamps(centres, flux=2e4, size=15, o=4, seed=0):
    """StarStamps of Gaussian stars (an ePSF of sigma 1.2 pixels at `o` per pixel) at `centres` in their stamps."""
    from scorelens.data.psf.stars import StarStamps

    rng = np.random.default_rng(seed)
    epsf = gaussian_psf(41, o, 1.2)
    pix = np.arange(size, dtype=float)
    data = np.stack([flux * psf_rows(pix - r, 41, o, "effective") @ epsf @ psf_rows(pix - c, 41, o, "effective").T
                     for r, c in centres]) + rng.normal(0, 5.0, (len(centres), size, size))
    n = len(centres)
    origins = np.zeros((n, 2), dtype=np.int64)
    guess = np.round(np.asarray(centres, dtype=float))  # the finder's centroids: to the nearest pixel
    return StarStamps(data, np.full(data.shape, 5.0), np.zeros(data.shape, np.int64), guess, np.full(n, flux * 0.9),
                      origins, np.zeros(n), np.full(n, 100.0)), epsf


def test_star_fits_and_psf_groups_own_pooled_and_given():
    from scorelens.data.psf.exposure_psfs import ExposurePSF, LensPSFs, PSFKind
    from scorelens.inference.psf.setup import psf_groups

    stamps, epsf = _stamps([(7.3, 6.8), (6.6, 7.2)])
    fitted = fit_stars(stamps, epsf, 4)
    np.testing.assert_allclose(fitted.centres, [(7.3, 6.8), (6.6, 7.2)], atol=0.01)
    np.testing.assert_allclose(fitted.fluxes, 2e4, rtol=0.01)
    empty = stamps.select(np.zeros(0, dtype=int))
    given = gaussian_psf(21, 1, 1.0)
    psfs = LensPSFs((ExposurePSF("e0", PSFKind.POOLED, epsf, 4, stamps),
                     ExposurePSF("e1", PSFKind.POOLED, epsf, 4, empty),
                     ExposurePSF("e2", PSFKind.GIVEN, given, 1)), np.zeros((3, 5, 5)), pooled=stamps)
    data = SimpleNamespace(exposures=[SimpleNamespace(name=f"e{i}", pixel_scale=0.05) for i in range(3)])
    lists, group = psf_groups({"min_stars_sampled": 1, "given_noise": 0.01}, psfs, data, "sample")
    assert group == [0, 1, 2] and [len(s) for s, _ in lists] == [2, 2, 1]  # own, pooled (all stars), pseudo-star
    assert lists[2][0].measured.tolist() == [False] and lists[0][0].measured.all()
    lists, group = psf_groups({"min_stars_sampled": 3}, psfs, data, "fixed")
    assert group == [0, 0, -1] and len(lists) == 1  # too few own stars: both share the pooled P; the given is kept


def test_psf_step_configuration_errors_are_one_line():
    from scorelens.errors import InputError
    from scorelens.inference.psf.setup import psf_model

    base = OmegaConf.to_container(compose_infer(["lens=J1430"]), resolve=False)

    def cfg(psf=None, **prior):
        return {**base, "priors": {"psf": {**base["priors"]["psf"], **prior}}, "psf": {**base["psf"], **(psf or {})}}

    assert psf_model(cfg(), None, None, None, None, "cpu", F64) is None  # no prior: PSFs stay fixed
    assert psf_model(cfg({"sample": False}, path="p.pt"), None, None, None, "p.pt", "cpu", F64) is None
    for c, match in [(cfg({"sample": "true"}), "needs a PSF prior"), (cfg({"sample": "maybe"}), "auto, true or false"),
                     (cfg({"given": "fix"}, path="p.pt"), "psf.given"),
                     (cfg(path="p.pt"), "pixel_scale"),
                     (cfg(path="p.pt", pixel_scale=0.025, response="ePSF"), "response")]:
        with pytest.raises(InputError, match=match):
            psf_model(c, None, None, None, "p.pt", "cpu", F64)
