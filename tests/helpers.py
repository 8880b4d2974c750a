"""Test-only callbacks, loaded into real `train.py` runs through `+callbacks.NAME._target_=tests.helpers...`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl
import torch


def tensor_digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BatchDigest(pl.Callback):
    """Records a digest of every training batch and of the final weights into `<dirpath>/rank<R>.json`."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.batches: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(tensor_digest([batch]))

    def on_train_end(self, trainer, pl_module):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "batches": self.batches,
            "net": tensor_digest(pl_module.net.state_dict().values()),
            "ema": tensor_digest(pl_module.ema_net.state_dict().values()),
            "net_abs_sum": float(sum(p.double().abs().sum() for p in pl_module.net.parameters())),
        }
        (self.dirpath / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def load_ckpt_state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
