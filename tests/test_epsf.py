"""Empirical PSFs from star stamps (photutils EPSFBuilder), and the shared PSF operations: centring, flux-conserving
resampling, preparation."""

import numpy as np
import pytest

from scorelens.data.psf.epsf import build_epsf, center_psf, prepare_psf, psf_centroid, resample_psf
from scorelens.data.psf.stars import StarStamps
from scorelens.errors import InputError

ALPHA, BETA = (1.35, 1.1), 2.5  # elliptical Moffat: core widths along rows and columns, detector pixels


def moffat(dy, dx):
    """Unit-flux elliptical Moffat per unit area (detector pixels), wider along rows than columns."""
    ay, ax = ALPHA
    return (BETA - 1) / (np.pi * ay * ax) * (1 + (dy / ay) ** 2 + (dx / ax) ** 2) ** -BETA


def pixel_integrated(cy, cx, n, sub=8):
    """[n, n] image of a unit-flux Moffat centred at (cy, cx): each detector pixel's integral (sub^2 midpoints)."""
    t = (np.arange(n * sub) + 0.5) / sub - 0.5
    yy, xx = np.meshgrid(t - cy, t - cx, indexing="ij")
    return moffat(yy, xx).reshape(n, sub, n, sub).mean(axis=(1, 3))


def true_epsf(size, oversampling=4, sub=8):
    """The Moffat's ePSF: the flux a detector pixel at each fine-grid offset receives, unit sum, centre size // 2."""
    u = (np.arange(size) - size // 2) / oversampling
    t = (np.arange(sub) + 0.5) / sub - 0.5
    out = sum(moffat(u[:, None] + a, u[None, :] + b) for a in t for b in t)
    return out / out.sum()


def gaussian(size, oversampling, sigma=1.0, centre=(0.0, 0.0)):
    """Unit-flux Gaussian (sigma in detector pixels) integrated over fine pixels, [size, size], its centre at
    pixel size // 2 plus `centre` fine pixels."""
    from scipy.special import erf

    edges = (np.arange(size + 1) - size // 2 - 0.5) / oversampling
    cdf = lambda e, c: 0.5 * (1 + erf((e - c / oversampling) / (np.sqrt(2) * sigma)))  # noqa: E731
    return np.outer(np.diff(cdf(edges, centre[0])), np.diff(cdf(edges, centre[1])))


def simulated_stars(n=30, s=15, seed=0):
    """n noisy stars (electrons, sky subtracted) at random sub-pixel positions, as StarStamps; 5 of them hold a
    DQ-flagged cosmic ray outside the core."""
    rng = np.random.default_rng(seed)
    sky, read_noise = 30.0, 5.0
    data, err, dq, pos = [], [], [], []
    for i in range(n):
        centre = s // 2 + rng.uniform(-0.5, 0.5, 2)
        model = rng.uniform(5e4, 2e5) * pixel_integrated(*centre, s)
        noisy = rng.poisson(model + sky) - sky + rng.normal(0, read_noise, model.shape)
        flags = np.zeros((s, s), dtype=np.int64)
        if i < 5:
            noisy[1, 2 + i] += 3e4
            flags[1, 2 + i] = 8192
        data.append(noisy)
        err.append(np.sqrt(model + sky + read_noise**2))
        dq.append(flags)
        pos.append(centre + 100.0)
    origins = np.full((n, 2), 100, dtype=np.int64)
    return StarStamps(np.stack(data), np.stack(err), np.stack(dq), np.stack(pos), np.zeros(n), origins,
                      np.full(n, sky), np.zeros(n), dq_bad_bits=8192)


def test_epsf_from_30_noisy_stars_matches_the_known_psf():
    """The acceptance test: an ePSF at oversampling 4 from 30 stars agrees with the true ePSF to 2% of its peak."""
    size = 61
    epsf = build_epsf(simulated_stars(), oversampling=4, size=size, maxiters=3)
    truth = true_epsf(size)
    assert epsf.shape == (size, size) and epsf.sum() == pytest.approx(1.0) and epsf.min() >= 0
    assert np.unravel_index(np.argmax(epsf), epsf.shape) == (size // 2, size // 2)
    np.testing.assert_allclose(psf_centroid(epsf, 6), (0, 0), atol=0.01)
    resid = epsf - truth
    r = np.hypot(*np.mgrid[:size, :size] - size // 2) / 4
    assert np.sqrt(np.mean(resid**2)) < 0.02 * truth.max()
    assert np.sqrt(np.mean(resid[r < 3] ** 2)) < 0.02 * truth.max()  # the core alone, where the flux is
    # the elongation along rows survives (no transposition): second moments of the core
    core = np.where(r < 3, epsf, 0)
    yy, xx = np.mgrid[:size, :size] - size // 2
    assert (core * yy**2).sum() > 1.1 * (core * xx**2).sum()


def test_build_epsf_needs_stars():
    with pytest.raises(InputError, match="no star stamps"):
        build_epsf([], oversampling=4, size=33)


@pytest.mark.parametrize("source, target, size, tol", [
    (4, 2, 48, 1e-3), (4, 1, 25, 1e-3), (4, 3, 51, 1e-3), (2, 4, 96, 0.005),
    (1, 4, 97, 0.04),  # upsampling from detector pixels, where a sigma of 0.9 pixels is undersampled
])
def test_resample_conserves_flux_and_centre(source, target, size, tol):
    psf = gaussian(8 * source + 1, source, sigma=0.9)
    out = resample_psf(psf, source, target, size)
    assert out.shape == (size, size) and out.min() > -0.01 * out.max()
    assert out.sum() == pytest.approx(psf.sum(), rel=1e-10)
    np.testing.assert_allclose(psf_centroid(out, size // 2 - 1), (0, 0), atol=1e-3 * target)
    # the resampled PSF is the same Gaussian, integrated over the new pixels
    np.testing.assert_allclose(out, gaussian(size, target, sigma=0.9), atol=tol * out.max())


def test_resample_is_block_summing_when_pixel_edges_align():
    psf = np.random.default_rng(1).uniform(0, 1, (33, 33))
    out = resample_psf(psf, 3, 1, 11)
    np.testing.assert_allclose(out, psf.reshape(11, 3, 11, 3).sum(axis=(1, 3)), rtol=1e-12)


def test_resample_at_equal_oversampling_cuts_or_pads_about_the_centre():
    psf = gaussian(33, 4)
    assert np.array_equal(resample_psf(psf, 4, 4, 33), psf)
    padded = resample_psf(psf, 4, 4, 40)
    assert np.unravel_index(np.argmax(padded), padded.shape) == (20, 20) and padded.sum() == pytest.approx(psf.sum())
    cut = resample_psf(psf, 4, 4, 16)
    assert np.unravel_index(np.argmax(cut), cut.shape) == (8, 8)


def test_center_psf_moves_an_offset_psf_onto_the_centre_pixel():
    off = gaussian(65, 4, sigma=1.2, centre=(0.6, -1.3))
    np.testing.assert_allclose(psf_centroid(off, 30), (0.6, -1.3), atol=1e-3)  # a box that holds it all
    centred = center_psf(off, 4)
    np.testing.assert_allclose(psf_centroid(centred, 6), (0, 0), atol=2e-3)
    np.testing.assert_allclose(centred / centred.sum(), gaussian(65, 4, sigma=1.2), atol=5e-3 * centred.max())
    far = gaussian(65, 4, sigma=1.0, centre=(14.0, -9.0))  # peak outside the centring box
    assert np.unravel_index(np.argmax(center_psf(far, 4)), (65, 65)) == (32, 32)


def test_prepare_psf_gives_unit_sum_centred_psfs():
    psf = gaussian(41, 1, sigma=1.5, centre=(0.3, 0.2)) * 7.0
    psf[0, :] = -0.1  # a fill value, as in some library PSFs
    out = prepare_psf(psf, 1, 4, 64, "test.fits")
    assert out.shape == (64, 64) and out.sum() == pytest.approx(1.0) and out.min() >= 0
    np.testing.assert_allclose(psf_centroid(out, 6), (0, 0), atol=2e-3)


@pytest.mark.parametrize("bad, message", [
    (np.full((9, 9), np.nan), "psf.fits: the PSF has NaN or infinite pixels"),
    (np.zeros((9, 9)), "psf.fits: the PSF sums to 0, not to a positive flux"),
    (np.ones((9, 7)), "psf.fits: a PSF must be a square 2-D array"),
])
def test_bad_psfs_are_input_errors_naming_the_file(bad, message):
    with pytest.raises(InputError) as err:
        prepare_psf(bad, 4, 4, 16, "psf.fits")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_effective_psf_kernel_images_a_point_source_as_the_epsf():
    """A point source on the model's sub-pixel grid, through the "sample" detector with the kernel built from an
    ePSF, gives detector pixels equal to the ePSF (the optical PSF integrated over a pixel, here in closed form)."""
    import torch
    from scipy.special import erf

    from scorelens.data.psf.epsf import effective_psf_kernel
    from scorelens.lensing.binning import sample_pixels
    from scorelens.lensing.psf import PSFConvolution

    sx, sy = 0.8, 1.1  # optical Gaussian widths, detector pixels

    def epsf_at(u, v):  # fraction of a unit point source at offset (u, v) falling in a pixel
        fx = 0.5 * (erf((u + 0.5) / (sx * np.sqrt(2))) - erf((u - 0.5) / (sx * np.sqrt(2))))
        fy = 0.5 * (erf((v + 0.5) / (sy * np.sqrt(2))) - erf((v - 0.5) / (sy * np.sqrt(2))))
        return fx * fy

    o = 8
    grid = (np.arange(-8 * o, 8 * o + 1)) / o
    epsf = epsf_at(grid[None, :], grid[:, None])
    for s in (2, 3):
        kernel = effective_psf_kernel(epsf, o, s, 12 * s + 1)
        n = 16
        img = torch.zeros(1, n * s, n * s, dtype=torch.float64)
        r, c = 8 * s + 1, 7 * s + s - 1  # a sub-pixel off the pixel centre
        img[0, r, c] = s**2  # unit flux: surface brightness per detector-pixel area times the sub-pixel area
        out = sample_pixels(PSFConvolution(torch.tensor(kernel)[None], (n * s, n * s))(img), s)[0].numpy()
        # positions in detector pixels: sub-pixel centre (r + 0.5) / s - 0.5, pixel centre i
        yr, xc = (r + 0.5) / s - 0.5, (c + 0.5) / s - 0.5
        ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        expect = epsf_at(jj - xc, ii - yr)
        assert np.abs(out - expect).max() < 2e-3 * expect.max(), s
