"""An HST-like PSF for mock exposures: obscured-aperture diffraction, polychromatic, blurred, with a red halo.

The model, on the supersampled grid of the forward model (`grid.py`), is

    PSF = (1 - f_halo) * [ <Airy_eps(r'; lambda)>_lambda  *  Gauss(sigma_blur) ] + f_halo * Halo(r; r_halo)

- Airy_eps: the diffraction pattern of a circular aperture of diameter D with a central obscuration eps (HST:
  2.4 m, 0.33), averaged over a few wavelengths of the band (each normalised to unit flux), which softens the rings;
- r': radius in coordinates stretched by (1 + e, 1 - e) along the angle `ellipticity_angle`, a mild astigmatism
  that may differ between exposures (focus breathing);
- Gauss: telescope jitter and CCD charge diffusion together;
- Halo: a wide Moffat (beta 2) that stands in for the scattered red halo of the ACS CCDs at long wavelengths.

The PSF is integrated over each fine pixel (`oversample` x `oversample` midpoints), cut to K x K fine pixels
(K odd, centred on pixel K // 2, the convention of `scorelens.lensing.psf`) and normalised to unit sum. The same
function draws the PSF moved by a sub-pixel offset, which is how mock stars are rendered exactly.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, special

from ...errors import InputError

ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0


def _airy(r_arcsec: np.ndarray, wavelength_um: float, diameter_m: float, obscuration: float) -> np.ndarray:
    """Obscured Airy intensity, 1 at r = 0 (r in arcsec, any shape)."""
    v = math.pi * diameter_m * (r_arcsec / ARCSEC_PER_RAD) / (wavelength_um * 1e-6)
    v = np.where(v == 0, 1e-12, v)
    amp = 2.0 * special.j1(v) / v
    if obscuration > 0:
        ev = obscuration * v
        amp = amp - obscuration**2 * 2.0 * special.j1(ev) / ev
    return (amp / (1.0 - obscuration**2)) ** 2


def _raw_stamp(size: int, pixel_scale: float, offset: tuple[float, float], wavelengths_um, diameter_m: float,
               obscuration: float, blur_sigma: float, ellipticity: float, ellipticity_angle: float,
               halo_fraction: float, halo_radius: float, oversample: int) -> np.ndarray:
    """The PSF integrated over fine pixels, as fractions of its total flux on the infinite plane: [K, K].

    Each part is normalised analytically (not by its sum over the stamp), so stamps at different offsets are exact
    translates of one another.
    """
    n = size * oversample
    fine = pixel_scale / oversample
    a = (np.arange(n, dtype=np.float64) - (n - 1) / 2) * fine
    yy, xx = np.meshgrid(a - offset[0] * pixel_scale, a - offset[1] * pixel_scale, indexing="ij")
    c, s = math.cos(ellipticity_angle), math.sin(ellipticity_angle)
    u, v = c * xx + s * yy, -s * xx + c * yy
    r_stretched = np.hypot(u / (1.0 + ellipticity), v / (1.0 - ellipticity))
    stretch_area = (1.0 + ellipticity) * (1.0 - ellipticity)

    core = np.zeros_like(xx)
    for lam in wavelengths_um:
        # the obscured Airy pattern of unit peak holds 4 lambda^2 / (pi D^2 (1 - eps^2)) steradians
        lam_d = lam * 1e-6 / diameter_m * ARCSEC_PER_RAD
        total = 4.0 * lam_d**2 / (math.pi * (1.0 - obscuration**2)) * stretch_area
        core += _airy(r_stretched, lam, diameter_m, obscuration) * fine**2 / total
    core /= len(wavelengths_um)
    if blur_sigma > 0:
        core = ndimage.gaussian_filter(core, blur_sigma / fine, mode="constant", truncate=5.0)
    halo = (1.0 + (np.hypot(xx, yy) / halo_radius) ** 2) ** -2.0 * fine**2 / (math.pi * halo_radius**2)
    psf = (1.0 - halo_fraction) * core + halo_fraction * halo
    return np.clip(psf.reshape(size, oversample, size, oversample).sum(axis=(1, 3)), 0.0, None)


def hst_like_psf(size: int = 65, pixel_scale: float = 0.025, *, wavelengths_um=(0.72, 0.78, 0.84, 0.90, 0.96),
                 diameter_m: float = 2.4, obscuration: float = 0.33, blur_sigma: float = 0.018,
                 ellipticity: float = 0.0, ellipticity_angle: float = 0.0, halo_fraction: float = 0.05,
                 halo_radius: float = 0.25, oversample: int = 4,
                 offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A PSF stamp: unit sum when centred; with an `offset`, the same PSF moved by it (a point source's image).

    Args:
        size: K, the stamp side in fine pixels (odd).
        pixel_scale: fine-pixel size in arcsec (the detector pixel scale divided by the forward model's upsample).
        wavelengths_um: wavelengths (microns) averaged with equal weights (F814W spans about 0.7-1.0 micron).
        diameter_m, obscuration: the aperture and its central obscuration ratio.
        blur_sigma: Gaussian sigma (arcsec) of jitter and charge diffusion.
        ellipticity, ellipticity_angle: stretch (dimensionless, |e| < 0.5) and its angle (radians from +x).
        halo_fraction, halo_radius: flux fraction and core radius (arcsec) of the Moffat halo.
        oversample: midpoints per fine pixel side for the pixel integration.
        offset: (rows, columns) fine pixels from the stamp's centre pixel K // 2 to the PSF's centre. The stamp is
            scaled as the centred one (whose sum is 1), so it is that PSF translated, edge losses included.

    Returns:
        [K, K] float64, non-negative, row = y (north), column = x (east).
    """
    if size < 3 or size % 2 == 0:
        raise InputError(f"the PSF stamp size must be an odd integer >= 3, got {size}")
    if not pixel_scale > 0 or oversample < 1 or not abs(ellipticity) < 0.5 or not 0 <= halo_fraction < 1:
        raise InputError("hst_like_psf needs pixel_scale > 0, oversample >= 1, |ellipticity| < 0.5 and "
                         f"0 <= halo_fraction < 1; got {pixel_scale}, {oversample}, {ellipticity}, {halo_fraction}")
    settings = dict(wavelengths_um=wavelengths_um, diameter_m=diameter_m, obscuration=obscuration,
                    blur_sigma=blur_sigma, ellipticity=ellipticity, ellipticity_angle=ellipticity_angle,
                    halo_fraction=halo_fraction, halo_radius=halo_radius, oversample=oversample)
    centred = _raw_stamp(size, pixel_scale, (0.0, 0.0), **settings)
    if tuple(offset) == (0.0, 0.0):
        return centred / centred.sum()
    return _raw_stamp(size, pixel_scale, (float(offset[0]), float(offset[1])), **settings) / centred.sum()
