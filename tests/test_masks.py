"""User masks: ds9 regions (pixel and sky), FITS and .npy arrays; True = masked out."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from scorelens.data.observations.flt import load_exposures
from scorelens.data.observations.masks import load_user_mask
from scorelens.errors import InputError
from tests.test_exposures import BAD_BITS, assert_message, chip_hdus, sip_wcs_header, write_flt

SHAPE = (20, 24)


def test_pixel_regions_are_in_the_frame_and_exclude_regions_carve_holes(tmp_path):
    reg = tmp_path / "m.reg"
    # ds9 image coordinates are 1-based: the circle's centre is 0-based pixel (row 14, col 29) of the frame
    reg.write_text("# Region file format: DS9\nimage\ncircle(30,15,5)\n-circle(30,15,2)\nbox(11,11,3,3,0)\n")
    origin = (4, 20)  # the cutout's first pixel in the frame
    mask = load_user_mask(reg, SHAPE, origin=origin)
    r, c = np.mgrid[:SHAPE[0], :SHAPE[1]]
    d = np.hypot(r + origin[0] - 14, c + origin[1] - 29)
    np.testing.assert_array_equal(mask, (d < 5) & ~(d < 2))  # the box lies outside this cutout
    np.testing.assert_array_equal(load_user_mask(reg, SHAPE, origin=origin, invert=True), ~mask)
    # at origin (0, 0) the box (0-based centre 10, 10, 3 x 3 pixels) is inside
    mask0 = load_user_mask(reg, SHAPE)
    assert mask0[9:12, 9:12].all() and mask0[8:13, 8:13].sum() == 9


def test_sky_regions_go_through_the_wcs(tmp_path):
    wcs = WCS(sip_wcs_header())
    origin = (60, 70)
    ra, dec = (float(v) for v in wcs.all_pix2world([[80.0, 70.0]], 0)[0])
    reg = tmp_path / "sky.reg"
    reg.write_text(f'fk5\ncircle({ra:.8f},{dec:.8f},0.25")\n')
    mask = load_user_mask(reg, SHAPE, wcs=wcs, origin=origin)
    r, c = np.mgrid[:SHAPE[0], :SHAPE[1]]
    world = wcs.all_pix2world(c + origin[1], r + origin[0], 0)
    sep = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(world[0] * u.deg, world[1] * u.deg)).arcsec
    assert mask[sep < 0.22].all() and not mask[sep > 0.28].any() and mask.sum() >= 69
    with pytest.raises(InputError) as excinfo:
        load_user_mask(reg, SHAPE, wcs=None)
    assert_message(excinfo, str(reg), "sky regions need a WCS")


def test_array_masks_from_fits_and_npy(tmp_path):
    rng = np.random.default_rng(1)
    frame = rng.random((40, 50)) < 0.2
    fits.PrimaryHDU(frame.astype(np.int16)).writeto(tmp_path / "frame.fits")
    np.save(tmp_path / "cut.npy", frame[4:24, 20:44])
    np.testing.assert_array_equal(load_user_mask(tmp_path / "frame.fits", SHAPE, origin=(4, 20), frame_shape=(40, 50)),
                                  frame[4:24, 20:44])
    np.testing.assert_array_equal(load_user_mask(tmp_path / "cut.npy", SHAPE), frame[4:24, 20:44])
    np.testing.assert_array_equal(load_user_mask(frame[:20, :24], SHAPE), frame[:20, :24])
    with pytest.raises(InputError) as excinfo:
        load_user_mask(tmp_path / "frame.fits", SHAPE)
    assert_message(excinfo, "frame.fits", "shape (40, 50) does not match the cutout's (20, 24)")


@pytest.mark.parametrize("text, fragment", [
    ("image\npoint(3,3)\n", "holds no region that encloses pixels"),
    ("this is not a region file\n", "ds9 region"),
])
def test_bad_region_files(tmp_path, text, fragment):
    reg = tmp_path / "bad.reg"
    reg.write_text(text)
    with pytest.raises(InputError) as excinfo:
        load_user_mask(reg, SHAPE)
    assert_message(excinfo, str(reg), fragment)


def test_missing_mask_file(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_user_mask(tmp_path / "none.reg", SHAPE)
    assert_message(excinfo, "none.reg: file not found")


def test_a_sky_region_masks_the_same_sky_in_every_exposure(tmp_path):
    paths, wcs_list = [], []
    for e, crpix in enumerate([(90.5, 80.5), (95.0, 83.5)]):  # a dither of (4.5, 3) pixels
        hdr = sip_wcs_header(crpix=crpix)
        wcs_list.append(WCS(hdr))
        sci = np.full((160, 180), 10.0, np.float32)
        paths.append(write_flt(tmp_path / f"jsky000{e}q_flt.fits", [chip_hdus(sci, hdr)]))
    ra0, dec0 = (float(v) for v in wcs_list[0].all_pix2world([[90.0, 80.0]], 0)[0])
    star = SkyCoord(ra0 * u.deg, dec0 * u.deg).spherical_offsets_by(0.4 * u.arcsec, -0.3 * u.arcsec)
    reg = tmp_path / "star.reg"
    reg.write_text(f'icrs\ncircle({star.ra.deg:.9f},{star.dec.deg:.9f},0.12")\n')
    es = load_exposures(paths, ra0, dec0, 32, BAD_BITS, user_masks=reg, name="t")
    for exp in es.exposures:
        hidden = ~exp.mask
        assert 10 <= hidden.sum() <= 25
        assert np.all(np.hypot(exp.x[hidden] - 0.4, exp.y[hidden] + 0.3) < 0.13)


def test_dq_flagged_is_any_bad_bit_set():
    from scorelens.data.observations.masks import dq_flagged

    rng = np.random.default_rng(0)
    dq = rng.integers(0, 2**16, size=(40, 40)).astype(np.uint16).astype(np.int16)  # FLT DQ: int16, bit 32768 = sign
    bits = [4, 16, 256, 4096, 8192, 32768]
    expect = (dq.astype(np.int64) & 0xFFFF & sum(bits)) != 0
    np.testing.assert_array_equal(dq_flagged(dq, bits), expect)
    np.testing.assert_array_equal(dq_flagged(dq, "4,16"), (dq & 20) != 0)
    assert not dq_flagged(dq, []).any()
