"""Star finding for empirical PSFs on a mock FLT exposure: the stars are found, cosmic rays and the lens are not."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from scorelens.data.observations.masks import dq_bitmask
from scorelens.data.observations.sky_grid import sky_offsets
from scorelens.data.psf.stars import ARTEFACT, StarStamps, find_settings, find_stars, find_stars_in_flt
from scorelens.data.simulate.mock import load_truth, make_mock
from scorelens.errors import InputError
from tests.conftest import compose_infer

MOCK = dict(seed=3, frame=(128, 128), cutout=48, source_grid=(64, 0.05), n_stars=8, n_exp=1, psf_size=41,
            cosmic_density=2e-3, bad_pixel_fraction=2e-3)
# small stamps for the small mock frame; the mock does not saturate
SETTINGS = dict(stamp_size=11, max_peak=None, exclude_radius_arcsec=1.5)
FIND = compose_infer().stars.find  # the settings a run uses: conf/stars/default.yaml


def load_star_settings(**overrides):
    return find_settings(FIND, **overrides)


@pytest.fixture(scope="module")
def exposure(tmp_path_factory):
    root = tmp_path_factory.mktemp("mock")
    paths = make_mock(root, **MOCK)
    truth = load_truth(root)
    with fits.open(paths.exposures[0]) as hdul:
        arrays = [hdul[name].data.astype(np.float64) for name in ("SCI", "ERR")] + [hdul["DQ"].data]
        wcs = WCS(hdul["SCI"].header, hdul)
    return paths, truth, (*arrays, wcs)


def run(exposure, **overrides):
    _, truth, (sci, err, dq, wcs) = exposure
    return find_stars(sci, err, dq, wcs, truth.meta["ra"], truth.meta["dec"],
                      **load_star_settings(**{**SETTINGS, **overrides}))


def true_stars(truth):
    return np.array([s["pixels"][0] for s in truth.meta["stars"]])


def matched(found: np.ndarray, true: np.ndarray, tol: float) -> list[int]:
    """Index of the true star within tol pixels of each found star (-1 if none)."""
    d = np.hypot(found[:, None, 0] - true[None, :, 0], found[:, None, 1] - true[None, :, 1])
    return [int(np.argmin(row)) if row.min() < tol else -1 for row in d]


def test_finds_the_isolated_mock_stars_at_their_positions(exposure):
    _, truth, (sci, err, dq, wcs) = exposure
    stars = run(exposure)
    true = true_stars(truth)
    assert len(stars) >= 5
    assert -1 not in matched(stars.positions, true, 0.1)
    # every star away from the lens, the edges and flagged core pixels is found, except one by an arc
    rows, cols = np.mgrid[:128, :128]
    x, y = sky_offsets(wcs, truth.meta["ra"], truth.meta["dec"], true[:, 0], true[:, 1])
    clean = [not dq[np.hypot(rows - r, cols - c) <= 3].any() for r, c in true]
    inside = np.all((np.rint(true) >= 5) & (np.rint(true) <= 127 - 5), axis=1)  # an 11-pixel stamp fits
    expected = set(np.flatnonzero(inside & (np.hypot(x, y) > 1.5) & np.array(clean)))
    assert set(matched(stars.positions, true, 0.1)) <= expected and len(expected) - len(stars) <= 1


def test_stamps_hold_the_star_with_err_and_dq(exposure):
    _, truth, (sci, err, dq, _) = exposure
    stars = run(exposure)
    n = len(stars)
    assert stars.data.shape == stars.err.shape == stars.dq.shape == (n, 11, 11)
    assert np.all(np.abs(stars.centres() - 5) <= 0.5)
    r, c = stars.origins[0]
    np.testing.assert_array_equal(stars.err[0], err[r:r + 11, c:c + 11])
    np.testing.assert_array_equal(stars.dq[0], dq[r:r + 11, c:c + 11])
    np.testing.assert_allclose(stars.data[0] + stars.background[0], sci[r:r + 11, c:c + 11])
    assert np.all(np.diff(stars.snr) <= 0) and stars.snr.min() >= 50
    # the 11 x 11 stamp holds most of each star's flux (the mock sky is 35 electrons, so the background is taken off)
    flux = np.array([s["flux"] for s in truth.meta["stars"]])[matched(stars.positions, true_stars(truth), 0.1)]
    assert np.all((stars.fluxes > 0.8 * flux) & (stars.fluxes < 1.05 * flux))


def test_cosmic_rays_and_hot_pixels_are_not_stars_even_without_dq(exposure):
    _, truth, _ = exposure
    assert truth.meta["exposures"][0]["n_cosmic_rays"] > 20
    stars = run(exposure, dq_bad_bits=0)  # DQ ignored: the cosmic rays are in the image, unflagged
    assert len(stars) >= 5
    assert -1 not in matched(stars.positions, true_stars(truth), 0.1)
    assert any((d & ARTEFACT).any() for d in stars.dq)  # nearby cosmic rays are flagged in the stamps


def test_the_lens_is_no_star_even_without_the_exclusion_radius(exposure):
    _, truth, (*_, wcs) = exposure
    for overrides in (dict(), dict(exclude_radius_arcsec=0.0), dict(exclude_radius_arcsec=0.0,
                                                                   sharpness_range=None, roundness_range=None)):
        stars = run(exposure, **overrides)
        x, y = sky_offsets(wcs, truth.meta["ra"], truth.meta["dec"], stars.positions[:, 0], stars.positions[:, 1])
        assert np.hypot(x, y).min() > 1.5, overrides
        assert -1 not in matched(stars.positions, true_stars(truth), 0.1)


def test_saturated_stars_are_rejected(exposure):
    _, _, (sci, *_) = exposure
    stars = run(exposure)
    peaks = [sci[int(round(r)), int(round(c))] for r, c in stars.positions]
    fewer = run(exposure, max_peak=float(np.median(peaks)))
    assert 0 < len(fewer) < len(stars)
    assert all(sci[int(round(r)), int(round(c))] < np.median(peaks) for r, c in fewer.positions)


def test_flt_wrapper_takes_the_lens_from_the_header(exposure):
    paths, _, _ = exposure
    [(extver, stars)] = find_stars_in_flt(paths.exposures[0], settings=load_star_settings(**SETTINGS))
    assert extver == 1
    np.testing.assert_allclose(stars.positions, run(exposure).positions)


def test_settings_come_from_the_config_and_bad_ones_fail():
    settings = load_star_settings()
    bits = dq_bitmask(settings["dq_bad_bits"])
    assert settings["stamp_size"] == 35 and bits == 65535 - 32 - 64
    with pytest.raises(InputError, match=r"unknown star-finding setting\(s\) stars.find.\['stampsize'\]"):
        load_star_settings(stampsize=11)
    with pytest.raises(InputError, match=r"\['snr_min'\] missing under stars.find"):
        find_settings({k: v for k, v in FIND.items() if k != "snr_min"})


def test_bad_arrays_are_input_errors():
    img = np.ones((40, 40))
    settings = load_star_settings(stamp_size=11)
    with pytest.raises(InputError, match="one 2-D shape"):
        find_stars(img, np.ones((40, 41)), np.zeros((40, 40), int), None, None, None, **settings)
    with pytest.raises(InputError, match="needs the chip's WCS"):
        find_stars(img, img, np.zeros((40, 40), int), None, 10.0, 2.0, **settings)
    empty = find_stars(img, img, np.zeros((40, 40), int), None, None, None, **settings)
    assert isinstance(empty, StarStamps) and len(empty) == 0 and empty.data.shape == (0, 11, 11)


def test_aperture_stats_are_exact_on_flat_light_and_smooth_in_a_stars_position():
    from scipy.special import erf

    from scorelens.data.psf.stars import aperture_stats

    # flat light: exact pixel overlap makes every aperture sum c * pi r^2 and its error e * sqrt(pi r^2)
    flat, err, bad = np.full((60, 60), 3.0), np.full((60, 60), 2.0), np.zeros((60, 60), bool)
    rows, cols = np.array([30.0, 25.37, 33.81]), np.array([30.0, 28.52, 31.09])
    out = aperture_stats(flat, err, bad, rows, cols, (1.5, 4.0), 3.0)
    np.testing.assert_allclose(out["concentration"], (1.5 / 4.0) ** 2, rtol=1e-10)
    np.testing.assert_allclose(out["snr"], 3.0 * np.pi * 9.0 / (2.0 * np.sqrt(np.pi * 9.0)), rtol=1e-10)
    # a flagged pixel is left out of the sums
    bad[30, 30] = True
    assert aperture_stats(flat, err, bad, rows[:1], cols[:1], (1.5, 4.0), 3.0)["snr"][0] < out["snr"][0]

    # a Gaussian star (pixel-integrated) moved within its pixel: its concentration stays within 0.5%, where
    # pixel-centre masks jump by about 4% (they take or drop whole pixels)
    edges, sigma = np.arange(81) - 0.5, 3.0

    def star(r0, c0):
        def integral(c):
            return 0.5 * np.diff(erf((edges - c) / (np.sqrt(2) * sigma)))
        return np.outer(integral(r0), integral(c0))

    offsets = [(40.0, 40.0), (40.5, 40.5), (40.27, 40.62), (40.5, 40.0)]
    conc = [aperture_stats(star(r, c), np.ones((80, 80)), np.zeros((80, 80), bool), np.array([r]), np.array([c]),
                           (4.0, 10.0), 4.0)["concentration"][0] for r, c in offsets]
    assert np.ptp(conc) / np.mean(conc) < 0.005
