"""infer.py end to end on a small mock with tiny untrained priors: the output contract and one-line errors."""

import csv
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from scorelens.data.training.normalization import PixelNorm
from scorelens.lensing.mass import PARAM_NAMES
from scorelens.priors.checkpoint import save_prior
from scorelens.priors.ncsnpp import NCSNpp
from scorelens.priors.prior import ScorePrior
from scorelens.priors.sde import VESDE

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
    p = ROOT / "priors" / "demo" / "psf.pt"  # the PSF step samples each chain's PSFs from the mock's stars
    args = ["lens=mock", "experiment=infer_smoke", f"priors.source.path={s}", f"priors.lens_light.path={lt}",
            f"priors.psf.path={p}", "lens.init_from=auto", f"paths.data_dir={tmp / 'data'}",
            f"paths.log_dir={tmp / 'logs'}"]
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
        # the sampled PSFs: the model's kernels and P on the prior's grid, per sample and exposure
        assert f["psf"].shape == (4, 4, 15, 15) and f["psf_upsampled"].shape == (4, 4, 32, 32)
        assert np.isfinite(f["psf"][:]).all() and np.isfinite(f["psf_upsampled"][:]).all()
        # 2 chains x 2 recorded sweeps, chain fastest
        assert (f.attrs["chains"], f.attrs["draws"]) == (2, 2)
        assert f["chain"][:].tolist() == [0, 1, 0, 1] and f["draw"][:].tolist() == [0, 0, 1, 1]
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["parameter"] for r in rows] == list(PARAM_NAMES)
    assert list(rows[0]) == ["parameter", "median", "p16", "p84", "p2.5", "p97.5", "p0.5", "p99.5", "rhat",
                             "ess_bulk"]
    # two draws a chain are too few for R-hat and ESS: NaN, and the log says why, once
    assert all(r["rhat"] == "nan" and r["ess_bulk"] == "nan" for r in rows)
    assert set(json.loads((out / "truth.json").read_text())["mass"]) == set(PARAM_NAMES)
    for name in ("exposures", "source", "corner", "trace", "images"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0
    # W&B (offline) got the per-sweep metrics; without a terminal the log has a line per sweep
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    text = (out / "infer.log").read_text()
    assert "finetune sweep 2/2 (6/6)" in text and "stars chi2=" in text
    # said once when it happens (not once per parameter), and once more in the run's summary of its warnings
    assert text.count("[WARNING] - R-hat and ESS need at least 4 recorded sweeps per chain, got 2") == 1
    summary = text[text.index("warning(s) in this run:"):]
    assert "\n  - R-hat and ESS need at least 4 recorded sweeps per chain, got 2" in summary
    assert "R-hat/bulk ESS over 2 chains x 2 recorded sweeps" in text
    # the chains start where the start finder put them (init_from: auto)
    assert "start finder: 4 starts on" in text and "mode 0: theta_E" in text and "chains per mode: mode 0" in text


@pytest.mark.slow
def test_outputs_open_in_astropy_and_arviz_with_wcs_and_units(smoke_run):
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.table import QTable
    from astropy.wcs import WCS

    from scorelens.inference.inference_data import arviz

    out, *_ = smoke_run
    lens = SkyCoord(150.11916, 2.20583, unit="deg")  # conf/lens/mock.yaml
    with fits.open(out / "model.fits") as f:
        assert [(h.name, h.ver) for h in f[1:3]] == [("MEDIAN", 1), ("SD", 1)] and len(f) == 1 + 2 * 4
        w = WCS(f["MEDIAN", 1].header)
        assert w.has_celestial and f["MEDIAN", 1].data.shape == (48, 48)
        # the lens lies within the cutout
        assert w.world_to_pixel(lens)[0] == pytest.approx(23.5, abs=3)
    with fits.open(out / "source.fits") as f:
        w = WCS(f["MEDIAN"].header)
        assert w.pixel_to_world(15.5, 15.5).separation(lens).arcsec < 1e-3 and f["SD"].data.shape == (32, 32)
    with fits.open(out / "residual.fits") as f:
        assert {h.name for h in f[1:]} == {"MEDIAN", "SD", "NORMRES"}
    with fits.open(out / "lens_light.fits") as f:
        assert f["MEDIAN"].data.shape == (48, 48)
    t = QTable.read(out / "summary.ecsv")
    t.add_index("statistic")
    assert t["theta_E"].unit == u.arcsec and t["theta_E_kpc"].unit == u.kpc and t["M_E"].unit == u.solMass
    assert t["pa"].unit == u.deg and t.meta["cosmology"] == "Planck18" and t.meta["z_source"] == 0.575
    with (out / "summary.csv").open() as fh:
        csv_median = {r["parameter"]: float(r["median"]) for r in csv.DictReader(fh)}
    assert t.loc["median"]["theta_E"].to_value(u.arcsec) == pytest.approx(csv_median["theta_E"], rel=1e-5)
    az = arviz()
    idata = az.from_netcdf(out / "samples.nc")
    assert dict(idata.posterior.sizes) == {"chain": 2, "draw": 2}
    assert set(PARAM_NAMES) <= set(idata.posterior.data_vars) and "shift_1_x" in idata.posterior
    s = az.summary(idata, var_names=["theta_E", "q"], round_to="none")
    assert s.loc["theta_E", "mean"] == pytest.approx(float(np.mean(idata.posterior["theta_E"])))


@pytest.mark.slow
def test_catalog_start_is_the_mocks_simulated_catalogue_entry(smoke_run):
    from scorelens.inference.run import initial_mass

    out, _, tmp, _ = smoke_run
    catalog = json.loads((out / "truth.json").read_text())["catalog"]
    cfg = {"lens": {"init_from": "catalog", "mock": {"out_dir": "mock"}},
           "paths": {"data_dir": str(tmp / "data"), "root_dir": str(tmp)}}
    init = initial_mass(cfg)
    assert set(init) == set(PARAM_NAMES)
    assert all(init[k] == pytest.approx(catalog[k]) for k in ("theta_E", "q", "phi"))


@pytest.mark.slow
def test_finished_run_resumes_without_sampling_again(smoke_run):
    out, args, tmp, _ = smoke_run
    before = (out / "samples.h5").read_bytes()
    proc = run_infer(args, tmp)
    assert "resuming" in proc.stdout + proc.stderr
    with h5py.File(out / "samples.h5") as f, h5py.File(__import__("io").BytesIO(before)) as g:
        assert (f["theta_E"][:] == g["theta_E"][:]).all()


@pytest.mark.slow
def test_a_poor_fit_ends_with_a_warning_and_exit_status_3_and_its_results_kept(smoke_run):
    """chi2_max changes no result: the finished run in the same folder is resumed, its outputs written again
    (the same samples), and the run ends with the poor fit named and a non-zero exit."""
    out, args, tmp, _ = smoke_run
    before = (out / "samples.h5").read_bytes()
    chi2 = [float(line.split(",")[1]) for line in (out / "chi2.csv").read_text().splitlines()[1:]]
    limit = 0.5 * min(chi2)
    proc = run_infer([*args, f"chi2_max={limit}"], tmp, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 3, text[-3000:]
    assert "resuming" in text and "fits the data poorly" in text and f"chi2_max={limit}" in text
    assert "Traceback" not in text
    # the warnings of the run are repeated together at its end, the poor fit's own line after them
    assert "warning(s) in this run" in (out / "infer.log").read_text()
    with h5py.File(out / "samples.h5") as f, h5py.File(__import__("io").BytesIO(before)) as g:
        assert (f["theta_E"][:] == g["theta_E"][:]).all()
    for name in ("summary.csv", "chi2.csv", "exposures.png"):
        assert (out / name).stat().st_size > 0


def test_slurm_launcher_for_inference_runs_one_lens_per_gpu_job():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="infer", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm_infer", "lens=J1430", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 1)
    assert launcher.name == "scorelens-infer-J1430" and launcher.partition == "gpu"


def test_missing_prior_is_one_line(tmp_path):
    proc = run_infer(["lens=mock", "experiment=infer_smoke", f"priors.source.path={tmp_path / 'none.pt'}",
                      f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'logs'}"], tmp_path,
                     check=False)
    assert proc.returncode == 2
    err = proc.stdout + proc.stderr
    assert "prior checkpoint not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(smoke_run):
    """SIGKILL mid-sampling loses at most the sweep in progress: running the same command again finishes with
    exactly the samples of a run never interrupted (CPU, same seed)."""
    import signal
    import time

    out, args, tmp, _ = smoke_run
    longer = [*args, "sampler.stages.anneal.sweeps=6"]  # long enough to be caught mid-way
    whole, broken = tmp / "whole", tmp / "broken"
    run_infer([*longer, f"hydra.run.dir={whole}"], tmp)

    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "infer.py"), *longer, f"hydra.run.dir={broken}"], cwd=tmp,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path, done = broken / "state.pt", 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if state_path.exists():
            state = torch.load(state_path, weights_only=True)  # written atomically: never half a file
            done = state["stage"] * 100 + state["sweep"]
            if done >= 100 + 2:  # in the anneal stage, after its second sweep
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "samples.h5").exists()
    killed_at = torch.load(state_path, weights_only=True)
    assert (killed_at["stage"], killed_at["sweep"]) < (2, 0)

    resumed = run_infer([*longer, f"hydra.run.dir={broken}"], tmp)
    assert "resuming" in resumed.stdout + resumed.stderr
    with h5py.File(whole / "samples.h5") as f, h5py.File(broken / "samples.h5") as g:
        for key in ("theta_E", "q", "shift_1_x", "source", "lens_light", "psf", "psf_upsampled"):
            assert (f[key][:] == g[key][:]).all(), key


def test_a_typo_in_a_stage_setting_is_one_line(tmp_path):
    """Stages are keyed by name: an unknown key (here added past Hydra's own check with `+`) or a misspelt stage
    name fails in one line that names it, before any data are loaded or simulated."""
    base = ["lens=mock", "experiment=infer_smoke", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'logs'}"]
    for override, message in (("+sampler.stages.anneal.swepes=3", "sampler.stages.anneal: unknown setting(s) "
                                                                    "['swepes']"),
                              ("+sampler.stages.aneal.sweeps=3", "sampler.stages.aneal: missing ['temperature']")):
        proc = run_infer([*base, override], tmp_path, check=False)
        err = proc.stdout + proc.stderr
        assert proc.returncode == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_saved_state_without_a_record_is_refused_with_other_settings(smoke_run):
    """A folder of an older version (state.pt, no run.json) resumes only with the settings its state was hashed
    with."""
    out, args, tmp, _ = smoke_run
    run_dir = tmp / "refuse"
    run_dir.mkdir()
    shutil.copy(out / "state.pt", run_dir / "state.pt")
    proc = run_infer([*args, "sampler.stages.finetune.mala_steps=6", f"hydra.run.dir={run_dir}"], tmp, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "written with other sampling settings" in err and "Traceback" not in err
    assert not (run_dir / "samples.h5").exists()


@pytest.mark.slow
def test_changed_data_never_resume_and_resume_false_writes_a_new_folder(smoke_run):
    """After a data file changes, the same command refuses the finished folder, naming the file, and leaves its
    results as they were; a device change still resumes; resume=false runs afresh in a folder beside it."""
    from astropy.io import fits

    out, args, tmp, _ = smoke_run
    data, run_dir = tmp / "data_changed", tmp / "changed"
    shutil.copytree(tmp / "data", data)
    shutil.copytree(out, run_dir)
    base = [a for a in args if not a.startswith("paths.data_dir=")] + [f"paths.data_dir={data}",
                                                                       f"hydra.run.dir={run_dir}"]
    samples = (run_dir / "samples.h5").read_bytes()
    proc = run_infer([*base, "sampler.device=auto"], tmp)  # another device, the same inputs: resumed
    assert "resuming" in proc.stdout + proc.stderr
    (flt,) = sorted((data / "mock").glob("*_flt.fits"))[:1]
    with fits.open(flt, mode="update") as hdul:
        hdul["SCI"].data[10, 10] += 5.0
    proc = run_infer(base, tmp, check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "the contents of lens.exposures[0] changed" in err and "Traceback" not in err
    assert (run_dir / "samples.h5").read_bytes() == samples
    proc = run_infer([*base, "resume=false"], tmp)
    new = tmp / "changed_2"
    assert (new / "samples.h5").is_file() and (new / "run.json").is_file() and (new / "infer.log").is_file()
    assert (run_dir / "samples.h5").read_bytes() == samples


@pytest.mark.slow
def test_two_runs_into_one_folder_only_one_runs(smoke_run):
    out, args, tmp, _ = smoke_run
    run_dir = tmp / "busy"
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    first = subprocess.Popen([sys.executable, str(ROOT / "infer.py"), *args, "sampler.stages.anneal.sweeps=6",
                              f"hydra.run.dir={run_dir}"], cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (run_dir / "state.pt").exists():
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        second = run_infer([*args, "sampler.stages.anneal.sweeps=6", f"hydra.run.dir={run_dir}"], tmp, check=False)
        err = second.stdout + second.stderr
        assert second.returncode == 2 and f"is in use by pid {first.pid}" in err and "Traceback" not in err
    finally:
        assert first.wait(timeout=600) == 0
    assert (run_dir / "samples.h5").is_file() and not (run_dir / ".hydra").exists()


def test_initial_mass_is_the_config_or_a_mocks_catalogue_entry():
    from scorelens.errors import InputError
    from scorelens.inference.run import initial_mass

    init = {name: 0.0 for name in PARAM_NAMES}
    assert initial_mass({"lens": {"init": init}}) == init  # SLACS lenses: Bolton et al.'s values as written
    assert initial_mass({"lens": {"init": init, "init_from": "init"}}) == init
    with pytest.raises(InputError, match="lens.init_from=init starts from lens.init"):
        initial_mass({"lens": {"init_from": "init"}})
    with pytest.raises(InputError, match="init_from"):
        initial_mass({"lens": {"init": init, "init_from": "bolton", "mock": {}}})
    with pytest.raises(InputError, match="init_from"):
        initial_mass({"lens": {"init": init, "init_from": "catalog"}})  # not a mock
