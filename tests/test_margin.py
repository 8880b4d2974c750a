"""The forward model's margin: rays traced beyond a cutout's edges so that light the PSF spreads into its edge
pixels from outside is counted. The reference is the same model rendered on a larger cutout and cropped (how the
mocks render their whole frame)."""

import math

import pytest
import torch

from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.geometry import ModelGeometry
from scorelens.lensing.grid import ExposureGrid, PixelGrid

from .test_forward import assert_operator_matches_dense, batched_mass, gaussian_psf

F64 = torch.float64
OFFSETS = torch.tensor([[0.013, -0.021], [-0.034, 0.008]], dtype=F64)
ROTATION = torch.tensor([0.0, 0.2], dtype=F64)


def regular(n, s):
    return ExposureGrid.regular((n, n), 0.1, s, n_exp=2, offsets=OFFSETS, rotation=ROTATION, dtype=F64)


@pytest.mark.parametrize("s", [1, 2, 3])
def test_padded_grid_is_the_larger_regular_grid(s):
    small, large = regular(8, s).padded(3), regular(14, s)
    assert small.detector_shape == (14, 14)
    torch.testing.assert_close(small.x, large.x, rtol=0, atol=1e-13)
    torch.testing.assert_close(small.y, large.y, rtol=0, atol=1e-13)
    assert regular(8, s).padded(0).x.shape == regular(8, s).x.shape


def test_padded_grid_follows_a_curved_map_to_second_order():
    """A WCS with distortion: the continuation is linear, so its error grows as the map's curvature times (m
    pixels)^2. Here 1e-6 arcsec per pixel^2 (ACS/WFC's scale changes by a few percent over 4096 pixels: under 1e-6)
    and m = 4: errors of about 2e-5 arcsec, bounded by 4 curvature (m + 1)^2."""
    n, s, m, curv = 10, 2, 4, 1e-6
    def positions(n_pix, off):
        c = torch.arange(n_pix, dtype=F64) - off
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        return (0.05 * xx + curv * xx**2)[None], (0.05 * yy + curv * xx * yy)[None]
    small = ExposureGrid.from_detector(*positions(n, 0.0), s).padded(m)
    large = ExposureGrid.from_detector(*positions(n + 2 * m, float(m)), s)
    assert (small.x - large.x).abs().max() < 4 * curv * (m + 1) ** 2
    assert (small.y - large.y).abs().max() < 4 * curv * (m + 1) ** 2


@pytest.mark.parametrize("detector", ["integrate", "sample"])
@pytest.mark.parametrize("s", [1, 2])
def test_model_with_margin_equals_the_larger_cutout_cropped(s, detector):
    k = 9 if s == 1 else 14
    margin = math.ceil((k // 2) / s)
    n, big = 10, 10 + 2 * margin
    source, light = PixelGrid(24, 0.06), PixelGrid(24, 0.12)
    with_margin = ForwardModel(regular(n, s), source, light, detector=detector, margin=margin)
    without = ForwardModel(regular(n, s), source, light, detector=detector)
    reference = ForwardModel(regular(big, s), source, light, detector=detector)
    g = torch.Generator().manual_seed(1)
    mass = batched_mass(2, jitter=0.02, generator=g)
    shifts = 0.02 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    psf = gaussian_psf(k, 1.2 * s, n_exp=2)
    src, lum = torch.rand(2, 2, 24, 24, generator=g, dtype=F64)
    want = reference(mass, shifts, src, lum, psf)[..., margin:-margin, margin:-margin]
    got = with_margin(mass, shifts, src, lum, psf)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # without the margin the edge pixels miss the light spread in from outside, and only they
    short = without(mass, shifts, src, lum, psf)
    assert (want - short)[..., 0, :].min() > 0
    torch.testing.assert_close(short[..., margin:-margin, margin:-margin], want[..., margin:-margin, margin:-margin],
                               rtol=1e-12, atol=1e-14)
    parts = with_margin.components(mass, shifts, src, lum, psf)
    torch.testing.assert_close(parts["source"] + parts["lens_light"], got, rtol=1e-12, atol=1e-14)
    # the linear operators carry the same margin
    a_s, a_l = with_margin.source_operator(mass, shifts, psf), with_margin.lens_light_operator(shifts, psf)
    assert a_s.detector_shape == (n, n)
    torch.testing.assert_close(a_s(src) + a_l(lum), got, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("which", ["source", "lens_light"])
def test_operator_with_margin_adjoint_diag_and_rowsum(which):
    fm = ForwardModel(regular(6, 2), PixelGrid(12, 0.08), PixelGrid(12, 0.12), margin=2)
    g = torch.Generator().manual_seed(4)
    mass = batched_mass(2, jitter=0.02, generator=g)
    shifts = 0.02 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    psf = torch.rand(2, 2, 7, 7, generator=g, dtype=F64)
    op = fm.source_operator(mass, shifts, psf) if which == "source" else fm.lens_light_operator(shifts, psf)
    assert op.detector_shape == (6, 6)
    assert_operator_matches_dense(op, 12, g)
    torch.testing.assert_close(op.diag_AAT(max_elements=300), op.diag_AAT(), rtol=1e-12, atol=1e-14)  # chunked


def test_geometry_margin_auto_is_the_psf_half_width():
    base = {"upsample": 2, "psf_size": 64, "source": {"n": 8, "pixel_scale": 0.1},
            "lens_light": {"n": 8, "pixel_scale": 0.1}}
    assert ModelGeometry.from_config({**base, "margin": "auto"}, 0.05).margin == 16
    assert ModelGeometry.from_config({**base, "psf_size": 21, "upsample": 1, "margin": "auto"}, 0.05).margin == 10
    assert ModelGeometry.from_config({**base, "psf_size": 65, "margin": "auto"}, 0.05).margin == 16
    assert ModelGeometry.from_config({**base, "margin": 3}, 0.05).margin == 3
    assert ModelGeometry.from_config(base, 0.05).margin == 0
    with pytest.raises(ValueError, match="lensing.margin"):
        ModelGeometry.from_config({**base, "margin": -1}, 0.05)
