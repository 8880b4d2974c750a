"""Galaxy images for the source prior: readers, `prepare`, `GalaxyDataset`, and a training run on real stamps."""

import logging
import subprocess
import sys

import datasets
import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from hydra.utils import instantiate

from scorelens.cli.data import main
from scorelens.data.training.galaxies import GalaxyDataset, augmentation
from scorelens.data.training.galaxy_images import resample
from scorelens.data.training.galaxy_prepare import prepare, prepare_image
from scorelens.data.training.galaxy_readers import RawGalaxy, open_galaxies
from scorelens.data.training.image_stack import ImageStackDataset
from scorelens.errors import InputError
from scorelens.priors.checkpoint import load_prior
from tests.conftest import SHARED_DATA, compose_train, run_train

GALAXIES = SHARED_DATA / "source_galaxies"
COSMOS = GALAXIES / "cosmos_paltas_test" / "real_galaxy_catalog_23.5.fits"
AEGIS = GALAXIES / "galsim_real_comparison" / "AEGIS_F814w_catalog.fits"
needs_shared = pytest.mark.skipif(not COSMOS.is_file(), reason="shared data (source_galaxies/) not present")


def gaussian(shape, y0, x0, sigma, flux=100.0, q=1.0):
    """An elliptical Gaussian galaxy sampled at pixel centres, total flux `flux` (for a stamp that holds it)."""
    yy, xx = np.indices(shape, dtype=np.float64)
    img = np.exp(-0.5 * (((xx - x0) / sigma) ** 2 + ((yy - y0) / (sigma * q)) ** 2))
    return flux * img / img.sum()


def centroid(img):
    yy, xx = np.indices(img.shape)
    return (img * yy).sum() / img.sum(), (img * xx).sum() / img.sum()


def write_fits_folder(folder, images, pixel_scale=None):
    folder.mkdir()
    for i, img in enumerate(images):
        hdu = fits.PrimaryHDU(np.asarray(img, np.float32))
        if pixel_scale is not None:
            hdu.header["PIXSCALE"] = pixel_scale
        hdu.writeto(folder / f"gal{i}.fits")
    return folder


def prepared(path):
    return datasets.load_from_disk(str(path)).with_format("numpy")


# --------------------------------------------------------------------------------------------------------- readers

def test_fits_folder_reader_takes_the_first_2d_hdu_and_the_header_pixel_scale(tmp_path):
    folder = write_fits_folder(tmp_path / "in", [gaussian((30, 40), 15, 20, 3)], pixel_scale=0.05)
    cube = fits.HDUList([fits.PrimaryHDU(np.zeros((2, 5, 5))), fits.ImageHDU(np.ones((20, 21)))])
    cube.writeto(folder / "second.fits.gz")
    reader = open_galaxies(folder)
    assert reader.kind == "fits_folder" and len(reader) == 2
    first, second = list(reader)
    assert first.image.shape == (30, 40) and first.image.dtype == np.float64
    assert first.pixel_scale == pytest.approx(0.05) and first.id == "gal0"
    assert second.image.shape == (20, 21) and second.pixel_scale is None and second.id == "second"


def test_fits_pixel_scale_from_a_celestial_wcs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    hdu = fits.PrimaryHDU(np.ones((20, 20), np.float32))
    hdu.header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0,
                       "CRPIX1": 10.0, "CRPIX2": 10.0, "CD1_1": -0.03 / 3600, "CD1_2": 0.0, "CD2_1": 0.0,
                       "CD2_2": 0.03 / 3600})
    hdu.writeto(folder / "wcs.fits")
    (raw,) = open_galaxies(folder)
    assert raw.pixel_scale == pytest.approx(0.03, rel=1e-6)


def test_hdf5_reader(tmp_path):
    images = np.stack([gaussian((24, 24), 12, 12, s) for s in (2, 3, 4)])
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["pixel_sizes"] = [0.03, 0.03, 0.04]
        f["ident"] = [7, 8, 9]
    reader = open_galaxies(path)
    assert reader.kind == "hdf5" and len(reader) == 3
    rows = list(reader)
    np.testing.assert_array_equal(rows[1].image, images[1])
    assert [r.pixel_scale for r in rows] == [0.03, 0.03, 0.04] and [r.id for r in rows] == ["7", "8", "9"]


def test_hf_dataset_reader(tmp_path):
    images = [gaussian((20, 22), 10, 11, 2).astype(np.float32), gaussian((16, 16), 8, 8, 3).astype(np.float32)]
    ds = datasets.Dataset.from_dict({"image": [im.tolist() for im in images], "pixel_scale": [0.05, 0.1],
                                     "id": ["a", "b"]})
    ds.save_to_disk(str(tmp_path / "hf"))
    reader = open_galaxies(tmp_path / "hf")
    assert reader.kind == "hf_dataset" and len(reader) == 2
    rows = list(reader)
    np.testing.assert_allclose(rows[0].image, images[0])
    assert [(r.id, r.pixel_scale) for r in rows] == [("a", 0.05), ("b", 0.1)]


def write_catalogue(folder, images, scales):
    """A GalSim RealGalaxy catalogue and its multi-HDU image file, as the COSMOS sample is laid out."""
    folder.mkdir(exist_ok=True)
    hdus = [fits.PrimaryHDU(np.asarray(images[0], np.float32))]
    hdus += [fits.ImageHDU(np.asarray(im, np.float32)) for im in images[1:]]
    fits.HDUList(hdus).writeto(folder / "real_galaxy_images.fits")
    n = len(images)
    Table({"IDENT": np.arange(100, 100 + n), "GAL_FILENAME": ["real_galaxy_images.fits"] * n,
           "GAL_HDU": np.arange(n), "PIXEL_SCALE": scales}).write(folder / "catalog.fits")
    return folder / "catalog.fits"


def test_realgalaxy_reader_on_a_synthetic_catalogue(tmp_path):
    images = [gaussian((30, 31), 15, 15, 3), gaussian((40, 40), 20, 20, 4)]
    cat = write_catalogue(tmp_path / "cat", images, [0.03, 0.06])
    reader = open_galaxies(cat)
    assert reader.kind == "realgalaxy" and len(reader) == 2
    rows = list(reader)
    assert [r.id for r in rows] == ["100", "101"] and [r.pixel_scale for r in rows] == [0.03, 0.06]
    np.testing.assert_allclose(rows[1].image, images[1], rtol=1e-6)
    (tmp_path / "cat" / "real_galaxy_images.fits").unlink()
    with pytest.raises(InputError, match=r"real_galaxy_images.fits \(named in GAL_FILENAME\) not found"):
        open_galaxies(cat)


@needs_shared
@pytest.mark.parametrize("catalogue,n,files", [(COSMOS, 10, 1), (AEGIS, 5, 2)])
def test_realgalaxy_reader_on_the_staged_catalogues(catalogue, n, files):
    reader = open_galaxies(catalogue)
    rows = list(reader)
    assert reader.kind == "realgalaxy" and len(rows) == n and len(set(reader.files)) == files
    assert all(r.image.ndim == 2 and min(r.image.shape) >= 39 for r in rows)
    assert all(r.pixel_scale == pytest.approx(0.03) for r in rows)
    assert len({r.id for r in rows}) == n


@needs_shared
@pytest.mark.parametrize("path,kind,n,scale", [
    (GALAXIES / "cosmos_paltax_test" / "cosmos_catalog_test.h5", "hdf5", 5, 0.03),
    (GALAXIES / "tdlmc_sources", "fits_folder", 3, None),
])
def test_readers_on_other_staged_galaxies(path, kind, n, scale):
    reader = open_galaxies(path)
    rows = list(reader)
    assert reader.kind == kind and len(rows) == n
    assert all(r.image.ndim == 2 and np.isfinite(r.image).all() and r.pixel_scale == scale for r in rows)


# --------------------------------------------------------------------------------------------------------- prepare

SETTINGS = dict(centre="centroid", mask_neighbours=False, mask_fill="noise", border=5, detect_sigma=3.0,
                min_pixels=5, deblend_contrast=0.001, min_size=16, seed=0)


def run_one(image, pixel_scale, target, size, **kwargs):
    from scorelens.data.training.galaxy_prepare import PrepareSettings

    s = PrepareSettings(size=size, pixel_scale=target, **{**SETTINGS, **kwargs})
    return prepare_image(RawGalaxy(image, pixel_scale, "x"), s, np.random.default_rng(0))


@pytest.mark.parametrize("target", [0.05, 0.015, 0.03])
def test_resampling_conserves_flux(target):
    img = gaussian((101, 101), 47.3, 52.6, 5.0, q=0.6, flux=123.0)
    out = run_one(img, 0.03, target, 256)
    assert out.status == "ok"
    assert out.image.sum() == pytest.approx(123.0, rel=1e-3)
    # the width in arcsec is kept: second moment of the major axis, 5 pixels of 0.03 arcsec
    cy, cx = centroid(out.image)
    xx = np.arange(256)
    sigma_x = np.sqrt((out.image.sum(0) * (xx - cx) ** 2).sum() / out.image.sum()) * target
    assert sigma_x == pytest.approx(5 * 0.03, rel=0.02)


def test_resample_is_exact_for_aligned_grids():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(12, 12))
    np.testing.assert_allclose(resample(img, 1.0, (5.5, 5.5), 12), img, atol=1e-12)  # identity
    np.testing.assert_allclose(resample(img, 3.0, (5.5, 5.5), 4), img.reshape(4, 3, 4, 3).sum((1, 3)), atol=1e-12)


@pytest.mark.parametrize("target", [None, 0.02])
def test_prepare_centres_the_galaxy(target):
    img = gaussian((96, 110), 40.3, 57.8, 4.0, q=0.7)
    out = run_one(img, 0.03, target, 64)
    cy, cx = centroid(out.image)
    assert abs(cy - 31.5) < 0.1 and abs(cx - 31.5) < 0.1


def test_prepare_subtracts_a_constant_background():
    img = gaussian((80, 80), 40, 40, 4.0, flux=50.0)
    out = run_one(img + 7.0 + np.random.default_rng(0).normal(0, 1e-4, img.shape), 0.03, None, 64)
    assert out.image.sum() == pytest.approx(50.0, rel=1e-3)
    assert np.abs(out.image[:4]).max() < 1e-3  # the stamp's edge rows: background gone, noise left


def test_neighbours_are_masked_on_request():
    rng = np.random.default_rng(3)
    img = gaussian((100, 100), 50, 50, 4.0, flux=50.0) + gaussian((100, 100), 20, 80, 2.0, flux=40.0)
    img += rng.normal(0, 0.002, img.shape)
    kept = run_one(img, 0.03, None, 100)
    masked = run_one(img, 0.03, None, 100, mask_neighbours=True)
    for fill in ("noise", "zero"):
        out = run_one(img, 0.03, None, 100, mask_neighbours=True, mask_fill=fill)
        # the neighbour sits at about (20, 80) before centring, (19.5, 79.5) after
        assert np.abs(out.image[14:26, 74:86]).max() < 0.02
    assert kept.image[14:26, 74:86].sum() > 35
    assert masked.image[40:60, 40:60].sum() == pytest.approx(kept.image[40:60, 40:60].sum(), rel=1e-6)


def test_a_neighbour_touching_the_galaxy_is_deblended_and_masked():
    from scorelens.data.training.galaxy_images import segment

    rng = np.random.default_rng(5)
    # a neighbour whose light overlaps the galaxy's above the threshold: one region before deblending
    img = gaussian((100, 100), 50, 50, 5.0, flux=60.0) + gaussian((100, 100), 50, 68, 3.0, flux=15.0)
    img += rng.normal(0, 0.002, img.shape)
    whole = segment(img, 5, 3.0, 5, None)
    assert whole is not None and not whole[1].any()  # without deblending: no other source
    central, others = segment(img, 5, 3.0, 5, 0.001)
    assert others[50, 68] and central[50, 48] and not central[50, 68]
    out = run_one(img, 0.03, None, 100, mask_neighbours=True, mask_fill="zero")
    kept = run_one(img, 0.03, None, 100)
    # the neighbour's core is gone (masked before centring moves the image by under a pixel), the galaxy's kept
    assert out.image[46:54, 64:72].sum() < 0.2 * kept.image[46:54, 64:72].sum()
    assert out.image[45:53, 45:53].sum() == pytest.approx(kept.image[45:53, 45:53].sum(), rel=0.05)


def test_prepare_writes_an_arrow_dataset(tmp_path, caplog):
    images = [gaussian((60, 70), 30, 35, s, flux=10 * s) for s in (2.0, 3.0, 4.0)]
    images.append(np.full((60, 60), np.nan))
    folder = write_fits_folder(tmp_path / "in", images, pixel_scale=0.03)
    with caplog.at_level(logging.INFO, logger="scorelens.data.training.galaxy_prepare"):
        out = prepare(folder, tmp_path / "out", size=48, pixel_scale=0.06)
    assert "wrote 3 of 4 galaxies" in caplog.text and "1 non-finite (e.g. gal3)" in caplog.text
    ds = prepared(out)
    assert ds.column_names == ["image", "id", "source_pixel_scale", "flux"] and len(ds) == 3
    row = ds[1]
    assert row["image"].shape == (48, 48) and row["image"].dtype == np.float32
    assert row["id"] == "gal1" and row["source_pixel_scale"] == pytest.approx(0.03)
    assert row["flux"] == pytest.approx(30.0, rel=1e-3) == row["image"].sum()
    assert not list(tmp_path.glob(".out*")), "temporary folders left behind"
    with pytest.raises(InputError, match="already exists"):
        prepare(folder, out, size=48)
    prepare(folder, out, size=32, overwrite=True)
    assert prepared(out)[0]["image"].shape == (32, 32)


@pytest.mark.parametrize("make,match", [
    (lambda d: d.mkdir(), "holds no FITS images"),
    (lambda d: write_fits_folder(d, [np.zeros((3, 30, 30))]), r"no 2-D image in any HDU"),
    (lambda d: write_fits_folder(d, [np.full((30, 30), np.nan), np.full((30, 30), np.inf)]),
     r"no usable galaxy images \(rejected 2 non-finite"),
    (lambda d: write_fits_folder(d, [np.zeros((30, 30))]), r"no usable galaxy images \(rejected 1 blank"),
    (lambda d: write_fits_folder(d, [gaussian((8, 8), 4, 4, 1)]), "rejected 1 too small"),
    (lambda d: (d.mkdir(), (d / "junk.fits").write_bytes(b"not a FITS file" * 10)), "cannot read FITS file"),
    (lambda d: None, "no such file or folder"),
])
def test_bad_inputs_fail_with_one_line(tmp_path, make, match):
    src = tmp_path / "in"
    make(src)
    with pytest.raises(InputError, match=match) as err:
        prepare(src, tmp_path / "out", size=32)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_truncated_fits_and_bad_stacks(tmp_path):
    folder = write_fits_folder(tmp_path / "in", [gaussian((50, 50), 25, 25, 3)])
    data = (folder / "gal0.fits").read_bytes()
    (folder / "gal0.fits").write_bytes(data[:4000])
    with pytest.raises(InputError, match=r"gal0.fits: cannot read FITS file"):
        prepare(folder, tmp_path / "out", size=32)
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["images"] = np.zeros((30, 30))
    with pytest.raises(InputError, match=r"shape \(30, 30\), expected a stack of 2-D images"):
        prepare(tmp_path / "flat.h5", tmp_path / "out", size=32)
    datasets.Dataset.from_dict({"image": [[1.0, 2.0, 3.0]]}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(InputError, match=r"row 0 .*shape \(3,\), expected a 2-D image"):
        prepare(tmp_path / "hf", tmp_path / "out", size=32)
    fits.PrimaryHDU(np.ones((40, 40))).writeto(tmp_path / "image.fits")
    with pytest.raises(InputError, match="not a GalSim RealGalaxy catalogue"):
        prepare(tmp_path / "image.fits", tmp_path / "out", size=32)


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, caplog):
    assert main(["galaxies", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "missing: no such file or folder" in caplog.text
    proc = subprocess.run([sys.executable, "-m", "scorelens.cli.data", "galaxies", str(tmp_path / "missing"),
                           str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no such file or folder" in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------------ GalaxyDataset

@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    """Six Gaussian galaxies prepared at 64 pixels."""
    tmp = tmp_path_factory.mktemp("galaxies")
    rng = np.random.default_rng(0)
    images = [gaussian((64, 64), 32 + rng.uniform(-3, 3), 32 + rng.uniform(-3, 3), s, flux=f, q=0.5)
              for s, f in zip((2, 3, 4, 2.5, 3.5, 5), (10, 20, 40, 15, 30, 60), strict=True)]
    return prepare(write_fits_folder(tmp / "in", images), tmp / "out", size=64)


def test_galaxy_dataset_norm_and_resizing(synthetic_set):
    ds = GalaxyDataset(synthetic_set, image_size=64, augment="none")
    assert len(ds) == 6
    x = ds[2]
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32
    peaks = [float(ds[i].max()) for i in range(6)]
    assert np.median(peaks) == pytest.approx(1.0)  # norm.scale: auto puts the median peak at 1
    stored = prepared(synthetic_set)[2]["image"]
    torch.testing.assert_close(ds.norm.to_flux(x)[0], torch.from_numpy(stored))

    small = GalaxyDataset(synthetic_set, image_size=16, augment="none", norm={"scale": 2.0, "offset": 0.0})
    assert float(small.norm.to_flux(small[2]).sum()) == pytest.approx(float(stored.sum()), rel=1e-5)
    odd = GalaxyDataset(synthetic_set, image_size=24, augment="none", norm={"scale": 2.0})
    assert float(odd[2].sum() * 2.0) == pytest.approx(float(stored.sum()), rel=1e-4)
    crop = GalaxyDataset(synthetic_set, image_size=32, augment="none", resize="crop", norm={"scale": 1.0})
    torch.testing.assert_close(crop[2][0], torch.from_numpy(stored[16:48, 16:48]))


def test_augmentations_only_flip_and_rotate_by_90_degrees(synthetic_set):
    ref = GalaxyDataset(synthetic_set, image_size=64, augment="none")[0][0]
    for mode, expected in (("flips", 4), ("dihedral", 8)):
        ds = GalaxyDataset(synthetic_set, image_size=64, augment=mode)
        seen = set()
        for _ in range(80):
            out = ds[0][0]
            assert torch.equal(out.flatten().sort().values, ref.flatten().sort().values)  # pixel multiset kept
            matches = [(f, k) for f in (0, 1) for k in range(4)
                       if torch.equal(out, torch.rot90(ref.flip(-1) if f else ref, k))]
            assert matches
            seen.add(matches[0])
        assert len(seen) == expected
    assert augmentation("none") is None
    with pytest.raises(InputError, match="augment must be one of"):
        augmentation("rotate45")


def test_galaxy_dataset_refuses_bad_paths(tmp_path, synthetic_set):
    with pytest.raises(InputError, match="training images not found"):
        GalaxyDataset(tmp_path / "none", image_size=32)
    (tmp_path / "train.h5").write_bytes(b"x")
    with pytest.raises(InputError, match="not a prepared galaxy dataset.*ImageStackDataset"):
        GalaxyDataset(tmp_path / "train.h5", image_size=32)
    with pytest.raises(InputError, match="1 channel"):
        GalaxyDataset(synthetic_set, image_size=32, channels=3)
    with pytest.raises(InputError, match="scale is a number > 0 or 'auto'"):
        GalaxyDataset(synthetic_set, image_size=32, norm={"scale": -1})


def test_source_config_reads_prepared_galaxies_or_an_hdf5_stack(tmp_path, synthetic_set):
    cfg = compose_train(["prior=source", "experiment=smoke", f"data.train.path={synthetic_set}"], tmp_path / "run")
    ds = instantiate(cfg.data.train)
    assert isinstance(ds, GalaxyDataset) and ds[0].shape == (1, 32, 32)
    assert cfg.data.train.path == str(synthetic_set)
    default = compose_train(["prior=source", "paths.data_dir=/data"], tmp_path / "run")
    assert default.data.train.path == "/data/source/galaxies"

    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["images"] = np.ones((3, 32, 32), np.float32)
    cfg = compose_train(["prior=source", "experiment=smoke",  # the override line in conf/prior/source.yaml
                         "data.train._target_=scorelens.data.training.image_stack.ImageStackDataset",
                         f"data.train.path={tmp_path / 'stack.h5'}", "data.train.norm.scale=0.5"], tmp_path / "run")
    stack = instantiate(cfg.data.train)
    assert isinstance(stack, ImageStackDataset) and float(stack[0].max()) == 2.0


# ------------------------------------------------------------------------------------------------ acceptance

@needs_shared
def test_train_source_prior_on_prepared_cosmos_stamps(tmp_path):
    """Prepare the COSMOS RealGalaxy stamps, then `python train.py prior=source experiment=smoke` on them."""
    out = prepare(COSMOS, tmp_path / "data" / "source" / "galaxies", size=256, pixel_scale=0.015)
    assert len(prepared(out)) == 10
    run = tmp_path / "run"
    run_train(["prior=source", "experiment=smoke", f"paths.data_dir={tmp_path / 'data'}", "logger=none",
               f"hydra.run.dir={run}"], cwd=tmp_path)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 8
    norm = GalaxyDataset(out, image_size=32).norm
    assert state["hyper_parameters"]["norm"] == norm.config()
    prior = load_prior(run / "prior.pt", kind="source", image_size=32, sigma_min=1e-5, sigma_max=500)
    assert prior.norm == norm and norm.scale > 0
