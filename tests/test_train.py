"""Whole training runs through train.py and through the composed configs."""

import csv
import math

import pytest
import torch

from scorelens.priors.checkpoint import load_prior
from scorelens.priors.run import train
from tests.conftest import compose_train, run_train


def test_smoke_run_leaves_a_checkpoint_a_prior_and_an_offline_wandb_run(tmp_path):
    """The README's first training command, as a user runs it (default logger: W&B, offline)."""
    proc = run_train(["prior=lens_light", "experiment=smoke", f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    # the exported prior is logged to W&B (offline) as an artifact
    assert "prior logged to W&B as artifact lens_light-prior (type prior)" in proc.stdout + proc.stderr
    runs = list((tmp_path / "train" / "lens_light").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run"
    assert (run / "samples" / "epoch=0000.png").is_file()
    assert (run / ".hydra" / "config.yaml").is_file()

    prior = load_prior(run / "prior.pt", kind="lens_light", image_size=32, sigma_min=1e-5, sigma_max=200)
    from_ckpt = load_prior(run / "checkpoints" / "last.ckpt")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 8
    for (name, a), b in zip(prior.net.state_dict().items(), from_ckpt.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        # inference weights are the EMA, not the raw weights
    raw = {k[len("net."):]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    assert any(not torch.equal(raw[k], v) for k, v in prior.net.state_dict().items())
    x = prior.sample(2, steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()


@pytest.mark.slow
def test_training_on_simulated_lens_light_lowers_the_validation_loss(tmp_path):
    cfg = compose_train(["prior=lens_light", "experiment=smoke", "logger=csv", "trainer.max_steps=60",
                         "trainer.limit_train_batches=20", "trainer.limit_val_batches=2",
                         "callbacks.samples.every_n_epochs=0", "ema_decay=0.9", "optim.lr=2e-3"],
                        tmp_path / "run")
    train(cfg)
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 3
    assert math.isfinite(val[-1]) and val[-1] < 0.8 * val[0], val
    assert {"train/loss", "train/grad_norm", "train/lr"} <= set(rows[0])


def test_bf16_mixed_precision_trains(tmp_path):
    cfg = compose_train(["prior=lens_light", "experiment=smoke", "logger=csv", "trainer.precision=bf16-mixed",
                         "trainer.max_steps=4", "callbacks.samples.every_n_epochs=0"], tmp_path / "run")
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    # master weights and EMA stay float32 under autocast
    assert all(v.dtype == torch.float32 for k, v in state["state_dict"].items() if v.is_floating_point())
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_resume_from_a_file_that_is_no_training_checkpoint_is_one_line(tmp_path):
    from scorelens.errors import InputError
    from scorelens.priors.run import find_checkpoint

    exported = tmp_path / "prior.pt"  # loads with torch, but holds an exported prior, not a training state
    torch.save({"net": {"w": torch.zeros(2)}, "meta": {"kind": "source"}}, exported)
    garbage = tmp_path / "notes.ckpt"
    garbage.write_text("not a checkpoint")
    for path in (exported, garbage):
        with pytest.raises(InputError, match=r"resume=.*: not a training checkpoint of train.py") as err:
            find_checkpoint(tmp_path / "checkpoints", str(path))
        assert "\n" not in str(err.value)


def test_the_default_trainer_runs_where_there_is_no_gpu(tmp_path):
    """trainer=auto (the default) takes a GPU when there is one; on a CPU-only machine it trains there and says so."""
    cfg = compose_train(["prior=lens_light"], tmp_path / "run")
    assert cfg.trainer.accelerator == "auto"
    proc = run_train(["prior=lens_light", "experiment=smoke", "trainer=auto", "logger=csv", "trainer.max_steps=2",
                      "callbacks.samples.every_n_epochs=0", f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    if not torch.cuda.is_available():
        assert "no GPU found: training on the CPU" in proc.stdout + proc.stderr


def test_a_wandb_run_in_use_is_a_one_line_error():
    from scorelens.errors import InputError
    from scorelens.priors.artifacts import start_wandb_run

    def held():
        raise RuntimeError("run ID nggbvdlb is in use")

    with pytest.raises(InputError, match="nggbvdlb is in use: another process is running"):
        start_wandb_run(held)

    def other():
        raise RuntimeError("api key not configured")

    with pytest.raises(RuntimeError, match="api key"):
        start_wandb_run(other)
    assert start_wandb_run(lambda: "run") == "run"


def test_train_starts_its_own_wandb_service_not_its_parents(tmp_path):
    """A parent process that uses W&B (a notebook, pytest itself) hands its service to children in WANDB_SERVICE;
    joining it made a killed-and-restarted run find its own id "in use". An unusable token shows whether the command
    still reads the inherited variable (W&B fails to parse it)."""
    proc = run_train(["prior=lens_light", "experiment=smoke", "logger=wandb", "trainer.max_steps=2",
                      "callbacks.samples.every_n_epochs=0", f"paths.log_dir={tmp_path}"], cwd=tmp_path,
                     env={"WANDB_SERVICE": "inherited-from-a-parent"})
    assert proc.returncode == 0
    assert list(tmp_path.rglob("wandb/offline-run-*")), "the W&B run was not written"
