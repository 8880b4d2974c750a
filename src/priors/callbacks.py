"""Training callbacks: grids of prior samples for the eye, and the exported inference prior."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torchvision.utils import make_grid, save_image

from .artifacts import log_prior_artifact
from .checkpoint import save_prior

log = logging.getLogger(__name__)


class SampleGrid(pl.Callback):
    """Every `every_n_epochs` epochs, draw unconditional samples from the EMA prior and show them as a grid.

    The grid goes to `<dirpath>/samples/epoch=NNNN.png` and, when a W&B logger is active, to W&B as the image
    `samples`. Pixels are shown with an asinh stretch per image, because lens light and PSFs span decades.

    Args:
        dirpath: run directory.
        every_n_epochs: interval in epochs (0 disables).
        n_samples: images in the grid.
        steps: reverse-SDE steps per sample.
        corrector_steps, snr: Langevin corrector settings.
        seed: the same seed every time, so grids of successive epochs are comparable.
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 1, n_samples: int = 16, steps: int = 500,
                 corrector_steps: int = 0, snr: float = 0.16, seed: int = 0):
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.n_samples = n_samples
        self.steps = steps
        self.corrector_steps = corrector_steps
        self.snr = snr
        self.seed = seed

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if not self.every_n_epochs or (epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        samples = pl_module.prior().sample(self.n_samples, steps=self.steps, corrector_steps=self.corrector_steps,
                                           snr=self.snr, generator=gen)
        grid = sample_grid(samples)
        path = self.dirpath / "samples" / f"epoch={epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="samples", images=[grid.permute(1, 2, 0).numpy()],
                                 step=trainer.global_step, caption=[f"epoch {epoch}"])
        log.info("prior samples of epoch %d written to %s", epoch, path)


def sample_grid(samples: torch.Tensor) -> torch.Tensor:
    """A displayable grid [3, H', W'] in [0, 1] of images [N, C, H, W] (first channel), asinh-stretched."""
    x = samples[:, :1].detach().float().cpu()
    x = torch.nan_to_num(x)
    flat = x.flatten(1)
    lo = flat.quantile(0.01, dim=1)[:, None, None, None]
    hi = flat.max(dim=1).values[:, None, None, None]
    soft = 3e-3 * (hi - lo).clamp_min(1e-12)  # the stretch turns linear below ~0.3% of the range
    y = torch.asinh((x - lo).clamp_min(0) / soft)
    y = y / y.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None, None]
    return make_grid(y, nrow=math.ceil(math.sqrt(len(y))), padding=2, pad_value=1.0)


class ExportPrior(pl.Callback):
    """Write the EMA prior to `<dirpath>/<filename>` whenever a checkpoint is saved, and at the end of training,
    when it is also logged to W&B as an artifact (`artifacts.log_prior_artifact`) if the run logs there.

    The file holds only EMA weights and plain metadata (see `scorelens.priors.checkpoint`), a few MB where the
    training checkpoint holds optimiser state too; `load_prior` reads it.
    """

    def __init__(self, dirpath: str, filename: str = "prior.pt"):
        self.path = Path(dirpath) / filename

    def _export(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            save_prior(pl_module.prior(), self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._export(trainer, pl_module)
        log.info("inference prior written to %s", self.path)
        if trainer.is_global_zero:
            prior = pl_module.prior()
            meta = {"image_shape": list(prior.image_shape),
                    "sigma_min": float(prior.sde.sigma_min), "sigma_max": float(prior.sde.sigma_max),
                    "global_step": int(trainer.global_step)}
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    log_prior_artifact(logger.experiment, self.path, prior.kind, meta)



class FinalCheckpoint(pl.Callback):
    """Save the full training state to `path` when training ends, whatever the checkpoint interval, so that a
    later command with a larger `trainer.max_steps` continues from the very end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
