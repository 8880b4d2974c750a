"""infer.py end to end on a small mock with tiny untrained priors: the output contract and one-line errors."""

import csv
import json
import os
import subprocess
import sys

import h5py
import pytest
import torch

from src.data.normalization import PixelNorm
from src.lensing.mass import PARAM_NAMES
from src.priors.checkpoint import save_prior
from src.priors.ncsnpp import NCSNpp
from src.priors.prior import ScorePrior
from src.priors.sde import VESDE

from .conftest import ROOT


def tiny_prior(kind, size, path):
    torch.manual_seed(0)
    net = NCSNpp(channels=1, resolution=size, nf=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[],
                 dropout=0.0, fir_kernel=[1, 3, 3, 1], skip_rescale=True, fourier_scale=16.0, init_scale=0.01)
    return save_prior(ScorePrior(net, VESDE(1e-3, 50.0), kind, PixelNorm()), path)


def run_infer(args, cwd, check=True):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"infer.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    s = tiny_prior("source", 32, tmp / "source.pt")
    lt = tiny_prior("lens_light", 48, tmp / "lens_light.pt")
    args = ["lens=mock", "experiment=infer_smoke", f"priors.source.path={s}", f"priors.lens_light.path={lt}",
            f"paths.data_dir={tmp / 'data'}", f"paths.log_dir={tmp / 'logs'}"]
    proc = run_infer(args, tmp)
    (out,) = (tmp / "logs" / "infer" / "mock").iterdir()
    return out, args, tmp, proc


@pytest.mark.slow
def test_writes_samples_summary_truth_and_figures(smoke_run):
    out, *_ = smoke_run
    with h5py.File(out / "samples.h5") as f:
        assert set(PARAM_NAMES) <= set(f)
        n = f["theta_E"].shape[0]
        assert n == 4 and f["source"].shape == (4, 32, 32) and f["lens_light"].shape == (4, 48, 48)
        assert "shift_1_x" in f
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["parameter"] for r in rows] == list(PARAM_NAMES)
    assert set(json.loads((out / "truth.json").read_text())["mass"]) == set(PARAM_NAMES)
    for name in ("exposures", "source", "corner", "images"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0


@pytest.mark.slow
def test_finished_run_resumes_without_sampling_again(smoke_run):
    out, args, tmp, _ = smoke_run
    before = (out / "samples.h5").read_bytes()
    proc = run_infer(args, tmp)
    assert "resuming" in proc.stdout + proc.stderr
    with h5py.File(out / "samples.h5") as f, h5py.File(__import__("io").BytesIO(before)) as g:
        assert (f["theta_E"][:] == g["theta_E"][:]).all()


def test_missing_prior_is_one_line(tmp_path):
    proc = run_infer(["lens=mock", "experiment=infer_smoke", f"priors.source.path={tmp_path / 'none.pt'}",
                      f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}"], tmp_path,
                     check=False)
    assert proc.returncode == 2
    err = proc.stdout + proc.stderr
    assert "prior checkpoint not found" in err and "Traceback" not in err
