"""On-the-fly simulated source galaxies (a Sersic disc plus Gaussian star-forming clumps) for a demo source prior.

Real source priors learn from galaxy images (PROBES, `galaxies.GalaxyDataset`); this stream lets anyone train a
small source prior without downloading anything. Its galaxies resemble the sources of the mock lenses
(`scorelens.data.simulate.scene.draw_source`: a Sersic profile plus a few Gaussian clumps), drawn over wider ranges.

Lengths and positions are in arcsec on a grid of `image_size` pixels of `pixel_scale` arcsec each, centred on the
grid's centre (the pixel convention of `scorelens.data.simulate.sersic`: x grows with the column, y with the row).
The stream's bookkeeping (seeds per batch, sharding, its position) is `SimulatedStream`'s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..simulate.sersic import INDEX_LIMITS, sersic_total_flux
from .normalization import PixelNorm
from .stream import SersicStream, check_integer, check_number, check_range, log_uniform, scale_to_peak, uniform

MAX_CLUMPS = 5


class SourceStream(SersicStream):
    """Simulated source galaxies: [batch_size, 1, image_size, image_size] float32 per batch, network units.

    Each galaxy is one Sersic component plus k Gaussian clumps, k uniform in `n_clumps` (inclusive, <= 5):
    - Sersic index uniform in `sersic_index`, effective radius log-uniform in `r_eff` (arcsec), axis ratio
      uniform in `axis_ratio`, major-axis angle uniform in `angle` (radians from +x towards +y);
    - galaxy centre uniform in `center` (arcsec from the grid centre), independently in x and y;
    - clump j: total flux log-uniform in `clump_flux` (a fraction of the Sersic component's total flux),
      Gaussian sigma log-uniform in `clump_sigma` (arcsec), and an offset from the galaxy centre that is normal
      with standard deviations `clump_spread` * r_eff / sqrt(q) along the major axis and
      `clump_spread` * r_eff * sqrt(q) along the minor one (the shape of the Sersic isophotes), so knots lie in
      the disc.
    Pixels are pixel-averaged intensities (Sersic: `render_sersic` with `oversample`, `center_oversample`,
    `center_box`; clumps: exact integrals of the Gaussians over each pixel).

    Normalisation: each image is scaled so that its brightest pixel equals a value drawn log-uniform in `peak`;
    those are the network units (`norm` is the identity PixelNorm, saved in the prior), so a source of flux
    image F enters the prior as F / s with s the flux per network unit chosen by the user of the prior.

    Ranges are (low, high) pairs. Invalid arguments raise ValueError.
    """

    def __init__(self, *, image_size: int = 64, pixel_scale: float = 0.04, batch_size: int = 16,
                 batches_per_epoch: int = 1000, seed: int = 0, sersic_index=(0.5, 4.0), r_eff=(0.08, 0.4),
                 axis_ratio=(0.3, 1.0), angle=(0.0, math.pi), center=(-0.4, 0.4), n_clumps=(0, 5),
                 clump_flux=(0.02, 0.25), clump_sigma=(0.02, 0.08), clump_spread: float = 0.8,
                 peak=(1.0, 10.0), oversample: int = 3, center_oversample: int = 15, center_box: int = 5):
        super().__init__(image_size=image_size, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                         seed=seed, oversample=oversample, center_oversample=center_oversample, center_box=center_box)
        who = type(self).__name__
        self.pixel_scale = check_number(who, "pixel_scale", pixel_scale, 0.0)
        if self.pixel_scale == 0:
            raise ValueError(f"{who}: pixel_scale must be positive, got {pixel_scale!r}")
        self.sersic_index = check_range(who, "sersic_index", sersic_index, *INDEX_LIMITS)
        self.r_eff = check_range(who, "r_eff", r_eff, positive=True)
        self.axis_ratio = check_range(who, "axis_ratio", axis_ratio, high=1.0, positive=True)
        self.angle = check_range(who, "angle", angle)
        half = self.image_size * self.pixel_scale / 2
        self.center = check_range(who, "center", center, -half, half)  # the galaxy centre lies on the grid
        counts = check_range(who, "n_clumps", n_clumps, 0, MAX_CLUMPS)
        if not all(float(c).is_integer() for c in counts):
            raise ValueError(f"{who}: n_clumps must hold integers, got {n_clumps!r}")
        self.n_clumps = (int(counts[0]), int(counts[1]))
        self.clump_flux = check_range(who, "clump_flux", clump_flux, positive=True)
        self.clump_sigma = check_range(who, "clump_sigma", clump_sigma, positive=True)
        self.clump_spread = check_number(who, "clump_spread", clump_spread, 0.0)
        self.peak = check_range(who, "peak", peak, positive=True)
        self.norm = PixelNorm()

    def draw(self, generator: torch.Generator) -> Tensor:
        return self.render(*self.sample_params(generator))

    def sample_params(self, generator: torch.Generator, batch_size: int | None = None
                      ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """Draw `batch_size` galaxies (default: the stream's batch size), lengths in pixels.

        Returns:
            sersic: float64 [B, 1] tensors under the keys of `render_sersic` (amplitude I_e for unit total flux,
                r_eff px, n, q, phi rad, x0, y0 px from the grid centre).
            clumps: float64 [B, 5] tensors flux (relative to the Sersic total flux of 1), sigma, x0, y0 (px),
                and bool `mask` [B, 5] (the first k of each galaxy are present).
            peak: float64 [B], the brightest-pixel value of each image.
        """
        count = self.batch_size if batch_size is None else check_integer(type(self).__name__, "batch_size",
                                                                            batch_size, 1)
        scale = self.pixel_scale
        # a fixed sequence of draws of fixed shapes, whatever the clump counts turn out to be
        n = uniform(generator, (count, 1), self.sersic_index)
        r_eff = log_uniform(generator, (count, 1), self.r_eff) / scale
        q = uniform(generator, (count, 1), self.axis_ratio)
        phi = uniform(generator, (count, 1), self.angle)
        centre = uniform(generator, (count, 2), self.center) / scale
        k = torch.randint(self.n_clumps[0], self.n_clumps[1] + 1, (count,), generator=generator)
        flux = log_uniform(generator, (count, MAX_CLUMPS), self.clump_flux)
        sigma = log_uniform(generator, (count, MAX_CLUMPS), self.clump_sigma) / scale
        along, across = torch.randn((2, count, MAX_CLUMPS), generator=generator, dtype=torch.float64)
        peak = log_uniform(generator, (count,), self.peak)

        along = along * self.clump_spread * r_eff / q.sqrt()
        across = across * self.clump_spread * r_eff * q.sqrt()
        cos, sin = torch.cos(phi), torch.sin(phi)
        sersic = {"amplitude": 1.0 / sersic_total_flux(torch.ones_like(n), r_eff, n), "r_eff": r_eff, "n": n,
                  "q": q, "phi": phi, "x0": centre[:, :1], "y0": centre[:, 1:]}
        clumps = {"flux": flux, "sigma": sigma, "x0": centre[:, :1] + cos * along - sin * across,
                  "y0": centre[:, 1:] + sin * along + cos * across,
                  "mask": torch.arange(MAX_CLUMPS) < k[:, None]}
        return sersic, clumps, peak

    @torch.no_grad()
    def render(self, sersic: dict[str, Tensor], clumps: dict[str, Tensor], peak: Tensor | None = None) -> Tensor:
        """Images [B, 1, image_size, image_size] float32 of the galaxies drawn by `sample_params`.

        With `peak` [B], each image is scaled so that its brightest pixel equals it; otherwise pixels are
        pixel-averaged intensities per px^2 for a Sersic component of unit total flux.
        """
        images = self.sersic_images(sersic) + render_gaussians(clumps, self.image_size)
        if peak is not None:
            images = scale_to_peak(images, peak)
        return images.float().unsqueeze(1)


def render_gaussians(clumps: dict[str, Tensor], size: int) -> Tensor:
    """Circular Gaussians integrated exactly over each pixel, summed per image: [B, size, size].

    Args:
        clumps: tensors [B, K]: `flux` (total), `sigma` (px), `x0`, `y0` (px from the image centre, the pixel
            convention of `scorelens.data.simulate.sersic`), and optional bool `mask` (absent clumps contribute
            nothing).
        size: image side (pixels).
    """
    flux = clumps["flux"]
    if "mask" in clumps:
        flux = flux * clumps["mask"].to(flux.dtype)
    edges = torch.arange(size + 1, dtype=flux.dtype, device=flux.device) - size / 2  # pixel edges, px
    root2 = math.sqrt(2.0)

    def weights(centre: Tensor) -> Tensor:  # [B, K, size]: the fraction of a 1-D Gaussian in each pixel
        cdf = torch.special.erf((edges - centre[..., None]) / (root2 * clumps["sigma"][..., None]))
        return 0.5 * (cdf[..., 1:] - cdf[..., :-1])

    return torch.einsum("bk,bky,bkx->byx", flux, weights(clumps["y0"]), weights(clumps["x0"]))
