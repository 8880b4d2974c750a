"""The model geometry config: one place for upsampling, PSF sampling and pixel grids."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.lensing.geometry import ModelGeometry

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
    [({"upsample": 1.5}, "upsample"), ({"psf_size": 0}, "psf_size"), ({"diag_psf_energy": 1.5}, "diag_psf_energy")],
)
def test_bad_values_are_named(change, message):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    cfg.update(change)
    with pytest.raises(ValueError, match=message):
        ModelGeometry.from_config(cfg, detector_pixel_scale=0.05)
