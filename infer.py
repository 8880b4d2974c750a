"""Posterior samples of a lens model: python infer.py lens=NAME [group=option ...] [key=value ...]"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.errors import InputError
from src.priors.run import register_resolvers

log = logging.getLogger("infer")
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    from src.inference.run import infer

    try:
        infer(cfg, HydraConfig.get().runtime.output_dir, cfg.paths.root_dir)
    except InputError as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
