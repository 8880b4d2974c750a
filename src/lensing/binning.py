"""Binning supersampled images to detector pixels and its adjoint.

Images hold surface brightness in data units per detector-pixel area, so a detector pixel is the mean of its
upsample x upsample sub-pixels; the sum over detector pixels of a binned image equals the sum over sub-pixels
divided by upsample^2 (the same total flux, counted per detector pixel).
"""

from __future__ import annotations

from torch import Tensor


def bin_pixels(image: Tensor, upsample: int) -> Tensor:
    """[..., H * s, W * s] -> [..., H, W], the mean over each s x s block."""
    if upsample == 1:
        return image
    *lead, hs, ws = image.shape
    if hs % upsample or ws % upsample:
        raise ValueError(f"image of shape {(hs, ws)} does not divide into {upsample} x {upsample} blocks")
    return image.reshape(*lead, hs // upsample, upsample, ws // upsample, upsample).mean(dim=(-3, -1))


def unbin_pixels(image: Tensor, upsample: int) -> Tensor:
    """Adjoint of `bin_pixels`: [..., H, W] -> [..., H * s, W * s], each value spread as value / s^2."""
    if upsample == 1:
        return image
    out = image.repeat_interleave(upsample, dim=-2).repeat_interleave(upsample, dim=-1)
    return out / upsample**2
