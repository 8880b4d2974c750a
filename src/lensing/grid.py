"""Pixel grids in the lens frame: exposures' supersampled ray grids and the square grids of pixelated images.

Coordinates are arcsec in the tangent plane of DESIGN.md (x east, y north). An exposure's detector pixels each get
their own sky position (from the FITS WCS, distortion included); rays are shot at `upsample` x `upsample` points
inside each detector pixel. The supersampled grid is regular in the detector frame, which is the frame of the PSF,
so the PSF is given at the same `upsample` factor: this module is the one place that decides it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def subpixel_offsets(upsample: int, dtype=None, device=None) -> Tensor:
    """Offsets of the sub-pixel centres from the pixel centre, in detector pixels: [upsample]."""
    return (torch.arange(upsample, dtype=dtype, device=device) + 0.5) / upsample - 0.5


def _pixel_gradients(c: Tensor) -> tuple[Tensor, Tensor]:
    """d c / d row and d c / d col of a [..., H, W] map (central differences, one-sided at the edges)."""
    return torch.gradient(c, dim=(-2, -1))


@dataclass
class ExposureGrid:
    """Ray positions of exposures, supersampled.

    Attributes:
        x, y: [n_exp, H * upsample, W * upsample] sky positions (arcsec) of the sub-pixel centres; sub-pixel
            (r, c) lies in detector pixel (r // upsample, c // upsample).
        upsample: sub-pixels per detector pixel along each axis (the PSF's upsampling factor too).
        pixel_scale: [n_exp] mean detector pixel size (arcsec), for the default fields of view.
    """

    x: Tensor
    y: Tensor
    upsample: int
    pixel_scale: Tensor

    @property
    def n_exp(self) -> int:
        return self.x.shape[0]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.x.shape[-2] // self.upsample, self.x.shape[-1] // self.upsample

    @property
    def fine_shape(self) -> tuple[int, int]:
        return tuple(self.x.shape[-2:])

    def padded(self, margin: int) -> ExposureGrid:
        """The same exposures with `margin` more detector pixels on every side, [n_exp, (H + 2 m) s, (W + 2 m) s].

        The sub-pixel grid is regular in the detector frame, so it is continued by the step of its outermost
        sub-pixels, row by row and then column by column: exact for an affine pixel -> sky map, and over the tens of
        pixels of a PSF's half-width the WCS's distortion changes that step by far less than a milliarcsecond.
        """
        if margin < 0 or int(margin) != margin:
            raise ValueError(f"a grid margin must be a non-negative integer, got {margin}")
        if margin == 0:
            return self
        m = int(margin) * self.upsample
        if min(self.fine_shape) < 2:
            raise ValueError("a grid needs at least 2 x 2 sub-pixels to be padded")
        out = []
        for c in (self.x, self.y):
            for dim in (-1, -2):
                n = c.shape[dim]
                k = torch.arange(1, m + 1, dtype=c.dtype, device=c.device)
                shape = [1] * c.ndim
                shape[dim] = m
                k = k.reshape(shape)
                first, second = c.narrow(dim, 0, 1), c.narrow(dim, 1, 1)
                last, before = c.narrow(dim, n - 1, 1), c.narrow(dim, n - 2, 1)
                low = first - (second - first) * k.flip(dim)
                high = last + (last - before) * k
                c = torch.cat((low, c, high), dim=dim)
            out.append(c.contiguous())
        return ExposureGrid(out[0], out[1], self.upsample, self.pixel_scale)

    def to(self, device=None, dtype=None) -> ExposureGrid:
        return ExposureGrid(self.x.to(device, dtype), self.y.to(device, dtype), self.upsample,
                            self.pixel_scale.to(device, dtype))

    @classmethod
    def from_detector(cls, x_det: Tensor, y_det: Tensor, upsample: int) -> ExposureGrid:
        """Supersample per-pixel sky positions [n_exp, H, W] (or [H, W]) with the local linear pixel -> sky map.

        Over one pixel the WCS (SIP distortion included) is linear to far below a milliarcsecond, so the sub-pixel
        positions follow from the pixel centres and the local Jacobian.
        """
        if upsample < 1:
            raise ValueError(f"upsample must be a positive integer, got {upsample}")
        if x_det.shape != y_det.shape or x_det.ndim not in (2, 3):
            raise ValueError(f"x_det and y_det must share a shape [n_exp, H, W] or [H, W]; got {tuple(x_det.shape)} "
                             f"and {tuple(y_det.shape)}")
        if x_det.ndim == 2:
            x_det, y_det = x_det[None], y_det[None]
        if min(x_det.shape[-2:]) < 2:
            raise ValueError("an exposure grid needs at least 2 x 2 pixels")
        off = subpixel_offsets(upsample, x_det.dtype, x_det.device)
        xs = []
        for c in (x_det, y_det):
            d_row, d_col = _pixel_gradients(c)
            fine = (c[..., :, None, :, None] + d_row[..., :, None, :, None] * off[:, None, None]
                    + d_col[..., :, None, :, None] * off)
            n, h, _, w, _ = fine.shape
            xs.append(fine.reshape(n, h * upsample, w * upsample))
        gx, gy = _pixel_gradients(x_det)[1], _pixel_gradients(y_det)[1]
        scale = torch.sqrt(gx**2 + gy**2).mean(dim=(-2, -1))
        return cls(xs[0], xs[1], upsample, scale)

    @classmethod
    def regular(
        cls,
        shape: tuple[int, int],
        pixel_scale: float,
        upsample: int,
        n_exp: int = 1,
        offsets: Tensor | None = None,
        rotation: Tensor | None = None,
        dtype=torch.float32,
        device=None,
    ) -> ExposureGrid:
        """Undistorted grids centred on the lens: pixel (i, j) sits at x = (j - (W-1)/2) s, y = (i - (H-1)/2) s,
        then rotated by `rotation` [n_exp] (radians) and moved by `offsets` [n_exp, 2] (arcsec)."""
        h, w = shape
        jj = (torch.arange(w, dtype=dtype, device=device) - (w - 1) / 2) * pixel_scale
        ii = (torch.arange(h, dtype=dtype, device=device) - (h - 1) / 2) * pixel_scale
        y0, x0 = torch.meshgrid(ii, jj, indexing="ij")
        x0, y0 = x0.expand(n_exp, h, w), y0.expand(n_exp, h, w)
        if rotation is not None:
            rot = torch.as_tensor(rotation, dtype=dtype, device=device).reshape(n_exp, 1, 1)
            c, s = torch.cos(rot), torch.sin(rot)
            x0, y0 = c * x0 - s * y0, s * x0 + c * y0
        if offsets is not None:
            off = torch.as_tensor(offsets, dtype=dtype, device=device).reshape(n_exp, 2, 1, 1)
            x0, y0 = x0 + off[:, 0], y0 + off[:, 1]
        return cls.from_detector(x0.contiguous(), y0.contiguous(), upsample)


@dataclass(frozen=True)
class PixelGrid:
    """A square pixelated image on the sky: n x n pixels of `pixel_scale` arcsec centred at (x0, y0).

    Pixel (i, j) has its centre at x = x0 + (j - (n-1)/2) pixel_scale, y = y0 + (i - (n-1)/2) pixel_scale.
    """

    n: int
    pixel_scale: float
    x0: float = 0.0
    y0: float = 0.0

    def __post_init__(self):
        if self.n < 2 or not self.pixel_scale > 0:
            raise ValueError(f"a pixel grid needs n >= 2 and pixel_scale > 0, got n={self.n}, "
                             f"pixel_scale={self.pixel_scale}")

    @property
    def fov(self) -> float:
        """Side length (arcsec) covered by the pixels."""
        return self.n * self.pixel_scale

    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) pixel-edge extent in arcsec, as matplotlib's imshow wants (origin='lower')."""
        h = self.fov / 2
        return (self.x0 - h, self.x0 + h, self.y0 - h, self.y0 + h)

    def coordinates(self, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
        """Pixel-centre positions (x, y), each [n, n]."""
        a = (torch.arange(self.n, dtype=dtype, device=device) - (self.n - 1) / 2) * self.pixel_scale
        yy, xx = torch.meshgrid(a + self.y0, a + self.x0, indexing="ij")
        return xx, yy
