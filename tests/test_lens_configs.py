"""Lens configs: every SLACS lens of the paper composes into conf/infer.yaml with Bolton et al. 2008 values."""

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scorelens.data.catalog import lens_config, pa_to_phi, read_catalog, short_name, write_lens_configs
from scorelens.errors import InputError
from scorelens.inference.config import validate_infer_config
from scorelens.lensing.mass import PARAM_NAMES

from .conftest import CONF, SHARED_DATA, compose_infer

# conf/lens/base/ holds no lens, nor does conf/lens/fits.yaml (a user's files: tests/test_fits_lens.py)
LENSES = sorted(p.stem for p in (CONF / "lens").glob("*.yaml") if p.stem != "fits")
CATALOG = SHARED_DATA / "catalog" / "slacs_paper31_lenses.csv"
# Every lens node as it was composed before the lens configs shared conf/lens/base/slacs.yaml (the mock's `mock:`
# block left out: tests/test_mock.py keeps it equal to MockConfig's defaults)
NODES = json.loads((Path(__file__).parent / "data" / "lens_nodes.json").read_text())


def test_one_config_per_paper_lens():
    slacs = [n for n in LENSES if n.startswith("J") and not n.endswith("_drz")]
    assert len(slacs) == 31
    assert "J1430_drz" in LENSES and "mock" in LENSES


@pytest.mark.parametrize("lens", LENSES)
def test_infer_config_composes_with_every_lens(lens):
    cfg = compose_infer([f"lens={lens}"])
    for key in ("name", "ra", "dec", "z_lens", "z_source", "init"):
        assert key in cfg.lens, key
    assert set(cfg.lens.init) == set(PARAM_NAMES)
    assert 0 < cfg.lens.z_lens < cfg.lens.z_source
    assert 0 <= cfg.lens.ra < 360 and -90 <= cfg.lens.dec <= 90
    assert ("exposures" in cfg.lens) != ("image" in cfg.lens)
    if "image" in cfg.lens:
        assert {"noise_map", "psf", "pixel_scale"} <= set(cfg.lens)


@pytest.mark.parametrize("lens", LENSES)
def test_lens_node_is_the_same_as_before_the_base_config(lens):
    node = OmegaConf.to_container(compose_infer([f"lens={lens}"]).lens)
    node.pop("mock", None)
    # the same keys in the same order, the same values of the same types (JSON writes 322 and 322.0 differently)
    assert json.dumps(node) == json.dumps(NODES[lens])


def test_every_lens_is_in_the_reference_nodes():
    assert sorted(NODES) == LENSES


@pytest.mark.parametrize("lens", [n for n in LENSES if n != "mock"])
def test_a_lens_config_extends_the_base_in_at_most_15_lines(lens):
    text = (CONF / "lens" / f"{lens}.yaml").read_text()
    assert len(text.splitlines()) <= 15
    assert "Bolton et al. 2008, ApJ 682, 964" in text
    assert OmegaConf.create(text).defaults == ["base/slacs@_here_", "_self_"]


def test_j1430_holds_bolton_2008_values():
    init = compose_infer(["lens=J1430"]).lens.init
    assert init.theta_E == 1.52 and init.q == 0.68 and init.gamma == 1.0
    # PA 111.7 deg east of north is 90 - 111.7 = -21.7 deg counter-clockwise from east
    assert init.phi == pytest.approx(math.radians(-21.7), abs=1e-4)
    assert compose_infer(["lens=J1430_drz"]).lens.init == init


def test_position_angle_conversion():
    assert pa_to_phi(0.0) == pytest.approx(math.pi / 2 - math.pi)  # north-south axis, wrapped to [-pi/2, pi/2)
    assert pa_to_phi(90.0) == pytest.approx(0.0)                  # east-west axis is +x
    assert pa_to_phi(45.0) == pytest.approx(math.pi / 4)          # north-east lies between +x (east) and +y
    assert pa_to_phi(135.0) == pytest.approx(-math.pi / 4)


@pytest.mark.skipif(not CATALOG.is_file(), reason="shared data not present")
def test_configs_carry_the_catalogue():
    for rec in read_catalog(CATALOG):
        assert (CONF / "lens" / f"{short_name(rec['name'])}.yaml").read_text() == lens_config(rec)
    with CATALOG.open() as f:
        assert len(list(csv.DictReader(f))) == 31


def test_a_written_config_composes_to_its_catalogue_row(tmp_path):
    """The writer's short form, through the base: eight exposures, no velocity dispersion, PA 30 deg."""
    roots = [f"jtest00{i}q" for i in range(8)]
    (tmp_path / "cat.csv").write_text(
        "name,ra_deg,dec_deg,z_lens,z_source,b_SIE_arcsec,q_SIE,PA_SIE_deg,sigma_sdss_kms,acs_f814w_dither_rootnames\n"
        f"SDSSJ1234+5678,188.512345,56.9,0.21,0.71,1.13,0.75,30,,{';'.join(roots)}\n")
    (path,) = write_lens_configs(tmp_path / "cat.csv", tmp_path / "lens")
    assert path.name == "J1234.yaml" and len(path.read_text().splitlines()) <= 15
    cfg = compose_infer([f"hydra.searchpath=[file://{tmp_path}]", "lens=J1234"])
    validate_infer_config(cfg)
    lens = OmegaConf.to_container(cfg.lens)
    assert list(lens) == ["name", "sdss_name", "ra", "dec", "z_lens", "z_source", "init_from", "init", "catalog",
                          "rootnames", "exposures"]
    assert (lens["name"], lens["sdss_name"], lens["ra"], lens["dec"]) == ("J1234", "SDSSJ1234+5678", 188.51235, 56.9)
    assert (lens["z_lens"], lens["z_source"]) == (0.21, 0.71)
    assert lens["init"] == {"theta_E": 1.13, "gamma": 1.0, "q": 0.75, "phi": round(math.radians(60), 4),
                            **{k: 0.0 for k in PARAM_NAMES[4:]}}
    assert list(lens["init"]) == list(PARAM_NAMES)
    assert lens["catalog"] == {"b_SIE_arcsec": 1.13, "q_SIE": 0.75, "PA_SIE_deg": 30}
    assert lens["rootnames"] == roots and lens["exposures"] == [f"J1234/{r}_flt.fits" for r in roots]


def test_bad_catalogue_is_named(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_catalog(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,ra_deg\nSDSSJ0000+0000,1\n")
    with pytest.raises(InputError, match="lacks column"):
        read_catalog(bad)
