"""World coordinate systems of the output images: detector cutouts and the pixelated source and lens-light grids.

The lens frame of DESIGN.md is a tangent plane about the lens (x = east, y = north, arcsec). With the lens's sky
position known, a grid of that frame is a TAN (gnomonic) projection centred on it, whose intermediate coordinates
are exactly (x, y): RA grows with x, so a grid whose column index grows with x has CD1_1 > 0 (ds9 and astropy
then show it east left when aligned to north). Without a sky position (a co-add given without WCS or ra/dec), the
frame is written as linear offsets in arcsec (CTYPE XOFFSET / YOFFSET), which say where, relative to the lens, and
nothing they do not know.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.wcs import WCS, FITSFixedWarning

from ..lensing.grid import PixelGrid

ARCSEC = 1.0 / 3600.0  # degrees


def frame_wcs(cd: np.ndarray, crpix: tuple[float, float], ra: float | None, dec: float | None) -> WCS:
    """A WCS of the lens frame: cd [2, 2] arcsec per pixel ((x, y) rows, (column, row) columns), crpix the
    1-based FITS pixel (column, row) of the frame's origin (x = y = 0, the lens position); TAN at (ra, dec) deg,
    else linear offsets in arcsec."""
    w = WCS(naxis=2)
    w.wcs.crpix = list(crpix)
    if ra is None or dec is None:
        w.wcs.ctype = ["XOFFSET", "YOFFSET"]
        w.wcs.cunit = ["arcsec", "arcsec"]
        w.wcs.crval = [0.0, 0.0]
        w.wcs.cd = np.asarray(cd, dtype=np.float64)
    else:
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.crval = [float(ra), float(dec)]
        w.wcs.cd = np.asarray(cd, dtype=np.float64) * ARCSEC
        w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def grid_wcs(grid: PixelGrid, ra: float | None, dec: float | None) -> WCS:
    """The WCS of a square pixel grid of the lens frame (`PixelGrid`: pixel (i, j) at x = x0 + (j - (n-1)/2) s,
    y = y0 + (i - (n-1)/2) s arcsec)."""
    s = grid.pixel_scale
    # 1-based FITS pixel of x = 0: j + 1 with j = (n - 1)/2 - x0/s
    crpix = ((grid.n + 1) / 2 - grid.x0 / s, (grid.n + 1) / 2 - grid.y0 / s)
    return frame_wcs(np.diag([s, s]), crpix, ra, dec)


def affine_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """The affine map from detector pixels to the lens frame that best fits per-pixel positions x, y [H, W]
    (arcsec): (cd [2, 2] arcsec per pixel, crpix: the 1-based pixel (column, row) of x = y = 0)."""
    h, w = x.shape
    rows, cols = np.mgrid[0:h, 0:w]
    a = np.stack([cols.ravel(), rows.ravel(), np.ones(h * w)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(a, np.stack([x.ravel(), y.ravel()], axis=1).astype(np.float64), rcond=None)
    cd = coef[:2].T  # [[dx/dcol, dx/drow], [dy/dcol, dy/drow]]
    col0, row0 = np.linalg.solve(cd, -coef[2])
    return cd, (float(col0) + 1.0, float(row0) + 1.0)


def cutout_wcs(exposure, ra: float | None, dec: float | None) -> WCS:
    """The WCS of an exposure's cutout: its image's own WCS (distortion included) cut to the cutout when it has
    one, else the lens frame fitted to the cutout's pixel positions (`Exposure.x`, `.y`)."""
    h, w = exposure.shape
    if exposure.wcs is not None:
        r0, c0 = exposure.origin
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return exposure.wcs.slice((slice(r0, r0 + h), slice(c0, c0 + w)))
    cd, crpix = affine_fit(np.asarray(exposure.x), np.asarray(exposure.y))
    return frame_wcs(cd, crpix, ra, dec)


def wcs_header(wcs: WCS):
    """FITS header cards of a WCS, SIP distortion included (lookup-table distortions, which FITS keeps in extra
    extensions, are left out: a fraction of a pixel on ACS/WFC)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns that the SIP keywords are non-standard
        return wcs.to_header(relax=True)
