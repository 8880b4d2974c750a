"""Endless streams of simulated training batches (`SimulatedStream`) and the checks and draws their settings share.

Every batch is a pure function of (seed, global batch index): it does not depend on the number of ranks or
DataLoader workers, nor on which of them renders it. A stream has no end of its own: `set_start` places it at any
position, so a training run continues it across epochs and restarts (`PriorDataModule`). The simulations
(`LensLightStream`, `SourceStream`, `PSFStream`) only say how one batch is drawn from a generator; those made of
Sersic components share how they render them (`SersicStream`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ..simulate.sersic import render_sersic
from .normalization import PixelNorm

log = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------------------------ draws


def uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    """float64 draws uniform in bounds."""
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def log_uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    """float64 draws log-uniform in bounds (both > 0)."""
    return torch.exp(uniform(generator, shape, (math.log(bounds[0]), math.log(bounds[1]))))


def scale_to_peak(images: Tensor, peak: Tensor) -> Tensor:
    """images [B, H, W] scaled so that each one's brightest pixel equals peak [B]."""
    brightest = images.amax(dim=(1, 2)).clamp_min(torch.finfo(images.dtype).tiny)
    return images * (peak.to(images) / brightest)[:, None, None]


def batch_seed(seed: int, index: int) -> int:
    """64-bit generator seed of global batch `index`, mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


# ----------------------------------------------------------------------------------------- the stream


class SimulatedStream(IterableDataset):
    """An endless stream of simulated batches [batch_size, 1, H, W], numbered j = 0, 1, 2, ...

    Meant for `DataLoader(stream, batch_size=None)` and `PriorDataModule`. Rank r of `world_size` (see `shard`)
    takes the global batches j = k * world_size + r, k being the rank's own counter; one iteration yields
    `len(self) = batches_per_epoch // world_size` batches from the counter `start` (see `set_start`), which a
    trainer sets to the number of batches it has already consumed, so epochs and restarts continue the stream
    instead of replaying it. DataLoader workers share a rank's batches round-robin so the DataLoader yields them in
    order. With persistent workers, `set_start` does not reach the workers' copies: use non-persistent workers.

    Batch j is `self.draw(torch.Generator().manual_seed(batch_seed(seed, j)))`, whatever process renders it.
    Subclasses implement `draw` and set `norm`, the flux <-> network-unit map of their images.
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
        """Place the stream at this rank's batch counter `batch` (>= 0): the next iteration yields the rank's
        batches `batch`, `batch + 1`, ... The skipped batches are not rendered."""
        self.start = check_integer(type(self).__name__, "batch", batch, 0)

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

    def batch(self, index: int) -> Tensor:
        """Global batch `index`: [batch_size, 1, image_size, image_size] float32, network units."""
        generator = torch.Generator().manual_seed(batch_seed(self.seed, index))
        return self.draw(generator)

    def draw(self, generator: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class SersicStream(SimulatedStream):
    """A stream of images made of Sersic components, rendered by `render_sersic` (`scorelens.data.simulate.sersic`,
    which fixes the pixel and angle conventions) with `oversample` samples per pixel side, `center_oversample`
    nested samples in the `center_box` x `center_box` pixels about each component's centre (odd, or 0 for none).
    """

    def __init__(self, *, image_size: int, batch_size: int, batches_per_epoch: int, seed: int, oversample: int,
                 center_oversample: int, center_box: int):
        super().__init__(image_size=image_size, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                         seed=seed)
        who = type(self).__name__
        self.oversample = check_integer(who, "oversample", oversample, 1)
        self.center_oversample = check_integer(who, "center_oversample", center_oversample, 2)
        self.center_box = check_integer(who, "center_box", center_box, 0)
        if self.center_box % 2 == 0 and self.center_box != 0:
            raise ValueError(f"{who}: center_box must be odd or 0, got {center_box!r}")

    def sersic_images(self, params: dict[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Pixel-averaged images [B, image_size, image_size] of the components `params` [B, K] (where `mask`)."""
        return render_sersic(params, self.image_size, mask, oversample=self.oversample,
                             center_oversample=self.center_oversample, center_box=self.center_box)
