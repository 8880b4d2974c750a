"""Pixel -> lens-frame sky offsets through FITS WCS (SIP included), against astropy's own coordinate machinery."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from scorelens.data.observations.sky_grid import cutout_grid, sky_offsets, sky_to_pixel, tangent_offsets, tangent_to_sky
from scorelens.data.simulate.flt_files import cd_matrix, header_wcs, wcs_header
from scorelens.errors import InputError

SIP = {"A": {(2, 0): 2e-5, (1, 1): -1e-5, (0, 2): 5e-6}, "B": {(2, 0): -4e-6, (1, 1): 1.2e-5, (0, 2): -8e-6}}


def make_wcs(ra=150.1, dec=2.2, orientat=37.0, sip=True, scale=0.05):
    return header_wcs(wcs_header((ra, dec), (50.5, 40.5), cd_matrix(scale, orientat), SIP if sip else None))


@pytest.mark.parametrize("ra0, dec0", [(150.1, 2.2), (0.0005, -45.0), (359.9995, 71.3)])
def test_sky_offsets_match_astropy_spherical_offsets(ra0, dec0):
    wcs = make_wcs(ra0, dec0)
    lens_ra, lens_dec = ra0 + 0.3 / 3600, dec0 - 0.2 / 3600
    rows, cols = np.meshgrid(np.arange(0, 80, 7.0), np.arange(0, 100, 9.0), indexing="ij")
    x, y = sky_offsets(wcs, lens_ra, lens_dec, rows, cols)
    ra, dec = wcs.all_pix2world(cols, rows, 0)
    dlon, dlat = SkyCoord(lens_ra * u.deg, lens_dec * u.deg).spherical_offsets_to(SkyCoord(ra * u.deg, dec * u.deg))
    # the gnomonic and spherical offsets differ by O(r^3) ~ 1e-9 arcsec this close to the lens
    np.testing.assert_allclose(x, dlon.to_value(u.arcsec), atol=1e-4, rtol=0)
    np.testing.assert_allclose(y, dlat.to_value(u.arcsec), atol=1e-4, rtol=0)


def test_tangent_offsets_equal_a_tan_projection():
    """A TAN WCS with CRVAL at the lens and 1 arcsec pixels maps the sky onto (x, y) exactly."""
    ra0, dec0 = 212.3, 51.7
    tan = WCS(naxis=2)
    tan.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    tan.wcs.crval, tan.wcs.crpix = [ra0, dec0], [1.0, 1.0]  # 0-based pixel (0, 0)
    tan.wcs.cd = np.eye(2) / 3600.0
    rng = np.random.default_rng(0)
    xy = rng.uniform(-8, 8, size=(50, 2))
    ra, dec = tan.wcs_pix2world(xy, 0).T
    x, y = tangent_offsets(ra, dec, ra0, dec0)
    np.testing.assert_allclose(np.stack([x, y], 1), xy, atol=1e-7)
    back_ra, back_dec = tangent_to_sky(x, y, ra0, dec0)
    np.testing.assert_allclose(back_ra, ra, atol=1e-12)
    np.testing.assert_allclose(back_dec, dec, atol=1e-12)


def test_frame_orientation_east_left_north_up():
    """At ORIENTAT 0 (north up, east left) +column goes west (-x) and +row north (+y), 0.05 arcsec a pixel."""
    wcs = make_wcs(orientat=0.0, sip=False)
    x, y = sky_offsets(wcs, 150.1, 2.2, np.array([39.5, 39.5, 40.5]), np.array([49.5, 50.5, 49.5]))
    np.testing.assert_allclose(x[1] - x[0], -0.05, atol=1e-9)
    np.testing.assert_allclose(y[1] - y[0], 0.0, atol=1e-9)
    np.testing.assert_allclose(y[2] - y[0], 0.05, atol=1e-9)
    np.testing.assert_allclose([x[0], y[0]], [0.0, 0.0], atol=1e-9)  # CRPIX (50.5, 40.5) is 0-based (39.5, 49.5)


def test_sip_moves_the_grid_and_sky_to_pixel_inverts_it():
    with_sip, without = make_wcs(sip=True), make_wcs(sip=False)
    assert with_sip.sip is not None and without.sip is None
    x1, y1 = cutout_grid(with_sip, 150.1, 2.2, (80, 100))
    x0, y0 = cutout_grid(without, 150.1, 2.2, (80, 100))
    assert np.hypot(x1 - x0, y1 - y0).max() > 0.003  # a few milliarcsec at the corners
    rows, cols = np.array([0.0, 12.3, 79.0]), np.array([0.0, 55.5, 99.0])
    ra, dec = with_sip.all_pix2world(cols, rows, 0)
    back_rows, back_cols = sky_to_pixel(with_sip, ra, dec)
    np.testing.assert_allclose(back_rows, rows, atol=1e-6)
    np.testing.assert_allclose(back_cols, cols, atol=1e-6)


def test_cutout_grid_is_a_window_of_the_detector():
    wcs = make_wcs()
    xf, yf = cutout_grid(wcs, 150.1, 2.2, (80, 100))
    xc, yc = cutout_grid(wcs, 150.1, 2.2, (20, 30), center_pixel=(40, 50))
    np.testing.assert_array_equal(xc, xf[30:50, 35:65])
    np.testing.assert_array_equal(yc, yf[30:50, 35:65])


def test_bad_wcs_is_an_input_error():
    with pytest.raises(InputError, match="celestial"):
        sky_offsets(WCS(naxis=2), 0.0, 0.0, [0.0], [0.0])
