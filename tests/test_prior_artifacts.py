"""Priors as W&B artifacts: logged by training (offline here), fetched by inference from `wandb:` paths (W&B's API
stood in for: tests never reach the network)."""

import base64
import hashlib

import pytest

from scorelens.errors import InputError
from scorelens.priors.artifacts import download_prior, log_prior_artifact

wandb = pytest.importorskip("wandb")


def test_a_prior_is_logged_as_an_artifact_with_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    prior = tmp_path / "prior.pt"
    prior.write_bytes(b"weights" * 1000)
    run = wandb.init(mode="offline", dir=str(tmp_path), project="t")
    try:
        art = log_prior_artifact(run, prior, "source", {"global_step": 8})
    finally:
        run.finish()
    assert art.name.startswith("source-prior") and art.type == "prior"
    assert art.metadata == {"kind": "source", "global_step": 8}
    md5 = base64.b64encode(hashlib.md5(prior.read_bytes()).digest()).decode()
    assert art.manifest.entries["prior.pt"].digest == md5


class FakeArtifact:
    def __init__(self, calls):
        self.calls = calls

    def download(self, root):
        self.calls.append(root)
        from pathlib import Path

        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "prior.pt").write_bytes(b"w")


def test_wandb_paths_download_once_and_fail_in_one_line(tmp_path, monkeypatch):
    calls, asked = [], []

    class Api:
        def artifact(self, name, type=None):  # noqa: A002 - W&B's keyword
            asked.append((name, type))
            return FakeArtifact(calls)

    monkeypatch.setattr(wandb, "Api", Api)
    monkeypatch.setenv("WANDB_MODE", "online")
    path = download_prior("wandb:me/scorelens/source-prior:v3", tmp_path)
    assert path == tmp_path / "me" / "scorelens" / "source-prior_v3" / "prior.pt" and path.is_file()
    assert asked == [("me/scorelens/source-prior:v3", "prior")]
    download_prior("wandb:me/scorelens/source-prior:v3", tmp_path)  # a version never changes: no second download
    assert len(calls) == 1
    for bad in ("wandb:source-prior:v3", "wandb:me/scorelens/source-prior"):
        with pytest.raises(InputError, match="wandb:ENTITY/PROJECT/NAME:VERSION"):
            download_prior(bad, tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(InputError, match="needs W&B online") as err:
        download_prior("wandb:me/scorelens/source-prior:v4", tmp_path)
    assert "\n" not in str(err.value)

    class Refusing:
        def artifact(self, name, type=None):  # noqa: A002
            raise RuntimeError("artifact 'source-prior:v9' not found in 'me/scorelens'")

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "Api", Refusing)
    with pytest.raises(InputError, match="cannot get it from W&B .*not found"):
        download_prior("wandb:me/scorelens/source-prior:v9", tmp_path)


def test_infer_replaces_a_wandb_path_by_the_download_and_records_it(tmp_path, monkeypatch):
    from scorelens.inference import run

    monkeypatch.setattr("scorelens.priors.artifacts.download_prior", lambda spec, cache: cache / "x" / "prior.pt")
    cfg = {"paths": {"data_dir": "data"}, "priors": {"source": {"path": "wandb:me/p/source-prior:v1"},
                                                     "lens_light": {"path": "local.pt"}}}
    run.fetch_prior_artifacts(cfg, tmp_path)
    assert cfg["priors"]["source"] == {"path": str(tmp_path / "data" / "priors" / "wandb" / "x" / "prior.pt"),
                                       "artifact": "wandb:me/p/source-prior:v1"}
    assert cfg["priors"]["lens_light"] == {"path": "local.pt"}
