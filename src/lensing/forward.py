"""The multi-exposure forward model: mass, shifts, source, lens light and PSFs -> model images of every exposure.

For chain b and exposure e, with the exposure's supersampled ray grid theta (arcsec, from its WCS) moved by the
exposure's alignment shift delta_be:

    model_be = bin( PSF_e * [ S_b(beta(theta + delta_be)) + L_b(theta + delta_be) ] )

Rays are traced on the exposure's grid widened by a margin of detector pixels on every side (`margin`, by default
none; the inference uses the PSF's half-width, `lensing.margin`), convolved, and cut back to the cutout: the PSF
spreads light from just outside a cutout into its edge pixels, and a model without that light falls short there
wherever arcs or the lens light cross the edge.

beta = theta - alpha(theta) is the lens equation of the mass model, S_b and L_b are bilinear interpolations of the
pixelated source (source plane) and lens light (image plane), PSF_e is on the supersampled grid and `bin` averages
each detector pixel's sub-pixels. Everything is differentiable (autograd), and for fixed mass, shifts and PSFs the
source -> images and lens light -> images maps are available as matrix-free `ImagingOperator`s.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .binning import check_detector, to_detector
from .grid import ExposureGrid, PixelGrid
from .interpolation import bilinear_weights, interpolate
from .mass import ray_trace
from .operators import ImagingOperator
from .psf import PSFConvolution


class ForwardModel:
    """Model images of n_exp exposures for batches of B chains.

    Args:
        grid: the exposures' supersampled ray positions.
        source: the pixelated source's grid (source plane).
        lens_light: the pixelated lens light's grid (image plane).
        n_terms: power-law series terms (default: by dtype).
        detector: "integrate" when PSFs are optical PSFs (detector pixels average their sub-pixels), "sample" when
            they are effective PSFs that include the pixel response (ePSFs from stars); see `binning.py`.
        margin: detector pixels traced beyond every edge of the exposures and cut off after the PSF (light spread
            into the cutout from outside); the PSF's half-width, ceil((K // 2) / upsample), counts all of it.

    Shapes: mass parameters [B]; shifts [B, n_exp, 2] (arcsec, added to the exposure's sky positions, x then y);
    source [B, n_s, n_s]; lens light [B, n_l, n_l]; psf [n_exp, K, K] or [B, n_exp, K, K] on the supersampled
    grid; output [B, n_exp, H, W] in the images' units (surface brightness per detector pixel). The ray positions
    and the supersampled images of `image_positions`, `source_positions` and `fine` include the margin:
    [B, n_exp, (H + 2 m) s, (W + 2 m) s].
    """

    def __init__(self, grid: ExposureGrid, source: PixelGrid, lens_light: PixelGrid, n_terms: int | None = None,
                 detector: str = "integrate", margin: int = 0):
        self.grid, self.source, self.lens_light, self.n_terms = grid, source, lens_light, n_terms
        self.detector = check_detector(detector)
        self.margin = int(margin)
        self.rays = grid.padded(self.margin)  # the grid with its margin: where rays are traced

    @property
    def crop(self) -> int:
        """Sub-pixels of margin on every side of the ray grid."""
        return self.margin * self.upsample

    @property
    def n_exp(self) -> int:
        return self.grid.n_exp

    @property
    def upsample(self) -> int:
        return self.grid.upsample

    def _check(self, shifts: Tensor | None, psf: Tensor | None = None) -> None:
        if shifts is not None and (shifts.ndim != 3 or shifts.shape[1:] != (self.n_exp, 2)):
            raise ValueError(f"shifts must be [B, {self.n_exp}, 2], got {tuple(shifts.shape)}")
        if psf is not None and (psf.ndim not in (3, 4) or psf.shape[-3] != self.n_exp):
            raise ValueError(f"psf must be [{self.n_exp}, K, K] or [B, {self.n_exp}, K, K], got {tuple(psf.shape)}")

    def image_positions(self, shifts: Tensor) -> tuple[Tensor, Tensor]:
        """Ray positions theta + delta, each [B, n_exp, (H + 2 m) s, (W + 2 m) s] (m: the margin)."""
        self._check(shifts)
        x = self.rays.x.to(shifts) + shifts[..., 0, None, None]
        y = self.rays.y.to(shifts) + shifts[..., 1, None, None]
        return x, y

    def source_positions(self, mass: Mapping[str, Tensor], shifts: Tensor) -> tuple[Tensor, Tensor]:
        """Source-plane positions beta of every ray, each [B, n_exp, (H + 2 m) s, (W + 2 m) s]."""
        x, y = self.image_positions(shifts)
        p = {k: torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1) for k, v in mass.items()}
        return ray_trace(p, x, y, outer=False, n_terms=self.n_terms)

    def fine(self, mass, shifts, source: Tensor, lens_light: Tensor) -> tuple[Tensor, Tensor]:
        """Lensed source and lens light on the supersampled grids, before the PSF: each
        [B, n_exp, (H + 2 m) s, (W + 2 m) s]."""
        x, y = self.image_positions(shifts)
        bx, by = self.source_positions(mass, shifts)
        src = interpolate(source, self.source, bx, by)
        light = interpolate(lens_light, self.lens_light, x, y)
        return src, light

    def __call__(self, mass, shifts: Tensor, source: Tensor, lens_light: Tensor, psf: Tensor) -> Tensor:
        """Model images [B, n_exp, H, W]."""
        self._check(shifts, psf)
        src, light = self.fine(mass, shifts, source, lens_light)
        return self._to_detector(PSFConvolution(psf, self.rays.fine_shape)(src + light))

    def _to_detector(self, fine: Tensor) -> Tensor:
        """Convolved supersampled images with their margin -> detector pixels of the cutout."""
        c = self.crop
        if c:
            fine = fine[..., c:-c, c:-c]
        return to_detector(fine, self.upsample, self.detector)

    def components(self, mass, shifts: Tensor, source: Tensor, lens_light: Tensor, psf: Tensor) -> dict[str, Tensor]:
        """The model split into its lensed-source and lens-light parts, each [B, n_exp, H, W] (for figures)."""
        self._check(shifts, psf)
        src, light = self.fine(mass, shifts, source, lens_light)
        conv = PSFConvolution(psf, self.rays.fine_shape)
        parts = {"source": src, "lens_light": light}
        return {k: self._to_detector(conv(v)) for k, v in parts.items()}

    def source_operator(self, mass, shifts: Tensor, psf: Tensor) -> ImagingOperator:
        """The linear map source [B, n_s, n_s] -> images for fixed mass, shifts and PSFs."""
        self._check(shifts, psf)
        with torch.no_grad():
            bx, by = self.source_positions(mass, shifts)
            index, weight = bilinear_weights(self.source, bx, by)
        return ImagingOperator(index, weight, self.source.n, psf.detach(), self.upsample, self.detector, self.crop)

    def lens_light_operator(self, shifts: Tensor, psf: Tensor) -> ImagingOperator:
        """The linear map lens light [B, n_l, n_l] -> images for fixed shifts and PSFs."""
        self._check(shifts, psf)
        with torch.no_grad():
            x, y = self.image_positions(shifts)
            index, weight = bilinear_weights(self.lens_light, x, y)
        return ImagingOperator(index, weight, self.lens_light.n, psf.detach(), self.upsample, self.detector,
                               self.crop)
