"""On-the-fly simulated source galaxies (a Sersic disc plus Gaussian star-forming clumps) for a demo source prior.

Real source priors learn from galaxy images (PROBES, `scorelens.data.training.galaxies`); this stream lets anyone train a small
source prior without downloading anything. Its galaxies resemble the sources of the mock lenses
(`scorelens.data.simulate.scene.draw_source`: a Sersic profile plus a few Gaussian clumps), drawn over wider ranges.

Lengths and positions are in arcsec on a grid of `image_size` pixels of `pixel_scale` arcsec each, centred on the
grid's centre (the pixel convention of `scorelens.data.simulate.sersic`: x grows with the column, y with the row). Every batch is
a pure function of (seed, global batch index), so it does not depend on the number of ranks or DataLoader workers.
`SimulatedStream` holds that bookkeeping (shard / set_start / len / iteration, as `LensLightStream`'s) for every
simulated stream of whole batches, `PSFStream` included.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from .lens_light import batch_seed
from .normalization import PixelNorm
from ..simulate.sersic import render_sersic, sersic_total_flux

log = logging.getLogger(__name__)

MAX_CLUMPS = 5
# Sersic indices over which scorelens.data.simulate.sersic solves b_n to high accuracy.
SERSIC_INDEX_LIMITS = (0.2, 10.0)


# ------------------------------------------------------------------------------------------- validation


def check_integer(who: str, name: str, value, minimum: int) -> int:
    """`value` as an int >= minimum (ValueError naming `who` and `name` otherwise; bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{who}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(who: str, name: str, value, minimum: float | None = None) -> float:
    """`value` as a finite float >= minimum."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"{who}: {name} must be finite and >= {minimum}, got {value!r}")
    return number


def check_range(who: str, name: str, value, low: float | None = None, high: float | None = None,
                positive: bool = False) -> tuple[float, float]:
    """A (low, high) pair from a tuple, list or config sequence, ordered and within [low, high]."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{who}: {name} must be a (low, high) pair, got {value!r}")
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {name} must hold two numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in pair) or pair[0] > pair[1]:
        raise ValueError(f"{who}: {name} must be finite with low <= high, got {value!r}")
    if positive and pair[0] <= 0:
        raise ValueError(f"{who}: {name} must be positive, got {value!r}")
    if (low is not None and pair[0] < low) or (high is not None and pair[1] > high):
        raise ValueError(f"{who}: {name} must lie within [{low}, {high}], got {value!r}")
    return pair


def uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    """float64 draws uniform in bounds."""
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def log_uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    """float64 draws log-uniform in bounds (both > 0)."""
    return torch.exp(uniform(generator, shape, (math.log(bounds[0]), math.log(bounds[1]))))


# ----------------------------------------------------------------------------------------- the stream


class SimulatedStream(IterableDataset):
    """An endless stream of simulated batches [batch_size, 1, H, W], numbered j = 0, 1, 2, ...

    Meant for `DataLoader(stream, batch_size=None)` and `PriorDataModule`. Rank r of `world_size` (see `shard`)
    takes the global batches j = k * world_size + r, k being the rank's own counter; one iteration yields
    `len(self) = batches_per_epoch // world_size` batches from the counter `start` (see `set_start`), and
    DataLoader workers share them round-robin so the DataLoader yields them in order. Batch j is
    `self.draw(torch.Generator().manual_seed(batch_seed(seed, j)))`, whatever process renders it. Subclasses
    implement `draw` and set `norm`, the flux <-> network-unit map of their images.
    """

    norm: PixelNorm = PixelNorm()

    def __init__(self, *, image_size: int, batch_size: int, batches_per_epoch: int, seed: int):
        super().__init__()
        who = type(self).__name__
        self.image_size = check_integer(who, "image_size", image_size, 1)
        self.batch_size = check_integer(who, "batch_size", batch_size, 1)
        self.batches_per_epoch = check_integer(who, "batches_per_epoch", batches_per_epoch, 1)
        self.seed = check_integer(who, "seed", seed, 0)  # SeedSequence takes non-negative entropy
        self.rank, self.world_size = 0, 1
        self.start = 0

    def shard(self, rank: int, world_size: int) -> None:
        """Make this copy of the stream rank `rank` of `world_size` (call before the DataLoader starts)."""
        who = type(self).__name__
        world_size = check_integer(who, "world_size", world_size, 1)
        rank = check_integer(who, "rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"{who}: rank must be < world_size = {world_size}, got {rank}")
        if world_size > self.batches_per_epoch:
            raise ValueError(f"{who}: world_size {world_size} exceeds batches_per_epoch "
                             f"{self.batches_per_epoch}, leaving ranks without batches")
        self.rank, self.world_size = rank, world_size
        log.debug("%s: rank %d of %d, %d batches per epoch", who, rank, world_size, len(self))

    def set_start(self, batch: int) -> None:
        """Place the stream at this rank's batch counter `batch` (>= 0); skipped batches are not rendered."""
        self.start = check_integer(type(self).__name__, "batch", batch, 0)

    def __len__(self) -> int:
        """Batches of this rank in one iteration (an epoch)."""
        return self.batches_per_epoch // self.world_size

    def indices(self) -> range:
        """Global batch indices of the next iteration of this rank, in order."""
        first = self.start * self.world_size + self.rank
        return range(first, first + len(self) * self.world_size, self.world_size)

    def __iter__(self) -> Iterator[Tensor]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for index in self.indices()[worker::workers]:
            yield self.batch(index)

    def batch(self, index: int) -> Tensor:
        """Global batch `index`: [batch_size, 1, image_size, image_size] float32, network units."""
        generator = torch.Generator().manual_seed(batch_seed(self.seed, index))
        return self.draw(generator)

    def draw(self, generator: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SourceStream(SimulatedStream):
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
                         seed=seed)
        who = type(self).__name__
        self.pixel_scale = check_number(who, "pixel_scale", pixel_scale, 0.0)
        if self.pixel_scale == 0:
            raise ValueError(f"{who}: pixel_scale must be positive, got {pixel_scale!r}")
        self.sersic_index = check_range(who, "sersic_index", sersic_index, *SERSIC_INDEX_LIMITS)
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
        self.oversample = check_integer(who, "oversample", oversample, 1)
        self.center_oversample = check_integer(who, "center_oversample", center_oversample, 2)
        self.center_box = check_integer(who, "center_box", center_box, 0)
        if self.center_box % 2 == 0 and self.center_box != 0:
            raise ValueError(f"{who}: center_box must be odd or 0, got {center_box!r}")
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
        images = render_sersic(sersic, self.image_size, oversample=self.oversample,
                               center_oversample=self.center_oversample, center_box=self.center_box)
        images = images + render_gaussians(clumps, self.image_size)
        if peak is not None:
            brightest = images.amax(dim=(1, 2)).clamp_min(torch.finfo(images.dtype).tiny)
            images = images * (peak.to(images) / brightest)[:, None, None]
        return images.float().unsqueeze(1)


def render_gaussians(clumps: dict[str, Tensor], size: int) -> Tensor:
    """Circular Gaussians integrated exactly over each pixel, summed per image: [B, size, size].

    Args:
        clumps: tensors [B, K]: `flux` (total), `sigma` (px), `x0`, `y0` (px from the image centre, the pixel
            convention of `scorelens.data.simulate.sersic`), and optional bool `mask` (absent clumps contribute nothing).
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
