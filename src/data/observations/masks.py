"""Masks of a cutout: DQ flags (`dq_flagged`, by astropy.nddata.bitmask) and user masks (ds9 region files, or
boolean arrays in FITS / .npy files) -> a bool array [H, W].

DQ: `dq_bad_bits` (conf/observations, conf/stars) lists the DQ bit values that make a pixel unusable; astropy's
interpreter also takes one integer mask or a string such as "4,16,4096".

Convention: True = masked OUT (the pixel is not used). The loaders' `Exposure.mask` is the opposite (True = used),
so they combine the two as `mask &= ~user_mask`.

Region files (read with `regions.Regions.read(path, format='ds9')`):
  - every region marks pixels to EXCLUDE; a region prefixed with '-' in ds9 (an exclude region) carves pixels
    back out of the excluded area, so `circle(...)` plus `-circle(...)` masks an annulus. `invert=True` flips
    the result: the regions then mark the pixels to keep.
  - a pixel is inside when its centre is (`region.contains`).
  - sky regions (fk5, icrs, ...) are converted to pixels with the exposure's WCS (all distortions included);
    pixel regions ('image' coordinates) are used as they are, in the pixel frame of the file the cutout comes
    from (an FLT chip or a co-add as ds9 shows it), so `origin` (the cutout's first pixel in that frame) is
    subtracted. Points, lines and text enclose no pixel and are ignored.
Array files: a FITS file (first HDU with data; nonzero = masked out) or a .npy array (bool, or numbers with
nonzero = masked out), of the cutout's shape or of the whole frame's shape (then cut at `origin`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.nddata import bitmask

from ...errors import InputError, one_line

log = logging.getLogger(__name__)


def dq_bitmask(bits) -> int:
    """The DQ bits that make a pixel bad, as one integer mask, from a list of single-bit values (e.g. [4, 16, 256,
    4096, 8192]), one integer mask or a comma-separated string ("4,16"); a one-line InputError otherwise."""
    if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool) and bits < 0:
        raise InputError(f"dq_bad_bits: {bits} is negative; give DQ bit values such as [4, 16, 4096]")
    try:
        mask = bitmask.interpret_bit_flags(list(bits) if isinstance(bits, tuple) else bits)
    except (TypeError, ValueError) as err:
        raise InputError(f"dq_bad_bits: {bits!r}: {one_line(err)}; give DQ bit values (powers of two) such as "
                         "[4, 16, 4096]") from None
    return 0 if mask is None else int(mask)


def dq_flagged(dq: np.ndarray, bits) -> np.ndarray:
    """True where a pixel of the DQ array dq [H, W] has any of the bad `bits` (`dq_bitmask`) set, [H, W] bool."""
    return bitmask.bitfield_to_boolean_mask(np.asarray(dq).astype(np.int64), ignore_flags=dq_bitmask(bits),
                                            flip_bits=True, good_mask_value=False)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def _as_bool(path, array, shape, origin, frame_shape) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: a mask must hold booleans or numbers, not {array.dtype}")
    shape = tuple(int(s) for s in shape)
    if array.shape == shape:
        pass
    elif frame_shape is not None and array.shape == tuple(frame_shape):
        r0, c0 = origin
        array = array[r0:r0 + shape[0], c0:c0 + shape[1]]
    else:
        frame = f" or the frame's {tuple(frame_shape)}" if frame_shape is not None else ""
        raise InputError(f"{path}: mask of shape {array.shape} does not match the cutout's {shape}{frame}")
    # NaN counts as nonzero: masked out
    return np.asarray(array != 0 if array.dtype.kind != "b" else array, dtype=bool)


def _fits_array(path: Path) -> np.ndarray:
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if hdu.data is not None and getattr(hdu, "is_image", False):
                    return np.array(hdu.data)
    except Exception as err:  # corrupt FITS files fail in many ways
        raise InputError(f"{path}: cannot be read as a FITS mask ({one_line(err)})") from None
    raise InputError(f"{path}: no image HDU holds data; a FITS mask needs one")


def _npy_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise InputError(f"{path}: cannot be read as a .npy mask ({one_line(err)})") from None


def region_mask(path, shape, wcs=None, origin=(0, 0), invert: bool = False) -> np.ndarray:
    """Pixels of a [H, W] cutout inside the regions of a ds9 file (module docstring): bool [H, W], True = out."""
    from regions import PixCoord, PixelRegion, Regions, SkyRegion

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # regions warns about unsupported ds9 shapes it skips
            regions = Regions.read(str(path), format="ds9")
    except Exception as err:
        raise InputError(f"{path}: cannot be read as a ds9 region file ({one_line(err)})") from None
    if len(regions) == 0:
        raise InputError(f"{path}: holds no ds9 region (empty, or not a ds9 region file)")
    h, w = (int(s) for s in shape)
    r0, c0 = origin
    pixels = PixCoord(x=c0 + np.arange(w, dtype=np.float64)[None, :] + np.zeros((h, 1)),
                      y=r0 + np.arange(h, dtype=np.float64)[:, None] + np.zeros((1, w)))
    excluded = np.zeros((h, w), dtype=bool)
    kept = np.zeros((h, w), dtype=bool)
    n_used = 0
    for region in regions:
        if isinstance(region, SkyRegion):
            if wcs is None:
                raise InputError(f"{path}: sky regions need a WCS and this image has none; give the region in "
                                 "image (pixel) coordinates")
            try:
                region = region.to_pixel(wcs)
            except Exception as err:
                raise InputError(f"{path}: a sky region cannot be converted to pixels ({one_line(err)})") from None
        if not isinstance(region, PixelRegion) or type(region).__name__.startswith(("Point", "Line", "Text")):
            log.warning("%s: %s encloses no pixel; ignored", path, type(region).__name__)
            continue
        inside = np.asarray(region.contains(pixels), dtype=bool)
        if region.meta.get("include", True):
            excluded |= inside
        else:
            kept |= inside
        n_used += 1
    if n_used == 0:
        raise InputError(f"{path}: holds no region that encloses pixels (circle, box, ellipse, polygon, ...)")
    out = excluded & ~kept
    return ~out if invert else out


def load_user_mask(source, shape, *, wcs=None, origin=(0, 0), frame_shape=None, invert: bool = False) -> np.ndarray:
    """A user mask for a cutout.

    Args:
        source: a bool/number array, or the path of a ds9 region file (any other suffix), a FITS file
            (.fits, .fit, .fts, optionally .gz) or a .npy file.
        shape: (H, W) of the cutout.
        wcs: the exposure's WCS (for sky regions); None for images without one.
        origin: (row, col) of the cutout's first pixel in the file's pixel frame (FLT chip, co-add).
        frame_shape: (H, W) of that frame: arrays of this shape are cut at `origin`.
        invert: region files only: the regions mark the pixels to keep instead.

    Returns:
        [H, W] bool, True = masked out.
    """
    if not isinstance(source, (str, Path)):
        return _as_bool("user mask", source, shape, origin, frame_shape)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: file not found (user mask)")
    name = path.name.lower()
    if name.endswith(FITS_SUFFIXES):
        mask = _as_bool(path, _fits_array(path), shape, origin, frame_shape)
    elif name.endswith(".npy"):
        mask = _as_bool(path, _npy_array(path), shape, origin, frame_shape)
    else:
        mask = region_mask(path, shape, wcs=wcs, origin=origin, invert=invert)
    log.info("%s: user mask excludes %d of %d pixels", path, int(mask.sum()), mask.size)
    return mask
