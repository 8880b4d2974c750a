"""Run folders: one run at a time (the lock), the identity a resume is checked against, atomic figures."""

import os
import signal
import subprocess
import sys

import matplotlib
import pytest

from scorelens.errors import InputError
from scorelens.inference.run_folder import check_resume, differences, fresh_folder, identity, run_lock, write_record

matplotlib.use("Agg")


def config(tmp_path, **lens):
    return {"paths": {"data_dir": str(tmp_path)}, "seed": 1,
            "lens": {"name": "x", "image": "img.fits", "noise_map": "noise.fits", "pixel_scale": 0.05, **lens},
            "sampler": {"chains": 4, "device": "cpu"},
            "priors": {"source": {"path": str(tmp_path / "s.pt")}}}


@pytest.fixture()
def files(tmp_path):
    for name, text in (("img.fits", "image"), ("noise.fits", "noise"), ("s.pt", "prior")):
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_second_run_into_a_locked_folder_is_refused_at_once(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(InputError, match=rf"in use by pid {os.getpid()} on "):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from pathlib import Path; from scorelens.inference.run_folder import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"in use by pid {proc.pid}"):
            with run_lock(tmp_path):
                pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with run_lock(tmp_path):
        pass


def test_identity_follows_file_contents_not_paths_or_devices(files):
    base = identity(config(files), files)
    assert set(base["inputs"]) == {"lens.image", "lens.noise_map", "priors.source.path"}
    # the same contents elsewhere, another device: the same run
    (files / "copy").mkdir()
    (files / "copy" / "img.fits").write_text("image")
    moved = config(files, image="copy/img.fits")
    moved["sampler"]["device"] = "cuda"
    assert differences(base, identity(moved, files)) == []
    # changed contents, another setting: named
    (files / "noise.fits").write_text("other noise")
    other = config(files)
    other["sampler"]["chains"] = 8
    diff = differences(base, identity(other, files))
    assert diff == ["settings sampler.chains", "the contents of lens.noise_map"]


def test_a_run_made_from_other_inputs_is_not_resumed(files):
    out = files / "run"
    out.mkdir()
    write_record(out, identity(config(files), files), config(files))
    assert (out / "config.yaml").read_text().startswith("paths:")
    check_resume(out, identity(config(files), files))  # same: fine
    (files / "img.fits").write_text("new image")
    with pytest.raises(InputError, match=r"other inputs: the contents of lens.image changed since.*resume=false"):
        check_resume(out, identity(config(files), files))


def test_fresh_folder_is_the_first_free_sibling(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "run_2").mkdir()
    assert fresh_folder(out) == tmp_path / "run_3" and (tmp_path / "run_3").is_dir()


def test_a_figure_that_fails_half_way_leaves_the_previous_one(tmp_path):
    import matplotlib.pyplot as plt

    from scorelens.inference.figures import _save

    (tmp_path / "source.png").write_bytes(b"the earlier figure")
    fig = plt.figure()

    def broken(path, **kw):
        with open(path, "wb") as f:
            f.write(b"half a PNG")
        raise KeyboardInterrupt  # as if killed mid-write

    fig.savefig = broken
    with pytest.raises(KeyboardInterrupt):
        _save(fig, tmp_path, "source")
    assert (tmp_path / "source.png").read_bytes() == b"the earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.png"]  # no temporary file left


def test_a_run_folder_name_is_cut_where_file_systems_would_refuse_it():
    from scorelens.cli.config import RUN_NAME_MAX, run_name

    assert run_name("") == "default" and run_name("seed=2") == "seed=2"
    stages = "sampler.stages={" + ",".join(f"s{i}:{{sweeps:{i},record:1}}" for i in range(40)) + "}"
    a, b = run_name(stages), run_name(stages.replace("s39", "t39"))
    assert len(a.encode()) <= RUN_NAME_MAX and a.startswith("sampler.stages={s0:")
    assert a != b  # overrides that differ only after the cut still name different folders


def test_a_whole_stage_list_as_one_override_gets_a_folder_and_the_one_line_error(tmp_path):
    """Hydra creates the run folder before any check: its name must be one the file system takes."""
    from scorelens.cli.config import RUN_NAME_MAX

    stages = ("sampler.stages={init:{sweeps:20,temperature:[20.0,5.0],mala_steps:5,burn_in:10,sde:{steps:20}},"
              "anneal:{sweeps:40,temperature:[5.0,1.0],mala_steps:5,burn_in:40,record:0,sde:{t_start:0.5}},"
              "finetune:{sweeps:20,mala_steps:5,burn_in:5,record:10,sde:{t_start:0.3}}}")
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "infer.py", "lens=mock", stages, "sampler.chains=0",
                           f"paths.log_dir={tmp_path}"], cwd=os.path.dirname(os.path.dirname(__file__)), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "File name too long" not in proc.stderr and "Traceback" not in proc.stderr
    assert "sampler.chains=0: write a positive whole number" in proc.stdout + proc.stderr
    (folder,) = (tmp_path / "infer" / "mock").iterdir()
    assert len(folder.name.encode()) <= RUN_NAME_MAX


def test_a_fit_far_from_the_noise_or_not_finite_is_refused_after_the_results():
    import math

    from scorelens.errors import PoorFitError
    from scorelens.inference.run import check_fit

    check_fit([1.02, 1.4], 3.0, "out")
    check_fit([40.0], None, "out")  # null: no limit
    with pytest.raises(PoorFitError, match=r"reduced chi2 per exposure \[1.1, 4.2\] \(limit chi2_max=3.0\)"):
        check_fit([1.1, 4.2], 3.0, "out")
    with pytest.raises(PoorFitError, match="nan"):
        check_fit([math.nan], None, "out")  # not finite: refused even without a limit


def test_the_warnings_of_a_run_are_repeated_together_at_its_end(caplog):
    import logging

    from scorelens.inference.run_warnings import collected_warnings

    other = logging.getLogger("scorelens.data.test")
    with caplog.at_level(logging.INFO), collected_warnings() as seen:
        other.warning("120 pixels with a noise of zero or less; masked")
        other.info("not a warning")
        other.warning("PSF sums to 0.8, not ~1; normalised to 1")
        other.warning("120 pixels with a noise of zero or less; masked")
    assert seen.messages == ["120 pixels with a noise of zero or less; masked",
                             "PSF sums to 0.8, not ~1; normalised to 1"]
    assert "2 warning(s) in this run:\n  - 120 pixels" in caplog.records[-1].getMessage()
