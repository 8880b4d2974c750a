"""FITS images of the posterior (with WCS) and samples.nc (ArviZ), read back by astropy and ArviZ."""

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from scorelens.data.observations.exposure_set import Exposure, ExposureSet
from scorelens.inference.diagnostics import ess_bulk, rhat
from scorelens.inference.image_products import write_image_products
from scorelens.inference.inference_data import arviz, write_inference_data
from scorelens.lensing.grid import PixelGrid

RA, DEC = 217.517, 41.0992


def _exposure(name, shift, rng):
    rows, cols = np.mgrid[0:10, 0:10].astype(np.float64)
    x, y = 0.05 * (cols - 4.5) + shift, 0.05 * (rows - 4.5)
    mask = np.ones((10, 10), bool)
    mask[2, 3] = False
    return Exposure(name, None, rng.normal(5.0, 1.0, (10, 10)), np.full((10, 10), 4.0), mask, x, y, 0.05,
                    unit="ELECTRONS")


@pytest.fixture
def products(tmp_path):
    rng = np.random.default_rng(3)
    data = ExposureSet("J1430", RA, DEC, [_exposure("a", 0.0, rng), _exposure("b", 0.02, rng)])
    geometry = SimpleNamespace(source=PixelGrid(8, 0.03), lens_light=PixelGrid(12, 0.06, x0=0.01))
    images = {"source": rng.random((5, 8, 8)), "lens_light": rng.random((5, 12, 12))}
    models = rng.normal(5.0, 0.3, (5, 2, 10, 10))
    write_image_products(images, models, data, geometry, {"name": "J1430", "z_lens": 0.285}, tmp_path)
    return tmp_path, data, images, models


def test_source_and_lens_light_fits_hold_median_and_sd_on_a_sky_frame(products):
    out, _, images, _ = products
    with fits.open(out / "source.fits") as f:
        assert [h.name for h in f] == ["PRIMARY", "MEDIAN", "SD"]
        assert f[0].header["OBJECT"] == "J1430" and f[0].header["NSAMPLE"] == 5 and f[0].header["Z_LENS"] == 0.285
        np.testing.assert_allclose(f["MEDIAN"].data, np.median(images["source"], 0), rtol=1e-6)
        np.testing.assert_allclose(f["SD"].data, images["source"].std(0), rtol=1e-5)
        w = WCS(f["MEDIAN"].header)
        assert w.has_celestial and f["MEDIAN"].header["BUNIT"] == "ELECTRONS"
        # the grid's centre (between pixels 3 and 4) is the lens position
        assert w.pixel_to_world(3.5, 3.5).separation(SkyCoord(RA, DEC, unit="deg")).arcsec < 1e-6
    with fits.open(out / "lens_light.fits") as f:
        w = WCS(f["MEDIAN"].header)
        # its centre is 0.01" east of the lens
        c = w.pixel_to_world(5.5, 5.5)
        d_east, d_north = SkyCoord(RA, DEC, unit="deg").spherical_offsets_to(c)
        assert d_east.arcsec == pytest.approx(0.01, abs=1e-6) and abs(d_north.arcsec) < 1e-6


def test_model_and_residual_fits_per_exposure(products):
    out, data, _, models = products
    with fits.open(out / "model.fits") as f:
        assert [(h.name, h.ver) for h in f[1:]] == [("MEDIAN", 1), ("SD", 1), ("MEDIAN", 2), ("SD", 2)]
        for e in range(2):
            np.testing.assert_allclose(f["MEDIAN", e + 1].data, np.median(models[:, e], 0), rtol=1e-6)
            assert f["MEDIAN", e + 1].header["EXPNAME"] == "ab"[e]
        # exposure b's pixels sit 0.02" further east: each extension has its own WCS
        wa, wb = WCS(f["MEDIAN", 1].header), WCS(f["MEDIAN", 2].header)
        sep = wb.pixel_to_world(0, 0).separation(wa.pixel_to_world(0, 0)).arcsec
        assert sep == pytest.approx(0.02, abs=1e-6)
    with fits.open(out / "residual.fits") as f:
        exp = data.exposures[0]
        norm = f["NORMRES", 1].data
        assert np.isnan(norm[2, 3]) and np.isfinite(np.delete(norm.ravel(), 2 * 10 + 3)).all()
        expect = (exp.data - models[:, 0].mean(0)) / 2.0
        np.testing.assert_allclose(norm[5], expect[5], rtol=1e-5)
        np.testing.assert_allclose(f["MEDIAN", 1].data, np.median(exp.data - models[:, 0], 0), rtol=1e-5)


def test_samples_nc_opens_in_arviz_and_agrees_with_our_diagnostics(tmp_path):
    az = arviz()
    rng = np.random.default_rng(4)
    walk = np.cumsum(rng.standard_normal((4, 300)), axis=1) * 0.01  # chains that wander: R-hat well above 1
    params = {"theta_E": 1.5 + 0.01 * rng.standard_normal((4, 300)), "q": 0.7 + walk}
    chi2 = 1 + 0.01 * rng.standard_normal((4, 300))
    write_inference_data(tmp_path / "samples.nc", params, chi2, attrs={"lens": "J1430"})
    idata = az.from_netcdf(tmp_path / "samples.nc")
    assert dict(idata.posterior.sizes) == {"chain": 4, "draw": 300}
    assert idata.sample_stats["reduced_chi2"].shape == (4, 300) and idata.attrs["lens"] == "J1430"
    s = az.summary(idata, var_names=["theta_E", "q"])
    assert list(s.index) == ["theta_E", "q"]
    # ArviZ's R-hat and bulk ESS (an independent implementation of Vehtari et al. 2021) against ours
    for k, v in params.items():
        assert float(az.rhat(idata, var_names=[k])[k]) == pytest.approx(rhat(v), rel=1e-6)
    # (the autocorrelation sum of the ESS is truncated a little differently: within 1% where the chains mix, as in
    # test_diagnostics; 2% apart at an ESS of 5)
    assert float(az.ess(idata, var_names=["theta_E"], method="bulk")["theta_E"]) == pytest.approx(
        ess_bulk(params["theta_E"]), rel=0.01)
    assert s.loc["q", "r_hat"] > 1.05 and s.loc["theta_E", "r_hat"] < 1.02
