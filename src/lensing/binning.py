"""From the supersampled grid to detector pixels, and back (the adjoint).

Images hold surface brightness in data units per detector-pixel area. Two detector models:

- "integrate" (the PSF is the optical PSF): a detector pixel is the mean of its upsample x upsample sub-pixels,
  which integrates the light over the pixel;
- "sample" (the PSF is an effective PSF, an ePSF, which already includes the pixel's response, as those built from
  stars are): a detector pixel is the value at its centre. With an even upsample factor the centre falls between
  sub-pixels; the sub-pixel just above and right of it (index s i + s // 2) is taken, and the PSF kernel is
  sampled half a sub-pixel off to match (see `scorelens.data.psf.epsf.effective_psf_kernel`).

Either way, the sum over detector pixels equals the sum over sub-pixels divided by upsample^2 for a unit-sum PSF.
"""

from __future__ import annotations

from torch import Tensor

DETECTORS = ("integrate", "sample")


def check_detector(mode: str) -> str:
    if mode not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {mode!r}")
    return mode


def _check(shape, upsample):
    hs, ws = shape[-2:]
    if hs % upsample or ws % upsample:
        raise ValueError(f"image of shape {(hs, ws)} does not divide into {upsample} x {upsample} blocks")


def bin_pixels(image: Tensor, upsample: int) -> Tensor:
    """[..., H * s, W * s] -> [..., H, W], the mean over each s x s block."""
    if upsample == 1:
        return image
    _check(image.shape, upsample)
    *lead, hs, ws = image.shape
    return image.reshape(*lead, hs // upsample, upsample, ws // upsample, upsample).mean(dim=(-3, -1))


def unbin_pixels(image: Tensor, upsample: int) -> Tensor:
    """Adjoint of `bin_pixels`: [..., H, W] -> [..., H * s, W * s], each value spread as value / s^2."""
    if upsample == 1:
        return image
    out = image.repeat_interleave(upsample, dim=-2).repeat_interleave(upsample, dim=-1)
    return out / upsample**2


def sample_pixels(image: Tensor, upsample: int) -> Tensor:
    """[..., H * s, W * s] -> [..., H, W]: sub-pixel (s i + s // 2, s j + s // 2) of each block, the value at the
    detector pixel's centre (see the module docstring)."""
    if upsample == 1:
        return image
    _check(image.shape, upsample)
    o = upsample // 2
    return image[..., o::upsample, o::upsample]


def unsample_pixels(image: Tensor, upsample: int) -> Tensor:
    """Adjoint of `sample_pixels`: values placed at the sampled sub-pixels, zero elsewhere."""
    if upsample == 1:
        return image
    *lead, h, w = image.shape
    out = image.new_zeros(*lead, h * upsample, w * upsample)
    o = upsample // 2
    out[..., o::upsample, o::upsample] = image
    return out


def to_detector(image: Tensor, upsample: int, detector: str = "integrate") -> Tensor:
    return bin_pixels(image, upsample) if detector == "integrate" else sample_pixels(image, upsample)


def from_detector(image: Tensor, upsample: int, detector: str = "integrate") -> Tensor:
    """Adjoint of `to_detector`."""
    return unbin_pixels(image, upsample) if detector == "integrate" else unsample_pixels(image, upsample)
