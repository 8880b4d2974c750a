"""The schema of the infer config: every lens with every infer experiment validates; unknown keys, values of the
wrong type and unset values fail in one line that names the key."""

import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from scorelens.errors import InputError
from scorelens.inference.config import validate_infer_config
from scorelens.lensing.mass import PARAM_NAMES

from .conftest import CONF, ROOT, compose_infer

LENSES = sorted(p.stem for p in (CONF / "lens").glob("*.yaml"))
# what a lens config leaves to the command line (lens=fits: the user's files; validation opens none)
LENS_OVERRIDES = {"fits": ["lens.image=i.fits", "lens.noise_map=n.fits", "lens.psf=p.fits", "lens.pixel_scale=0.05"]}
# with conf/infer.yaml; the others configure train.py
INFER_EXPERIMENTS = ["demo", "infer_smoke", "calibration", "paper"]
TRAIN_EXPERIMENTS = ["demo_lens_light", "demo_psf", "demo_source", "smoke"]


def rejects(overrides, *names):
    """The InputError's message for a composed config that must fail; it is one line and names each of `names`."""
    with pytest.raises(InputError) as err:
        validate_infer_config(compose_infer(overrides))
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    return message


def test_every_experiment_is_known_as_infer_or_train():
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")) == sorted(INFER_EXPERIMENTS
                                                                                  + TRAIN_EXPERIMENTS)


@pytest.mark.parametrize("lens", LENSES)
def test_every_lens_with_every_infer_experiment_validates(lens):
    for experiment in [None, *INFER_EXPERIMENTS]:
        cfg = compose_infer([f"lens={lens}", *LENS_OVERRIDES.get(lens, [])]
                            + ([f"experiment={experiment}"] if experiment else []))
        before = OmegaConf.to_yaml(cfg)
        validate_infer_config(cfg)
        assert OmegaConf.to_yaml(cfg) == before  # read only: the run's config hash sees the values as given


def test_a_plain_mapping_validates_too():
    validate_infer_config(OmegaConf.to_container(compose_infer(["lens=J1430"])))


@pytest.mark.parametrize("overrides, key, allowed", [
    (["+lens.intt=1"], "lens.intt", "lens.init"),                       # a typo, and the key it resembles
    (["+observations.skyy=median"], "observations.skyy", "observations.sky"),
    (["+lens.init.thetaE=1.5"], "lens.init.thetaE", "lens.init.theta_E"),
    (["+lensing.source.size=64"], "lensing.source.size", "pixel_scale"),
    (["+priors.psf.scale=0.02"], "priors.psf.scale", "pixel_scale"),
    (["+lens.catalog.b=1.5"], "lens.catalog.b", "b_SIE_arcsec"),
    (["+flux.sources.scale=1"], "flux.sources", "flux.source"),
    (["+lensing.diag_psf_energy=0.99"], "lensing.diag_psf_energy", "n_terms"),  # removed: nothing read it
    (["+samples=3"], "samples", "sampler"),
])
def test_an_unknown_key_in_an_override_is_named_with_what_is_allowed(overrides, key, allowed):
    message = rejects(["lens=J1430", *overrides], key, allowed)
    assert message.startswith(f"unknown config key {key}")


def test_an_override_of_a_key_that_does_not_exist_is_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match="lens.intt"):
        compose_infer(["lens=J1430", "lens.intt=1"])


@pytest.fixture
def searchpath(tmp_path):
    """A config folder searched after conf/: lens configs and experiments with mistakes, without touching conf/."""
    for group in ("lens", "experiment"):
        (tmp_path / group).mkdir()
    return f"hydra.searchpath=[file://{tmp_path}]", tmp_path


def test_an_unknown_key_in_a_lens_file_is_named(searchpath):
    override, folder = searchpath
    text = (CONF / "lens" / "J1430.yaml").read_text().replace("init:", "intt:")
    (folder / "lens" / "typo.yaml").write_text(text)
    rejects([override, "lens=typo"], "unknown config key lens.intt", "lens.init")


def test_an_unknown_key_in_an_experiment_is_named(searchpath):
    override, folder = searchpath
    (folder / "experiment" / "typo.yaml").write_text("# @package _global_\nobservations:\n  skyy: median\n")
    rejects([override, "lens=J1430", "experiment=typo"], "unknown config key observations.skyy", "observations.sky")


def test_an_unknown_key_of_a_mock_lens_is_named():
    rejects(["lens=mock", "+lens.mock.seeed=2"], "unknown config key lens.mock.seeed", "lens.mock.seed")
    rejects(["lens=mock", "+lens.mock.z_lens=0.3"], "lens.mock.z_lens")  # the lens's own z_lens is the mock's


def test_star_and_epsf_settings_are_checked_by_their_readers():
    rejects(["lens=J1430", "+stars.find.snrmin=30"], "stars.find", "snrmin", "snr_min")
    rejects(["lens=J1430", "~stars.find.snr_min"], "snr_min", "missing")
    rejects(["lens=J1430", "+stars.epsf.iterations=5"], "unknown config key stars.epsf.iterations", "maxiters")


@pytest.mark.parametrize("override, key", [
    ("lens.ra=north", "lens.ra"),
    ("observations.cutout=64.5", "observations.cutout"),
    ("seed=first", "seed"),
    ("observations.dq_bad_bits=[4,cosmic]", "observations.dq_bad_bits[1]"),
    ("wandb.enabled=sometimes", "wandb.enabled"),
])
def test_a_value_of_the_wrong_type_is_named(override, key):
    rejects(["lens=J1430", override], f"config key {key}:")


@pytest.mark.parametrize("override, key", [("lensing.source=64", "lensing.source"), ("lens.init=1.5", "lens.init")])
def test_a_value_where_settings_belong_is_named_with_the_settings(override, key):
    rejects(["lens=J1430", override], f"config key {key} holds settings", "pixel_scale" if "source" in key else "q")


def test_unset_values_are_named():
    rejects(["lens=J1430", "~lens.init.q"], "lens.init.q", "not set")
    # the groups' settings have their defaults in conf/ only: one left out is named, not filled in by the schema
    rejects(["lens=J1430", "~psf.given", "~sampler.shifts.fix_first"], "psf.given", "sampler.shifts.fix_first",
            "not set")
    # the base of the SLACS configs is no lens of its own: what each lens must give is named
    message = rejects(["lens=base/slacs"], "lens.name", "lens.ra", "lens.catalog.b_SIE_arcsec")
    assert "lens.init.gamma" not in message  # given by the base


def test_every_mass_parameter_is_an_init_key():
    message = rejects(["lens=J1430", "+lens.init.b=1"], "lens.init.b")
    assert message.endswith("lens.init allows: " + ", ".join(PARAM_NAMES))


def test_values_the_code_accepts_still_validate():
    for overrides in (["flux.source.scale=120"], ["flux.source.scale=1.5e3"], ["psf.sample=true"], ["resume=false"],
                      ["observations.sky=3.5"], ["observations.sky=median"], ["priors.psf=null"],
                      ["lens.exposures=J1430/j9op36bfq_flt.fits"], ["lensing.n_terms=40"],
                      ["lensing.margin=0"], ["lensing.margin=12"]):
        validate_infer_config(compose_infer(["lens=J1430", *overrides]))


@pytest.mark.parametrize("overrides,key", [
    (["+sampler.anything={a: 1}"], "sampler.anything"),
    (["+sampler.stages.anneal.sweep=3"], "sweep"),
    (["++sampler.sde.stepz=3"], "stepz"),
    (["++sampler.psf.sde.t_start=1.5"], "t_start"),
    (["+sampler.mala.step=0.1"], "sampler.mala.step"),
    (["sampler.parameters.theta_E.uniform=[4.0,0.2]"], "sampler.parameters.theta_E.uniform: needs low < high"),
    # the pairs' entries: an unknown pair, a missing scale, a negative sd, the polar entries of earlier configs
    (["+sampler.parameters.multipole5={normal: 0.01, scale: 0.002}"], "sampler.parameters.multipole5: unknown entry"),
    (["~sampler.parameters.shear.scale"], "sampler.parameters.shear: `scale`"),
    (["sampler.parameters.ellipticity.normal=-0.2"], "sampler.parameters.ellipticity.normal: must be > 0"),
    (["+sampler.parameters.q={uniform: [0.2, 1.0], scale: 0.005}"],
     "sampler.parameters.q: q and phi are sampled as the Cartesian pair (e1, e2); replace their entries by one "
     "`ellipticity: {normal: 0.2, max: 0.667, scale: 0.003}`"),
    (["+sampler.parameters.phi3={periodic: 2.0943951023931953, scale: 0.1}"],
     "sampler.parameters.phi3: a3 and phi3 are sampled"),
])
def test_the_sampler_node_is_checked_by_its_readers(overrides, key):
    with pytest.raises(InputError) as err:
        validate_infer_config(compose_infer(["lens=J1430", *overrides]))
    message = str(err.value)
    assert "\n" not in message and key in message, message


def test_infer_stops_before_any_work(tmp_path):
    from scorelens.inference.run import infer

    cfg = compose_infer(["lens=J1430", "+observations.skyy=median"])
    with pytest.raises(InputError, match="observations.skyy"):
        infer(cfg, tmp_path / "run", ROOT)
    assert not (tmp_path / "run").exists()


def test_infer_py_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), "lens=J1430", "+lens.intt=1",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "unknown config key" in line]
    assert len(lines) == 1 and "lens.intt" in lines[0] and "lens.init" in lines[0]


@pytest.mark.parametrize("overrides, message", [
    (["observations.cutout=0"], "observations.cutout=0: write a positive whole number"),
    (["observations.cutout=-64"], "observations.cutout=-64: write a positive whole number"),
    (["+lens.cutout=0"], "lens.cutout=0: write a positive whole number"),
    (["+lens.pixel_scale=-0.05"], "lens.pixel_scale=-0.05: write a positive number"),
    (["sampler.chains=0"], "sampler.chains=0: write a positive whole number"),
    (["sampler.mala.step_size=0"], "sampler.mala.step_size=0: write a positive number"),
    (["sampler.mala.target_accept=1.5"], "sampler.mala.target_accept=1.5: write a fraction between 0 and 1"),
    (["lensing.source.n=0"], "lensing.source.n=0: write a positive whole number"),
    (["lensing.margin=-2"], "lensing.margin=-2: write auto"),
    (["lensing.margin=psf"], "lensing.margin='psf': write auto"),
    (["sampler.dtype=float16"], "sampler.dtype='float16': write one of float32, float64"),
    (["sampler.network.precision=float16"], "sampler.network.precision='float16': write one of float32, bfloat16"),
    (["sampler.device=gpu"], "sampler.device='gpu': write auto"),
    (["resume=maybe"], "resume='maybe': write auto"),
    # the posterior samples are the last stage's records: a run that would keep none fails before it starts
    (["sampler.stages.finetune.record=0"], "sampler.stages.finetune.record is 0: no sweep would be kept"),
])
def test_a_value_out_of_range_is_named_with_what_to_write(overrides, message):
    rejects(["lens=J1430", *overrides], message)


def test_a_gpu_asked_for_where_there_is_none_is_refused_before_any_work():
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        rejects(["lens=J1430", f"sampler.device=cuda:{count}"], f"sampler.device=cuda:{count}",
                f"has {count} CUDA GPU(s)")
    else:
        rejects(["lens=J1430", "sampler.device=cuda"], "sampler.device=cuda: this machine has no CUDA GPU",
                "sampler.device=cpu")
