"""Empirical PSFs (ePSFs) from star stamps, and the PSF operations every PSF source shares: centring, unit sum,
flux-conserving resampling between oversampling factors.

Conventions. A PSF is a [K, K] array sampled `oversampling` times per detector pixel along each axis; its centre
is pixel (K // 2, K // 2), the convention of `scorelens.lensing.psf`. Pixel values are treated as the flux in each fine
pixel (unit sum over the array), so a fine pixel (i, j) spans detector-pixel offsets
[(i - K // 2 - 1/2) / oversampling, (i - K // 2 + 1/2) / oversampling] from the centre.

What an ePSF is. An ePSF (Anderson & King 2000) is the optical PSF already integrated over a detector pixel: its
value at an offset is the fraction of a star's flux that a detector pixel at that offset from the star receives.
EPSFBuilder (photutils) and the STDPSF libraries both give ePSFs. A forward model that convolves a supersampled
image with a PSF and then averages sub-pixels into detector pixels (`scorelens.lensing.forward`) integrates over the
detector pixel itself, so with an ePSF it applies the pixel response twice (an extra 1-pixel box blur); such a model
wants the optical PSF, and an ePSF is the closest empirical stand-in for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ...errors import InputError
from ..flux_resample import resample_axis

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- PSF operations


def check_psf(psf: np.ndarray, where: str) -> np.ndarray:
    """`psf` as a float64 [K, K] array; InputError (naming `where`) if it is not square 2-D, not finite, or does
    not sum to a positive flux."""
    arr = np.asarray(psf, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 3:
        raise InputError(f"{where}: a PSF must be a square 2-D array of at least 3 x 3 pixels, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: the PSF has NaN or infinite pixels")
    if not arr.sum() > 0:
        raise InputError(f"{where}: the PSF sums to {arr.sum():.3g}, not to a positive flux")
    return arr


def unit_sum(psf: np.ndarray) -> np.ndarray:
    """`psf` divided by its sum (which must be positive)."""
    total = psf.sum()
    if not total > 0:
        raise ValueError(f"cannot normalise a PSF that sums to {total}")
    return psf / total


def psf_centroid(psf: np.ndarray, half_box: int) -> tuple[float, float]:
    """(row, col) offset in fine pixels of the centroid of max(psf, 0) inside the (2 half_box + 1)^2 box about
    pixel (K // 2, K // 2), from that pixel."""
    c = psf.shape[0] // 2
    box = np.clip(psf[c - half_box:c + half_box + 1, c - half_box:c + half_box + 1], 0.0, None)
    total = box.sum()
    if not total > 0:
        return 0.0, 0.0
    offsets = np.arange(-half_box, half_box + 1, dtype=np.float64)
    return float(box.sum(axis=1) @ offsets / total), float(box.sum(axis=0) @ offsets / total)


def center_psf(psf: np.ndarray, oversampling: float, box: float = 1.5, tol: float = 1e-3,
               max_iter: int = 10) -> np.ndarray:
    """Shift a PSF [K, K] so that its core sits on pixel (K // 2, K // 2).

    The core's position is the centroid of the non-negative PSF inside a box of +-`box` detector pixels about the
    centre; the PSF is first moved so that its peak is on the centre (if it is off by more than the box), then
    shifted by cubic-spline interpolation of the original array until that centroid is within `tol` fine pixels
    of the centre. Negative values that interpolation makes at sharp edges are set to zero. The sum is not
    normalised here (see `unit_sum`).

    Args:
        psf: [K, K] non-negative PSF, fine pixels.
        oversampling: fine pixels per detector pixel (only sets the box size).
        box: half-size of the centroid box, detector pixels.
        tol: accuracy of the centring, fine pixels.
        max_iter: most shift iterations.

    Returns:
        [K, K] float64.
    """
    orig = np.clip(np.asarray(psf, dtype=np.float64), 0.0, None)
    k = orig.shape[0]
    c = k // 2
    half_box = max(1, min(int(round(box * oversampling)), c - 1))
    peak = np.unravel_index(np.argmax(orig), orig.shape)
    total = np.array([c - peak[0], c - peak[1]], dtype=np.float64)
    if np.abs(total).max() <= half_box:
        total[:] = 0.0
    out = orig if not total.any() else np.clip(ndimage.shift(orig, total, order=3, mode="constant"), 0.0, None)
    for _ in range(max_iter):
        off = np.array(psf_centroid(out, half_box))
        if np.abs(off).max() < tol:
            break
        total -= off
        out = np.clip(ndimage.shift(orig, total, order=3, mode="constant"), 0.0, None)
    return out


def _resample_axis(a: np.ndarray, axis: int, from_oversampling: float, to_oversampling: float,
                   n_out: int) -> np.ndarray:
    """`flux_resample.resample_axis` between PSF grids whose centre pixels K // 2 coincide."""
    n_in = a.shape[axis]
    edges_in = (np.arange(n_in + 1, dtype=np.float64) - n_in // 2 - 0.5) / from_oversampling
    edges_out = (np.arange(n_out + 1, dtype=np.float64) - n_out // 2 - 0.5) / to_oversampling
    return resample_axis(a, axis, edges_in, edges_out)


def resample_psf(psf: np.ndarray, from_oversampling: float, to_oversampling: float, size: int) -> np.ndarray:
    """A PSF on another grid: from `from_oversampling` to `to_oversampling` fine pixels per detector pixel, cut or
    padded to [size, size], its centre pixel K // 2 mapped onto size // 2.

    Flux-conserving: the cumulative flux along each axis is interpolated by a cubic spline through its values at
    the input pixel edges, and each output pixel gets the difference of that interpolant across its edges (rows,
    then columns). So each output pixel holds the flux of a smooth density that integrates exactly to every input
    pixel's value: the total is kept wherever the output covers the input, and where output pixel edges fall on
    input pixel edges (e.g. 3 -> 1 about an odd-sized centre) this is exact block summing. Flux outside the
    output's footprint is dropped. Upsampling a PSF that is undersampled at its source resolution can leave small
    negative ripples (below 1% of the peak for a Gaussian of sigma 0.7 detector pixels, 1 -> 2); `prepare_psf`
    sets them to zero.

    Args:
        psf: [K, K] PSF, fine pixels at `from_oversampling` (any positive number, not only integers).
        from_oversampling, to_oversampling: fine pixels per detector pixel of input and output.
        size: output side, pixels at `to_oversampling`.

    Returns:
        [size, size] float64.
    """
    arr = np.asarray(psf, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"resample_psf needs a square [K, K] PSF, got shape {arr.shape}")
    if not (from_oversampling > 0 and to_oversampling > 0 and size >= 1):
        raise ValueError("resample_psf needs positive oversampling factors and size >= 1, got "
                         f"{from_oversampling}, {to_oversampling}, {size}")
    if math.isclose(from_oversampling, to_oversampling, rel_tol=1e-12):
        return _cut_or_pad(arr, size)
    out = _resample_axis(arr, 0, from_oversampling, to_oversampling, size)
    return _resample_axis(out, 1, from_oversampling, to_oversampling, size)


def _cut_or_pad(psf: np.ndarray, size: int) -> np.ndarray:
    """[K, K] -> [size, size] about the centre pixel K // 2 -> size // 2 (zeros where the input has no pixels)."""
    k = psf.shape[0]
    out = np.zeros((size, size), dtype=np.float64)
    lo = max(0, k // 2 - size // 2)          # first input index used
    start = max(0, size // 2 - k // 2)       # where it lands
    n = min(k - lo, size - start)
    out[start:start + n, start:start + n] = psf[lo:lo + n, lo:lo + n]
    return out


def prepare_psf(psf: np.ndarray, from_oversampling: float, to_oversampling: float, size: int, where: str,
                clip_negative: bool = True, centre_box: float = 1.5) -> np.ndarray:
    """Any PSF -> the form the PSF prior and the sampler use: [size, size] at `to_oversampling`, centred on pixel
    size // 2, non-negative, unit sum (float64).

    Steps: set negative pixels to zero (`clip_negative`: a PSF is an intensity; negative values in empirical
    libraries are noise or fill values), check (square, finite, positive sum; InputError naming `where`), centre at
    the input resolution, resample (`resample_psf`), centre again at the output resolution, normalise.
    """
    arr = np.asarray(psf, dtype=np.float64)
    if clip_negative and arr.ndim == 2:
        arr = np.where(np.isfinite(arr), np.clip(arr, 0.0, None), arr)  # non-finite pixels stay for check_psf
    arr = check_psf(arr, where)
    arr = center_psf(arr, from_oversampling, centre_box)
    arr = resample_psf(arr, from_oversampling, to_oversampling, size)
    if not arr.sum() > 0:
        raise InputError(f"{where}: no PSF flux falls within {size} x {size} pixels at oversampling "
                         f"{to_oversampling}")
    return unit_sum(center_psf(arr, to_oversampling, centre_box))


# --------------------------------------------------------------------------------------------------- ePSF build


def build_epsf(stamps, oversampling: int = 4, size: int = 128, *, maxiters: int = 10,
               smoothing_kernel: str | None = "quartic", recentering_boxsize: int = 5,
               center_accuracy: float = 1e-3, fit_shape: int | None = 5, sigma_clip: float = 3.0,
               centre_box: float = 1.5) -> np.ndarray:
    """An ePSF from star stamps with photutils' EPSFBuilder (Anderson & King 2000).

    Args:
        stamps: a `scorelens.data.psf.stars.StarStamps` (data [n, S, S] background-subtracted, err, dq, centres in the
            stamps via `centres()`), or a sequence of (data [S, S], centre (row, col) in the stamp, weights [S, S]
            or None) tuples.
        oversampling: fine pixels per detector pixel of the ePSF.
        size: side of the returned ePSF, fine pixels (128 at oversampling 4 spans 32 detector pixels; stamps
            should span at least size / oversampling detector pixels, or the outer ePSF is zero).
        maxiters, smoothing_kernel, recentering_boxsize, center_accuracy, fit_shape: EPSFBuilder settings
            (recentering_boxsize and fit_shape in detector pixels, odd).
        sigma_clip: clipping threshold (sigma) of the per-fine-pixel stacking of star residuals.
        centre_box: half-size (detector pixels) of the box whose centroid is put on the centre pixel.

    Returns:
        [size, size] float64 ePSF, non-negative, unit sum, centred on pixel (size // 2, size // 2).
    """
    from astropy.stats import SigmaClip
    from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars

    stars = []
    for i, (data, centre, weights) in enumerate(_stamp_tuples(stamps)):
        stars.append(EPSFStar(np.asarray(data, dtype=np.float64), weights=weights,
                              cutout_center=(float(centre[1]), float(centre[0])), id_label=i))
    if not stars:
        raise InputError("build_epsf: no star stamps to build an ePSF from")
    # EPSFBuilder makes odd shapes that cover the stamps; the result is cut (or padded) to size about its centre
    shape = max(size, max(max(s.shape) for s in stars) * oversampling + 1)
    shape += 1 - shape % 2
    builder = EPSFBuilder(oversampling=oversampling, shape=(shape, shape), smoothing_kernel=smoothing_kernel,
                          sigma_clip=SigmaClip(sigma=sigma_clip, maxiters=10),
                          recentering_boxsize=(recentering_boxsize, recentering_boxsize),
                          center_accuracy=center_accuracy, fit_shape=fit_shape, maxiters=maxiters,
                          progress_bar=False)
    result = builder(EPSFStars(stars))
    log.debug("EPSFBuilder: %d stars, %d iterations, converged %s, %d excluded", len(stars), result.iterations,
              result.converged, result.n_excluded_stars)
    epsf = np.clip(_cut_or_pad(np.nan_to_num(np.asarray(result.epsf.data, dtype=np.float64)), size), 0.0, None)
    if not epsf.sum() > 0:
        raise InputError(f"build_epsf: the ePSF from {len(stars)} stars has no positive flux")
    return unit_sum(center_psf(epsf, oversampling, centre_box))


def _stamp_tuples(stamps) -> Sequence[tuple[np.ndarray, tuple[float, float], np.ndarray | None]]:
    """(data, centre (row, col), weights) per star from a StarStamps or a sequence of such tuples."""
    if hasattr(stamps, "centres") and hasattr(stamps, "weights"):
        return list(zip(stamps.data, stamps.centres(), stamps.weights(), strict=True))
    return [(d, c, w) for d, c, w in stamps]


def kernel_offsets(size: int, upsample: int) -> np.ndarray:
    """[size] detector-pixel offsets from the PSF centre at which the forward model's "sample" detector reads its
    kernel pixels: (m - size // 2 - 1/2) / upsample for even `upsample` (the model reads the sub-pixel just above
    and right of each pixel centre), (m - size // 2) / upsample for odd."""
    half = 0.5 if upsample % 2 == 0 else 0.0
    return (np.arange(size) - size // 2 - half) / upsample


def effective_psf_kernel(epsf: np.ndarray, oversampling: float, upsample: int, size: int) -> np.ndarray:
    """An effective PSF (centred on pixel K // 2, `oversampling` samples per detector pixel) as the kernel of the
    forward model's "sample" detector at `upsample` sub-pixels per detector pixel: [size, size], unit sum.

    The ePSF already holds the pixel response, so it is point-sampled (cubic interpolation), not integrated: kernel
    pixel m takes the ePSF at (m - size // 2 - 1/2) / upsample detector pixels for even `upsample` (the model reads
    the sub-pixel just above and right of each pixel centre) and at (m - size // 2) / upsample for odd.
    """
    epsf = check_psf(np.asarray(epsf, dtype=np.float64), "effective PSF")
    k = epsf.shape[-1]
    coords = k // 2 + kernel_offsets(size, upsample) * oversampling  # ePSF pixel coordinates
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    kernel = ndimage.map_coordinates(epsf, [rows, cols], order=3, mode="constant", cval=0.0)
    return unit_sum(np.clip(kernel, 0.0, None))
