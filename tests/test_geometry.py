"""The model geometry config: one place for upsampling, PSF sampling and pixel grids."""

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scorelens.lensing.geometry import ModelGeometry

CONF = Path(__file__).resolve().parents[1] / "conf" / "lensing" / "default.yaml"


def test_default_config_builds_consistent_geometry():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    geo = ModelGeometry.from_config(cfg, detector_pixel_scale=0.05)
    assert geo.upsample == cfg["upsample"]
    assert geo.lens_light.pixel_scale == pytest.approx(0.05 / geo.upsample)
    assert geo.source.n == 256 and geo.lens_light.n == 256
    # the lens light spans a 128-pixel cutout at the default sampling
    assert geo.lens_light.fov == pytest.approx(128 * 0.05)


@pytest.mark.parametrize(
    "change, message",
    [({"upsample": 1.5}, "upsample"), ({"upsample": 0}, "upsample"), ({"psf_size": 0}, "psf_size")],
)
def test_bad_values_are_named(change, message):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    cfg.update(change)
    with pytest.raises(ValueError, match=message):
        ModelGeometry.from_config(cfg, detector_pixel_scale=0.05)


def test_lens_light_grid_covers_rotated_exposures():
    """A 128-pixel cutout rotated 30 degrees against north reaches 0.05 * 64 * (cos 30 + sin 30) = 4.37 arcsec
    from the lens along x: the default lens-light grid widens to cover it, and never gets finer than the rays."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    half = 0.05 * 64 * (math.cos(math.radians(30)) + math.sin(math.radians(30)))
    geo = ModelGeometry.from_config(cfg, detector_pixel_scale=0.05, footprint=half)
    assert geo.lens_light.fov == pytest.approx(2 * half)
    # an unrotated footprint inside the default grid keeps the ray spacing
    geo = ModelGeometry.from_config(cfg, detector_pixel_scale=0.05, footprint=3.0)
    assert geo.lens_light.pixel_scale == pytest.approx(0.025)
    # an explicit pixel scale is kept as given
    cfg["lens_light"]["pixel_scale"] = 0.02
    assert ModelGeometry.from_config(cfg, 0.05, footprint=half).lens_light.pixel_scale == 0.02
