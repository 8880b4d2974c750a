"""A Hydra multirun: one folder, one W&B run and one checkpoint per job, all jobs in one W&B group."""

import pytest

from tests.conftest import run_train


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_run_in_one_group(tmp_path):
    run_train(["-m", "prior=lens_light", "experiment=smoke", "optim.lr=1e-3,2e-3", "ema_decay=0.9,0.99",
               "callbacks.samples.every_n_epochs=0", f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    sweeps = list((tmp_path / "sweeps" / "lens_light").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert len(jobs) == 4
    assert {j.name for j in jobs} == {f"callbacks.samples.every_n_epochs=0,ema_decay={d},experiment=smoke,optim.lr={lr}"
                                      for d in ("0.9", "0.99") for lr in ("0.001", "0.002")}
    ids = set()
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "prior.pt").is_file()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # its own run, not a continuation of the previous job's
        ids.add(runs[0].name.rsplit("-", 1)[1])
        record = next(runs[0].glob("*.wandb")).read_bytes()
        assert f"lens_light-{sweeps[0].name}".encode() in record, "job not in the sweep's W&B group"
    assert len(ids) == 4
