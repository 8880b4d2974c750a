"""FLT-like FITS files of mock exposures: WCS headers (TAN with optional SIP), SCI/ERR/DQ extensions.

Layout of a file (as ACS/WFC `*_flt.fits`, one chip): a primary HDU without data holding the observation keywords
(TELESCOP, INSTRUME, DETECTOR, FILTER1/2, EXPTIME, ROOTNAME, RA_TARG, DEC_TARG, read noise), then the ImageHDUs
SCI (float32, electrons), ERR (float32, electrons, 1 sigma) and DQ (int16 bit flags), each with EXTVER = 1 and the
full WCS in its header. Headers are built as text and parsed back (`roundtrip_header`) before anything uses them,
so a WCS built in memory is bit-for-bit the WCS a reader gets from the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

DQ_BAD_PIXEL = 4
DQ_COSMIC_RAY = 8192


def cd_matrix(pixel_scale: float, orientat_deg: float) -> np.ndarray:
    """CD matrix (degrees per pixel) of square pixels, east to the left when north is up at ORIENTAT = 0.

    ORIENTAT is the position angle of the detector's +y axis, degrees east of north (the HST keyword).
    """
    s = pixel_scale / 3600.0
    t = math.radians(orientat_deg)
    return s * np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]])


def wcs_header(crval: Sequence[float], crpix: Sequence[float], cd: np.ndarray,
               sip: Mapping[str, Mapping[tuple[int, int], float]] | None = None) -> fits.Header:
    """A celestial WCS header (TAN, or TAN-SIP when `sip` gives {'A': {(p, q): coef}, 'B': {...}}).

    crval in degrees, crpix 1-based FITS pixels (x = column, y = row), cd [2, 2] degrees per pixel.
    """
    suffix = "-SIP" if sip else ""
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"] = ("RA---TAN" + suffix, "gnomonic projection" + (" + SIP distortion" if sip else ""))
    h["CTYPE2"] = ("DEC--TAN" + suffix, "gnomonic projection" + (" + SIP distortion" if sip else ""))
    h["CRPIX1"], h["CRPIX2"] = float(crpix[0]), float(crpix[1])
    h["CRVAL1"], h["CRVAL2"] = float(crval[0]), float(crval[1])
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    for i in range(2):
        for j in range(2):
            h[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    h["RADESYS"] = "ICRS"
    if sip:
        for axis in ("A", "B"):
            terms = sip[axis]
            h[f"{axis}_ORDER"] = max(p + q for p, q in terms)
            for (p, q), value in sorted(terms.items()):
                h[f"{axis}_{p}_{q}"] = float(value)
    return h


def roundtrip_header(header: fits.Header) -> fits.Header:
    """The header as a reader of the written file will see it (values formatted as FITS cards and parsed)."""
    return fits.Header.fromstring(header.tostring())


def header_wcs(header: fits.Header) -> WCS:
    """The WCS of a header as a reader of the file builds it."""
    return WCS(roundtrip_header(header))


def flt_hdulist(primary: Mapping[str, object], wcs_hdr: fits.Header, sci: np.ndarray, err: np.ndarray,
                dq: np.ndarray, sci_extra: Mapping[str, object] | None = None) -> fits.HDUList:
    """An FLT-like HDUList: primary (keywords only), SCI float32, ERR float32, DQ int16, WCS in each extension."""
    phdu = fits.PrimaryHDU()
    for key, value in primary.items():
        phdu.header[key] = value
    phdu.header["NEXTEND"] = 3
    hdus = [phdu]
    for name, data, bunit in (("SCI", sci.astype(np.float32), "ELECTRONS"),
                              ("ERR", err.astype(np.float32), "ELECTRONS"),
                              ("DQ", dq.astype(np.int16), "UNITLESS")):
        hdu = fits.ImageHDU(data=data, name=name)
        hdu.header["EXTVER"] = 1
        hdu.header["BUNIT"] = bunit
        hdu.header.extend(wcs_hdr, update=True)
        if name == "SCI" and sci_extra:
            for key, value in sci_extra.items():
                hdu.header[key] = value
        hdus.append(hdu)
    return fits.HDUList(hdus)
