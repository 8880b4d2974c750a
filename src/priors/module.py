"""The LightningModule that trains a score prior by denoising score matching under a VE SDE."""

from __future__ import annotations

import copy

import numpy as np
import pytorch_lightning as pl
import torch

from ..data.training.normalization import PixelNorm
from ..errors import InputError
from .losses import dsm_loss
from .ncsnpp import NCSNpp
from .prior import KINDS, ScorePrior
from .sde import VESDE


class ScorePriorModule(pl.LightningModule):
    """NCSN++ trained by denoising score matching, with an exponential moving average (EMA) of its weights.

    The raw network `net` is optimised; `ema_net` holds the EMA weights used for validation, sample grids and the
    exported inference prior. Both, the optimiser and the schedule live in the Lightning checkpoint, so a
    resumed run continues exactly. All arguments are plain values (they are stored in checkpoints).

    Args:
        kind: "source", "lens_light" or "psf".
        net: NCSNpp constructor arguments.
        sde: {"sigma_min", "sigma_max"} of the VE SDE, network pixel units.
        optim: {"lr", "betas", "weight_decay", "eps", "warmup_steps"}: AdamW with linear warm-up to lr.
        norm: {"scale", "offset"}: flux <-> network units of the training images.
        ema_decay: EMA decay per optimiser step.
        t_eps: smallest training time.
        seed: seed of the per-step noise (each step's noise depends on (seed, step, rank) only).
    """

    def __init__(self, kind: str, net: dict, sde: dict, optim: dict, norm: dict | None = None,
                 ema_decay: float = 0.999, t_eps: float = 1e-5, seed: int = 0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"prior kind must be one of {KINDS}, got {kind!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.save_hyperparameters({"kind": kind, "net": dict(net), "sde": dict(sde), "optim": dict(optim),
                                   "norm": dict(norm or {}), "ema_decay": ema_decay, "t_eps": t_eps,
                                   "seed": seed})
        self.net = NCSNpp(**net)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.sde = VESDE(**sde)
        self.norm = PixelNorm(**(norm or {}))

    # ---- training -------------------------------------------------------------------------------------
    def _step_generator(self, stream: int) -> torch.Generator:
        """A generator whose state depends only on (seed, stream, step, rank): resumed runs draw the same noise."""
        seed = np.random.SeedSequence([self.hparams.seed, stream, self.global_step, self.global_rank])
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        return gen

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # a NaN or inf image would spread into every weight at its step's update, and from there into the EMA,
        # every later checkpoint and the exported prior: stop before the update. Checked here, on the host before
        # the batch moves to the device, so that the training step needs no device-to-host sync for it
        x0 = _images(batch)
        finite = torch.isfinite(x0.flatten(1)).all(1)
        if not finite.all():
            bad = torch.nonzero(~finite).flatten().tolist()
            raise InputError(f"a batch at global step {self.global_step}: image(s) {bad[:10]} of its {x0.shape[0]} "
                             "hold NaN or inf pixels; training stopped before this step's update, no checkpoint or "
                             "prior written from it: clean or remove those images from the training set")
        return batch

    def training_step(self, batch, batch_idx):
        x0 = _images(batch)
        loss = dsm_loss(self.net, self.sde, x0, self._step_generator(0), self.hparams.t_eps)
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self.log("train/grad_norm", norm)
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # A warm-up of the decay keeps early EMA weights from being dominated by the random initialisation.
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1.0 + step) / (10.0 + step))
        ema = list(self.ema_net.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in self.net.parameters()], 1.0 - decay)
        for b_ema, b in zip(self.ema_net.buffers(), self.net.buffers(), strict=True):
            b_ema.copy_(b)

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "sync_stream"):
            datamodule.sync_stream()

    def train(self, mode: bool = True):
        super().train(mode)
        self.ema_net.eval()  # the EMA copy is never trained: keep it in evaluation mode
        return self

    # ---- validation -----------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        x0 = _images(batch)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(1_000_003 + batch_idx)  # the same noise at every validation: losses are comparable
        loss = dsm_loss(self.ema_net, self.sde, x0, gen, self.hparams.t_eps)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    # ---- optimiser ------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = self.hparams.optim
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=opt["lr"], betas=tuple(opt.get("betas", (0.9, 0.999))),
                                      eps=opt.get("eps", 1e-8), weight_decay=opt.get("weight_decay", 0.0))
        warmup = max(int(opt.get("warmup_steps", 0)), 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Warmup(warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- inference ------------------------------------------------------------------------------------
    def prior(self) -> ScorePrior:
        """The EMA network as an inference-ready prior (shares the EMA weights, no copy)."""
        return ScorePrior(self.ema_net, self.sde, self.hparams.kind, self.norm)


class _Warmup:
    """Learning-rate factor: linear from 1/warmup to 1 over `warmup` steps, then 1."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup == 0 else min(1.0, (step + 1) / self.warmup)


def _images(batch) -> torch.Tensor:
    """Images [B, C, H, W] from a batch (a tensor, or a (images, ...) tuple, or a dict with "image")."""
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch
