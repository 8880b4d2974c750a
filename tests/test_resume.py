"""A training run killed with SIGKILL and started again with the same command ends exactly where an
uninterrupted run ends: global step, weights, EMA, optimiser, learning-rate schedule, data stream, W&B run."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, run_train
from tests.helpers import load_ckpt_state

MAX_STEPS = 40
ARGS = ["prior=lens_light", "experiment=smoke", f"trainer.max_steps={MAX_STEPS}",
        "trainer.limit_train_batches=10", "callbacks.checkpoint.every_n_train_steps=1",
        "callbacks.samples.every_n_epochs=0"]


def newest_step(ckpt_dir) -> int:
    steps = [int(m.group(1)) for p in ckpt_dir.glob("step=*.ckpt") if (m := re.match(r"step=(\d+)", p.name))]
    return max(steps, default=-1)


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    killed_logs = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "train.py"), *ARGS, f"paths.log_dir={killed_logs}"]

    # 1. start the run and kill -9 it mid-epoch, once a few steps are checkpointed
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    run_dir = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list((killed_logs / "train" / "lens_light").glob("*/checkpoints"))
        if found and newest_step(found[0]) >= 4:
            run_dir = found[0].parent
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert run_dir is not None, f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 3 <= killed_at < MAX_STEPS
    assert killed_at % 10 != 0, "killed at an epoch boundary: the test wants a mid-epoch resume"

    # 2. the same command again
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoints'}" in resumed.stdout + resumed.stderr

    # 3. an uninterrupted reference run
    ref_logs = tmp_path / "reference"
    run_train([*ARGS, f"paths.log_dir={ref_logs}"], cwd=tmp_path)
    ref_dir = next((ref_logs / "train" / "lens_light").iterdir())

    final = load_ckpt_state(run_dir / "checkpoints" / "last.ckpt")
    ref = load_ckpt_state(ref_dir / "checkpoints" / "last.ckpt")
    full = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    full_ref = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert full["global_step"] == full_ref["global_step"] == MAX_STEPS
    assert final.keys() == ref.keys()
    for name in ref:  # raw weights ("net.") and EMA ("ema_net.")
        torch.testing.assert_close(final[name], ref[name], rtol=0, atol=1e-6, msg=name)
    sched, sched_ref = full["lr_schedulers"][0], full_ref["lr_schedulers"][0]
    assert sched["last_epoch"] == sched_ref["last_epoch"] == MAX_STEPS
    exp_avg = full["optimizer_states"][0]["state"][0]["exp_avg"]
    torch.testing.assert_close(exp_avg, full_ref["optimizer_states"][0]["state"][0]["exp_avg"], rtol=0, atol=1e-6)

    # 4. one W&B run, continued: both processes wrote offline runs with the stored id
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(run_id) for name in offline), offline
