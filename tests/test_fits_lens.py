"""lens=fits: a user's own co-add (image, noise map, PSF as FITS files), no catalogue entry and no mass given.

The config composes with the files given on the command line, runs end to end (the smoke experiment, files named
relative to the folder infer.py runs in), and each bad file or value is refused in one line naming its key.
"""

import csv
import logging

import h5py
import numpy as np
import pytest
from astropy.io import fits
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from scorelens.data.observations.exposure_set import Exposure, ExposureSet
from scorelens.data.observations.lens import load_lens
from scorelens.errors import InputError
from scorelens.inference.config import validate_infer_config
from scorelens.inference.setup import SOURCE_FOV_FRACTION, lens_data_dir, source_pixel_scale
from scorelens.lensing.mass import PARAM_NAMES

from .conftest import CONF, compose_infer
from .test_infer import run_infer, tiny_prior

SIZE, SCALE, NOISE = 48, 0.05, 0.01  # pixels, arcsec per pixel, 1-sigma noise (image units)


def blob(shape, row, col, sigma, amp=1.0):
    """A round Gaussian [H, W] of peak `amp` at (row, col), pixels."""
    r, c = np.indices(shape)
    return amp * np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2))


def psf_stamp(size=11, sigma=1.2, row=None, col=None):
    """A unit-sum Gaussian PSF [size, size], centred unless row/col say otherwise."""
    c = size // 2
    k = blob((size, size), c if row is None else row, c if col is None else col, sigma)
    return k / k.sum()


def write(path, data):
    fits.PrimaryHDU(data=np.asarray(data, np.float64)).writeto(path, overwrite=True)
    return path


def lens_files(folder, image=None, noise=None, psf=None):
    """image.fits, noise.fits, psf.fits in `folder`: a lens galaxy with four arcs 1 arcsec out, plus noise."""
    if image is None:
        c = SIZE // 2
        image = blob((SIZE, SIZE), c, c, 3.0, 1.0)
        for angle in (0.3, 1.9, 3.4, 5.0):  # arcs at theta_E = 1 arcsec = 20 pixels
            image += blob((SIZE, SIZE), c + 20 * np.sin(angle), c + 20 * np.cos(angle), 1.5, 0.3)
        image += np.random.default_rng(0).normal(0.0, NOISE, image.shape)
    noise = np.full((SIZE, SIZE), NOISE) if noise is None else noise
    return (write(folder / "image.fits", image), write(folder / "noise.fits", noise),
            write(folder / "psf.fits", psf_stamp() if psf is None else psf))


def overrides(image="image.fits", noise="noise.fits", psf="psf.fits", scale=SCALE, extra=()):
    return ["lens=fits", f"lens.image={image}", f"lens.noise_map={noise}", f"lens.psf={psf}",
            f"lens.pixel_scale={scale}", *extra]


def lens_node(extra=(), **files) -> dict:
    return OmegaConf.to_container(compose_infer(overrides(**files, extra=extra)).lens, resolve=True)


def refused(node, folder, *fragments):
    """load_lens refuses the lens node with one line holding every fragment."""
    with pytest.raises(InputError) as excinfo:
        load_lens(node, folder)
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --------------------------------------------------------------------------------------------------- config


def test_the_config_composes_with_the_files_and_needs_no_mass_nor_catalogue():
    cfg = compose_infer(overrides())
    validate_infer_config(cfg)
    lens = cfg.lens
    assert lens.name == "fits" and lens.init_from == "auto" and lens.source_fov == "auto"
    assert "init" not in lens and "catalog" not in lens
    assert lens.ra is None and lens.z_lens is None and lens.z_source is None and lens.cutout is None
    assert (lens.image, lens.pixel_scale) == ("image.fits", SCALE)
    # the demo composes with it too, and the files' keys stay out of the run folder's name
    validate_infer_config(compose_infer([*overrides(), "experiment=demo", "lens.name=MYLENS"]))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(config_name="infer", overrides=overrides(), return_hydra_config=True)
    excluded = set(hydra_cfg.hydra.job.config.override_dirname.exclude_keys)
    assert {"lens.image", "lens.noise_map", "lens.psf", "lens.name"} <= excluded


def test_files_and_pixel_scale_are_required():
    with pytest.raises(InputError, match=r"lens\.image, lens\.noise_map, lens\.psf, lens\.pixel_scale not set"):
        validate_infer_config(compose_infer(["lens=fits"]))


@pytest.mark.parametrize("value", ["-1", "'wide'"])
def test_a_bad_source_fov_is_named(value):
    with pytest.raises(InputError, match=r"lens\.source_fov="):
        validate_infer_config(compose_infer(overrides(extra=[f"lens.source_fov={value}"])))


def test_source_grid_width_from_the_cutout_or_as_given():
    exp = Exposure(name="e", path=None, data=np.zeros((40, 40)), variance=np.ones((40, 40)),
                   mask=np.ones((40, 40), bool), x=np.zeros((40, 40)), y=np.zeros((40, 40)), pixel_scale=0.05)
    data = ExposureSet("fits", None, None, [exp])
    source = {"n": 32, "pixel_scale": 0.015}
    assert source_pixel_scale({"source_fov": "auto"}, source, data) == pytest.approx(SOURCE_FOV_FRACTION * 2.0 / 32)
    assert source_pixel_scale({"source_fov": 1.6}, source, data) == pytest.approx(0.05)
    assert source_pixel_scale({"source_fov": None}, source, data) == 0.015
    # relative paths of lens=fits start from the folder the command runs in (paths.root_dir), not paths.data_dir
    cfg = OmegaConf.to_container(compose_infer(overrides()))
    assert lens_data_dir({**cfg, "paths": {"data_dir": "data"}}, "/here").resolve() == \
        lens_data_dir({"lens": {}, "paths": {"data_dir": "."}}, "/here").resolve()


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_run_from_relative_paths_writes_the_usual_outputs(tmp_path):
    lens_files(tmp_path)
    s = tiny_prior("source", 32, tmp_path / "source.pt")
    lt = tiny_prior("lens_light", 48, tmp_path / "lens_light.pt")
    # the files are named relative to the run's folder; the smoke's mock block (the mock's sizes) is ignored; its
    # last stage alone (2 sweeps, not branching: the stage it would branch from is left out) keeps the test short
    args = [*overrides(), "experiment=infer_smoke", "~sampler.stages.init", "~sampler.stages.anneal",
            "sampler.stages.finetune.branch=false", f"priors.source.path={s}", f"priors.lens_light.path={lt}",
            "wandb.enabled=false"]
    proc = run_infer(args, tmp_path)
    (out,) = (tmp_path / "logs" / "infer" / "fits").iterdir()
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["parameter"] for r in rows] == list(PARAM_NAMES)
    assert all(np.isfinite(float(r["median"])) for r in rows if r["parameter"] == "theta_E")
    with h5py.File(out / "samples.h5") as f:
        assert f["source"].shape[1:] == (32, 32) and f["lens_light"].shape[1:] == (48, 48)
        # the source grid spans half the cutout (lens.source_fov: auto), not the smoke's lensing.source.pixel_scale
        assert f.attrs["source_pixel_scale"] == pytest.approx(SOURCE_FOV_FRACTION * SIZE * SCALE / 32)
    for name in ("exposures", "source", "corner", "images"):
        assert (out / f"{name}.png").stat().st_size > 0
    assert (out / "chi2.csv").exists() and not (out / "truth.json").exists()
    text = (out / "infer.log").read_text()
    assert "start finder:" in text and "mode 0: theta_E" in text
    assert "Traceback" not in proc.stderr


# -------------------------------------------------------------------------------------------------- bad input


def test_good_files_load_with_the_lens_at_the_centre(tmp_path):
    lens_files(tmp_path)
    data = load_lens(lens_node(), tmp_path)
    exp = data.exposures[0]
    assert data.ra is None and exp.shape == (SIZE, SIZE) and exp.mask.all()
    assert (exp.x[SIZE // 2, SIZE // 2], exp.y[SIZE // 2, SIZE // 2]) == (0.0, 0.0)
    cropped = load_lens(lens_node(extra=["lens.cutout=32"]), tmp_path).exposures[0]
    assert cropped.shape == (32, 32)


def test_a_missing_file_is_named(tmp_path):
    lens_files(tmp_path)
    refused(lens_node(psf="nothere.fits"), tmp_path, "lens.psf=", "nothere.fits: file not found")


def test_a_file_without_image_data_is_named(tmp_path):
    lens_files(tmp_path)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]) \
        .writeto(tmp_path / "table.fits")
    refused(lens_node(noise="table.fits"), tmp_path, "lens.noise_map=", "no HDU holds image data")


def test_image_data_in_the_first_extension_is_read(tmp_path):
    image, _, _ = lens_files(tmp_path)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(fits.getdata(image))]).writeto(tmp_path / "ext.fits")
    assert load_lens(lens_node(image="ext.fits"), tmp_path).exposures[0].shape == (SIZE, SIZE)


def test_shapes_that_disagree_are_named(tmp_path):
    lens_files(tmp_path, noise=np.full((SIZE, SIZE - 2), NOISE))
    refused(lens_node(), tmp_path, "lens.noise_map=", "differs from the image's")


@pytest.mark.parametrize("which", ["image", "noise_map"])
def test_nan_pixels_in_the_cutout_are_named(tmp_path, which):
    bad = np.full((SIZE, SIZE), NOISE if which == "noise_map" else 0.0)
    bad[SIZE // 2, SIZE // 2 + 3] = np.nan
    bad[2, 2] = np.inf  # outside a 32-pixel cutout
    lens_files(tmp_path, **{"image" if which == "image" else "noise": bad})
    refused(lens_node(), tmp_path, f"lens.{which}=", "2 pixels", "NaN or infinite", "lens.cutout")
    bad[SIZE // 2, SIZE // 2 + 3] = 1.0 if which == "image" else NOISE
    lens_files(tmp_path, **{"image" if which == "image" else "noise": bad})
    assert load_lens(lens_node(extra=["lens.cutout=32"]), tmp_path).exposures[0].mask.all()


def test_non_positive_noise_is_masked_with_a_warning(tmp_path, caplog):
    noise = np.full((SIZE, SIZE), NOISE)
    noise[:3, :] = 0.0
    noise[5, 5] = -1.0
    lens_files(tmp_path, noise=noise)
    with caplog.at_level(logging.WARNING):
        exp = load_lens(lens_node(), tmp_path).exposures[0]
    assert np.count_nonzero(~exp.mask) == 3 * SIZE + 1
    assert f"{3 * SIZE + 1} pixels with a noise of zero or less" in caplog.text and "masked" in caplog.text


@pytest.mark.parametrize("psf, fragments", [
    (psf_stamp(10), ("10 x 10", "odd side")),
    (psf_stamp(11)[:, :9], ("11 x 9", "square")),
    (psf_stamp(11, row=6.5, col=5), ("recentre it on pixel (5, 5)",)),
    (1.2 * psf_stamp(11), ("sums to 1.2", "normalise it")),
    (np.where(np.eye(11) > 0, np.nan, psf_stamp(11)), ("NaN",)),
])
def test_a_psf_that_needs_repair_is_refused(tmp_path, psf, fragments):
    lens_files(tmp_path, psf=psf)
    refused(lens_node(), tmp_path, "lens.psf=", *fragments)


@pytest.mark.parametrize("scale", ["-0.05", "0"])
def test_a_pixel_scale_that_is_not_positive_is_named(tmp_path, scale):
    lens_files(tmp_path)
    refused(lens_node(scale=scale), tmp_path, f"lens.pixel_scale={scale}:", "positive")


def test_a_cutout_that_is_not_positive_is_named(tmp_path):
    lens_files(tmp_path)
    refused(lens_node(extra=["lens.cutout=0"]), tmp_path, "lens.cutout=0", "positive number of pixels")


def test_what_a_lax_load_repairs_is_said_in_a_warning(tmp_path, caplog):
    """Without lens.strict a PSF of even side or far from unit sum is repaired, and a cutout larger than the image
    falls back to the whole image: each with a warning naming what was done."""
    import logging

    psf = psf_stamp()
    lens_files(tmp_path, psf=2.0 * np.pad(psf, ((0, 1), (0, 1))))  # even side, sum 2
    with caplog.at_level(logging.WARNING):
        data = load_lens(lens_node(extra=[f"lens.cutout={SIZE + 16}", "lens.strict=false"]), tmp_path)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert data.exposures[0].shape == (SIZE, SIZE)
    assert f"lens.cutout={SIZE + 16} is larger than the co-add" in text and "the whole image is used" in text
    assert "not square with an odd side; padded with zeros" in text
    assert "PSF sums to 2, not ~1; normalised to 1" in text
