"""summary.ecsv: position angles, circular quantiles, physical scales (against astropy distances and lenstronomy)
and the file as astropy reads it."""

import astropy.units as u
import numpy as np
import pytest
from astropy.cosmology import WMAP9, Planck18
from astropy.table import QTable

from scorelens.errors import InputError
from scorelens.inference.summary_table import (
    circular_quantiles,
    cosmology,
    einstein_mass,
    position_angle,
    write_summary_table,
)
from scorelens.lensing.mass import PARAM_NAMES

from .conftest import compose_infer


@pytest.mark.parametrize("phi,pa", [(0.0, 90.0), (np.pi / 2, 0.0), (np.pi / 4, 45.0), (-np.pi / 4, 135.0),
                                    (3 * np.pi / 4, 135.0)])
def test_position_angle_is_east_of_north(phi, pa):
    # phi: counter-clockwise from +x = east towards +y = north; a major axis along east has PA 90 deg
    assert position_angle(np.array(phi), np.pi) == pytest.approx(pa, abs=1e-9)


def test_position_angle_keeps_each_symmetrys_period():
    assert position_angle(np.array(0.0), 2 * np.pi / 3) == pytest.approx(90.0)
    assert position_angle(np.array(0.0), np.pi / 2) == pytest.approx(0.0, abs=1e-12)
    assert position_angle(np.array(np.radians(100.0)), np.pi / 2) == pytest.approx(80.0)


def test_circular_quantiles_take_an_interval_across_zero_as_one():
    rng = np.random.default_rng(1)
    draws = rng.normal(0.5, 2.0, 200_000)
    folded = np.mod(draws, 180.0)  # half the draws near 180, half near 0
    q = circular_quantiles(folded.reshape(4, -1), 180.0, [0.5, 0.16, 0.84])
    assert q[0] == pytest.approx(0.5, abs=0.03)
    assert q[1] == pytest.approx(0.5 - 2.0 * 0.994, abs=0.05) and q[2] == pytest.approx(0.5 + 2.0 * 0.994, abs=0.05)
    # far from the wrap it is the plain quantile
    mid = rng.normal(60.0, 3.0, 10_000)
    np.testing.assert_allclose(circular_quantiles(mid, 180.0, [0.5, 0.025]), np.quantile(mid, [0.5, 0.025]))


def test_einstein_mass_matches_lenstronomy():
    lens_cosmo = pytest.importorskip("lenstronomy.Cosmo.lens_cosmo")
    from astropy import constants
    from lenstronomy.Util import constants as lc

    # lenstronomy's G and M_sun are older values than astropy's (CODATA 2018, IAU 2015): 2.8e-4 apart in M
    ratio = lc.G * lc.M_sun / (constants.G.value * constants.M_sun.value) * u.Mpc.to(u.m) / lc.Mpc
    for z_l, z_s, theta in ((0.285, 0.575, 1.52), (0.1, 2.0, 0.8)):
        ref = lens_cosmo.LensCosmo(z_l, z_s, cosmo=Planck18).mass_in_theta_E(theta)
        mass = einstein_mass(np.array(theta), z_l, z_s, Planck18).to_value(u.solMass)
        assert mass == pytest.approx(ref * ratio, rel=1e-9)


def test_unknown_cosmology_is_one_line():
    with pytest.raises(InputError, match="Planck18") as err:
        cosmology("Plank18")
    assert "\n" not in str(err.value)


def test_config_refuses_an_unknown_cosmology():
    from scorelens.inference.config import validate_infer_config

    validate_infer_config(compose_infer(["lens=J1430"]))  # the default: Planck18
    with pytest.raises(InputError, match="cosmology='WMAP2'"):
        validate_infer_config(compose_infer(["lens=J1430", "cosmology=WMAP2"]))


def _draws(rng, chains=4, draws=200):
    base = {"theta_E": 1.5, "gamma": 1.0, "q": 0.7, "phi": 0.02, "x0": 0.01, "y0": -0.02, "gamma_ext": 0.03,
            "phi_ext": 1.2, "a3": 0.005, "phi3": 0.4, "a4": 0.01, "phi4": 0.1}
    return {k: v + 0.01 * rng.standard_normal((chains, draws)) for k, v in base.items()}


def test_summary_ecsv_reads_back_with_units_and_its_cosmology(tmp_path):
    rng = np.random.default_rng(0)
    params = _draws(rng)
    lens = {"name": "J1430", "ra": 217.517, "dec": 41.0992, "z_lens": 0.285, "z_source": 0.5753}
    write_summary_table(tmp_path / "summary.ecsv", params, lens, "WMAP9")
    t = QTable.read(tmp_path / "summary.ecsv")
    t.add_index("statistic")
    assert list(t["statistic"]) == ["median", "p16", "p84", "p2.5", "p97.5", "p0.5", "p99.5"]
    assert t["theta_E"].unit == u.arcsec and t["theta_E_kpc"].unit == u.kpc and t["M_E"].unit == u.solMass
    assert t["pa"].unit == u.deg and t["q"].unit == u.dimensionless_unscaled
    assert t.meta["cosmology"] == "WMAP9" and t.meta["z_lens"] == 0.285
    med = t.loc["median"]
    assert med["theta_E"].to_value(u.arcsec) == pytest.approx(np.median(params["theta_E"]))
    # kpc from the angular-diameter distance (D_A theta), independently of the table's kpc-per-arcmin
    kpc = (WMAP9.angular_diameter_distance(0.285) * np.radians(np.median(params["theta_E"]) / 3600)).to(u.kpc)
    assert med["theta_E_kpc"].to_value(u.kpc) == pytest.approx(kpc.value, rel=1e-9)
    # phi = 0.02 rad from east: PA 90 - 1.15 deg; the shear at phi_ext = 1.2 rad: 90 - 68.75 deg
    assert med["pa"].to_value(u.deg) == pytest.approx(90 - np.degrees(0.02), abs=0.1)
    assert med["pa_ext"].to_value(u.deg) == pytest.approx(90 - np.degrees(1.2), abs=0.1)
    assert set(t.meta["rhat"]) == set(PARAM_NAMES) and all(0.99 < r < 1.05 for r in t.meta["rhat"].values())
    # p16 < median < p84 for every quantity
    assert all(t.loc["p16"][c] < med[c] < t.loc["p84"][c] for c in t.colnames[1:])


def test_summary_without_redshifts_has_no_physical_scales(tmp_path):
    params = _draws(np.random.default_rng(2))
    t = write_summary_table(tmp_path / "s.ecsv", params, {"name": "x"}, "Planck18")
    assert "theta_E_kpc" not in t.colnames and "M_E" not in t.colnames and "theta_E" in t.colnames
