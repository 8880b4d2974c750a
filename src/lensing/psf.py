"""Convolution with pixelated PSFs by zero-padded FFTs (linear, not circular), and its adjoint.

A PSF is a [..., K, K] array on the supersampled grid (see `grid.py`), centred on pixel (K // 2, K // 2): a PSF
that is 1 there and 0 elsewhere leaves images unchanged. Images are [..., H, W]; the output has the input's shape
("same" convolution), and light that the PSF spreads beyond the edges is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _fast_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (sizes FFT libraries handle fastest)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


class PSFConvolution:
    """Convolution of [..., H, W] images with PSFs [..., K, K]; the FFT of the PSF is computed once.

    Args:
        psf: [..., K, K], broadcastable against the leading dimensions of the images it will convolve.
        image_shape: (H, W) of the images.
    """

    def __init__(self, psf: Tensor, image_shape: tuple[int, int]):
        if psf.ndim < 2 or psf.shape[-1] != psf.shape[-2]:
            raise ValueError(f"a PSF must be square [..., K, K], got shape {tuple(psf.shape)}")
        self.k = psf.shape[-1]
        self.c = self.k // 2
        self.image_shape = tuple(image_shape)
        h, w = self.image_shape
        self.pad = (_fast_size(h + self.k - 1), _fast_size(w + self.k - 1))
        self.psf_ft = torch.fft.rfft2(psf, s=self.pad)

    def __call__(self, image: Tensor) -> Tensor:
        """PSF * image, [..., H, W]."""
        h, w = self.image_shape
        full = torch.fft.irfft2(torch.fft.rfft2(image, s=self.pad) * self.psf_ft, s=self.pad)
        return full[..., self.c : self.c + h, self.c : self.c + w]

    def adjoint(self, image: Tensor) -> Tensor:
        """The transpose of `__call__`: correlation with the PSF, [..., H, W]."""
        h, w = self.image_shape
        padded = torch.zeros(*image.shape[:-2], *self.pad, dtype=image.dtype, device=image.device)
        padded[..., self.c : self.c + h, self.c : self.c + w] = image
        full = torch.fft.irfft2(torch.fft.rfft2(padded) * self.psf_ft.conj(), s=self.pad)
        return full[..., :h, :w]
