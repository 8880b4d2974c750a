"""Data-parallel training on CPU: two processes (gloo), launched by Lightning from a real train.py command."""

import json

import pytest

from tests.conftest import run_train


@pytest.mark.slow
def test_two_ranks_see_different_images_and_end_with_identical_weights(tmp_path):
    digests = tmp_path / "digests"
    run_train(["prior=lens_light", "experiment=smoke", "logger=csv", "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", "trainer.benchmark=false",
               "callbacks.samples.every_n_epochs=0",
               "+callbacks.digest._target_=tests.helpers.BatchDigest", f"+callbacks.digest.dirpath={digests}",
               f"hydra.run.dir={tmp_path / 'run'}"],
              env={"OMP_NUM_THREADS": "1"}, timeout=600)
    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [8, 8]
    b0, b1 = ranks[0]["batches"], ranks[1]["batches"]
    assert len(b0) == len(b1) == 8
    assert not set(b0) & set(b1), "the ranks trained on the same simulated images"
    assert len(set(b0)) == len(b0), "a rank saw the same batch twice"
    assert ranks[0]["net"] == ranks[1]["net"], "raw weights differ between ranks"
    assert ranks[0]["ema"] == ranks[1]["ema"], "EMA weights differ between ranks"
