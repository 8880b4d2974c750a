"""Co-added images (drizzled FITS with noise map and PSF; lenstronomy-style HDF5) -> a one-exposure ExposureSet
(`lens.load_lens` picks these loaders from a lens config).

The whole image is the cutout. Its sky grid:
  - from the image's WCS when its header has one (SIP and lookup tables included), about the lens (ra, dec);
  - else from `pixel_scale`, assuming the standard orientation of drizzled products, north up and east LEFT, with
    the lens at the centre pixel (H // 2, W // 2) (the middle pixel for odd sides, the one just above/right of
    the middle for even sides): x = -(col - W // 2) * pixel_scale (east), y = (row - H // 2) * pixel_scale (north);
  - for lenstronomy HDF5 files from `transform_pix2angle` and `ra_at_xy_0`, `dec_at_xy_0`:
    (x, y) = (ra_at_xy_0, dec_at_xy_0) + transform_pix2angle @ (col, row), where lenstronomy's "ra" offset is x
    (east) and "dec" is y (north); the origin (0, 0) of those coordinates is taken to be the lens at (ra, dec).
PSFs are made odd-sided (an even side gets one zero row/column at its end), rolled by whole pixels so that the
peak is the central pixel, and normalised to unit sum. With `strict` (a user's own files, conf/lens/fits.yaml) they
are checked instead of repaired: a repaired PSF would model a shifted or rescaled lens without saying so. `strict`
also refuses NaN/inf pixels in the part of the image that is used.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ...errors import InputError, one_line
from .exposure_set import Exposure, ExposureSet, central_window
from .flt import filter_name, lens_pixel, mean_pixel_scale, read_fits, require_file
from .masks import load_user_mask
from .sky_grid import sky_offsets

log = logging.getLogger(__name__)

# strict PSF checks: the sum's tolerance, and how far (image pixels) its core's centroid may sit from the centre
PSF_SUM_RANGE = (0.95, 1.05)
PSF_CENTRE_TOL = 0.5
PSF_CORE = 2  # image pixels about the centre in which the centroid is taken: the wings are too noisy to weigh

H5_KEYS = ("image_data", "background_rms", "exposure_time", "transform_pix2angle", "ra_at_xy_0", "dec_at_xy_0")


# ------------------------------------------------------------------------------------------------- pieces


def read_image(path, what: str = "image", label: str | None = None) -> tuple[np.ndarray, fits.Header, WCS | None]:
    """The image of a FITS file: the SCI extension if there is one, else the first HDU with 2-D data.

    `label` starts the error messages (the config key and path, `lens.image=PATH`; default the path).

    Returns:
        (data [H, W] float64, its header, its celestial WCS or None when the header has none).
    """
    path = Path(path)
    label = label or str(path)

    def reader(hdul):
        hdus = [h for h in hdul if getattr(h, "is_image", False) and h.data is not None]
        sci = [h for h in hdus if h.name == "SCI"]
        if not hdus:
            raise InputError(f"{label}: no HDU holds image data (the {what}); write it to the primary HDU or an "
                             "image extension")
        hdu = (sci or hdus)[0]
        header = hdu.header.copy()
        wcs = None
        if "CTYPE1" in header or "CD1_1" in header or "CRVAL1" in header:
            try:
                wcs = WCS(header, hdul)
            except Exception as err:
                raise InputError(f"{label}: the header's WCS is unusable ({one_line(err)})") from None
            wcs = wcs if wcs.has_celestial and wcs.naxis == 2 else None
        return np.array(hdu.data, dtype=np.float64), header, wcs

    data, header, wcs = read_fits(path, reader)
    if data.ndim != 2:
        raise InputError(f"{label}: the {what} has {data.ndim} dimensions; a 2-D image is needed")
    return data, header, wcs


def prepare_psf(psf, source="PSF") -> np.ndarray:
    """A PSF stamp [K, K] made odd-sided, rolled so its peak is the central pixel (K // 2, K // 2), unit sum.

    Raises:
        InputError: not 2-D, not finite, or a sum <= 0 (`source` names the file in the message).
    """
    psf = np.array(psf, dtype=np.float64)
    if psf.ndim != 2 or min(psf.shape) < 1:
        raise InputError(f"{source}: the PSF must be a 2-D image, got shape {psf.shape}")
    if not np.all(np.isfinite(psf)):
        raise InputError(f"{source}: the PSF holds NaN or infinite values")
    total = float(psf.sum())
    if not total > 0:
        raise InputError(f"{source}: the PSF sums to {total:.3g}; it needs a positive sum")
    h, w = psf.shape
    k = max(h, w) | 1  # odd and square: zeros appended at the end
    if (h, w) != (k, k):
        log.warning("%s: PSF of %d x %d pixels, not square with an odd side; padded with zeros to %d x %d", source,
                    h, w, k, k)
        psf = np.pad(psf, ((0, k - h), (0, k - w)))
    if not PSF_SUM_RANGE[0] <= total <= PSF_SUM_RANGE[1]:
        log.warning("%s: PSF sums to %.4g, not ~1; normalised to 1 (the image's flux scale is unchanged)", source,
                    total)
    peak = np.unravel_index(int(np.argmax(psf)), psf.shape)
    shift = (k // 2 - int(peak[0]), k // 2 - int(peak[1]))
    if shift != (0, 0):
        log.warning("%s: PSF peak at %s, not the central pixel; rolled by %s pixels", source, tuple(map(int, peak)),
                    shift)
        psf = np.roll(psf, shift, axis=(0, 1))
    return psf / psf.sum()


def check_psf(psf: np.ndarray, source="PSF", oversampling: int = 1) -> None:
    """Refuse a PSF [K, K] that `prepare_psf` would have to repair: not square with an odd side, its core's
    centroid more than PSF_CENTRE_TOL image pixels from the central pixel (K // 2, K // 2), or a sum outside
    PSF_SUM_RANGE. `source` starts the message (`lens.psf=PATH`); the PSF has `oversampling` pixels per image
    pixel side.

    Raises:
        InputError: one line saying which and what to do.
    """
    from ..psf.epsf import psf_centroid

    h, w = psf.shape
    if h != w or h % 2 == 0:
        raise InputError(f"{source}: the PSF is {h} x {w} pixels; it must be square with an odd side, centred on "
                         "its middle pixel (crop or pad it)")
    if not np.all(np.isfinite(psf)):
        raise InputError(f"{source}: the PSF holds NaN or infinite values")
    total = float(psf.sum())
    lo, hi = PSF_SUM_RANGE
    if not lo <= total <= hi:
        raise InputError(f"{source}: the PSF sums to {total:.4g}, not 1 (within {lo:g}-{hi:g}); normalise it to "
                         "unit sum (if light falls outside the stamp, use a larger stamp)")
    row, col = psf_centroid(psf, min(PSF_CORE * oversampling, h // 2))
    off = math.hypot(row, col) / oversampling
    if off > PSF_CENTRE_TOL:
        raise InputError(f"{source}: the PSF's core is centred {off:.2f} image pixels from its middle pixel "
                         f"(row {row:+.2f}, col {col:+.2f} PSF pixels); recentre it on pixel ({h // 2}, {h // 2})")


def _oversampling(value) -> int:
    try:
        ok = not isinstance(value, bool) and float(value).is_integer() and int(value) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"psf_oversampling must be a positive integer, got {value!r}")
    return int(value)


def _finish(name, path, data, variance, usable, x, y, pixel_scale, user_mask, wcs, **extra) -> Exposure:
    """One Exposure from arrays of a whole image; masks non-finite values; InputError if nothing is usable."""
    finite = np.isfinite(data) & np.isfinite(variance)
    positive = usable & finite & (variance > 0)
    user = np.zeros(data.shape, dtype=bool)
    if user_mask is not None:
        user = load_user_mask(user_mask, data.shape, wcs=wcs, origin=(0, 0))
    mask = positive & ~user
    n_nonfinite = int(np.count_nonzero(~finite))
    if not mask.any():
        raise InputError(f"{path}: every pixel is masked ({n_nonfinite} not finite, "
                         f"{int(np.count_nonzero(finite & ~positive))} with no positive noise, "
                         f"{int(np.count_nonzero(user))} by the user mask)")
    if n_nonfinite:
        log.warning("%s: %d pixels with NaN/inf in the image or noise; masked", path, n_nonfinite)
    n_unusable = int(np.count_nonzero(finite & ~positive & ~user))
    if n_unusable:  # masked as for FLTs (no noise, no weight), but said: a zeroed noise map may be a mistake
        log.warning("%s: %d pixels with a noise of zero or less (or no exposure time); masked. Give their "
                    "1-sigma noise to use them", path, n_unusable)
    return Exposure(name=name, path=Path(path), data=np.where(np.isfinite(data), data, 0.0),
                    variance=np.where(positive, variance, 1.0), mask=mask, x=x, y=y, pixel_scale=pixel_scale,
                    n_nonfinite=n_nonfinite, wcs=wcs, **extra)


# ----------------------------------------------------------------------------------------------- co-adds


def coadd_grid(shape, pixel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky grid [H, W] (arcsec) of an image without WCS: north up, east left, lens at pixel (H // 2, W // 2)."""
    h, w = shape
    rows = np.arange(h, dtype=np.float64)[:, None] - h // 2
    cols = np.arange(w, dtype=np.float64)[None, :] - w // 2
    return np.broadcast_to(-cols * pixel_scale, (h, w)).copy(), np.broadcast_to(rows * pixel_scale, (h, w)).copy()


def _require_finite(data, noise, user, window, labels) -> None:
    """Strict co-adds: no NaN/inf in the image or noise map over the pixels used (the cutout, less the user mask)."""
    used = np.zeros(data.shape, dtype=bool)
    used[window] = True
    used &= ~user
    for arr, label, what in ((data, labels[0], "image"), (noise, labels[1], "noise map")):
        n = int(np.count_nonzero(used & ~np.isfinite(arr)))
        if n:
            raise InputError(f"{label}: {n} pixels of the {what} inside the cutout are NaN or infinite; replace "
                             "them, mask them (lens.mask) or choose a smaller lens.cutout")


def load_coadd(image, noise_map, psf, pixel_scale: float | None = None, *, ra: float | None = None,
               dec: float | None = None, name: str = "lens", psf_oversampling: int = 1, user_mask=None,
               strict: bool = False, cutout: int | None = None, key_prefix: str | None = None) -> ExposureSet:
    """A co-added (drizzled) image with its 1-sigma noise map and PSF as a one-exposure ExposureSet.

    Args:
        image, noise_map, psf: FITS files (the SCI extension, else the first HDU with data); the noise map in the
            image's unit, 1 sigma, same shape.
        pixel_scale: arcsec per pixel, used when the image header has no WCS (north up, east left, lens at the
            centre pixel; module docstring). With a WCS the WCS wins.
        ra, dec: the lens position, degrees; None: the centre pixel (H // 2, W // 2), by the WCS if there is one.
        name: the lens's name.
        psf_oversampling: PSF pixels per image pixel side.
        user_mask: None, a bool array of the image's shape (True = masked out), or a region / FITS / .npy file.
        strict: check the PSF (`check_psf`) instead of repairing it, and refuse NaN/inf pixels of the image or
            noise map inside the central `cutout` pixels (all of them for None) that the user mask leaves.
        key_prefix: messages name each file as `<key_prefix><argument>=PATH` (`lens.` gives `lens.image=PATH`);
            None: by its path alone.

    Returns:
        ExposureSet with one Exposure: data [H, W], variance = noise^2, mask (finite, noise > 0, user mask), x, y
        [H, W] arcsec, psf [K, K] unit sum, unit from BUNIT ('' if absent), exptime from EXPTIME (0 if absent).

    Raises:
        InputError: missing/corrupt files, shapes that differ, no WCS and no pixel_scale, a PSF that is not
        finite or does not sum to a positive value, every pixel masked; with `strict`, the checks above.
    """
    image, noise_map, psf = Path(image), Path(noise_map), Path(psf)
    label = {k: str(p) if key_prefix is None else f"{key_prefix}{k}={p}"
             for k, p in (("image", image), ("noise_map", noise_map), ("psf", psf))}
    data, header, wcs = read_image(image, "image", label["image"])
    noise, _, _ = read_image(noise_map, "noise map", label["noise_map"])
    if noise.shape != data.shape:
        raise InputError(f"{label['noise_map']}: noise map of shape {noise.shape} differs from the image's "
                         f"{data.shape} ({label['image']}); give the noise map of this image")
    kernel, _, _ = read_image(psf, "PSF", label["psf"])
    oversampling = _oversampling(psf_oversampling)
    if strict:
        check_psf(kernel, label["psf"], oversampling)
    kernel = prepare_psf(kernel, label["psf"])
    h, w = data.shape
    scale_key = "pixel_scale" if key_prefix is None else f"{key_prefix}pixel_scale"
    if wcs is not None:
        if ra is None or dec is None:  # as without a WCS: the lens at the centre pixel
            ra, dec = (float(v) for v in wcs.all_pix2world([[w // 2, h // 2]], 0)[0])
            log.info("%s: no lens position given; the centre pixel (%d, %d) is taken, RA %.6f, Dec %+.6f", image,
                     h // 2, w // 2, ra, dec)
        row, col = lens_pixel(wcs, ra, dec)
        if not (math.isfinite(row) and -0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
            raise InputError(f"{label['image']}: the lens at RA {ra:.6f}, Dec {dec:+.6f} lies outside the image "
                             "(by its WCS)")
        x, y = sky_offsets(wcs, ra, dec, np.arange(h)[:, None], np.arange(w)[None, :])
        scale = mean_pixel_scale(x, y)
        if pixel_scale is not None and abs(scale / float(pixel_scale) - 1) > 0.01:
            log.warning("%s: pixel_scale %.4g differs from the WCS's %.4g arcsec; the WCS is used", image,
                        float(pixel_scale), scale)
        log.info("%s: lens at pixel (row %.2f, col %.2f) by the WCS", image, row, col)
    else:
        if pixel_scale is None:
            raise InputError(f"{label['image']}: the header holds no WCS and no pixel_scale was given; set "
                             f"{scale_key} (arcsec per pixel)")
        scale = float(pixel_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"{scale_key}={pixel_scale!r}: must be a positive number of arcsec per pixel")
        x, y = coadd_grid(data.shape, scale)
    user = None if user_mask is None else load_user_mask(user_mask, data.shape, wcs=wcs, origin=(0, 0))
    if strict:
        _require_finite(data, noise, np.zeros(data.shape, bool) if user is None else user,
                        central_window(data.shape, cutout), (label["image"], label["noise_map"]))
    exposure = _finish(
        image.name.split(".")[0], image, data, noise**2, np.isfinite(noise) & (noise > 0), x, y, scale, user, wcs,
        unit=str(header.get("BUNIT", "")).strip(), exptime=float(header.get("EXPTIME", 0.0) or 0.0),
        filter=filter_name(header), psf=kernel, psf_oversampling=oversampling)
    log.info("%s: co-add %d x %d at %.4g arcsec/pixel, %d pixels used", image, h, w, scale, int(exposure.mask.sum()))
    return ExposureSet(name=name, ra=None if ra is None else float(ra), dec=None if dec is None else float(dec),
                       exposures=[exposure])


# ---------------------------------------------------------------------------------------- lenstronomy HDF5


def _h5_datasets(path: Path, keys, required: bool = True) -> dict[str, np.ndarray]:
    import h5py

    require_file(path)
    try:
        with h5py.File(path, "r") as f:
            out = {}
            for key in keys:
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    if required:
                        raise InputError(f"{path}: no dataset '{key}'; a lenstronomy file needs {', '.join(keys)}")
                    continue
                out[key] = np.asarray(f[key][()], dtype=np.float64)
            return out
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{path}: cannot be read as HDF5 ({one_line(err)})") from None


def load_lenstronomy_h5(image_h5, psf_h5=None, *, ra: float | None = None, dec: float | None = None,
                        name: str = "lens",
                        psf_oversampling: int = 1, user_mask=None, filter: str | None = None) -> ExposureSet:
    """A lenstronomy-style HDF5 image (and PSF) as a one-exposure ExposureSet.

    Args:
        image_h5: file with image_data [H, W] (counts/s), background_rms (scalar or [H, W]), exposure_time
            (scalar or [H, W], s), transform_pix2angle [2, 2] (arcsec per pixel: (col, row) -> (ra, dec) offsets),
            ra_at_xy_0, dec_at_xy_0 (arcsec offsets of pixel (0, 0); the lens is the coordinates' origin).
        psf_h5: file with kernel_point_source [K, K]; None: that dataset of image_h5 if it has one, else no PSF.
        ra, dec: the lens position, degrees (the files hold only offsets; None: not known).
        filter: the band; None takes it from the file name when it contains one (e.g. ..._F555W.h5).

    Returns:
        ExposureSet with one Exposure: variance = background_rms^2 + max(image, 0) / exposure_time; pixels with
        exposure_time <= 0 or non-finite values are masked; unit 'ELECTRONS/S'; exptime the median exposure time.
    """
    image_h5 = Path(image_h5)
    d = _h5_datasets(image_h5, H5_KEYS)
    data = d["image_data"]
    if data.ndim != 2:
        raise InputError(f"{image_h5}: image_data has shape {data.shape}; a 2-D image is needed")
    shape = data.shape
    for key in ("background_rms", "exposure_time"):
        if d[key].ndim != 0 and d[key].shape != shape:
            raise InputError(f"{image_h5}: {key} of shape {d[key].shape} is neither a scalar nor the image's {shape}")
    t = d["transform_pix2angle"]
    if t.shape != (2, 2) or not np.all(np.isfinite(t)) or abs(np.linalg.det(t)) == 0:
        raise InputError(f"{image_h5}: transform_pix2angle must be a finite, invertible 2 x 2 matrix")
    rows = np.arange(shape[0], dtype=np.float64)[:, None]
    cols = np.arange(shape[1], dtype=np.float64)[None, :]
    x = float(d["ra_at_xy_0"]) + t[0, 0] * cols + t[0, 1] * rows
    y = float(d["dec_at_xy_0"]) + t[1, 0] * cols + t[1, 1] * rows
    col0, row0 = np.linalg.solve(t, -np.array([float(d["ra_at_xy_0"]), float(d["dec_at_xy_0"])]))
    if not (-0.5 <= row0 < shape[0] - 0.5 and -0.5 <= col0 < shape[1] - 0.5):
        log.warning("%s: the coordinates' origin (taken as the lens) is outside the image, at pixel (%.1f, %.1f)",
                    image_h5, row0, col0)
    exptime = np.broadcast_to(d["exposure_time"], shape)
    rms = np.broadcast_to(d["background_rms"], shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = rms**2 + np.clip(np.nan_to_num(data, nan=0.0), 0.0, None) / exptime
    usable = np.isfinite(exptime) & (exptime > 0)
    kernel = None
    if psf_h5 is not None:
        psf_h5 = Path(psf_h5)
        kernel = prepare_psf(_h5_datasets(psf_h5, ("kernel_point_source",))["kernel_point_source"], psf_h5)
    else:
        inside = _h5_datasets(image_h5, ("kernel_point_source",), required=False)
        if "kernel_point_source" in inside:
            kernel = prepare_psf(inside["kernel_point_source"], image_h5)
    if filter is None:
        found = re.search(r"(?:^|[_\-.])(F\d{3,4}[A-Z]{1,2})(?:[_\-.]|$)", image_h5.name.upper())
        filter = found.group(1) if found else ""
    good_t = exptime[usable]
    exposure = _finish(
        image_h5.name.split(".")[0], image_h5, data, np.asarray(variance, dtype=np.float64), usable, x, y,
        float(math.sqrt(abs(np.linalg.det(t)))), user_mask, None, unit="ELECTRONS/S",
        exptime=float(np.median(good_t)) if good_t.size else 0.0, filter=filter, psf=kernel,
        psf_oversampling=_oversampling(psf_oversampling))
    log.info("%s: lenstronomy image %d x %d at %.4g arcsec/pixel, %d pixels used", image_h5, *shape,
             exposure.pixel_scale, int(exposure.mask.sum()))
    return ExposureSet(name=name, ra=None if ra is None else float(ra), dec=None if dec is None else float(dec),
                       exposures=[exposure])
