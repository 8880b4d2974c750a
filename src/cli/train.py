"""`scorelens-train` / `python train.py prior=source|lens_light|psf [overrides]`: train a score prior."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from ..errors import InputError
from .config import CONFIG_PATH, register_resolvers

register_resolvers()


def main() -> None:
    """The command: owns its W&B service (`own_wandb_service`), then runs the Hydra app (once, or per sweep job)."""
    from ..priors.artifacts import own_wandb_service

    own_wandb_service()
    _app()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _app(cfg: DictConfig) -> None:
    from ..priors.run import train

    try:
        train(cfg)
    except InputError as err:
        logging.getLogger("train").error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
