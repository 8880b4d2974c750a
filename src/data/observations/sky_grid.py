"""Detector pixels -> sky offsets in the lens frame, through an exposure's FITS WCS (SIP distortion included).

The lens frame of DESIGN.md is the tangent plane (gnomonic projection) about the lens position (ra0, dec0):

    x = cos(dec) sin(ra - ra0) / cos(c)                                   (east, arcsec)
    y = [cos(dec0) sin(dec) - sin(dec0) cos(dec) cos(ra - ra0)] / cos(c)  (north, arcsec)
    cos(c) = sin(dec0) sin(dec) + cos(dec0) cos(dec) cos(ra - ra0)

Pixel indices are 0-based (row, col) of the image array [H, W], so pixel (row, col) has its centre at FITS pixel
(col + 1, row + 1). Everything here is float64 numpy; the lensing code turns the grids into tensors.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS

from ...errors import InputError, TangentPlaneError

ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0


def tangent_offsets(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection of (ra, dec) (degrees, any shape) about (ra0, dec0): (x east, y north) in arcsec."""
    dec = np.deg2rad(np.asarray(dec_deg, dtype=np.float64))
    dec0 = math.radians(dec0_deg)
    # the RA difference is formed in degrees first, wrapped to (-180, 180], so it keeps full precision near ra0
    dra = np.deg2rad((np.asarray(ra_deg, dtype=np.float64) - ra0_deg + 180.0) % 360.0 - 180.0)
    cos_c = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * np.cos(dra)
    if np.any(cos_c <= 0):
        raise TangentPlaneError("sky positions more than 90 degrees from the lens cannot be projected onto its tangent "
                                "plane")
    x = np.cos(dec) * np.sin(dra) / cos_c
    y = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * np.cos(dra)) / cos_c
    return x * ARCSEC_PER_RAD, y * ARCSEC_PER_RAD


def tangent_to_sky(x_arcsec, y_arcsec, ra0_deg: float, dec0_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `tangent_offsets`: lens-frame (x, y) in arcsec (any shape) -> (ra, dec) in degrees."""
    xi = np.asarray(x_arcsec, dtype=np.float64) / ARCSEC_PER_RAD
    eta = np.asarray(y_arcsec, dtype=np.float64) / ARCSEC_PER_RAD
    dec0 = math.radians(dec0_deg)
    denom = math.cos(dec0) - eta * math.sin(dec0)
    dra = np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(dec0) + eta * math.cos(dec0), np.hypot(xi, denom))
    return (ra0_deg + np.rad2deg(dra)) % 360.0, np.rad2deg(dec)


def _check_wcs(wcs: WCS) -> None:
    if not isinstance(wcs, WCS) or not wcs.has_celestial or wcs.naxis != 2:
        raise InputError("sky grids need a 2-D celestial astropy WCS (RA/Dec), e.g. WCS(header, hdul) of a SCI HDU")


def sky_offsets(wcs: WCS, ra0_deg: float, dec0_deg: float, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Lens-frame positions of pixel centres.

    Args:
        wcs: the exposure's WCS (all distortions that astropy applies in `all_pix2world`, SIP included).
        ra0_deg, dec0_deg: the lens position, the tangent point of the frame (degrees).
        rows, cols: 0-based pixel indices (any broadcastable shapes; fractional values are positions inside pixels).

    Returns:
        (x, y): float64 arrays of the broadcast shape, arcsec, x east and y north of the lens.
    """
    _check_wcs(wcs)
    rows, cols = np.broadcast_arrays(np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64))
    ra, dec = wcs.all_pix2world(cols, rows, 0)
    return tangent_offsets(ra, dec, ra0_deg, dec0_deg)


def cutout_grid(wcs: WCS, ra0_deg: float, dec0_deg: float, shape: tuple[int, int],
                center_pixel: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lens-frame positions of the pixel centres of an [H, W] cutout.

    Args:
        shape: (H, W) of the cutout.
        center_pixel: (row, col), the 0-based detector pixel at the cutout's centre pixel (H // 2, W // 2); None
            takes the whole detector, its pixel (0, 0) at the cutout's (0, 0).

    Returns:
        (x, y): [H, W] float64 arcsec; cutout pixel (i, j) is detector pixel (row0 + i, col0 + j).
    """
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise InputError(f"a cutout needs a positive shape, got {tuple(shape)}")
    row0, col0 = (0, 0) if center_pixel is None else (center_pixel[0] - h // 2, center_pixel[1] - w // 2)
    rows = row0 + np.arange(h, dtype=np.float64)[:, None]
    cols = col0 + np.arange(w, dtype=np.float64)[None, :]
    return sky_offsets(wcs, ra0_deg, dec0_deg, rows, cols)


def sky_to_pixel(wcs: WCS, ra_deg, dec_deg) -> tuple[np.ndarray, np.ndarray]:
    """0-based (row, col) pixel positions (float64, any shape) of sky positions, inverting the full WCS."""
    _check_wcs(wcs)
    ra, dec = np.broadcast_arrays(np.asarray(ra_deg, dtype=np.float64), np.asarray(dec_deg, dtype=np.float64))
    col, row = wcs.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=50)
    return np.asarray(row, dtype=np.float64), np.asarray(col, dtype=np.float64)
