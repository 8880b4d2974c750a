"""On-the-fly simulations of lens-galaxy light (sums of 1 to 5 Sersic components) for the lens-light prior.

Lengths and positions in the configuration are fractions of the image side, so one configuration serves every
resolution. Every batch is a pure function of (seed, global batch index): it does not depend on the number of
DataLoader workers, nor on which of them renders it. The stream has no end of its own: `set_start` places it
at any position, so a training run continues it across epochs and restarts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ..simulate.sersic import render_sersic, sersic_total_flux

log = logging.getLogger(__name__)

MAX_COMPONENTS = 5
# Range of Sersic indices over which b_n is solved to high accuracy.
SERSIC_INDEX_LIMITS = (0.2, 10.0)


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"LensLightStream: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value, minimum: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"LensLightStream: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"LensLightStream: {name} must be finite and >= {minimum}, got {value!r}")
    return number


def _range(name: str, value, low: float | None = None, high: float | None = None,
           positive: bool = False) -> tuple[float, float]:
    """A (low, high) pair from a tuple, list or config sequence, checked to be ordered and within bounds."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"LensLightStream: {name} must be a (low, high) pair, got {value!r}")
    try:
        pair = (float(value[0]), float(value[1]))
    except (TypeError, ValueError):
        raise ValueError(f"LensLightStream: {name} must hold two numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in pair) or pair[0] > pair[1]:
        raise ValueError(f"LensLightStream: {name} must be finite with low <= high, got {value!r}")
    if positive and pair[0] <= 0:
        raise ValueError(f"LensLightStream: {name} must be positive, got {value!r}")
    if (low is not None and pair[0] < low) or (high is not None and pair[1] > high):
        raise ValueError(f"LensLightStream: {name} must lie within [{low}, {high}], got {value!r}")
    return pair


def _uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _log_uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    return torch.exp(_uniform(generator, shape, (math.log(bounds[0]), math.log(bounds[1]))))


def batch_seed(seed: int, index: int) -> int:
    """64-bit generator seed of global batch `index`, mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


class LensLightStream(IterableDataset):
    """Stream of simulated lens-light batches, [batch_size, 1, image_size, image_size] float32 each.

    Meant for `DataLoader(stream, batch_size=None)`. Global batches are numbered j = 0, 1, 2, ... without end;
    rank r of `world_size` (see `shard`) takes the batches j = k * world_size + r, k = 0, 1, 2, ... being the
    rank's own batch counter. One iteration yields `len(self) = batches_per_epoch // world_size` batches from
    the rank's counter `start` (see `set_start`), which a trainer sets to the number of batches it has already
    consumed, so epochs and restarts continue the stream instead of replaying it. DataLoader workers share a
    rank's batches round-robin so that the DataLoader yields them in order. With persistent workers,
    `set_start` does not reach the workers' copies: use non-persistent workers.

    Each image sums a number of components drawn uniformly in `n_components` (inclusive). Per component:
    - Sersic index uniform in `sersic_index`;
    - effective radius log-uniform in `r_eff` (fraction of the image side);
    - axis ratio uniform in `axis_ratio`, major-axis angle uniform in `angle` (radians);
    - centre = galaxy centre (uniform in `center`, fraction of the side from the image centre, in x and y)
      + Gaussian jitter of standard deviation `component_offset` (fraction of the side);
    - total flux log-uniform in `flux_fraction`.
    Each image is then scaled so that its brightest pixel equals a value log-uniform in `peak`. Pixels are
    pixel-averaged intensities rendered by `scorelens.data.simulate.sersic.render_sersic` (which fixes the pixel and angle
    conventions) with `oversample`, `center_oversample` and `center_box`.

    Ranges are (low, high) pairs (tuples, lists or config sequences). Invalid arguments raise ValueError.
    """

    def __init__(self, *, image_size: int = 256, batch_size: int = 16, batches_per_epoch: int = 1000,
                 seed: int = 0, n_components=(1, 5), sersic_index=(0.5, 6.0), r_eff=(0.01, 0.3),
                 axis_ratio=(0.3, 1.0), angle=(0.0, math.pi), center=(-0.02, 0.02),
                 component_offset: float = 0.005, flux_fraction=(0.05, 1.0), peak=(1.0, 10.0),
                 oversample: int = 3, center_oversample: int = 15, center_box: int = 5):
        super().__init__()
        self.image_size = _integer("image_size", image_size, 1)
        self.batch_size = _integer("batch_size", batch_size, 1)
        self.batches_per_epoch = _integer("batches_per_epoch", batches_per_epoch, 1)
        self.seed = _integer("seed", seed, 0)  # SeedSequence takes non-negative entropy
        counts = _range("n_components", n_components, 1, MAX_COMPONENTS)
        if not all(float(c).is_integer() for c in counts):
            raise ValueError(f"LensLightStream: n_components must hold integers, got {n_components!r}")
        self.n_components = (int(counts[0]), int(counts[1]))
        self.sersic_index = _range("sersic_index", sersic_index, *SERSIC_INDEX_LIMITS)
        self.r_eff = _range("r_eff", r_eff, positive=True)
        self.axis_ratio = _range("axis_ratio", axis_ratio, high=1.0, positive=True)
        self.angle = _range("angle", angle)
        self.center = _range("center", center, -0.5, 0.5)  # the galaxy centre lies in the image
        self.component_offset = _number("component_offset", component_offset, 0.0)
        self.flux_fraction = _range("flux_fraction", flux_fraction, positive=True)
        self.peak = _range("peak", peak, positive=True)
        self.oversample = _integer("oversample", oversample, 1)
        self.center_oversample = _integer("center_oversample", center_oversample, 2)
        self.center_box = _integer("center_box", center_box, 0)
        if self.center_box % 2 == 0 and self.center_box != 0:
            raise ValueError(f"LensLightStream: center_box must be odd or 0, got {center_box!r}")
        self.rank, self.world_size = 0, 1
        self.start = 0

    # ----------------------------------------------------------------------------------------- position

    def shard(self, rank: int, world_size: int) -> None:
        """Make this copy of the stream rank `rank` of `world_size` (call before the DataLoader starts)."""
        world_size = _integer("world_size", world_size, 1)
        rank = _integer("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"LensLightStream: rank must be < world_size = {world_size}, got {rank}")
        if world_size > self.batches_per_epoch:
            raise ValueError(f"LensLightStream: world_size {world_size} exceeds batches_per_epoch "
                             f"{self.batches_per_epoch}, leaving ranks without batches")
        self.rank, self.world_size = rank, world_size
        log.debug("lens-light stream: rank %d of %d, %d batches per epoch", rank, world_size, len(self))

    def set_start(self, batch: int) -> None:
        """Place the stream at this rank's batch counter `batch` (>= 0): the next iteration yields the rank's
        batches `batch`, `batch + 1`, ... The skipped batches are not rendered."""
        self.start = _integer("batch", batch, 0)

    def __len__(self) -> int:
        """Batches of this rank in one iteration (an epoch)."""
        return self.batches_per_epoch // self.world_size

    def indices(self) -> range:
        """Global batch indices of the next iteration of this rank, in order."""
        first = self.start * self.world_size + self.rank
        return range(first, first + len(self) * self.world_size, self.world_size)

    def __iter__(self) -> Iterator[Tensor]:
        # torch.distributed is not initialised in DataLoader workers: the rank comes from `shard`
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # The iteration's i-th batch goes to worker i % workers: the DataLoader takes one batch from each
        # worker in turn, starting with worker 0, so it yields the batches in order.
        for index in self.indices()[worker::workers]:
            yield self.batch(index)

    # ---------------------------------------------------------------------------------------- content

    def batch(self, index: int) -> Tensor:
        """Global batch `index`: [batch_size, 1, image_size, image_size] float32."""
        generator = torch.Generator().manual_seed(batch_seed(self.seed, index))
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
        count = self.batch_size if batch_size is None else _integer("batch_size", batch_size, 1)
        low, high = self.n_components
        shape = (count, high)
        # a fixed sequence of draws of fixed shapes, whatever the component counts turn out to be
        components = torch.randint(low, high + 1, (count,), generator=generator)
        n = _uniform(generator, shape, self.sersic_index)
        r_eff = _log_uniform(generator, shape, self.r_eff) * size
        q = _uniform(generator, shape, self.axis_ratio)
        phi = _uniform(generator, shape, self.angle)
        galaxy = _uniform(generator, (count, 1, 2), self.center) * size
        centre = galaxy + self.component_offset * size * torch.randn((*shape, 2), generator=generator,
                                                                     dtype=torch.float64)
        flux = _log_uniform(generator, shape, self.flux_fraction)
        peak = _log_uniform(generator, (count,), self.peak)
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
        images = render_sersic(params, self.image_size, mask, oversample=self.oversample,
                               center_oversample=self.center_oversample, center_box=self.center_box)
        if peak is not None:
            brightest = images.amax(dim=(1, 2)).clamp_min(torch.finfo(images.dtype).tiny)
            images = images * (peak.to(images) / brightest)[:, None, None]
        return images.unsqueeze(1)
