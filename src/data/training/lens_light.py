"""On-the-fly simulations of lens-galaxy light (sums of 1 to 5 Sersic components) for the lens-light prior.

Lengths and positions in the configuration are fractions of the image side, so one configuration serves every
resolution. The stream's bookkeeping (seeds per batch, sharding over ranks and DataLoader workers, its position)
is `SimulatedStream`'s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..simulate.sersic import INDEX_LIMITS, sersic_total_flux
from .stream import SersicStream, check_integer, check_number, check_range, log_uniform, scale_to_peak, uniform

MAX_COMPONENTS = 5


class LensLightStream(SersicStream):
    """Stream of simulated lens-light batches, [batch_size, 1, image_size, image_size] float32 each.

    Each image sums a number of components drawn uniformly in `n_components` (inclusive). Per component:
    - Sersic index uniform in `sersic_index`;
    - effective radius log-uniform in `r_eff` (fraction of the image side);
    - axis ratio uniform in `axis_ratio`, major-axis angle uniform in `angle` (radians);
    - centre = galaxy centre (uniform in `center`, fraction of the side from the image centre, in x and y)
      + Gaussian jitter of standard deviation `component_offset` (fraction of the side);
    - total flux log-uniform in `flux_fraction`.
    Each image is then scaled so that its brightest pixel equals a value log-uniform in `peak`. Pixels are
    pixel-averaged intensities rendered by `render_sersic` (`scorelens.data.simulate.sersic`, which fixes the
    pixel and angle conventions) with `oversample`, `center_oversample` and `center_box`.

    Ranges are (low, high) pairs (tuples, lists or config sequences). Invalid arguments raise ValueError.
    """

    def __init__(self, *, image_size: int = 256, batch_size: int = 16, batches_per_epoch: int = 1000,
                 seed: int = 0, n_components=(1, 5), sersic_index=(0.5, 6.0), r_eff=(0.01, 0.3),
                 axis_ratio=(0.3, 1.0), angle=(0.0, math.pi), center=(-0.02, 0.02),
                 component_offset: float = 0.005, flux_fraction=(0.05, 1.0), peak=(1.0, 10.0),
                 oversample: int = 3, center_oversample: int = 15, center_box: int = 5):
        super().__init__(image_size=image_size, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                         seed=seed, oversample=oversample, center_oversample=center_oversample, center_box=center_box)
        who = type(self).__name__
        counts = check_range(who, "n_components", n_components, 1, MAX_COMPONENTS)
        if not all(float(c).is_integer() for c in counts):
            raise ValueError(f"{who}: n_components must hold integers, got {n_components!r}")
        self.n_components = (int(counts[0]), int(counts[1]))
        self.sersic_index = check_range(who, "sersic_index", sersic_index, *INDEX_LIMITS)
        self.r_eff = check_range(who, "r_eff", r_eff, positive=True)
        self.axis_ratio = check_range(who, "axis_ratio", axis_ratio, high=1.0, positive=True)
        self.angle = check_range(who, "angle", angle)
        self.center = check_range(who, "center", center, -0.5, 0.5)  # the galaxy centre lies in the image
        self.component_offset = check_number(who, "component_offset", component_offset, 0.0)
        self.flux_fraction = check_range(who, "flux_fraction", flux_fraction, positive=True)
        self.peak = check_range(who, "peak", peak, positive=True)

    def draw(self, generator: torch.Generator) -> Tensor:
        return self.render(*self.sample_params(generator))

    def sample_params(self, generator: torch.Generator, batch_size: int | None = None
                      ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Draw the components of `batch_size` images (default: the stream's batch size).

        Returns:
            params: float32 tensors [B, K] (K = n_components[1]) under the keys of `render_sersic`: amplitude
                (I_e), r_eff (px), n, q, phi (rad), x0, y0 (px from the image centre).
            mask: bool [B, K], the active components (the first 1..K of each image).
            peak: float32 [B], the brightest-pixel value of each image.
        """
        size = self.image_size
        count = self.batch_size if batch_size is None else check_integer(type(self).__name__, "batch_size",
                                                                            batch_size, 1)
        low, high = self.n_components
        shape = (count, high)
        # a fixed sequence of draws of fixed shapes, whatever the component counts turn out to be
        components = torch.randint(low, high + 1, (count,), generator=generator)
        n = uniform(generator, shape, self.sersic_index)
        r_eff = log_uniform(generator, shape, self.r_eff) * size
        q = uniform(generator, shape, self.axis_ratio)
        phi = uniform(generator, shape, self.angle)
        galaxy = uniform(generator, (count, 1, 2), self.center) * size
        centre = galaxy + self.component_offset * size * torch.randn((*shape, 2), generator=generator,
                                                                     dtype=torch.float64)
        flux = log_uniform(generator, shape, self.flux_fraction)
        peak = log_uniform(generator, (count,), self.peak)
        params = {
            "amplitude": flux / sersic_total_flux(torch.ones_like(n), r_eff, n),
            "r_eff": r_eff, "n": n, "q": q, "phi": phi, "x0": centre[..., 0], "y0": centre[..., 1],
        }
        mask = torch.arange(shape[1]) < components[:, None]
        return {k: v.float() for k, v in params.items()}, mask, peak.float()

    @torch.no_grad()
    def render(self, params: dict[str, Tensor], mask: Tensor, peak: Tensor | None = None) -> Tensor:
        """Images [B, 1, image_size, image_size] of the components `params` [B, K] where `mask` [B, K].

        With `peak` [B], each image is scaled so that its brightest pixel equals it; otherwise pixels are the
        pixel-averaged intensity of the components.
        """
        images = self.sersic_images(params, mask)
        if peak is not None:
            images = scale_to_peak(images, peak)
        return images.unsqueeze(1)
