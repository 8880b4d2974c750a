"""Mock lens systems: FLT-like FITS files with valid WCS, truth that reproduces the noiseless images, honest noise."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from omegaconf import OmegaConf

from scorelens.cli import data as data_cli
from scorelens.data.observations.sky_grid import sky_offsets, sky_to_pixel
from scorelens.data.simulate import mock
from scorelens.data.simulate.flt_files import DQ_BAD_PIXEL, DQ_COSMIC_RAY
from scorelens.data.simulate.hst_psf import hst_like_psf
from scorelens.data.simulate.mock import load_truth, make_mock, render_truth
from scorelens.data.simulate.mock_build import render_frames
from scorelens.data.simulate.mock_config import MockConfig, mock_config
from scorelens.errors import DifferentMockError, InputError
from scorelens.lensing.mass import PARAM_NAMES

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(seed=3, frame=(96, 96), cutout=64, source_grid=(128, 0.03), n_stars=2, cosmic_density=2e-3,
             bad_pixel_fraction=2e-3)
TINY = dict(frame=(48, 48), cutout=24, source_grid=(48, 0.06), n_stars=1, psf_size=33, upsample=1,
            theta_E=(0.5, 0.6), dither=[[0, 0], [1.5, 0.5]], n_exp=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("mock")
    paths = make_mock(root, **SMALL)
    return paths, load_truth(root)


def test_files_are_flt_like_with_valid_wcs(small):
    paths, truth = small
    assert [p.name for p in paths.exposures] == [f"jmock00{e}q_flt.fits" for e in range(1, 5)]
    for path in paths.exposures:
        with fits.open(path) as hdul:
            hdul.verify("exception")
            primary = hdul[0].header
            assert (primary["TELESCOP"], primary["INSTRUME"], primary["DETECTOR"]) == ("HST", "ACS", "WFC")
            assert (primary["FILTER1"], primary["FILTER2"]) == ("CLEAR1L", "F814W")
            assert primary["EXPTIME"] == truth.meta["exptime"] and primary["ROOTNAME"] == path.name[:9]
            assert (primary["RA_TARG"], primary["DEC_TARG"]) == (truth.meta["ra"], truth.meta["dec"])
            for name, dtype in (("SCI", np.float32), ("ERR", np.float32), ("DQ", np.int16)):
                hdu = hdul[name, 1]
                assert hdu.data.shape == (96, 96) and hdu.data.dtype.newbyteorder("=") == dtype
                assert hdu.header["EXTVER"] == 1
                wcs = WCS(hdu.header, hdul)
                assert wcs.has_celestial and wcs.sip is not None
                assert hdu.header["CTYPE1"] == "RA---TAN-SIP"
                np.testing.assert_allclose(proj_plane_pixel_scales(wcs) * 3600, 0.05, rtol=1e-9)
            assert hdul["SCI"].header["BUNIT"] == "ELECTRONS" and hdul["ERR"].header["BUNIT"] == "ELECTRONS"
            assert hdul["SCI"].header["MDRIZSKY"] == truth.meta["sky"][0]


def test_lens_lands_at_the_expected_pixel(small):
    paths, truth = small
    meta = truth.meta
    lens0 = np.asarray(meta["exposures"][0]["lens_pixel"])
    for e, path in enumerate(paths.exposures):
        wcs = mock.read_wcs(path)
        row, col = (float(v) for v in sky_to_pixel(wcs, meta["ra"], meta["dec"]))
        # the dithers move the lens by (columns, rows) on the detector; distortion and roll change it by < 0.01 px
        dcol, drow = meta["exposures"][e]["dither"]
        np.testing.assert_allclose([row, col], lens0 + [drow, dcol], atol=0.01)
        x, y = sky_offsets(wcs, meta["ra"], meta["dec"], row, col)
        assert math.hypot(x, y) < 1e-6
        # the lens galaxy's brightest pixel is at the lens (its centre is within ~0.05 arcsec of ra, dec)
        light = truth.arrays["lens_light_image"][e]
        peak = np.unravel_index(np.argmax(light), light.shape)
        assert math.hypot(peak[0] - row, peak[1] - col) < 1.6
        r, c = meta["exposures"][e]["cutout_center"]
        assert 0 <= r - 32 and r + 32 <= 96 and 0 <= c - 32 and c + 32 <= 96


def test_truth_reproduces_noiseless_images(small):
    paths, truth = small
    again = render_truth(paths.root)
    for key in ("noiseless", "noiseless_stars", "stars"):
        np.testing.assert_allclose(again[key], truth.arrays[key], rtol=1e-12, atol=1e-9)
    assert truth.arrays["lensed_source"].max() > 100 and truth.arrays["stars"].max() > 1000
    # the true shifts matter at this precision: without them the frames differ
    wcs = [mock.read_wcs(p) for p in paths.exposures]
    unshifted = render_frames(wcs[:2], {**truth.meta, "shifts": np.zeros((2, 2)).tolist()},
                              {**truth.arrays, "psf": truth.arrays["psf"][:2]})
    assert np.abs(unshifted["noiseless"][1] - truth.arrays["noiseless"][1]).max() > 1.0
    np.testing.assert_allclose(unshifted["noiseless"][0], truth.arrays["noiseless"][0], rtol=1e-12, atol=1e-9)


def test_noise_is_consistent_with_err(small):
    paths, truth = small
    residuals = []
    for e, path in enumerate(paths.exposures):
        with fits.open(path) as hdul:
            sci, err, dq = (hdul[k].data.astype(np.float64) for k in ("SCI", "ERR", "DQ"))
            sky = hdul["SCI"].header["MDRIZSKY"]
        model = truth.arrays["noiseless_stars"][e]
        np.testing.assert_allclose(err, np.sqrt(model + sky + truth.meta["read_noise"] ** 2), rtol=1e-6)
        good = dq == 0
        residuals.append(((sci - model - sky) / err)[good])
    r = np.concatenate(residuals)
    assert r.size > 0.95 * 4 * 96 * 96
    assert abs(r.mean()) < 0.03 and abs(r.std() - 1) < 0.05


def test_cosmic_rays_and_bad_pixels_are_flagged(small):
    paths, truth = small
    for e, path in enumerate(paths.exposures):
        with fits.open(path) as hdul:
            sci, err, dq = hdul["SCI"].data, hdul["ERR"].data, hdul["DQ"].data
        cr = truth.arrays["cosmic_rays"][e]
        assert (cr > 0).sum() > 0 and truth.meta["exposures"][e]["n_cosmic_rays"] > 0
        np.testing.assert_array_equal((dq & DQ_COSMIC_RAY) > 0, cr > 0)
        assert ((dq & DQ_BAD_PIXEL) > 0).sum() == truth.meta["exposures"][e]["n_bad_pixels"] > 0
        excess = (sci - truth.arrays["noiseless_stars"][e] - truth.meta["sky"][e]) / err
        assert np.median(excess[dq > 0]) > 5  # flagged pixels hold large spurious counts


def test_truth_json_holds_the_contract(small):
    paths, truth = small
    meta = json.loads(paths.truth_json.read_text())
    assert set(meta["mass"]) == set(PARAM_NAMES)
    assert all(isinstance(v, float) for v in meta["mass"].values())
    assert np.asarray(meta["shifts"]).shape == (4, 2) and meta["shifts"][0] == [0.0, 0.0]
    assert 0 < np.abs(meta["shifts"]).max() < 0.03
    assert 1 <= len(meta["lens_light"]["components"]) <= 3 and len(meta["stars"]) == 2
    assert truth.arrays["psf"].shape == (4, 65, 65) and truth.arrays["source"].shape == (128, 128)
    n = meta["lens_light_grid"]["n"]
    assert truth.arrays["lens_light"].shape == (n, n)
    # the lens-light grid covers every ray of every exposure
    half = n / 2 * meta["lens_light_grid"]["pixel_scale"]
    assert max(np.abs(truth.arrays["sky_x"]).max(), np.abs(truth.arrays["sky_y"]).max()) < half
    # the brightest lensed-source pixel of exposure 0 has the drawn signal-to-noise
    src, light = truth.arrays["lensed_source"][0].astype(np.float64), truth.arrays["lens_light_image"][0]
    snr = src / np.sqrt(src + light + meta["sky"][0] + meta["read_noise"] ** 2)
    assert snr.max() == pytest.approx(meta["source"]["peak_snr"], rel=1e-3)
    assert 20 <= meta["source"]["peak_snr"] <= 50


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a, b, c = (make_mock(tmp_path / name, seed=seed, **TINY) for name, seed in (("a", 5), ("b", 5), ("c", 6)))
    for pa, pb in zip([*a.exposures, a.truth_json, a.truth_npz], [*b.exposures, b.truth_json, b.truth_npz],
                      strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    assert a.exposures[0].read_bytes() != c.exposures[0].read_bytes()
    assert load_truth(a.root).mass != load_truth(c.root).mass


def test_existing_mock_is_kept_or_refused(tmp_path):
    paths = make_mock(tmp_path, seed=5, **TINY)
    stamp = paths.truth_json.stat().st_mtime_ns
    assert make_mock(tmp_path, seed=5, **TINY).truth_json.stat().st_mtime_ns == stamp  # kept as it is
    with pytest.raises(DifferentMockError, match="different mock") as err:
        make_mock(tmp_path, seed=6, **TINY)
    assert (err.value.root, err.value.seed) == (tmp_path, 5)
    make_mock(tmp_path, seed=6, overwrite=True, **TINY)
    assert load_truth(tmp_path).meta["seed"] == 6
    assert not list(tmp_path.glob(".*tmp*"))


def test_source_image_is_used(tmp_path):
    yy, xx = np.mgrid[:30, :40]
    galaxy = np.exp(-((xx - 20.0) ** 2 / 60 + (yy - 14.0) ** 2 / 20)) + 0.3 * np.exp(-((xx - 28) ** 2 + (yy - 9) ** 2))
    paths = make_mock(tmp_path, seed=2, source_image=galaxy, **TINY)
    truth = load_truth(paths.root)
    assert truth.meta["source"]["kind"] == "image" and truth.meta["source"]["image_shape"] == [30, 40]
    assert truth.arrays["source"].max() > 0
    np.testing.assert_allclose(render_truth(paths.root)["noiseless"], truth.arrays["noiseless"], rtol=1e-12)


@pytest.mark.parametrize("settings, message", [
    (dict(frame=(64, 64), cutout=128), "smaller than the cutout"),
    (dict(source_image=np.full((8, 8), np.nan)), "non-finite"),
    (dict(source_image=np.ones(10)), "2-D array"),
    (dict(psf_size=64), "odd"),
    (dict(colour="red"), "unknown mock setting"),
    (dict(seed=-1), "seed"),
    (dict(frame=(40, 40), cutout=36, n_stars=3), "no room"),
])
def test_bad_input_is_an_input_error(tmp_path, settings, message):
    with pytest.raises(InputError, match=message):
        make_mock(tmp_path / "m", **{**TINY, **settings})
    assert not (tmp_path / "m" / "truth.json").exists()


def test_psf_is_unit_sum_and_centred():
    psf = hst_like_psf(33, 0.025, ellipticity=0.03, ellipticity_angle=0.4)
    assert psf.shape == (33, 33) and psf.min() >= 0 and psf.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (16, 16)


def test_lens_config_matches_the_generator_defaults():
    lens = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "lens" / "mock.yaml"))
    defaults = mock_config()
    block = dict(lens["mock"])
    block.pop("out_dir")
    assert mock_config(**block) == defaults
    assert set(block) | {"name", "ra", "dec", "z_lens", "z_source"} == {f.name for f in dataclasses.fields(MockConfig)}
    for key in ("name", "ra", "dec", "z_lens", "z_source"):
        assert lens[key] == getattr(defaults, key)
    assert [Path(p).name for p in lens["exposures"]] == defaults.file_names()
    assert lens["rootnames"] == defaults.rootnames()
    # the start: the mock's simulated catalogue entry; `init` is a generic round isothermal lens that carries nothing
    # of any seed's truth (no orientation, no shear, no multipoles)
    assert lens["init_from"] == "catalog"
    init = lens["init"]
    assert set(init) == set(PARAM_NAMES)
    assert init["gamma"] == 1.0 and init["q"] >= 0.95
    assert all(init[k] == 0.0 for k in ("x0", "y0", "gamma_ext", "a3", "a4"))


def test_cli_reports_a_clash_in_one_line(tmp_path, caplog):
    make_mock(tmp_path, seed=5, **TINY)
    assert data_cli.main(["mock", str(tmp_path), "--seed", "5"]) == 2  # the defaults differ from TINY: a different mock
    assert "different mock" in caplog.text


def test_psf_offset_is_a_translation():
    centred = hst_like_psf(33, 0.025)
    moved = hst_like_psf(33, 0.025, offset=(2.0, -1.0))
    np.testing.assert_allclose(moved[6:-6, 6:-6], np.roll(centred, (2, -1), axis=(0, 1))[6:-6, 6:-6], atol=1e-9)
    half = hst_like_psf(33, 0.025, offset=(0.0, 0.5))
    assert half[16, 16] == pytest.approx(half[16, 17], rel=1e-9)  # centred between two pixels


def test_stars_sit_at_their_recorded_pixels(small):
    paths, truth = small
    checked = 0
    for star in truth.meta["stars"]:
        for e, (row, col) in enumerate(star["pixels"]):
            if min(row, col, 95 - row, 95 - col) < 8:
                continue
            r, c = round(row), round(col)
            window = truth.arrays["stars"][e, r - 6:r + 7, c - 6:c + 7]
            yy, xx = np.mgrid[r - 6:r + 7, c - 6:c + 7]
            centroid = (window * yy).sum() / window.sum(), (window * xx).sum() / window.sum()
            np.testing.assert_allclose(centroid, (row, col), atol=0.05)
            assert 0.85 * star["flux"] < window.sum() < star["flux"]
            checked += 1
    assert checked > 0


def test_mock_from_a_lens_config(tmp_path):
    lens = OmegaConf.create({"name": "mock", "ra": 10.5, "dec": -3.25, "z_lens": 0.2, "z_source": 0.6,
                             "mock": {"out_dir": "sim", "seed": 4, **TINY}})
    paths = mock.make_mock_from_config(lens, tmp_path)
    assert paths.root == tmp_path / "sim" and all(p.is_file() for p in paths.exposures)
    meta = load_truth(paths.root).meta
    assert (meta["ra"], meta["dec"], meta["z_source"], meta["seed"]) == (10.5, -3.25, 0.6, 4)
    with fits.open(paths.exposures[0]) as hdul:
        assert (hdul[0].header["RA_TARG"], hdul[0].header["DEC_TARG"]) == (10.5, -3.25)


def test_simulated_catalogue_entry_scatters_about_the_truth(tmp_path):
    """Each mock carries an SIE 'catalogue' entry (the start of `lens=mock`, as Bolton et al.'s values start SLACS
    lenses): drawn from its own random stream, so the data of a seed do not depend on it; its errors over many
    draws have the configured spreads."""
    from scorelens.data.simulate.mock_build import simulated_catalog

    meta = load_truth(make_mock(tmp_path, seed=5, **TINY).root).meta
    cat, mass = meta["catalog"], meta["mass"]
    assert abs(cat["theta_E"] / mass["theta_E"] - 1) < 0.15 and abs(cat["q"] - mass["q"]) < 0.25
    rng = np.random.default_rng(0)
    truth = {"theta_E": 1.3, "q": 0.7, "phi": 1.0}
    draws = [simulated_catalog(truth, (0.03, 0.05, 0.1), rng) for _ in range(4000)]
    for key, spread in (("theta_E", 0.03 * 1.3), ("q", 0.05), ("phi", 0.1)):
        values = np.array([d[key] for d in draws])
        assert abs(values.mean() - truth[key]) < 4 * spread / np.sqrt(4000)
        assert values.std() == pytest.approx(spread, rel=0.05)
    with pytest.raises(InputError, match="catalog_scatter"):
        make_mock(tmp_path / "bad", seed=5, catalog_scatter=[0.03, 0.05], **TINY)
