"""Fixtures that compose the project's real Hydra configs (conf/) into tiny runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """conf/train.yaml composed with `overrides`, its run folder at `output_dir`, ready to instantiate."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the job's config holds no hydra node
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.log_dir = str(output_dir.parent)
        cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_infer(overrides: list[str] = ()) -> DictConfig:
    """conf/infer.yaml composed with `overrides`, without the hydra node (so nothing that needs a run resolves)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="infer", overrides=list(overrides))


@pytest.fixture
def smoke_cfg(tmp_path) -> DictConfig:
    """The smoke experiment of the lens-light prior, CSV logging, in a temporary run folder."""
    return compose_train(["prior=lens_light", "experiment=smoke", "logger=csv"], tmp_path / "run")


def run_train(args: list[str], cwd: Path = ROOT, timeout: float = 600, env: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` as a user would, in a fresh process."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
                **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-tensor tests: synchronising threads costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
