"""One training job from a composed `conf/train.yaml`: data, module, loggers, callbacks, trainer, resume."""

from __future__ import annotations

import logging
import os
import secrets
import string
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_write_text
from ..data.training.normalization import PixelNorm
from ..data.training.stream import SimulatedStream
from ..errors import InputError
from .artifacts import start_wandb_run
from .callbacks import FinalCheckpoint
from .module import ScorePriorModule

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"


def train(cfg: DictConfig) -> Path:
    """Train (or resume training) the prior described by `cfg`; returns the run folder.

    The run folder is `cfg.paths.output_dir`. With `resume=auto` a folder that already holds checkpoints is
    continued from its newest readable one: global step, weights, EMA, optimiser, learning-rate schedule, the
    position in the simulated-data stream and the W&B run id all carry on.
    """
    # Lightning warns about deliberate choices: the EMA copy is always in eval mode, and the simulated-data stream
    # shards itself across DataLoader workers, so its length is exact.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = find_checkpoint(output_dir / "checkpoints", cfg.resume)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = _build(cfg.data)
    if isinstance(datamodule.train_set, SimulatedStream):
        # streams resume mid-epoch at the right batch (PriorDataModule), which Lightning cannot see
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")
    norm = getattr(datamodule.train_set, "norm", PixelNorm())
    module = ScorePriorModule(
        kind=cfg.prior.kind, net=_plain(cfg.net), sde=_plain(cfg.sde), optim=_plain(cfg.optim),
        norm=norm.config(), ema_decay=cfg.ema_decay, t_eps=cfg.t_eps, seed=cfg.seed)
    log.info("%s prior: NCSN++ with %.2f M parameters, %s, run folder %s", cfg.prior.kind,
             sum(p.numel() for p in module.net.parameters()) / 1e6, module.sde, output_dir)

    loggers = build_loggers(cfg, output_dir)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(FinalCheckpoint(output_dir / "checkpoints" / "last.ckpt"))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    if cfg.trainer.get("accelerator") == "auto" and not torch.cuda.is_available():
        log.warning("no GPU found: training on the CPU, which is fine for a smoke test but slow for a prior "
                    "(trainer=gpu insists on a GPU; trainer=cpu says CPU on purpose)")
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        _finish_wandb(loggers)
    return output_dir


def find_checkpoint(ckpt_dir: Path, resume) -> Path | None:
    """The checkpoint to resume from, per the `resume` setting (auto, false, or a path)."""
    existing = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    if resume is False or str(resume).lower() in ("false", "never", "no"):
        if existing:
            raise InputError(f"{ckpt_dir} already holds checkpoints of an earlier run: resume=auto continues "
                             "it, or choose another run folder with hydra.run.dir=...")
        return None
    if resume is True or str(resume).lower() == "auto":
        for path in existing:
            if _readable(path):
                return path
            log.warning("skipping unreadable checkpoint %s", path)
        return None
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise InputError(f"resume={resume}: no such checkpoint file")
    if not _readable(path):
        raise InputError(f"resume={resume}: not a training checkpoint of train.py (unreadable, truncated, or another "
                         "kind of file, such as an exported prior.pt); give a .ckpt from a run's checkpoints/ folder")
    return path


def _readable(path: Path) -> bool:
    """A Lightning checkpoint that loads: a dict with the weights, the step and the optimiser states."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any failure means "do not resume from this file"
        return False
    return isinstance(ckpt, dict) and {"state_dict", "global_step", "optimizer_states"} <= set(ckpt)


def build_loggers(cfg: DictConfig, output_dir: Path) -> list:
    """Instantiate the configured loggers; a W&B run keeps one id for the life of its run folder."""
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None:
            continue
        extra = {}
        if "WandbLogger" in str(lcfg.get("_target_", "")):
            extra["id"] = _wandb_run_id(output_dir)
            extra["resume"] = "allow"
            if lcfg.get("group") is None and _is_multirun():
                # the sweep folder, shared by the jobs of one sweep (resolved once, by the launcher)
                extra["group"] = f"{cfg.prior.kind}-{output_dir.parent.name}"
        log.debug("logger %s", name)
        loggers.append(instantiate(lcfg, **extra))
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            start_wandb_run(lambda lg=logger: lg.experiment)
        logger.log_hyperparams(config)
    return loggers


def _wandb_run_id(output_dir: Path) -> str:
    """Read the run folder's W&B id, or create and store one (written atomically, before training starts)."""
    path = output_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        atomic_write_text(path, run_id + "\n")
    return run_id


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _finish_wandb(loggers: list) -> None:
    """Close the W&B run, so the next job of a Hydra multirun starts its own run (not a continuation)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


def _build(node, **kwargs):
    """`hydra.utils.instantiate`, letting a user-input error inside a constructor surface as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, InputError):
            raise err.__cause__ from None
        raise


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)
