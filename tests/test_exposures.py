"""FLT/FLC exposures, co-adds and lenstronomy HDF5 files -> ExposureSets: sky grids, centring, masks, bad input."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, DistortionLookupTable
from omegaconf import OmegaConf

from scorelens.data.observations.coadd import load_coadd, load_lenstronomy_h5, prepare_psf
from scorelens.data.observations.exposure_set import Exposure
from scorelens.data.observations.flt import check_compatible, cut_exposure, dq_bitmask, load_exposures, read_flt
from scorelens.data.observations.lens import load_lens
from scorelens.data.simulate.flt_files import cd_matrix, wcs_header
from scorelens.errors import InputError
from tests.conftest import CONF, SHARED_DATA, compose_infer

FLT_CFG = OmegaConf.load(CONF / "observations" / "default.yaml")
BAD_BITS = list(FLT_CFG.dq_bad_bits)
SCALE = 0.05  # arcsec per pixel
RA0, DEC0 = 217.51700, 41.09920
# strong enough to move pixels by ~1 px at 100 px from CRPIX: a grid without SIP would be off by far more than 1e-4"
SIP = {"A": {(2, 0): 8e-5, (1, 1): -4e-5, (0, 2): 3e-5, (3, 0): 2e-8},
       "B": {(2, 0): -2e-5, (1, 1): 5e-5, (0, 2): -7e-5, (0, 3): 1e-8}}
IMAGE_SCALE = 0.03
J1430 = SHARED_DATA / "slacs_imaging" / "autolens_slacs1430+4105"
H5_DIR = SHARED_DATA / "slacs_imaging" / "shajib2020_f555w_h5"


def assert_message(excinfo, *fragments: str) -> str:
    """The InputError's message is one line and holds every fragment."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def chip_hdus(sci, wcs_hdr, extver=1, err=None, dq=None, bunit="ELECTRONS", names=("SCI", "ERR", "DQ")):
    """SCI/ERR/DQ ImageHDUs of one chip, each with the WCS header."""
    err = np.full(sci.shape, 2.0, np.float32) if err is None else err
    dq = np.zeros(sci.shape, np.int16) if dq is None else dq
    hdus = []
    for name, data in zip(("SCI", "ERR", "DQ"), (sci, err, dq), strict=True):
        if name not in names:
            continue
        hdu = fits.ImageHDU(data=data, name=name, ver=extver)
        hdu.header["BUNIT"] = bunit if name != "DQ" else "UNITLESS"
        hdu.header.extend(wcs_hdr, update=True)
        hdus.append(hdu)
    return hdus


def write_flt(path, chips, filter2="F814W", exptime=420.0, extra=()):
    """An FLT-like file: primary header + the given chip HDU lists (+ extra HDUs, e.g. WCSDVARR)."""
    primary = fits.PrimaryHDU()
    primary.header.update({"TELESCOP": "HST", "INSTRUME": "ACS", "DETECTOR": "WFC", "FILTER1": "CLEAR1L",
                           "FILTER2": filter2, "EXPTIME": exptime, "ROOTNAME": Path(path).name[:9]})
    fits.HDUList([primary, *[h for c in chips for h in c], *extra]).writeto(path, overwrite=True)
    return Path(path)


def gaussian(shape, row, col, sigma=1.5, flux=1.0e4, sky=10.0):
    r, c = np.mgrid[:shape[0], :shape[1]]
    return (sky + flux / (2 * np.pi * sigma**2) * np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2))
            ).astype(np.float64)


def sip_wcs_header(crpix=(90.5, 80.5), orientat=30.0):
    return fits.Header.fromstring(wcs_header((RA0, DEC0), crpix, cd_matrix(SCALE, orientat), SIP).tostring())


def one_chip(tmp_path, shape=(160, 180), name="jtest001q_flt.fits", **kw):
    """A one-chip FLT with a SIP WCS and flat sky; returns (path, wcs)."""
    hdr = sip_wcs_header()
    sci = np.full(shape, 10.0, np.float32)
    return write_flt(tmp_path / name, [chip_hdus(sci, hdr)], **kw), WCS(hdr)


# ------------------------------------------------------------------------------------------ acceptance


def test_cutout_sky_grid_matches_astropy_and_a_point_source_lands_at_the_centre(tmp_path):
    hdr = sip_wcs_header()
    wcs = WCS(hdr)
    shape, size = (160, 180), 64
    lens_row, lens_col = 83.3, 101.8  # fractional: the lens is 0.3, -0.2 px from the centre pixel
    ra, dec = (float(v) for v in wcs.all_pix2world([[lens_col, lens_row]], 0)[0])
    # a point source at the lens, through the full (SIP) inverse
    col, row = (float(v) for v in wcs.all_world2pix([[ra, dec]], 0, tolerance=1e-12)[0])
    sci = gaussian(shape, row, col).astype(np.float32)
    path = write_flt(tmp_path / "jsip0001q_flt.fits", [chip_hdus(sci, hdr)])

    exp = cut_exposure(read_flt(path), ra, dec, size, BAD_BITS)
    assert exp.shape == (size, size) and exp.mask.all() and exp.filter == "F814W" and exp.unit == "ELECTRONS"
    r0, c0 = exp.origin
    assert (r0 + size // 2, c0 + size // 2) == (83, 102)

    # sky grid == astropy all_pix2world, turned into offsets independently
    rows, cols = np.mgrid[r0:r0 + size, c0:c0 + size]
    world_ra, world_dec = wcs.all_pix2world(cols, rows, 0)
    dlon, dlat = SkyCoord(ra * u.deg, dec * u.deg).spherical_offsets_to(SkyCoord(world_ra * u.deg,
                                                                                 world_dec * u.deg))
    np.testing.assert_allclose(exp.x, dlon.to_value(u.arcsec), rtol=0, atol=1e-4)
    np.testing.assert_allclose(exp.y, dlat.to_value(u.arcsec), rtol=0, atol=1e-4)
    # the SIP terms matter at this accuracy: the linear WCS alone is off by much more
    lin_ra, lin_dec = wcs.wcs_pix2world(cols, rows, 0)
    lin = SkyCoord(ra * u.deg, dec * u.deg).spherical_offsets_to(SkyCoord(lin_ra * u.deg, lin_dec * u.deg))
    assert np.max(np.abs(lin[0].to_value(u.arcsec) - exp.x)) > 0.01
    assert exp.pixel_scale == pytest.approx(SCALE, rel=0.02)

    # no MDRIZSKY in this file: the chip's clipped median (the sky of 10) is subtracted
    assert np.median(exp.data[:5, :5]) == pytest.approx(0.0, abs=1e-9)
    # the point source's centroid is at the centre pixel + the lens's sub-pixel offset, where the grid is (0, 0)
    img = exp.data
    cr, cc = (float((img * g).sum() / img.sum()) for g in np.mgrid[:size, :size])
    assert abs(cr - size // 2) < 0.5 and abs(cc - size // 2) < 0.5
    assert math.hypot(cr - (row - r0), cc - (col - c0)) < 0.05
    # invert the grid's local linear map at the centre pixel: where is (x, y) = (0, 0)?
    k = size // 2
    jac = np.array([[exp.x[k, k + 1] - exp.x[k, k], exp.x[k + 1, k] - exp.x[k, k]],
                    [exp.y[k, k + 1] - exp.y[k, k], exp.y[k + 1, k] - exp.y[k, k]]])
    dc, dr = np.linalg.solve(jac, -np.array([exp.x[k, k], exp.y[k, k]]))
    assert math.hypot(k + dr - cr, k + dc - cc) < 0.05


def test_lookup_table_distortions_are_applied(tmp_path):
    w = WCS(sip_wcs_header())
    table = np.fromfunction(lambda i, j: 0.4 * np.sin(i / 3.0) + 0.02 * j, (17, 19)).astype(np.float32)
    w.cpdis1 = DistortionLookupTable(table, (9.0, 10.0), (90.0, 80.0), (10.0, 10.0))
    w.cpdis2 = DistortionLookupTable(-table, (9.0, 10.0), (90.0, 80.0), (10.0, 10.0))
    full = w.to_fits(relax=True)
    hdr = full[0].header
    for key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND"):
        hdr.remove(key, ignore_missing=True)
    path = write_flt(tmp_path / "jlut0001q_flt.fits", [chip_hdus(np.full((160, 180), 5.0, np.float32), hdr)],
                     extra=full[1:])
    chip = read_flt(path)[0]
    assert chip.wcs.cpdis1 is not None and chip.wcs.sip is not None
    pix = np.array([[10.0, 20.0], [150.0, 140.0], [77.3, 64.1]])
    np.testing.assert_allclose(chip.wcs.all_pix2world(pix, 0), w.all_pix2world(pix, 0), rtol=0, atol=1e-12)
    sip_only = WCS(sip_wcs_header())
    assert np.max(np.abs(chip.wcs.all_pix2world(pix, 0) - sip_only.all_pix2world(pix, 0))) * 3600 > 0.005


# ------------------------------------------------------------------------------------------ two chips

# two 100 x 200 chips stacked in rows with a 20-row gap: mosaic rows 0-99 are chip 1, rows 120-219 chip 2
GAP_SHAPE = (100, 200)


def _mosaic_wcs(extver):
    crpix_row = 110.5 - (120 if extver == 2 else 0)  # the mosaic's reference pixel, FITS 1-based, in chip rows
    return fits.Header.fromstring(wcs_header((RA0, DEC0), (100.5, crpix_row + 1), cd_matrix(SCALE, 12.0),
                                             SIP).tostring())


@pytest.fixture
def two_chips(tmp_path):
    chips = []
    for v in (1, 2):
        hdr = _mosaic_wcs(v)
        chips.append(chip_hdus(np.full(GAP_SHAPE, 10.0 * v, np.float32), hdr, extver=v))
    return write_flt(tmp_path / "jtwo0001q_flt.fits", chips)


def _sky(extver, row, col):
    return (float(v) for v in WCS(_mosaic_wcs(extver)).all_pix2world([[col, row]], 0)[0])


def test_lens_on_chip_two_is_found_there(two_chips):
    chips = read_flt(two_chips)
    assert [c.extver for c in chips] == [1, 2] and chips[1].sci.shape == GAP_SHAPE
    ra, dec = _sky(2, 50.2, 80.7)
    exp = cut_exposure(chips, ra, dec, 40, BAD_BITS, sky="none")
    assert exp.chip == 2 and exp.origin == (50 - 20, 81 - 20)
    assert np.all(exp.data == 20.0)  # chip 2's values
    assert abs(exp.x[20, 20]) < 0.6 * SCALE and abs(exp.y[20, 20]) < 0.6 * SCALE


@pytest.mark.parametrize("where, fragment", [
    ((1, 110.0, 100.0), "falls on no chip (outside the frame or in the chip gap)"),  # the gap
    ((1, 50.0, 260.0), "falls on no chip"),  # beyond the frame
    ((2, 80.0, 100.0), "runs off the chip edge"),  # on chip 2, 20 px from its edge
])
def test_lens_in_the_gap_or_off_the_frame_or_near_an_edge_is_an_error(two_chips, where, fragment):
    extver, row, col = where
    ra, dec = _sky(extver, row, col)
    with pytest.raises(InputError) as excinfo:
        cut_exposure(read_flt(two_chips), ra, dec, 64, BAD_BITS)
    assert_message(excinfo, str(two_chips), fragment, f"RA {ra:.6f}", f"Dec {dec:+.6f}")


# ------------------------------------------------------------------------------------------ masks


def test_dq_bits_nan_and_nonpositive_err_are_masked(tmp_path, caplog):
    hdr = sip_wcs_header()
    shape = (160, 180)
    sci = np.full(shape, 10.0, np.float32)
    err = np.full(shape, 2.0, np.float32)
    dq = np.zeros(shape, np.int16)
    wcs = WCS(hdr)
    ra, dec = (float(v) for v in wcs.all_pix2world([[90.0, 80.0]], 0)[0])
    r0, c0 = 80 - 16, 90 - 16
    flags = {(1, 1): 4, (2, 2): 64, (3, 3): 8192, (4, 4): 16 | 64, (5, 5): 4096, (6, 6): 32, (7, 7): 256}
    for (i, j), bit in flags.items():
        dq[r0 + i, c0 + j] = bit
    sci[r0 + 10, c0 + 10] = np.nan
    sci[r0 + 11, c0 + 11] = np.inf
    err[r0 + 12, c0 + 12] = np.nan
    err[r0 + 13, c0 + 13] = 0.0
    err[r0 + 14, c0 + 14] = -1.0
    path = write_flt(tmp_path / "jdq00001q_flt.fits", [chip_hdus(sci, hdr, err=err, dq=dq)])
    with caplog.at_level(logging.WARNING):
        exp = cut_exposure(read_flt(path), ra, dec, 32, BAD_BITS)
    # pixels dropped for a damaged file are said, with their count (DQ flags are routine, and only logged)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "3 pixels of the cutout have NaN/inf in SCI or ERR; masked" in said
    assert "2 pixels of the cutout have ERR <= 0; masked" in said
    assert exp.origin == (r0, c0)
    bad = {(i, j) for (i, j), bit in flags.items() if bit & dq_bitmask(BAD_BITS)} | {(k, k) for k in range(10, 15)}
    assert bad == {(1, 1), (3, 3), (4, 4), (5, 5), (7, 7), (10, 10), (11, 11), (12, 12), (13, 13), (14, 14)}
    assert {tuple(map(int, p)) for p in np.argwhere(~exp.mask)} == bad
    assert exp.n_nonfinite == 3
    assert np.all(np.isfinite(exp.data)) and np.all(exp.variance > 0)
    np.testing.assert_array_equal(exp.variance[exp.mask], 4.0)
    # another choice of bits: only cosmic rays
    exp = cut_exposure(read_flt(path), ra, dec, 32, [4096, 8192])
    assert not exp.mask[3, 3] and not exp.mask[5, 5] and exp.mask[1, 1] and exp.mask[7, 7]


def test_mocks_load_into_a_four_exposure_set_with_cosmic_rays_masked(tmp_path):
    cfg = OmegaConf.load(CONF / "lens" / "mock.yaml")
    small = dict(out_dir=str(tmp_path / "mock"), frame=[72, 72], cutout=40, source_grid=[48, 0.06], n_stars=1,
                 psf_size=33, upsample=1, theta_E=[0.5, 0.6], cosmic_density=4e-3)
    cfg.mock = OmegaConf.merge(cfg.mock, small)
    es = load_lens(cfg, tmp_path, size=40, dq_bad_bits=BAD_BITS)  # generates the mock on first use
    from scorelens.data.simulate.mock import load_truth

    truth = load_truth(tmp_path / "mock")
    assert len(es) == 4 and es.name == "mock" and (es.ra, es.dec) == (cfg.ra, cfg.dec)
    stacked = es.stacked()
    assert stacked["data"].shape == (4, 40, 40)
    n_cr = 0
    for e, exp in enumerate(es.exposures):
        r0, c0 = exp.origin
        assert [r0 + 20, c0 + 20] == truth.meta["exposures"][e]["cutout_center"]
        cr = truth.arrays["cosmic_rays"][e][r0:r0 + 40, c0:c0 + 40] > 0
        n_cr += int(cr.sum())
        assert not np.any(exp.mask & cr)
        assert exp.filter == "F814W" and exp.unit == "ELECTRONS" and exp.exptime == 420.0
        assert math.hypot(exp.x[20, 20], exp.y[20, 20]) < 0.71 * exp.pixel_scale
    assert n_cr > 0
    # loaded again with the same settings, the files are kept; another seed is refused, not silently read with a
    # truth.json that is not its own
    stamp = (tmp_path / "mock" / "truth.json").stat().st_mtime_ns
    load_lens(cfg, tmp_path, size=40, dq_bad_bits=BAD_BITS)
    assert (tmp_path / "mock" / "truth.json").stat().st_mtime_ns == stamp
    cfg.mock.seed = 2
    with pytest.raises(InputError, match="different mock.*lens.mock.out_dir") as err:
        load_lens(cfg, tmp_path, size=40, dq_bad_bits=BAD_BITS)
    assert "\n" not in str(err.value)
    assert (tmp_path / "mock" / "truth.json").stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------------ shared data


@pytest.mark.skipif(not J1430.is_dir(), reason="shared data not present")
def test_j1430_coadd_loads_through_its_lens_config():
    cfg = OmegaConf.to_container(compose_infer(["lens=J1430_drz"]).lens)
    # the config crops the co-add to its central `cutout` pixels; without it the whole image is used
    cropped = load_lens(cfg, SHARED_DATA / "slacs_imaging", size=64, dq_bad_bits=BAD_BITS).exposures[0]
    assert cropped.shape == (cfg["cutout"], cfg["cutout"])
    del cfg["cutout"]
    es = load_lens(cfg, SHARED_DATA / "slacs_imaging", size=64, dq_bad_bits=BAD_BITS)
    assert len(es) == 1 and es.name == "J1430_drz"
    exp = es.exposures[0]
    assert exp.shape == (301, 301) and exp.pixel_scale == pytest.approx(0.03)
    np.testing.assert_array_equal(cropped.data, exp.data[150 - 64:150 + 64, 150 - 64:150 + 64])
    assert (cropped.x[64, 64], cropped.y[64, 64]) == (0.0, 0.0) and cropped.origin == (150 - 64, 150 - 64)
    assert exp.mask.any() and np.all(exp.variance[exp.mask] > 0) and np.all(np.isfinite(exp.data))
    assert exp.psf.shape == (61, 61) and exp.psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(np.argmax(exp.psf), exp.psf.shape) == (30, 30)
    # north up, east left, the lens at the centre pixel
    assert (exp.x[150, 150], exp.y[150, 150]) == (0.0, 0.0)
    assert exp.x[150, 151] == pytest.approx(-0.03) and exp.y[151, 150] == pytest.approx(0.03)
    # the lens galaxy is the brightest thing near the centre
    peak = np.unravel_index(np.argmax(exp.data), exp.data.shape)
    assert math.hypot(peak[0] - 150, peak[1] - 150) < 3


@pytest.mark.skipif(not H5_DIR.is_dir(), reason="shared data not present")
def test_j0959_lenstronomy_h5_loads():
    cfg = compose_infer(["lens=J0959"]).lens
    es = load_lens({"name": cfg.name, "ra": cfg.ra, "dec": cfg.dec,
                    "h5": "shajib2020_f555w_h5/image_SDSSJ0959+0410_F555W.h5",
                    "psf_h5": "shajib2020_f555w_h5/psf_SDSSJ0959+0410_F555W.h5"}, SHARED_DATA / "slacs_imaging")
    exp = es.exposures[0]
    assert exp.shape == (110, 110) and exp.filter == "F555W" and exp.unit == "ELECTRONS/S"
    assert exp.pixel_scale == pytest.approx(0.0465, rel=1e-3)
    assert exp.psf.shape == (41, 41) and exp.psf.sum() == pytest.approx(1.0)
    assert np.all(exp.variance[exp.mask] > 0) and exp.mask.mean() > 0.99
    # the coordinates' origin is pixel (55, 55); x east decreases with the column
    assert math.hypot(exp.x[55, 55], exp.y[55, 55]) < 1e-3 and exp.x[55, 56] < exp.x[55, 55]
    with h5py.File(H5_DIR / "image_SDSSJ0959+0410_F555W.h5") as f:
        image, rms, t = f["image_data"][()], f["background_rms"][()], f["exposure_time"][()]
    np.testing.assert_allclose(exp.variance[exp.mask], (rms**2 + np.clip(image, 0, None) / t)[exp.mask], rtol=1e-6)


# ------------------------------------------------------------------------------------------ co-adds (synthetic)


def write_image(path, data, header=None):
    fits.PrimaryHDU(data=np.asarray(data, np.float64), header=header).writeto(path, overwrite=True)
    return Path(path)


def coadd_files(tmp_path, psf=None, shape=(31, 31)):
    image = write_image(tmp_path / "image.fits", gaussian(shape, shape[0] // 2, shape[1] // 2, sky=0.1))
    noise = write_image(tmp_path / "noise.fits", np.full(shape, 0.01))
    kernel = gaussian((11, 11), 5, 5, sky=0.0) if psf is None else psf
    return image, noise, write_image(tmp_path / "psf.fits", kernel)


def test_coadd_without_wcs_uses_pixel_scale_and_the_psf_is_recentred(tmp_path):
    off_centre = gaussian((10, 10), 3, 6, sky=0.0)  # even side, peak 2 px from the centre of the padded stamp
    image, noise, psf = coadd_files(tmp_path, psf=off_centre, shape=(30, 31))
    exp = load_coadd(image, noise, psf, IMAGE_SCALE, ra=RA0, dec=DEC0, name="t").exposures[0]
    assert exp.shape == (30, 31) and exp.psf.shape == (11, 11) and exp.psf.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(exp.psf), exp.psf.shape) == (5, 5)
    assert (exp.x[15, 15], exp.y[15, 15]) == (0.0, 0.0)
    assert exp.x[15, 16] == pytest.approx(-IMAGE_SCALE) and exp.y[16, 15] == pytest.approx(IMAGE_SCALE)
    np.testing.assert_allclose(exp.variance, 1e-4)


def test_coadd_with_a_wcs_uses_it(tmp_path):
    image, noise, psf = coadd_files(tmp_path)
    hdr = fits.Header.fromstring(wcs_header((RA0, DEC0), (16.0, 16.0), cd_matrix(IMAGE_SCALE, 0.0)).tostring())
    write_image(image, np.array(fits.getdata(image)), hdr)
    exp = load_coadd(image, noise, psf, None, ra=RA0, dec=DEC0).exposures[0]
    assert exp.wcs is not None and exp.pixel_scale == pytest.approx(IMAGE_SCALE, rel=1e-6)
    assert math.hypot(exp.x[15, 15], exp.y[15, 15]) < 1e-9
    assert exp.x[15, 16] == pytest.approx(-IMAGE_SCALE, rel=1e-5)


def test_user_mask_in_a_lens_config(tmp_path):
    image, noise, psf = coadd_files(tmp_path)
    (tmp_path / "mask.reg").write_text("image\ncircle(16,16,3)\n")  # ds9: 1-based, centre at pixel (15, 15)
    cfg = {"name": "t", "ra": RA0, "dec": DEC0, "image": "image.fits", "noise_map": "noise.fits", "psf": "psf.fits",
           "pixel_scale": IMAGE_SCALE, "mask": "mask.reg"}
    exp = load_lens(cfg, tmp_path).exposures[0]
    r, c = np.mgrid[:31, :31]
    np.testing.assert_array_equal(~exp.mask, np.hypot(r - 15, c - 15) < 3)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as excinfo:
        read_flt(tmp_path / "jnone001q_flt.fits")
    assert_message(excinfo, "jnone001q_flt.fits: file not found")
    cfg = {"name": "J1430", "ra": RA0, "dec": DEC0, "exposures": ["J1430/j9op36bfq_flt.fits"]}
    with pytest.raises(InputError) as excinfo:
        load_lens(cfg, tmp_path, size=64, dq_bad_bits=BAD_BITS)
    assert_message(excinfo, str(tmp_path / "J1430" / "j9op36bfq_flt.fits"), "file not found; put",
                   "set paths.data_dir")


def test_missing_err_extension(tmp_path):
    path = write_flt(tmp_path / "jnoerr01q_flt.fits",
                     [chip_hdus(np.ones((20, 20), np.float32), sip_wcs_header(), names=("SCI", "DQ"))])
    with pytest.raises(InputError) as excinfo:
        read_flt(path)
    assert_message(excinfo, str(path), "no ERR extension")


def test_header_without_wcs_and_no_pixel_scale(tmp_path):
    image, noise, psf = coadd_files(tmp_path)
    with pytest.raises(InputError) as excinfo:
        load_coadd(image, noise, psf, None, ra=RA0, dec=DEC0)
    assert_message(excinfo, str(image), "no WCS and no pixel_scale")
    # an FLT without a WCS is refused too
    path = write_flt(tmp_path / "jnowcs01q_flt.fits", [chip_hdus(np.ones((20, 20), np.float32), fits.Header())])
    with pytest.raises(InputError) as excinfo:
        read_flt(path)
    assert_message(excinfo, str(path), "no celestial WCS")


def test_nan_filled_or_all_masked_cutout(tmp_path):
    hdr = sip_wcs_header()
    ra, dec = (float(v) for v in WCS(hdr).all_pix2world([[90.0, 80.0]], 0)[0])
    path = write_flt(tmp_path / "jnan0001q_flt.fits", [chip_hdus(np.full((160, 180), np.nan, np.float32), hdr)])
    with pytest.raises(InputError) as excinfo:
        cut_exposure(read_flt(path), ra, dec, 32, BAD_BITS)
    assert_message(excinfo, str(path), "every pixel", "is masked", "1024 not finite")
    dq = np.full((160, 180), 8192, np.int16)
    path = write_flt(tmp_path / "jcr00001q_flt.fits", [chip_hdus(np.ones((160, 180), np.float32), hdr, dq=dq)])
    with pytest.raises(InputError) as excinfo:
        cut_exposure(read_flt(path), ra, dec, 32, BAD_BITS)
    assert_message(excinfo, str(path), "every pixel", "1024 flagged in DQ")


def test_exposures_of_different_filters_or_shapes(tmp_path):
    hdr = sip_wcs_header()
    ra, dec = (float(v) for v in WCS(hdr).all_pix2world([[90.0, 80.0]], 0)[0])
    a, _ = one_chip(tmp_path, name="ja0000001_flt.fits")
    b, _ = one_chip(tmp_path, name="jb0000001_flt.fits", filter2="F606W")
    with pytest.raises(InputError) as excinfo:
        load_exposures([a, b], ra, dec, 32, BAD_BITS)
    assert_message(excinfo, str(a), str(b), "filter F606W differs from F814W")
    one = load_exposures([a], ra, dec, 32, BAD_BITS).exposures[0]
    other = Exposure(**{**one.__dict__, "path": b, "data": np.zeros((16, 16))})
    with pytest.raises(InputError) as excinfo:
        check_compatible([one, other])
    assert_message(excinfo, str(a), str(b), "shape (16, 16) differs from (32, 32)")


@pytest.mark.parametrize("kernel, fragment", [
    (np.where(np.eye(11) > 0, np.nan, 1.0), "PSF holds NaN or infinite values"),
    (np.zeros((11, 11)), "PSF sums to 0"),
    (np.eye(11) - np.eye(11)[::-1] * 1.0 - np.eye(11) * 0.5, "PSF sums to -5.5"),
])
def test_psf_not_finite_or_not_summing_to_a_positive_value(tmp_path, kernel, fragment):
    image, noise, psf = coadd_files(tmp_path, psf=kernel)
    with pytest.raises(InputError) as excinfo:
        load_coadd(image, noise, psf, IMAGE_SCALE, ra=RA0, dec=DEC0)
    assert_message(excinfo, str(psf), fragment)


def test_corrupt_fits_file(tmp_path):
    path = tmp_path / "jbad0001q_flt.fits"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as excinfo:
        read_flt(path)
    assert_message(excinfo, str(path), "cannot be read as a FITS file")
    image, noise, psf = coadd_files(tmp_path)
    with pytest.raises(InputError) as excinfo:
        load_coadd(image, path, psf, IMAGE_SCALE, ra=RA0, dec=DEC0)
    assert_message(excinfo, str(path), "cannot be read as a FITS file")
    # a truncated file (a valid header, data cut short)
    good, _ = one_chip(tmp_path)
    cut = tmp_path / "jcut0001q_flt.fits"
    cut.write_bytes(good.read_bytes()[:20000])
    with pytest.raises(InputError) as excinfo:
        read_flt(cut)
    assert_message(excinfo, str(cut), "cannot be read as a FITS file", "truncated")


def test_lens_outside_a_one_chip_frame(tmp_path):
    path, wcs = one_chip(tmp_path)
    ra, dec = (float(v) for v in wcs.all_pix2world([[-40.0, 80.0]], 0)[0])
    with pytest.raises(InputError) as excinfo:
        cut_exposure(read_flt(path), ra, dec, 32, BAD_BITS)
    assert_message(excinfo, str(path), "falls on no chip")
    # far away on the sky (behind the tangent point of the WCS)
    with pytest.raises(InputError) as excinfo:
        cut_exposure(read_flt(path), RA0 - 180.0, -DEC0, 32, BAD_BITS)
    assert_message(excinfo, str(path), "falls on no chip")


def test_bad_settings_and_h5_files(tmp_path):
    with pytest.raises(InputError) as excinfo:
        dq_bitmask([4, 12])
    assert_message(excinfo, "dq_bad_bits: [4, 12]", "powers of two")
    for bad in (-4, [4, 2.5], "cosmic"):
        with pytest.raises(InputError) as excinfo:
            dq_bitmask(bad)
        assert_message(excinfo, "dq_bad_bits")
    assert dq_bitmask("4,16") == dq_bitmask([4, 16]) == dq_bitmask(20) == 20
    with pytest.raises(InputError) as excinfo:
        load_lens({"name": "x", "ra": 1.0, "dec": 2.0}, tmp_path)
    assert_message(excinfo, "lens config x", "needs exactly one of")
    h5 = tmp_path / "image.h5"
    with h5py.File(h5, "w") as f:
        f["image_data"] = np.ones((8, 8))
    with pytest.raises(InputError) as excinfo:
        load_lenstronomy_h5(h5, ra=1.0, dec=2.0)
    assert_message(excinfo, str(h5), "no dataset 'background_rms'")
    with pytest.raises(InputError) as excinfo:
        prepare_psf(np.ones(5), "psf.npy")
    assert_message(excinfo, "psf.npy", "2-D")


def test_sky_subtraction_modes(tmp_path):
    """MDRIZSKY is subtracted when present; 'median' estimates it; 'none' and a number do what they say; a typo
    is a one-line error naming the choices."""
    rng = np.random.default_rng(3)
    shape = (120, 140)
    hdr = sip_wcs_header()
    ra, dec = (float(v) for v in WCS(hdr).all_pix2world([[70.0, 60.0]], 0)[0])
    sci = 35.0 + rng.normal(0, 2.0, shape)
    sci[50:70, 60:80] += 500.0  # a bright object: the clipped median ignores it
    path = write_flt(tmp_path / "jsky0001q_flt.fits", [chip_hdus(sci, hdr)])
    chips = read_flt(path)
    raw = chips[0].sci[60 - 8:60 + 8, 70 - 8:70 + 8]
    none = cut_exposure(chips, ra, dec, 16, BAD_BITS, sky="none")
    np.testing.assert_array_equal(none.data, raw)
    med = cut_exposure(chips, ra, dec, 16, BAD_BITS, sky="median")
    level = float(np.mean(none.data - med.data))
    assert level == pytest.approx(35.0, abs=0.1)  # the bright object (2.4% of the chip) clipped away
    np.testing.assert_allclose(cut_exposure(chips, ra, dec, 16, BAD_BITS, sky=12.5).data, raw - 12.5)
    chips[0].header["MDRIZSKY"] = 30.0
    np.testing.assert_allclose(cut_exposure(chips, ra, dec, 16, BAD_BITS, sky="header").data, raw - 30.0)
    with pytest.raises(InputError, match="observations.sky must be one of"):
        cut_exposure(chips, ra, dec, 16, BAD_BITS, sky="mdrizsky")
