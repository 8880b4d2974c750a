"""One LightningDataModule for the three kinds of prior training data.

Two dataset shapes plug in:
- map-style datasets of single images [C, H, W] (galaxies, PSFs): batched here, shuffled, and sharded across DDP
  ranks by Lightning's distributed sampler;
- streams that yield whole batches [B, C, H, W] (on-the-fly simulations such as `LensLightStream`): they shard
  themselves across ranks and DataLoader workers, and are placed at the number of batches the trainer has
  consumed, so every epoch and every resumed run (also one killed mid-epoch) continues the same stream.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


class PriorDataModule(pl.LightningDataModule):
    """Training (and optional validation) data of a prior.

    Args:
        train: dataset of network-unit images (map-style) or a batch stream (IterableDataset with `shard` and
            `set_start`).
        val: optional validation dataset of the same kind.
        batch_size: images per batch and per process (map-style datasets; streams batch themselves).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory (faster copies to a GPU).
    """

    def __init__(self, train: Dataset, val: Dataset | None = None, batch_size: int = 16, num_workers: int = 0,
                 pin_memory: bool = True):
        super().__init__()
        self.train_set = train
        self.val_set = val
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def train_dataloader(self) -> DataLoader:
        if isinstance(self.train_set, IterableDataset):
            self._place_stream(self.train_set, resume=True)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        if isinstance(self.val_set, IterableDataset):
            self._place_stream(self.val_set, resume=False)
        return self._loader(self.val_set, shuffle=False)

    def sync_stream(self) -> None:
        """Place the training stream after the batches consumed so far (called at each epoch start)."""
        if isinstance(self.train_set, IterableDataset):
            self._place_stream(self.train_set, resume=True)

    def _place_stream(self, stream: IterableDataset, resume: bool) -> None:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        stream.shard(rank, world)
        consumed = 0
        if resume and trainer is not None:
            # Batches trained on so far, restored from a checkpoint on resume. A checkpoint written at the end
            # of a batch counts that batch as ready (not yet completed), and Lightning resumes after it. Epoch
            # boundaries do not matter: the stream is one sequence, so a run restarted on the last batch of an
            # epoch, where Lightning keeps this iterator for the next epoch, stays on it too.
            consumed = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        stream.set_start(consumed)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = dict(num_workers=self.num_workers,
                       pin_memory=self.pin_memory and torch.cuda.is_available())
        if isinstance(dataset, IterableDataset):
            return DataLoader(dataset, batch_size=None, **workers)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, drop_last=shuffle, **workers)
