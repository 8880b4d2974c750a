"""Where the entry points find their configs, the resolvers the configs use, and composing them outside a run."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

# conf/ is installed as the package `scorelens.conf`: Hydra reads it from there in a checkout (editable install)
# and in an installed copy alike
CONFIG_PATH = "pkg://scorelens.conf"
CONFIG_MODULE = "scorelens.conf"


# a run folder's name from its overrides is cut here: file systems refuse names over 255 bytes, and a whole stage
# list given as one override is longer
RUN_NAME_MAX = 120


def run_name(overrides: str, default: str = "default") -> str:
    """The run folder's name from Hydra's `job.override_dirname`: `default` where there are none; a name longer
    than RUN_NAME_MAX is cut and ends in a hash of the whole, so that different overrides keep different folders."""
    if not overrides:
        return default
    if len(overrides.encode()) <= RUN_NAME_MAX:
        return overrides
    digest = hashlib.sha256(overrides.encode()).hexdigest()[:12]
    head = overrides.encode()[: RUN_NAME_MAX - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"


def register_resolvers() -> None:
    """Config resolvers used by conf/: `${sl_run_name:OVERRIDES}` names a run folder (`run_name`)."""
    OmegaConf.register_new_resolver("sl_run_name", run_name, replace=True)


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `name` (train or infer) composed with Hydra overrides, as the entry points would compose it,
    for tools that run outside a Hydra job (`scorelens-data`); interpolations into `hydra:` are not available."""
    from hydra import compose, initialize_config_module

    register_resolvers()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
