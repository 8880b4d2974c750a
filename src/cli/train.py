"""`scorelens-train` / `python train.py prior=source|lens_light|psf [overrides]`: train a score prior."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from ..errors import InputError
from .config import CONFIG_PATH, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> None:
    from ..priors.run import train

    try:
        train(cfg)
    except InputError as err:
        logging.getLogger("train").error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
