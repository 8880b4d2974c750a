"""Where the entry points find their configs, the resolvers the configs use, and composing them outside a run."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

# conf/ is installed as the package `scorelens.conf`: Hydra reads it from there in a checkout (editable install)
# and in an installed copy alike
CONFIG_PATH = "pkg://scorelens.conf"
CONFIG_MODULE = "scorelens.conf"


def register_resolvers() -> None:
    """Config resolvers used by conf/: `${sl_or:VALUE,DEFAULT}` gives DEFAULT where VALUE is empty."""
    OmegaConf.register_new_resolver("sl_or", lambda value, default: value or default, replace=True)


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `name` (train or infer) composed with Hydra overrides, as the entry points would compose it,
    for tools that run outside a Hydra job (`scorelens-data`); interpolations into `hydra:` are not available."""
    from hydra import compose, initialize_config_module

    register_resolvers()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
