"""Train a score prior: `python train.py prior=source|lens_light|psf [overrides]` (see conf/train.yaml)."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from src.errors import InputError
from src.priors.run import register_resolvers, train

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except InputError as err:
        logging.getLogger("train").error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
