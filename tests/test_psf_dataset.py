"""The PSF prior's training data: STDPSF cubes, TinyTim files, stacks and folders -> centred unit-sum PSFs; the CLI
that writes PSF stacks (ePSFs from FLT stars, or converted files); and a smoke training run on the STDPSF cube."""

import h5py
import numpy as np
import pytest
import torch
from astropy.io import fits

from scorelens.cli import data as data_cli
from scorelens.data.psf.epsf import psf_centroid
from scorelens.data.psf.library import write_stack
from scorelens.data.simulate.mock import make_mock
from scorelens.data.training.image_stack import ImageStackDataset
from scorelens.data.training.psf_dataset import PSFDataset
from scorelens.errors import InputError
from tests.conftest import SHARED_DATA, run_train
from tests.test_epsf import gaussian

STDPSF = SHARED_DATA / "psf" / "STDPSF_WFC3UVIS_F814W_paltas.fits"
TINYTIM = SHARED_DATA / "psf" / "tinytim_ACS_WFC_F814W_slacs_match.fits"
needs_stdpsf = pytest.mark.skipif(not STDPSF.is_file(), reason="shared data (STDPSF cube) not present")
needs_tinytim = pytest.mark.skipif(not TINYTIM.is_file(), reason="shared data (TinyTim PSF) not present")


def assert_unit_sum_and_centred(data: PSFDataset, i: int, size: int):
    x = data[i]
    assert x.shape == (1, size, size) and x.dtype == torch.float32 and torch.isfinite(x).all()
    psf = data.norm.to_flux(x[0]).double().numpy()
    assert psf.sum() == pytest.approx(1.0, abs=1e-5) and psf.min() >= 0
    assert np.unravel_index(np.argmax(psf), psf.shape) == (size // 2, size // 2)
    np.testing.assert_allclose(psf_centroid(psf, 6), (0, 0), atol=0.01)


def write_fits(path, data, **header):
    hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float32))
    for key, value in header.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@needs_stdpsf
def test_stdpsf_file_is_read_by_photutils_with_its_grid_positions():
    from astropy.io import fits

    from scorelens.data.psf.library import _read_fits

    source = _read_fits(STDPSF, cube_oversampling=2, image_oversampling=1, detector_pixel_scale=None)
    with fits.open(STDPSF) as f:
        cube, header = np.asarray(f[0].data, dtype=np.float64), f[0].header
    # photutils reads the planes as they are and the library's own 4x oversampling (not cube_oversampling)
    assert source.count == 56 and source.oversampling == 4
    np.testing.assert_array_equal(np.stack(source.psfs), cube)
    # each PSF's place on the detector: the header's 1-based IPSFXnn / JPSFYnn, 0-based; x fastest
    xs = [header[f"IPSFX{i:02d}"] - 1 for i in range(1, header["NXPSFS"] + 1)]
    ys = [header[f"JPSFY{j:02d}"] - 1 for j in range(1, header["NYPSFS"] + 1)]
    assert source.labels[1].endswith(f"[PSF 1 at detector x={xs[1]}, y={ys[0]} (0-based)]")
    assert source.labels[-1].endswith(f"[PSF 55 at detector x={xs[-1]}, y={ys[-1]} (0-based)]")


@needs_stdpsf
def test_stdpsf_cube_gives_one_centred_unit_sum_psf_per_grid_point():
    data = PSFDataset(STDPSF, image_size=128, norm={"scale": 0.01})
    assert len(data) == 56 and data.sources[0].oversampling == 4
    for i in (0, 27, 55):  # plane 27 has -0.1 fill values along two borders
        assert_unit_sum_and_centred(data, i, 128)
    assert 0.3 < float(data[0].max()) < 10  # network units: the peak is O(1)
    small = PSFDataset(STDPSF, image_size=32, norm={"scale": 0.01})  # the smoke experiment's size: cut, not shrunk
    assert_unit_sum_and_centred(small, 0, 32)
    assert float(small[0].max()) == pytest.approx(float(data[0].max()) / data.psf(0)[48:80, 48:80].sum(), rel=1e-3)


@needs_tinytim
def test_tinytim_file_is_upsampled_from_detector_pixels():
    data = PSFDataset(TINYTIM, image_size=128, detector_pixel_scale=0.05)
    assert len(data) == 1 and data.sources[0].oversampling == 1  # PIXSCALE 0.0495 ~ the detector's 0.05
    assert_unit_sum_and_centred(data, 0, 128)


@pytest.mark.parametrize("header, oversampling, tol", [
    ({"OVERSAMP": 4}, 4, 1e-3), ({"PIXSCALE": 0.0125}, 4, 1e-3), ({}, 2, 0.01),
    ({"PIXSCALE": 0.0495}, 1, 0.03),  # a Gaussian of sigma 1 is undersampled at 1x: upsampling cannot be exact
])
def test_oversampling_of_a_single_psf_fits_from_its_header(tmp_path, header, oversampling, tol):
    path = write_fits(tmp_path / "tt.fits", gaussian(4 * oversampling * 8 + 1, oversampling, sigma=1.0), **header)
    data = PSFDataset(path, image_size=64, detector_pixel_scale=0.05, image_oversampling=2)
    assert data.sources[0].oversampling == oversampling
    assert_unit_sum_and_centred(data, 0, 64)
    # the same PSF whatever sampling it came at: a Gaussian of sigma 1 detector pixel, 4 fine pixels at 4x
    np.testing.assert_allclose(data.psf(0), gaussian(64, 4, sigma=1.0) / gaussian(64, 4, sigma=1.0).sum(),
                               atol=tol * data.psf(0).max())


def test_folder_of_a_stack_and_a_cube(tmp_path):
    write_stack(tmp_path / "a.h5", np.stack([gaussian(33, 2, 1.0), gaussian(33, 2, 1.3)]), oversampling=2)
    cube = np.stack([gaussian(65, 4, s) for s in (1.0, 1.1, 1.2)])
    write_fits(tmp_path / "b.fits", cube)
    (tmp_path / "notes.txt").write_text("not a PSF")
    data = PSFDataset(tmp_path, image_size=48)
    assert len(data) == 5 and [s.oversampling for s in data.sources] == [2, 4]
    for i in range(5):
        assert_unit_sum_and_centred(data, i, 48)
    np.testing.assert_allclose(data.psf(0), data.psf(2), atol=5e-3 * data.psf(0).max())  # both sigma 1.0


def test_augmentation_jitter_moves_and_never_rotates(tmp_path):
    path = write_fits(tmp_path / "p.fits", gaussian(65, 4, sigma=1.0))
    with pytest.raises(InputError, match="no rotations or flips"):
        PSFDataset(path, image_size=32, augment="dihedral")
    data = PSFDataset(path, image_size=32, augment="jitter", jitter=0.5)
    shifts = [psf_centroid(data[0][0].double().numpy(), 6) for _ in range(8)]
    assert all(max(abs(a), abs(b)) <= 0.5 + 1e-3 for a, b in shifts) and len({round(s[0], 4) for s in shifts}) > 1
    assert float(data[0].sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda d: write_fits(d / "nan.fits", np.full((9, 9), np.nan)), "nan.fits[HDU 0]: the PSF has NaN or infinite"),
    (lambda d: write_fits(d / "zero.fits", np.zeros((9, 9))), "zero.fits[HDU 0]: the PSF sums to 0"),
    (lambda d: write_fits(d / "cube.fits", np.ones((2, 10, 12))), "cube.fits: HDU 0 has shape (2, 10, 12)"),
    (lambda d: write_fits(d / "four.fits", np.ones((2, 2, 9, 9))), "four.fits: HDU 0 has shape (2, 2, 9, 9)"),
    (lambda d: d, "no PSF files"),
    (lambda d: d / "missing.h5", "PSFs not found: "),
])
def test_bad_input_is_a_one_line_input_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        PSFDataset(path, image_size=32)
    assert message in one_line(err) and str(path) in one_line(err)


def test_bad_psf_in_a_stack_fails_when_read_naming_the_file_and_index(tmp_path):
    np.save(tmp_path / "s.npy", np.stack([gaussian(33, 4), np.zeros((33, 33))]))
    data = PSFDataset(tmp_path / "s.npy", image_size=32)
    assert_unit_sum_and_centred(data, 0, 32)
    with pytest.raises(InputError) as err:
        data[1]
    assert one_line(err).startswith(f"{tmp_path / 's.npy'}[1]: the PSF sums to 0")


def test_convert_cli_writes_a_stack_the_prior_datasets_read(tmp_path):
    src = write_fits(tmp_path / "tt.fits", gaussian(41, 1, sigma=1.2), PIXSCALE=0.05)
    out = tmp_path / "out" / "train.h5"
    assert data_cli.main(["psfs", "convert", str(src), str(out), "--size", "64"]) == 0
    with h5py.File(out) as f:
        assert f["images"].shape == (1, 64, 64) and f["images"].attrs["oversampling"] == 4
        assert f["source"][0] == b"tt.fits"
    direct, stacked = PSFDataset(src, image_size=64), PSFDataset(out, image_size=64)
    np.testing.assert_allclose(stacked.psf(0), direct.psf(0), atol=1e-6)
    assert ImageStackDataset(out, image_size=64)[0].sum() == pytest.approx(1.0, abs=1e-5)
    assert data_cli.main(["psfs", "convert", str(tmp_path / "none"), str(out)]) == 2
    assert not list(out.parent.glob(".*tmp*"))


def test_build_cli_makes_an_epsf_from_the_stars_of_flt_files(tmp_path):
    flts = tmp_path / "flt"
    make_mock(flts, seed=3, frame=(128, 128), cutout=48, source_grid=(64, 0.05), n_stars=8, n_exp=1, psf_size=41)
    out = tmp_path / "epsf.h5"
    args = ["psfs", "build", str(flts), str(out), "--size", "33", "stars.find.stamp_size=11",
            "stars.find.max_peak=null", "stars.find.exclude_radius_arcsec=1.5", "stars.epsf.maxiters=2"]
    assert data_cli.main([*args, "stars.epsf.min_stars=4"]) == 0
    with h5py.File(out) as f:
        images = f["images"][:]
        assert images.shape == (1, 33, 33) and f["n_stars"][0] >= 4 and f["source"][0] == b"jmock001q_flt.fits"
    assert images.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(images[0]), (33, 33)) == (16, 16)
    assert data_cli.main([*args, "stars.epsf.min_stars=50"]) == 2  # too few stars: one line, no file touched
    assert h5py.File(out)["images"].shape == (1, 33, 33)


@needs_stdpsf
def test_psf_prior_smoke_training_on_the_stdpsf_cube(tmp_path):
    """The acceptance command, as a user runs it, in a temporary folder."""
    run_train(["prior=psf", "experiment=smoke", f"paths.data_dir={SHARED_DATA}", f"data.train.path={STDPSF}",
               "logger=none", f"paths.log_dir={tmp_path}"], cwd=tmp_path)
    [prior] = list((tmp_path / "train" / "psf").rglob("prior.pt"))
    assert (prior.parent / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(prior.parent / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 8
