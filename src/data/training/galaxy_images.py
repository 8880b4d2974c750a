"""Operations on galaxy stamps [H, W] (numpy, float64): flux-conserving resampling, rebinning and cropping,
background level and noise, segmentation into the central source and its neighbours (photutils detection and
deblending), neighbour masks, centring.

`galaxy_prepare` runs them on every input stamp; `GalaxyDataset` resizes prepared images with `rebin` and
`centre_crop`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from ..flux_resample import resample_axis


def resample(image: np.ndarray, ratio: float, centre: tuple[float, float], size: int) -> np.ndarray:
    """Flux-conserving resampling of `image` onto a size x size grid.

    Method: `scorelens.data.flux_resample.resample_axis` along each axis in turn (the cumulative flux at input pixel
    edges interpolated, differenced at the output edges): an unshifted copy or an integer block sum reproduces
    the input exactly, and the total flux is conserved for whatever part of the input the output grid covers.

    Args:
        image: [H, W] flux per input pixel; pixel centres at integer coordinates.
        ratio: output pixel side in input pixels (target pixel scale / input pixel scale).
        centre: (y, x) input coordinates that land on the centre ((size - 1) / 2, (size - 1) / 2) of the output.
        size: output side, pixels.

    Returns:
        [size, size] float64, flux per output pixel.
    """
    edges = (np.arange(size + 1) - size / 2) * ratio
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    out = resample_axis(image, 1, np.arange(w + 1) - 0.5, centre[1] + edges)
    return resample_axis(out, 0, np.arange(h + 1) - 0.5, centre[0] + edges)


def rebin(image: np.ndarray, size: int) -> np.ndarray:
    """Flux-conserving resize of a square [N, N] image to [size, size] about its centre (block sums when N is a
    multiple of size; `resample` otherwise)."""
    n = image.shape[-1]
    if n == size:
        return image
    if n % size == 0:
        f = n // size
        return image.reshape(size, f, size, f).sum(axis=(1, 3))
    c = (n - 1) / 2
    return resample(image, n / size, (c, c), size)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central [size, size] of a square image, zero-padded where `size` is larger."""
    n = image.shape[-1]
    if size <= n:
        start = (n - size) // 2
        return image[start:start + size, start:start + size]
    out = np.zeros((size, size), dtype=image.dtype)
    start = (size - n) // 2
    out[start:start + n, start:start + n] = image
    return out


def _edge_pixels(image: np.ndarray, border: int) -> np.ndarray:
    h, w = image.shape
    if 2 * border >= min(h, w):
        return image.ravel()
    return np.concatenate([image[:border].ravel(), image[-border:].ravel(),
                           image[border:-border, :border].ravel(), image[border:-border, -border:].ravel()])


def background(image: np.ndarray, border: int) -> tuple[float, float]:
    """(level, noise sigma) of a stamp: sigma-clipped median and standard deviation of its `border` edge pixels."""
    from astropy.stats import sigma_clipped_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, median, std = sigma_clipped_stats(_edge_pixels(image, border), sigma=3.0, maxiters=5)
    median = float(median) if np.isfinite(median) else 0.0
    std = float(std) if np.isfinite(std) else 0.0
    return median, std


def segment(image: np.ndarray, border: int, detect_sigma: float, min_pixels: int,
            deblend_contrast: float | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Masks (central source, other sources) of a background-subtracted stamp, or None where nothing is detected.

    Detection (photutils.segmentation): the image smoothed by a Gaussian of 1 pixel sigma, above `detect_sigma`
    times the noise of the smoothed edge pixels (and above 1e-3 of its peak, which decides for noise-free images),
    in 8-connected regions of at least `min_pixels` pixels; then, unless `deblend_contrast` is None, each region
    deblended (multi-thresholding and watershed, `deblend_sources`: a neighbour that touches the galaxy becomes
    its own source when it holds at least that fraction of the region's flux). The central source is the one
    holding the brightest detected pixel in the middle half of the stamp.
    """
    import warnings

    from astropy.convolution import convolve
    from photutils.segmentation import deblend_sources, detect_sources, make_2dgaussian_kernel
    from photutils.utils.exceptions import NoDetectionsWarning

    kernel = make_2dgaussian_kernel(2.0 * np.sqrt(2.0 * np.log(2.0)), size=7)  # FWHM of sigma = 1 pixel
    smooth = convolve(image, kernel, boundary="extend", normalize_kernel=True)
    _, noise = background(smooth, border)
    threshold = max(detect_sigma * noise, 1e-3 * float(smooth.max()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)  # a blank stamp is an answer: None, counted by the caller
        segm = detect_sources(smooth, threshold, int(min_pixels), connectivity=8)
    if segm is None:
        return None
    if deblend_contrast is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # photutils warns about regions too small to deblend: they stay whole
            segm = deblend_sources(smooth, segm, int(min_pixels), contrast=float(deblend_contrast),
                                   progress_bar=False)
    labels = segm.data
    h, w = image.shape
    box = (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    inner = np.where(labels[box] > 0, smooth[box], -np.inf)
    if not np.isfinite(inner.max()):
        return None
    label = labels[box].flat[int(np.argmax(inner))]
    central = labels == label
    return central, (labels > 0) & ~central


def mask_neighbours(image: np.ndarray, central: np.ndarray, others: np.ndarray, noise: float, fill: str,
                    rng: np.random.Generator) -> np.ndarray:
    """`image` with the other sources (grown by 2 pixels, never into the central one) replaced by Gaussian noise
    of sigma `noise` (fill="noise") or by zeros (fill="zero")."""
    mask = ndimage.binary_dilation(others, iterations=2) & ~central
    out = image.copy()
    out[mask] = rng.normal(0.0, noise, int(mask.sum())) if fill == "noise" else 0.0
    return out


def source_centre(image: np.ndarray, central: np.ndarray, how: str) -> tuple[float, float] | None:
    """(y, x) of the central source: flux-weighted centroid of its positive pixels, or its brightest pixel."""
    if how == "peak":
        y, x = np.unravel_index(int(np.argmax(np.where(central, image, -np.inf))), image.shape)
        return float(y), float(x)
    weights = np.where(central, np.clip(image, 0.0, None), 0.0)
    total = weights.sum()
    if not total > 0:
        return None
    yy, xx = np.indices(image.shape)
    return float((weights * yy).sum() / total), float((weights * xx).sum() / total)

