"""Co-add mocks rendered by lenstronomy: the frame they are drawn in is the one lens=fits reads, files load strictly,
noise is what the noise map says, and a finished mock is kept."""

import dataclasses
import json
import logging

import numpy as np
import pytest

from scorelens.data.observations.coadd import load_coadd
from scorelens.errors import InputError
from scorelens.lensing.mass import PARAM_NAMES

pytest.importorskip("lenstronomy")
from scorelens.data.simulate.lenstronomy_coadd import (  # noqa: E402
    CoaddMockSettings,
    _image_model,
    make_coadd_mock,
    prepare_galaxy,
    render,
)

SMALL = CoaddMockSettings(size=48, pixel_scale=0.08, theta_E=(0.8, 1.0), supersampling=2, n_lens_light=(1, 2))


def galaxy():
    rows, cols = np.indices((41, 41), dtype=float)
    return np.exp(-0.5 * (((cols - 22) / 5.0) ** 2 + ((rows - 19) / 3.0) ** 2)) + 0.01


def gaussian_psf(n=9, sd=1.2):
    r = np.arange(n) - n // 2
    k = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sd**2)
    return k / k.sum()


def test_prepared_galaxy_is_centred_and_sky_free():
    stamp, rms = prepare_galaxy(galaxy())
    rows, cols = np.indices(stamp.shape)
    w = stamp / stamp.sum()
    assert (w * rows).sum() == pytest.approx(20.0, abs=0.05) and (w * cols).sum() == pytest.approx(20.0, abs=0.05)
    assert stamp.min() >= 0 and rms == pytest.approx(np.hypot(5.0, 3.0), rel=0.05)


def test_mock_loads_as_a_strict_fits_lens_in_lenstronomys_frame(tmp_path):
    root = make_coadd_mock(tmp_path / "m", 3, [galaxy()], gaussian_psf(), SMALL)
    exp = load_coadd(root / "image.fits", root / "noise_map.fits", root / "psf.fits", SMALL.pixel_scale,
                     strict=True).exposures[0]
    # every pixel's sky position as lenstronomy rendered it = as the co-add loader reads it
    ra, dec = _image_model(SMALL, gaussian_psf(), ["SIS"], 1).Data.pixel_coordinates
    np.testing.assert_allclose(exp.x, ra, atol=1e-12)
    np.testing.assert_allclose(exp.y, dec, atol=1e-12)
    truth = json.loads((root / "truth.json").read_text())
    assert set(truth["mass"]) == set(PARAM_NAMES) and truth["seed"] == 3
    assert SMALL.theta_E[0] <= truth["mass"]["theta_E"] <= SMALL.theta_E[1]


def test_noise_map_describes_the_noise():
    arrays, truth = render(5, [galaxy()], gaussian_psf(), dataclasses.replace(SMALL, size=96))
    z = (arrays["image"] - arrays["model"]) / arrays["noise_map"]
    assert abs(z.mean()) < 0.05 and z.std() == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(arrays["model"], arrays["lens_light"] + arrays["lensed_source"])
    # the brightest lensed-source pixel has the drawn signal-to-noise, in counts over the co-add's exposure time
    t, s, rest = SMALL.exptime, arrays["lensed_source"], arrays["lens_light"]
    snr = s * t / np.sqrt(s * t + rest * t + (SMALL.background_rms * t) ** 2)
    assert snr.max() == pytest.approx(truth["source"]["snr"], rel=1e-6)
    assert arrays["lens_light"].sum() == pytest.approx(truth["lens_flux"])


def test_finished_mock_is_kept_and_another_seed_replaces_it(tmp_path):
    root = make_coadd_mock(tmp_path / "m", 1, [galaxy()], gaussian_psf(), SMALL)
    before = (root / "image.fits").stat().st_mtime_ns
    make_coadd_mock(root, 1, [galaxy()], gaussian_psf(), SMALL)
    assert (root / "image.fits").stat().st_mtime_ns == before
    make_coadd_mock(root, 2, [galaxy()], gaussian_psf(), SMALL)
    assert json.loads((root / "truth.json").read_text())["seed"] == 2


def test_bad_psf_and_no_galaxy_are_refused(tmp_path):
    with pytest.raises(InputError, match="odd-sided"):
        render(1, [galaxy()], np.ones((8, 8)), SMALL)
    with pytest.raises(InputError, match="at least one source galaxy"):
        render(1, [], gaussian_psf(), SMALL)


def test_coadd_mock_command_writes_a_lens_that_fits_reads(tmp_path, caplog):
    from astropy.io import fits

    from scorelens.cli.data import main

    caplog.set_level(logging.INFO)
    fits.PrimaryHDU(galaxy()).writeto(tmp_path / "gal.fits")
    fits.PrimaryHDU(gaussian_psf(12)[:11, :11]).writeto(tmp_path / "psf_in.fits")  # cut about its peak to 11 x 11
    out = tmp_path / "mock"
    args = ["coadd-mock", str(out), "--galaxies", str(tmp_path / "gal.fits"), "--psf", str(tmp_path / "psf_in.fits"),
            "--size", "40", "--pixel-scale", "0.1", "--seed", "4"]
    assert main(args) == 0
    assert "lens=fits" in caplog.text
    load_coadd(out / "image.fits", out / "noise_map.fits", out / "psf.fits", 0.1, strict=True)
    assert main([*args[:3], str(tmp_path / "missing.fits"), *args[4:]]) == 2
    assert "missing.fits does not exist" in caplog.text
