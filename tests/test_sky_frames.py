"""World coordinates of the output images, checked against astropy's own spherical geometry."""

import numpy as np
import pytest
import torch
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from scorelens.data.observations.exposure_set import Exposure
from scorelens.inference.sky_frames import affine_fit, cutout_wcs, grid_wcs, wcs_header
from scorelens.lensing.grid import PixelGrid


def offsets_arcsec(wcs: WCS, cols, rows, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) offsets in arcsec of pixels from (ra, dec), by astropy's spherical offsets."""
    sky = wcs.pixel_to_world(cols, rows)
    d_east, d_north = SkyCoord(ra, dec, unit="deg").spherical_offsets_to(sky)
    return d_east.to_value("arcsec"), d_north.to_value("arcsec")


@pytest.mark.parametrize("dec", [2.2, 41.1, -63.0])
def test_grid_wcs_puts_each_pixel_where_the_lens_frame_has_it(dec):
    ra = 217.517
    grid = PixelGrid(n=12, pixel_scale=0.04, x0=0.13, y0=-0.07)
    x, y = (c.numpy() for c in grid.coordinates(torch.float64))
    rows, cols = np.mgrid[0:12, 0:12]
    east, north = offsets_arcsec(grid_wcs(grid, ra, dec), cols, rows, ra, dec)
    # the TAN frame's intermediate coordinates and the spherical offsets agree to ~(0.5")^3 / R^2 at these scales
    np.testing.assert_allclose(east, x, atol=1e-6)
    np.testing.assert_allclose(north, y, atol=1e-6)
    # east grows with the column: a ds9 user aligning to north sees east to the left
    assert grid_wcs(grid, ra, dec).wcs.cd[0, 0] > 0


def test_grid_wcs_without_sky_position_is_linear_offsets_in_arcsec():
    grid = PixelGrid(n=6, pixel_scale=0.1, x0=0.2)
    w = grid_wcs(grid, None, None)
    assert not w.has_celestial and list(w.wcs.ctype) == ["XOFFSET", "YOFFSET"]
    x, y = (c.numpy() for c in grid.coordinates(torch.float64))
    rows, cols = np.mgrid[0:6, 0:6]
    wx, wy = w.wcs_pix2world(cols, rows, 0)
    np.testing.assert_allclose(wx, x, atol=1e-12)
    np.testing.assert_allclose(wy, y, atol=1e-12)
    assert str(w.wcs.cunit[0]) == "arcsec"


def _rotated_positions(h, w, scale, angle, c0=(4.3, 5.1)):
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    dc, dr = cols - c0[0], rows - c0[1]
    x = scale * (np.cos(angle) * dc - np.sin(angle) * dr)
    y = scale * (np.sin(angle) * dc + np.cos(angle) * dr)
    return x, y


def test_affine_fit_recovers_a_rotated_pixel_grid():
    x, y = _rotated_positions(9, 11, 0.05, 0.6)
    cd, crpix = affine_fit(x, y)
    np.testing.assert_allclose(cd, 0.05 * np.array([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]]),
                               atol=1e-12)
    np.testing.assert_allclose(crpix, (5.3, 6.1), atol=1e-10)


def test_cutout_wcs_without_a_header_follows_the_exposures_pixel_positions():
    ra, dec = 150.1, 2.2
    x, y = _rotated_positions(10, 10, 0.05, -1.1)
    exp = Exposure("e", None, np.zeros((10, 10)), np.ones((10, 10)), np.ones((10, 10), bool), x, y, 0.05)
    rows, cols = np.mgrid[0:10, 0:10]
    east, north = offsets_arcsec(cutout_wcs(exp, ra, dec), cols, rows, ra, dec)
    np.testing.assert_allclose(east, x, atol=1e-6)
    np.testing.assert_allclose(north, y, atol=1e-6)


def test_cutout_wcs_of_a_chip_is_its_window_and_survives_a_fits_header():
    chip = WCS(naxis=2)
    chip.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    chip.wcs.crval = [217.5, 41.1]
    chip.wcs.crpix = [2048.0, 1024.0]
    chip.wcs.cd = np.array([[-1.2e-5, 0.3e-5], [0.3e-5, 1.2e-5]])
    chip.wcs.set()
    origin = (700, 1500)  # (row, col) of the cutout's first pixel in the chip
    exp = Exposure("e", None, np.zeros((16, 16)), np.ones((16, 16)), np.ones((16, 16), bool), np.zeros((16, 16)),
                   np.zeros((16, 16)), 0.05, origin=origin, wcs=chip)
    cut = WCS(wcs_header(cutout_wcs(exp, None, None)))
    for r, c in ((0, 0), (15, 3), (7, 12)):
        a = cut.pixel_to_world(c, r)
        b = chip.pixel_to_world(c + origin[1], r + origin[0])
        assert a.separation(b).to_value("arcsec") < 1e-8
