"""The real configs compose, carry the paper's settings, and bad overrides fail clearly."""

import itertools

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_infer, compose_train, run_train

PAPER = {  # prior: (sigma_min, sigma_max, image size, batch size)
    "source": (1e-5, 500, 256, 4),
    "lens_light": (1e-5, 200, 256, 16),
    "psf": (1e-3, 100, 128, 32),
}


@pytest.mark.parametrize("prior", sorted(PAPER))
def test_cfg_job_shows_the_paper_noise_range(prior):
    out = run_train([f"prior={prior}", "--cfg", "job"]).stdout
    cfg = yaml.safe_load(out)
    smin, smax, size, batch = PAPER[prior]
    assert cfg["sde"] == {"sigma_min": smin, "sigma_max": smax}
    assert cfg["prior"]["image_size"] == size and cfg["prior"]["kind"] == prior
    assert cfg["data"]["batch_size"] == batch


GROUPS = {name: sorted(p.stem for p in (CONF / name).glob("*.yaml")) for name in ("net", "trainer", "logger")}


COMBINATIONS = (
    [(p, n, "cpu", "csv") for p, n in itertools.product(sorted(PAPER), GROUPS["net"])]
    + [(p, "tiny", t, lg) for p, t, lg in itertools.product(sorted(PAPER), GROUPS["trainer"], GROUPS["logger"])
       if t != "default"]
)


@pytest.mark.parametrize("prior,net,trainer,logger", COMBINATIONS)
def test_every_option_composes_and_resolves(tmp_path, prior, net, trainer, logger):
    cfg = compose_train([f"prior={prior}", f"net={net}", f"trainer={trainer}", f"logger={logger}"],
                        tmp_path / "run")
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["net"]["resolution"] == plain["prior"]["image_size"]
    assert plain["trainer"]["_target_"] == "pytorch_lightning.Trainer"


def test_smoke_experiment_is_small_and_on_cpu(tmp_path):
    cfg = compose_train(["prior=lens_light", "experiment=smoke"], tmp_path / "run")
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_steps <= 20
    assert cfg.net.nf <= 16 and cfg.prior.image_size <= 32
    assert cfg.sde.sigma_max == 200  # an experiment changes the scale of the run, not the prior's physics


def test_a_typo_in_an_override_fails_and_names_the_key(tmp_path):
    proc = run_train(["prior=lens_light", "optim.lrr=1e-3", "--cfg", "job"], check=False)
    assert proc.returncode != 0
    assert "lrr" in proc.stderr


def test_missing_training_images_give_one_line_and_no_traceback(tmp_path):
    proc = run_train(["prior=source", "experiment=smoke", "logger=none", f"paths.data_dir={tmp_path}",
                      f"hydra.run.dir={tmp_path / 'run'}"], check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 2
    assert "training images not found" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


def test_slurm_launcher_starts_one_task_per_gpu(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


# experiment: (the config it is for, the rest of its documented command)
EXPERIMENTS = {
    "smoke": ("train", ["prior=lens_light"]),
    "demo_source": ("train", ["prior=source_sim"]),
    "demo_lens_light": ("train", ["prior=lens_light"]),
    "demo_psf": ("train", ["prior=psf_sim"]),
    "demo": ("infer", ["lens=mock"]),
    "infer_smoke": ("infer", ["lens=mock"]),
    "calibration": ("infer", ["lens=mock"]),
    "paper": ("infer", ["lens=J1430"]),
}


def experiment_settings(path) -> tuple[dict, list[str]]:
    """The values an experiment file sets, its bases' included, as {dotted key: value}, and its group overrides."""
    text = yaml.safe_load(path.read_text())
    values, groups = {}, []
    for entry in text.pop("defaults", []):
        if isinstance(entry, dict):  # {"override /net": "tiny"}
            ((key, option),) = entry.items()
            groups.append(f"{key.removeprefix('override /')}={option}")
        elif entry != "_self_":      # a base of this experiment, relative to conf/experiment
            base_values, base_groups = experiment_settings(CONF / "experiment" / f"{entry}.yaml")
            values.update(base_values)
            groups += base_groups

    def flatten(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                flatten(value, f"{prefix}{key}.")
            else:
                values[f"{prefix}{key}"] = value

    flatten(text)
    return values, groups


def test_every_experiment_is_checked():
    assert sorted(EXPERIMENTS) == sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_an_experiment_overrides_only_what_differs(tmp_path, experiment):
    """Every value an experiment (or its base) sets differs from what the command composes without it."""
    config, command = EXPERIMENTS[experiment]
    values, groups = experiment_settings(CONF / "experiment" / f"{experiment}.yaml")
    if config == "train":
        base = compose_train([*command, *groups], tmp_path / "base")
        cfg = compose_train([*command, f"experiment={experiment}"], tmp_path / "run")
    else:
        base, cfg = compose_infer([*command, *groups]), compose_infer([*command, f"experiment={experiment}"])

    def plain(node, key):
        value = OmegaConf.select(node, key)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    assert values
    for key in values:
        assert plain(cfg, key) == values[key], key
        assert plain(base, key) != values[key], f"{experiment} sets {key} to the value it has anyway"
