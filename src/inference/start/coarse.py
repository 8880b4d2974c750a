"""The data as the start finder sees them: every exposure binned `bin` x `bin`, as flat vectors of used pixels.

A binned pixel is the mean of its block (variance: the block's mean variance / bin^2) and is used only where every
pixel of the block is; its position is the mean of the block's ray positions (each exposure keeps its own WCS).
The PSF is summarised by one number, the sd of a Gaussian with the PSF core's width, to which the binned pixel's
box adds (bin pixel)^2 / 12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...lensing.binning import bin_pixels
from ...lensing.forward import ForwardModel
from ..likelihood import GaussianLikelihood


@dataclass
class CoarseData:
    """x, y: [P] positions (arcsec); data, weight: [P] (weight = 1 / variance); psf_sd: arcsec, the PSF and the
    binned pixel's box together; pixel: binned pixel size (arcsec); footprint: the largest |x| or |y| (arcsec)."""

    x: Tensor
    y: Tensor
    data: Tensor
    weight: Tensor
    psf_sd: float
    pixel: float
    footprint: float

    @property
    def n(self) -> int:
        return self.data.shape[0]

    def outside(self, x0: float, y0: float, radius: float) -> CoarseData:
        """The pixels farther than `radius` arcsec from (x0, y0)."""
        keep = (self.x - x0) ** 2 + (self.y - y0) ** 2 > radius**2
        return CoarseData(self.x[keep], self.y[keep], self.data[keep], self.weight[keep], self.psf_sd, self.pixel,
                          self.footprint)


def psf_sd(psf: Tensor, spacing: float) -> float:
    """sd (arcsec) of the Gaussian with the core width (FWHM) of the kernels psf [n_exp, K, K] sampled every
    `spacing` arcsec, mean over exposures. The core, not the second moment: an HST PSF's wings hold a few percent
    of the light but would double a second-moment width."""
    peak = psf.amax(dim=(-2, -1), keepdim=True)
    area = (psf >= 0.5 * peak).flatten(-2).sum(-1).to(psf.dtype) * spacing**2
    fwhm = 2 * torch.sqrt(area / torch.pi)
    return float((fwhm / 2.3548).mean())


def coarse_data(model: ForwardModel, likelihood: GaussianLikelihood, psf: Tensor, bin: int,
                systematic: float = 0.0) -> CoarseData:
    """Bin the exposures of `likelihood` (on `model`'s grid, PSF kernels psf [n_exp, K, K]) by `bin`; `systematic`
    adds (systematic x data)^2 to each binned pixel's variance: the smooth model cannot fit the bright lens centre to
    its photon noise, and without this floor those pixels would outweigh the arcs."""
    up = model.upsample
    h, w = model.grid.detector_shape
    bin = max(1, min(int(bin), h, w))
    hc, wc = (h // bin) * bin, (w // bin) * bin  # a ragged edge is dropped
    crop = lambda t, s: t[..., : hc * s, : wc * s]  # noqa: E731
    x = bin_pixels(crop(model.grid.x, up), up * bin)
    y = bin_pixels(crop(model.grid.y, up), up * bin)
    data = bin_pixels(crop(likelihood.data, 1), bin)
    var = bin_pixels(crop(likelihood.variance, 1), bin) / bin**2 + (systematic * data) ** 2
    used = bin_pixels(crop(likelihood.mask.to(data.dtype), 1), bin) > 1 - 1e-6
    det_scale = float(model.grid.pixel_scale.mean())
    sd2 = psf_sd(psf, det_scale / up) ** 2 + (det_scale * bin) ** 2 / 12
    if model.detector == "integrate":  # an optical PSF: the detector pixel's own box adds
        sd2 += det_scale**2 / 12
    footprint = float(torch.maximum(model.grid.x.abs().amax(), model.grid.y.abs().amax()))
    return CoarseData(x[used], y[used], data[used], 1.0 / var[used], sd2**0.5, det_scale * bin, footprint)
