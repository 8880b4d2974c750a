"""`scorelens-infer` / `python infer.py lens=NAME [overrides]`: posterior samples of a lens model."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..errors import InputError, PoorFitError
from .config import CONFIG_PATH, register_resolvers

register_resolvers()


def main() -> None:
    """The command: owns its W&B service (`own_wandb_service`), then runs the Hydra app (once, or per sweep job)."""
    from ..priors.artifacts import own_wandb_service

    own_wandb_service()
    _app()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="infer")
def _app(cfg: DictConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")  # figures are files: no window, also on login nodes without a display
    from ..inference.distributed import Ranks, stop_processes
    from ..inference.run import infer

    if not Ranks.from_env().main:  # under torchrun, rank 0 logs the run; the others only their warnings
        logging.getLogger().setLevel(logging.WARNING)
    try:
        infer(cfg, HydraConfig.get().runtime.output_dir, cfg.paths.root_dir)
        stop_processes()
    except InputError as err:
        logging.getLogger("infer").error("%s", err)
        sys.exit(2)
    except PoorFitError as err:  # the results are written: the exit status tells scripts to look at them
        logging.getLogger("infer").warning("%s", err)
        sys.exit(3)


if __name__ == "__main__":
    main()
