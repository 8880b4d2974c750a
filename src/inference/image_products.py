"""The posterior's images as FITS files with world coordinates, for ds9, astropy and photutils.

In a run folder:
- `source.fits`, `lens_light.fits`: extensions MEDIAN and SD, the pixelwise posterior median and standard deviation
  of the pixelated source [n, n] (source plane) and lens light [m, m] (image plane), each with the WCS of its grid
  (`sky_frames.grid_wcs`: a TAN frame centred on the lens). Surface brightness in the data's units per detector
  pixel area (BUNIT says so; PIXSCALE is the grid's own pixel, arcsec).
- `model.fits`: per exposure e (EXTVER e + 1, as HST's SCI,1 / SCI,2), MEDIAN and SD of the model image (lensed
  source + lens light, PSF-convolved) over the samples, [H, W] in the data's units, with the cutout's WCS.
- `residual.fits`: per exposure, MEDIAN and SD of data - model over the samples, and NORMRES: (data - posterior-mean
  model) / ERR, NaN where the pixel is masked (the residual panel of exposures.png).
Every file's primary header names the lens, its sky position and redshifts and the number of samples. Files are
written atomically (a killed run leaves the previous file or none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..atomic import atomic_write
from .sky_frames import cutout_wcs, grid_wcs, wcs_header

IMAGE_FILES = ("source.fits", "lens_light.fits", "model.fits", "residual.fits")


def _primary(lens: dict, n_samples: int, what: str) -> fits.PrimaryHDU:
    hdu = fits.PrimaryHDU()
    h = hdu.header
    h["OBJECT"] = (str(lens.get("name", "")), "lens")
    h["CONTENT"] = what  # what the extensions hold
    for key, name, comment in (("RA_TARG", "ra", "lens position, deg (ICRS)"), ("DEC_TARG", "dec", "deg"),
                               ("Z_LENS", "z_lens", "lens redshift"), ("Z_SOURCE", "z_source", "source redshift")):
        if lens.get(name) is not None:
            h[key] = (float(lens[name]), comment)
    h["NSAMPLE"] = (int(n_samples), "posterior samples summarised")
    h["ORIGIN"] = "scorelens"
    return hdu


def _image(data: np.ndarray, name: str, header, unit: str, extver: int | None = None) -> fits.ImageHDU:
    hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), header=header.copy(), name=name)
    if extver is not None:
        hdu.header["EXTVER"] = extver
    if unit:
        hdu.header["BUNIT"] = unit
    return hdu


def _write(path: Path, hdus: list) -> Path:
    return atomic_write(path, lambda tmp: fits.HDUList(hdus).writeto(tmp, output_verify="exception"))


def grid_products(stack: np.ndarray, grid, lens: dict, unit: str, what: str, path: Path) -> Path:
    """Write MEDIAN and SD of an image stack [N, n, n] on the lens-frame `grid` to `path`."""
    stack = np.asarray(stack, dtype=np.float64)
    header = wcs_header(grid_wcs(grid, lens.get("ra"), lens.get("dec")))
    header["PIXSCALE"] = (grid.pixel_scale, "arcsec per pixel of this grid")
    if unit:  # the values are surface brightness: flux per area of one detector pixel
        header["BUNIT"] = (unit, "per detector pixel area")
    hdus = [_primary(lens, len(stack), what),
            _image(np.median(stack, axis=0), "MEDIAN", header, ""),
            _image(stack.std(axis=0), "SD", header, "")]
    return _write(path, hdus)


def exposure_products(models: np.ndarray, data, lens: dict, out: Path) -> list[Path]:
    """Write model.fits and residual.fits from the samples' model images models [N, n_exp, H, W] and the
    exposures `data` (an ExposureSet: data, ERR, masks, WCS)."""
    models = np.asarray(models, dtype=np.float64)
    unit = data.exposures[0].unit
    model_hdus = [_primary(lens, len(models), "model image: median, sd per exposure")]
    resid_hdus = [_primary(lens, len(models), "data - model: median, sd; NORMRES per exposure")]
    for e, exp in enumerate(data.exposures):
        header = wcs_header(cutout_wcs(exp, data.ra, data.dec))
        header["EXPNAME"] = (exp.name, "exposure")
        m = models[:, e]
        resid = exp.data[None] - m
        sd = m.std(axis=0)
        model_hdus += [_image(np.median(m, axis=0), "MEDIAN", header, unit, e + 1),
                       _image(sd, "SD", header, unit, e + 1)]
        norm = np.where(exp.mask, (exp.data - m.mean(axis=0)) / np.sqrt(np.where(exp.mask, exp.variance, 1.0)),
                        np.nan)
        resid_hdus += [_image(np.median(resid, axis=0), "MEDIAN", header, unit, e + 1),
                       _image(sd, "SD", header, unit, e + 1),
                       _image(norm, "NORMRES", header, "", e + 1)]
    return [_write(out / "model.fits", model_hdus), _write(out / "residual.fits", resid_hdus)]


def write_image_products(images: dict, models: np.ndarray, data, geometry, lens: dict, out: Path) -> list[Path]:
    """All four files: images {"source": [N, n, n], "lens_light": [N, m, m]}, models [N, n_exp, H, W]; lens: the
    lens config (name, ra, dec, redshifts); the sky position of the frames is the data's (`ExposureSet.ra/dec`)."""
    out = Path(out)
    where = {**lens, "ra": data.ra, "dec": data.dec}
    unit = data.exposures[0].unit
    return [grid_products(images["source"], geometry.source, where, unit,
                          "source (source plane): median, sd", out / "source.fits"),
            grid_products(images["lens_light"], geometry.lens_light, where, unit,
                          "lens light: median, sd", out / "lens_light.fits"),
            *exposure_products(models, data, where, out)]
