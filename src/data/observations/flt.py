"""ACS/WFC FLT/FLC files -> chips -> a lens cutout per exposure, and the set of a lens's exposures.

An FLT/FLC file holds a primary header (EXPTIME, FILTER1/FILTER2, ROOTNAME) and, per chip, the image extensions
SCI, ERR (1-sigma, same unit as SCI) and DQ (bit flags), sharing an EXTVER (1 and 2 for the two WFC chips; note
that EXTVER 1 is WFC2 in real ACS files, CCDCHIP says which; files with one chip, like the mocks, have EXTVER 1
only). The WCS of a chip is `astropy.wcs.WCS(sci_header, hdulist)`, so SIP polynomials and the lookup-table
distortions (D2IM, CPDIS in the WCSDVARR/D2IMARR extensions) are all applied by `all_pix2world`.

Cutout convention: the chip holding the lens is the one whose pixel area contains the lens's pixel position
(pixel i covers [i - 0.5, i + 0.5)); the cutout's centre pixel (size // 2, size // 2) is the chip pixel nearest to
the lens (row, col rounded half up), so the lens lies within half a pixel of that pixel's centre. For an even
size the centre pixel is the one just above and right of the geometric centre of the cutout (as in
`scorelens.data.observations.sky_grid.cutout_grid`).

Which DQ bits make a pixel bad is a setting (`dq_bad_bits`, the config's `observations`), never a constant here. ACS
DQ values (ACS Data Handbook): 1 Reed-Solomon error, 2 data replaced by fill, 4 bad detector pixel, 8 masked by
aperture, 16 hot pixel, 32 CTE tail, 64 warm pixel, 128 bad column, 256 full-well saturation, 512 bad flat,
1024 charge trap, 2048 A-to-D saturation, 4096 cosmic ray (AstroDrizzle), 8192 cosmic ray (ACSREJ), 16384
ghost/crosstalk.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning, NoConvergence

from ...errors import InputError, TangentPlaneError, one_line
from .exposure_set import Chip, Exposure, ExposureSet
from .masks import dq_bitmask, dq_flagged, load_user_mask
from .sky import sky_level
from .sky_grid import cutout_grid, sky_offsets, sky_to_pixel

log = logging.getLogger(__name__)

_SKIP_KEYS = {"", "COMMENT", "HISTORY"}


def require_file(path: Path, hint: str = "") -> None:
    """InputError "PATH: file not found[; HINT]" unless `path` is an existing file."""
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found" + (f"; {hint}" if hint else ""))


def filter_name(header) -> str:
    """The filter of an HST header: FILTER1/FILTER2 (ACS) or FILTER, without the CLEAR positions; '' if none.

    Two real filters (e.g. a polariser with a broad band) are joined with '+'.
    """
    names = [str(header.get(k, "")).strip().upper() for k in ("FILTER1", "FILTER2", "FILTER")]
    real = [n for n in names if n and not n.startswith("CLEAR") and n not in ("N/A", "NONE")]
    return "+".join(dict.fromkeys(real))


def _header_dict(*headers: fits.Header) -> dict:
    out = {}
    for h in headers:
        out.update({k: v for k, v in h.items() if k not in _SKIP_KEYS})
    return out


def _image(path: Path, hdul: fits.HDUList, name: str, extver: int) -> fits.ImageHDU:
    try:
        hdu = hdul[name, extver]
    except KeyError:
        raise InputError(f"{path}: no {name} extension with EXTVER {extver}; an FLT/FLC file needs SCI, ERR and DQ "
                         "for each chip") from None
    if hdu.data is None or np.ndim(hdu.data) != 2:
        raise InputError(f"{path}: extension {name},{extver} holds no 2-D image")
    return hdu


def _chip_wcs(path: Path, hdul: fits.HDUList, sci: fits.ImageHDU, extver: int) -> WCS:
    try:
        wcs = WCS(sci.header, hdul)
    except Exception as err:  # astropy raises many types for broken WCS keywords
        raise InputError(f"{path}: SCI,{extver} has an unusable WCS ({one_line(err)})") from None
    if not wcs.has_celestial or wcs.naxis != 2:
        raise InputError(f"{path}: SCI,{extver} has no celestial WCS (CTYPE/CRVAL/CD keywords)")
    return wcs


def _chips(path: Path, hdul: fits.HDUList) -> list[Chip]:
    primary = hdul[0].header
    extvers = sorted({int(hdu.header.get("EXTVER", 1)) for hdu in hdul[1:] if hdu.name == "SCI"})
    if not extvers and hdul[0].name == "SCI":
        extvers = [int(primary.get("EXTVER", 1))]
    if not extvers:
        raise InputError(f"{path}: no SCI extension; an FLT/FLC file needs SCI, ERR and DQ for each chip")
    exptime = float(primary.get("EXPTIME", 0.0) or 0.0)
    chips = []
    for v in extvers:
        sci, err, dq = (_image(path, hdul, name, v) for name in ("SCI", "ERR", "DQ"))
        if not sci.data.shape == err.data.shape == dq.data.shape:
            raise InputError(f"{path}: SCI,{v} {sci.data.shape}, ERR,{v} {err.data.shape} and DQ,{v} "
                             f"{dq.data.shape} differ in shape")
        flags = np.asarray(dq.data)
        if flags.dtype.kind not in "iu":
            if not (np.all(np.isfinite(flags)) and np.all(flags == np.round(flags))):
                raise InputError(f"{path}: DQ,{v} holds values that are not integer bit flags")
            flags = flags.astype(np.int64)
        unit = str(sci.header.get("BUNIT", primary.get("BUNIT", ""))).strip()
        chips.append(Chip(
            sci=np.asarray(sci.data, dtype=np.float64), err=np.asarray(err.data, dtype=np.float64), dq=flags,
            wcs=_chip_wcs(path, hdul, sci, v), extver=v, header=_header_dict(primary, sci.header), path=path,
            name=str(primary.get("ROOTNAME", "")).strip().lower() or path.name.split(".")[0], unit=unit,
            exptime=float(sci.header.get("EXPTIME", exptime) or 0.0), filter=filter_name(primary)))
    return chips


def read_flt(path) -> list[Chip]:
    """All chips of an ACS/WFC FLT/FLC file (or an FLT-like file with one chip).

    Args:
        path: the FITS file.

    Returns:
        One Chip per SCI extension, in EXTVER order: sci, err as [H, W] float64 in the file's BUNIT (kept as
        given, e.g. ELECTRONS or ELECTRONS/S, and recorded in `unit`), dq as [H, W] integer flags, the full WCS
        (SIP and lookup-table distortions), exptime (s) and filter from the primary header.

    Raises:
        InputError: missing or unreadable file, a chip without ERR or DQ, shapes that differ, no celestial WCS.
    """
    path = Path(path)
    return read_fits(path, lambda hdul: _chips(path, hdul))


def read_fits(path: Path, reader):
    """`reader(hdul)` on the opened FITS file; a missing, corrupt or truncated file becomes one InputError line."""
    require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            warnings.filterwarnings("error", message=".*truncated")  # a short file is an error, not a warning
            with fits.open(path, memmap=False) as hdul:
                return reader(hdul)
    except InputError:
        raise
    except Exception as err:  # corrupt or truncated files fail in many ways inside astropy.io.fits
        raise InputError(f"{path}: cannot be read as a FITS file ({one_line(err)})") from None


def lens_pixel(wcs: WCS, ra: float, dec: float) -> tuple[float, float]:
    """0-based (row, col) of the lens in a chip through its full WCS; (nan, nan) where the inversion fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN steps of the inversion far off the chip
            row, col = sky_to_pixel(wcs, ra, dec)
    except NoConvergence:
        return math.nan, math.nan
    row, col = float(row), float(col)
    if not (math.isfinite(row) and math.isfinite(col)):
        return math.nan, math.nan
    # guard against solutions that do not map back onto the lens (points far off the chip, behind the tangent point)
    try:
        x, y = sky_offsets(wcs, ra, dec, row, col)
    except TangentPlaneError:
        return math.nan, math.nan
    return (row, col) if math.hypot(float(x), float(y)) < 1e-3 else (math.nan, math.nan)


def _on_chip(chip: Chip, row: float, col: float) -> bool:
    h, w = chip.sci.shape
    return -0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5


def mean_pixel_scale(x: np.ndarray, y: np.ndarray) -> float:
    """Mean pixel size (arcsec) of a sky grid [H, W]: the square root of each pixel's area, averaged."""
    if min(x.shape) < 2:
        return float("nan")
    dx_dr, dx_dc = np.gradient(x)
    dy_dr, dy_dc = np.gradient(y)
    return float(np.mean(np.sqrt(np.abs(dx_dc * dy_dr - dx_dr * dy_dc))))


def cut_exposure(chips: Sequence[Chip], ra: float, dec: float, size: int, dq_bits, user_mask=None,
                 sky="header") -> Exposure:
    """The size x size cutout about the lens from the chip that holds it.

    Args:
        chips: the chips of one file (`read_flt`).
        ra, dec: the lens position, degrees.
        size: cutout side, pixels; the lens is in the centre pixel (size // 2, size // 2), within 0.5 px of its
            centre (module docstring).
        dq_bits: DQ bits that mark bad pixels (a list of bit values or one integer mask; `observations.dq_bad_bits`).
        user_mask: None, a [size, size] or chip-shaped bool array (True = masked out), or a ds9 region / FITS /
            .npy file (`masks.load_user_mask`; pixel regions in the chip's pixel coordinates).
        sky: the sky level to subtract (`sky.sky_level`: "header", "median", "none" or a number).

    Returns:
        The Exposure: data [N, N] float64 in the chip's unit, variance = ERR^2, mask True where DQ is good, SCI
        and ERR are finite, ERR > 0 and the user mask keeps the pixel; the sky grid x, y [N, N] (arcsec about
        the lens, `sky_grid.cutout_grid`). Pixels that are not finite get data 0; pixels with ERR not finite or
        <= 0 get variance 1 (placeholders: they are masked).

    Raises:
        InputError: the lens on no chip (outside the frame, in the chip gap), the cutout running off the chip's
        edge, or no usable pixel in the cutout; each names the file and the lens RA/Dec.
    """
    if not chips:
        raise InputError("cut_exposure needs at least one chip (read_flt gives none)")
    path = chips[0].path
    where = f"the lens at RA {ra:.6f}, Dec {dec:+.6f}"
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"cutout size must be a positive integer number of pixels, got {size!r}")
    size = int(size)
    bad_bits = dq_bitmask(dq_bits)
    found = None
    for chip in chips:
        row, col = lens_pixel(chip.wcs, ra, dec)
        if math.isfinite(row) and _on_chip(chip, row, col):
            found = chip, row, col
            break
    if found is None:
        raise InputError(f"{path}: {where} falls on no chip (outside the frame or in the chip gap)")
    chip, row, col = found
    h, w = chip.sci.shape
    rc, cc = math.floor(row + 0.5), math.floor(col + 0.5)
    r0, c0 = rc - size // 2, cc - size // 2
    if r0 < 0 or c0 < 0 or r0 + size > h or c0 + size > w:
        raise InputError(f"{path}: the {size} x {size} cutout about {where} (row {row:.1f}, col {col:.1f} of chip "
                         f"EXTVER {chip.extver}, {h} x {w}) runs off the chip edge (chip gap or frame edge); use a "
                         "smaller cutout or leave this exposure out")
    cut = np.s_[r0:r0 + size, c0:c0 + size]
    sci, err = chip.sci[cut].astype(np.float64), chip.err[cut].astype(np.float64)
    flagged = dq_flagged(chip.dq[cut], bad_bits)
    finite = np.isfinite(sci) & np.isfinite(err)
    positive = finite & (err > 0)
    user = np.zeros((size, size), dtype=bool)
    if user_mask is not None:
        user = load_user_mask(user_mask, (size, size), wcs=chip.wcs, origin=(r0, c0), frame_shape=(h, w))
    mask = positive & ~flagged & ~user
    n_nonfinite = int(np.count_nonzero(~finite))
    if not mask.any():
        raise InputError(f"{path}: every pixel of the {size} x {size} cutout about {where} is masked "
                         f"({n_nonfinite} not finite, {int(np.count_nonzero(finite & ~positive))} with ERR <= 0, "
                         f"{int(np.count_nonzero(flagged))} flagged in DQ, {int(np.count_nonzero(user))} by the "
                         "user mask)")
    if n_nonfinite:
        log.warning("%s: %d pixels of the cutout have NaN/inf in SCI or ERR; masked", path, n_nonfinite)
    n_no_noise = int(np.count_nonzero(finite & ~positive & ~user))
    if n_no_noise:  # a detector gives every exposed pixel a positive ERR: zero or less is a damaged file
        log.warning("%s: %d pixels of the cutout have ERR <= 0; masked (they carry no noise estimate)", path,
                    n_no_noise)
    background = sky_level(chip.sci, lambda: dq_flagged(chip.dq, bad_bits), chip.header,
                           sky, where=f"{path} (EXTVER {chip.extver})")
    sci = sci - background
    x, y = cutout_grid(chip.wcs, ra, dec, (size, size), center_pixel=(rc, cc))
    exposure = Exposure(
        name=chip.name, path=path, data=np.where(np.isfinite(sci), sci, 0.0),
        variance=np.where(positive, err**2, 1.0), mask=mask, x=x, y=y, pixel_scale=mean_pixel_scale(x, y),
        unit=chip.unit, exptime=chip.exptime, filter=chip.filter, origin=(r0, c0), chip=chip.extver,
        n_nonfinite=n_nonfinite, wcs=chip.wcs)
    log.info("%s: %d x %d cutout from chip EXTVER %d at (row %d, col %d); %d of %d pixels used; sky %.4g "
             "subtracted", exposure.name, size, size, chip.extver, r0, c0, int(mask.sum()), mask.size, background)
    return exposure


def _per_exposure_masks(user_masks, n: int) -> list:
    if user_masks is None or isinstance(user_masks, (str, Path, np.ndarray)):
        return [user_masks] * n  # one mask (e.g. a sky region file) for every exposure
    masks = list(user_masks)
    if len(masks) != n:
        raise InputError(f"user masks: {len(masks)} given for {n} exposures; give one per exposure or a single one")
    return masks


def check_compatible(exposures: Iterable[Exposure]) -> None:
    """InputError unless all exposures share filter, cutout shape and unit (the message names both files)."""
    exposures = list(exposures)
    ref = exposures[0]
    for e in exposures[1:]:
        for what in ("filter", "shape", "unit"):
            a, b = getattr(e, what), getattr(ref, what)
            if a != b:
                raise InputError(f"{e.path}: {what} {a or 'unknown'} differs from {b or 'unknown'} of {ref.path}; "
                                 f"all exposures of a lens must share one {what}")


def load_exposures(paths: Sequence, ra: float, dec: float, size: int, dq_bad_bits, user_masks=None,
                   name: str | None = None, sky="header") -> ExposureSet:
    """Lens cutouts of FLT/FLC exposures as an ExposureSet.

    Args:
        paths: the FLT/FLC files.
        ra, dec: the lens position, degrees.
        size: cutout side, pixels.
        dq_bad_bits: DQ bits that mark bad pixels (`observations.dq_bad_bits`).
        user_masks: None, one mask for every exposure (a region file or an array), or a list with one entry
            (None, path or array) per file; see `cut_exposure`.
        name: the lens's name (default: the first file's directory name).
        sky: the sky to subtract from each chip (see `cut_exposure`).

    Raises:
        InputError: as `read_flt` and `cut_exposure`, and when exposures differ in filter, cutout shape or unit.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("load_exposures: no FLT/FLC files given")
    masks = _per_exposure_masks(user_masks, len(paths))
    exposures = []
    for path, user_mask in zip(paths, masks, strict=True):
        chips = read_flt(path)
        exposures.append(cut_exposure(chips, ra, dec, size, dq_bad_bits, user_mask, sky=sky))
        del chips  # whole chips are large: keep only the cutout
        check_compatible(exposures)
    return ExposureSet(name=name or paths[0].parent.name, ra=float(ra), dec=float(dec), exposures=exposures)
