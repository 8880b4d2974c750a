"""Ray grids, interpolation, PSF convolution, binning, the forward model and its linear operators."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, signal

from scorelens.lensing.binning import bin_pixels, unbin_pixels
from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.grid import ExposureGrid, PixelGrid
from scorelens.lensing.interpolation import bilinear_weights, sample, scatter
from scorelens.lensing.operators import crop_psf
from scorelens.lensing.psf import PSFConvolution

F64 = torch.float64
MASS = dict(theta_E=0.45, gamma=1.1, q=0.75, phi=0.4, x0=0.02, y0=-0.03, gamma_ext=0.03, phi_ext=1.1,
            a3=0.01, phi3=0.3, a4=-0.01, phi4=0.9)


def batched_mass(b, dtype=F64, jitter=0.0, generator=None):
    out = {}
    for k, v in MASS.items():
        noise = jitter * torch.randn(b, dtype=dtype, generator=generator) if jitter else 0.0
        out[k] = torch.full((b,), v, dtype=dtype) + noise
    return out


def gaussian_psf(k, sigma, n_exp=1, dtype=F64, offset=0.0):
    a = torch.arange(k, dtype=dtype) - k // 2
    g = torch.exp(-0.5 * ((a[:, None] - offset) ** 2 + a[None, :] ** 2) / sigma**2)
    g = (g / g.sum()).expand(n_exp, k, k).clone()
    return g


def small_model(n_det=8, s=2, n_exp=2, n_src=16, dtype=F64):
    grid = ExposureGrid.regular((n_det, n_det), 0.1, s, n_exp=n_exp,
                                offsets=torch.tensor([[0.013, -0.021], [-0.034, 0.008]])[:n_exp],
                                rotation=torch.tensor([0.0, 0.2])[:n_exp], dtype=dtype)
    return ForwardModel(grid, PixelGrid(n_src, 0.04), PixelGrid(n_src, 0.06))


def test_regular_grid_subpixels_are_exact():
    s, scale, rot = 3, 0.05, 0.3
    g = ExposureGrid.regular((5, 6), scale, s, rotation=torch.tensor([rot]), dtype=F64)
    assert g.x.shape == (1, 15, 18) and g.detector_shape == (5, 6)
    jj = (torch.arange(18, dtype=F64) - 8.5) * scale / s
    ii = (torch.arange(15, dtype=F64) - 7.0) * scale / s
    yy, xx = torch.meshgrid(ii, jj, indexing="ij")
    c, sn = math.cos(rot), math.sin(rot)
    torch.testing.assert_close(g.x[0], c * xx - sn * yy)
    torch.testing.assert_close(g.y[0], sn * xx + c * yy)
    torch.testing.assert_close(g.pixel_scale, torch.tensor([scale], dtype=F64))


def test_bilinear_matches_scipy_with_zero_outside():
    rng = np.random.default_rng(0)
    grid = PixelGrid(12, 0.1, x0=0.05, y0=-0.02)
    img = rng.normal(size=(12, 12))
    x = rng.uniform(-0.8, 0.8, 500)
    y = rng.uniform(-0.8, 0.8, 500)
    idx, w = bilinear_weights(grid, torch.tensor(x)[None], torch.tensor(y)[None])
    ours = sample(torch.tensor(img)[None], idx, w)[0].numpy()
    cols = (x - 0.05) / 0.1 + 5.5
    rows = (y + 0.02) / 0.1 + 5.5
    ref = ndimage.map_coordinates(img, [rows, cols], order=1, mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_scatter_is_the_adjoint_of_sample():
    g = torch.Generator().manual_seed(1)
    grid = PixelGrid(10, 0.1)
    x = torch.rand(3, 40, generator=g, dtype=F64) * 1.4 - 0.7
    y = torch.rand(3, 40, generator=g, dtype=F64) * 1.4 - 0.7
    idx, w = bilinear_weights(grid, x, y)
    img = torch.randn(3, 10, 10, generator=g, dtype=F64)
    v = torch.randn(3, 40, generator=g, dtype=F64)
    lhs = (sample(img, idx, w) * v).sum()
    rhs = (img * scatter(v, idx, w, 10)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("k", [5, 6])
def test_psf_convolution_matches_scipy_and_has_exact_adjoint(k):
    rng = np.random.default_rng(k)
    img = rng.normal(size=(2, 13, 11))
    psf = rng.uniform(size=(2, k, k))
    conv = PSFConvolution(torch.tensor(psf), (13, 11))
    ours = conv(torch.tensor(img)).numpy()
    c = k // 2
    for i in range(2):
        full = signal.convolve2d(img[i], psf[i], mode="full")
        np.testing.assert_allclose(ours[i], full[c : c + 13, c : c + 11], atol=1e-12)
    y = torch.tensor(rng.normal(size=(2, 13, 11)))
    lhs = (conv(torch.tensor(img)) * y).sum()
    rhs = (torch.tensor(img) * conv.adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_delta_psf_is_identity():
    img = torch.randn(1, 9, 9, dtype=F64)
    psf = torch.zeros(1, 7, 7, dtype=F64)
    psf[0, 3, 3] = 1
    torch.testing.assert_close(PSFConvolution(psf, (9, 9))(img), img)


def test_binning_and_adjoint():
    x = torch.randn(2, 12, 9, dtype=F64)
    b = bin_pixels(x, 3)
    torch.testing.assert_close(b[1, 2, 1], x[1, 6:9, 3:6].mean())
    y = torch.randn(2, 4, 3, dtype=F64)
    torch.testing.assert_close((b * y).sum(), (x * unbin_pixels(y, 3)).sum())


@pytest.mark.parametrize("s", [1, 2, 4])
def test_psf_and_binning_conserve_flux(s):
    n = 24 * s
    img = torch.zeros(1, n, n, dtype=F64)
    img[0, n // 2 - s : n // 2 + 2 * s, n // 2 - 2 * s : n // 2 + s] = torch.rand(3 * s, 3 * s, dtype=F64) + 0.5
    psf = gaussian_psf(8 * s + 1, 1.2 * s, dtype=F64)
    out = bin_pixels(PSFConvolution(psf, (n, n))(img), s)
    assert out.sum().item() == pytest.approx(img.sum().item() / s**2, rel=1e-6)


def test_one_detector_pixel_shift_is_a_roll():
    s, scale, n = 2, 0.05, 40
    grid = ExposureGrid.regular((n, n), scale, s, n_exp=1, dtype=F64)
    fm = ForwardModel(grid, PixelGrid(64, 0.02), PixelGrid(2 * n * s, scale / s))
    g = torch.Generator().manual_seed(0)
    src = torch.rand(1, 64, 64, generator=g, dtype=F64)
    light = torch.rand(1, 2 * n * s, 2 * n * s, generator=g, dtype=F64)
    psf = gaussian_psf(9, 1.5)
    mass = batched_mass(1)
    base = fm(mass, torch.zeros(1, 1, 2, dtype=F64), src, light, psf)[0, 0]
    moved_x = fm(mass, torch.tensor([[[scale, 0.0]]], dtype=F64), src, light, psf)[0, 0]
    moved_y = fm(mass, torch.tensor([[[0.0, -scale]]], dtype=F64), src, light, psf)[0, 0]
    inner = slice(4, n - 4)  # away from where the PSF reaches past the cutout's edge
    torch.testing.assert_close(moved_x[inner, inner], torch.roll(base, -1, dims=1)[inner, inner])
    torch.testing.assert_close(moved_y[inner, inner], torch.roll(base, 1, dims=0)[inner, inner])


def test_lens_light_on_the_ray_grid_is_only_binned():
    s, n = 2, 10
    grid = ExposureGrid.regular((n, n), 0.05, s, n_exp=1, dtype=F64)
    fm = ForwardModel(grid, PixelGrid(8, 0.1), PixelGrid(n * s, 0.05 / s))
    light = torch.rand(1, n * s, n * s, dtype=F64)
    delta = torch.zeros(1, 3, 3, dtype=F64)
    delta[0, 1, 1] = 1
    mass = batched_mass(1)
    out = fm.components(mass, torch.zeros(1, 1, 2, dtype=F64), torch.zeros(1, 8, 8, dtype=F64), light, delta)
    torch.testing.assert_close(out["lens_light"][0, 0], bin_pixels(light[0], s))


def test_model_is_the_sum_of_its_linear_operators():
    fm = small_model()
    g = torch.Generator().manual_seed(2)
    mass = batched_mass(3, jitter=0.01, generator=g)
    shifts = 0.01 * torch.randn(3, 2, 2, generator=g, dtype=F64)
    psf = torch.rand(3, 2, 5, 5, generator=g, dtype=F64)
    src, light = torch.rand(2, 3, 16, 16, generator=g, dtype=F64)
    full = fm(mass, shifts, src, light, psf)
    a_s = fm.source_operator(mass, shifts, psf)
    a_l = fm.lens_light_operator(shifts, psf)
    assert full.shape == (3, 2, 8, 8)
    torch.testing.assert_close(full, a_s(src) + a_l(light))


@pytest.mark.parametrize("which", ["source", "lens_light"])
def test_operator_adjoint_dot_product(which):
    fm = small_model(n_det=12, n_src=20)
    g = torch.Generator().manual_seed(3)
    mass = batched_mass(2, jitter=0.02, generator=g)
    shifts = 0.02 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    psf = torch.rand(2, 6, 6, generator=g, dtype=F64)
    op = fm.source_operator(mass, shifts, psf) if which == "source" else fm.lens_light_operator(shifts, psf)
    x = torch.randn(2, 20, 20, generator=g, dtype=F64)
    y = torch.randn(2, 2, 12, 12, generator=g, dtype=F64)
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


def dense_matrix(op, n):
    cols = []
    b = op.index.shape[0]
    for j in range(n * n):
        e = torch.zeros(b, n * n, dtype=F64)
        e[:, j] = 1
        cols.append(op(e.reshape(b, n, n)).reshape(b, -1))
    return torch.stack(cols, dim=-1)


def assert_operator_matches_dense(op, n, generator):
    """A (B = 2 chains, 2 exposures) against its dense matrix: the adjoint's dot-product identity, diag(A A^T) and,
    for a PSF without negative pixels, the row sums A A^T 1."""
    h, w = op.detector_shape
    x = torch.randn(2, n, n, generator=generator, dtype=F64)
    y = torch.randn(2, 2, h, w, generator=generator, dtype=F64)
    assert (op(x) * y).sum().item() == pytest.approx((x * op.adjoint(y)).sum().item(), rel=1e-12)
    a = dense_matrix(op, n)  # [2, 2 h w, n n]
    torch.testing.assert_close(op.diag_AAT(), (a**2).sum(-1).reshape(2, 2, h, w), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(op.rowsum_AAT(), (a @ a.transpose(-1, -2)).sum(-1).reshape(2, 2, h, w))


@pytest.mark.parametrize("k", [5, 8])
@pytest.mark.parametrize("which", ["source", "lens_light"])
def test_matrix_free_diag_equals_dense(which, k):
    fm = small_model(n_det=8, s=2, n_src=16)
    g = torch.Generator().manual_seed(k)
    mass = batched_mass(2, jitter=0.02, generator=g)
    shifts = 0.02 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    psf = torch.rand(2, 2, k, k, generator=g, dtype=F64)
    op = fm.source_operator(mass, shifts, psf) if which == "source" else fm.lens_light_operator(shifts, psf)
    dense = (dense_matrix(op, 16) ** 2).sum(-1).reshape(2, 2, 8, 8)
    torch.testing.assert_close(op.diag_AAT(), dense, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(op.diag_AAT(max_elements=500), dense, rtol=1e-12, atol=1e-14)


def test_cropped_psf_diag_approaches_exact():
    fm = small_model(n_det=8, s=2, n_src=16)
    mass = batched_mass(1)
    shifts = torch.zeros(1, 2, 2, dtype=F64)
    psf = gaussian_psf(15, 1.5, n_exp=2)
    op = fm.source_operator(mass, shifts, psf)
    exact = op.diag_AAT()
    errs = [((op.diag_AAT(psf_energy=e) - exact).abs().max() / exact.max()).item() for e in (0.9, 0.99, 0.9999)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3
    assert crop_psf(psf, 1.0).shape[-1] == 15 and crop_psf(psf, 0.5).shape[-1] < 15


def test_gradients_through_the_forward_model_match_finite_differences():
    fm = small_model(n_det=10, n_src=24)
    g = torch.Generator().manual_seed(4)
    mass = {k: v.requires_grad_(True) for k, v in batched_mass(2, jitter=0.01, generator=g).items()}
    shifts = (0.01 * torch.randn(2, 2, 2, generator=g, dtype=F64)).requires_grad_(True)
    # smooth images so that the piecewise-linear interpolation is nearly differentiable at the FD scale
    xs, ys = PixelGrid(24, 0.04).coordinates(dtype=F64)
    src = torch.exp(-((xs - 0.05) ** 2 + ys**2) / 0.05)[None].expand(2, 24, 24)
    xl, yl = PixelGrid(24, 0.06).coordinates(dtype=F64)
    light = torch.exp(-(xl**2 + 2 * yl**2) / 0.2)[None].expand(2, 24, 24)
    psf = gaussian_psf(5, 1.0, n_exp=2)
    w = torch.randn(2, 2, 10, 10, generator=g, dtype=F64)

    def loss(m, sh):
        return (fm(m, sh, src, light, psf) * w).sum()

    loss(mass, shifts).backward()
    h = 1e-7
    for k, v in mass.items():
        for b in range(2):
            up = {n: t.detach().clone() for n, t in mass.items()}
            dn = {n: t.detach().clone() for n, t in mass.items()}
            up[k][b] += h
            dn[k][b] -= h
            fd = (loss(up, shifts.detach()) - loss(dn, shifts.detach())) / (2 * h)
            assert v.grad[b].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-6), (k, b)
    for idx in [(0, 0, 0), (0, 1, 1), (1, 0, 1)]:
        up, dn = shifts.detach().clone(), shifts.detach().clone()
        up[idx] += h
        dn[idx] -= h
        fd = (loss(mass, up) - loss(mass, dn)) / (2 * h)
        assert shifts.grad[idx].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-6), idx


def test_bad_shapes_are_reported():
    fm = small_model()
    mass = batched_mass(1)
    src = torch.zeros(1, 16, 16, dtype=F64)
    with pytest.raises(ValueError, match="shifts must be"):
        fm(mass, torch.zeros(1, 3, 2, dtype=F64), src, src, gaussian_psf(5, 1.0, n_exp=2))
    with pytest.raises(ValueError, match="psf must be"):
        fm(mass, torch.zeros(1, 2, 2, dtype=F64), src, src, gaussian_psf(5, 1.0, n_exp=3))
    with pytest.raises(ValueError, match="pixel grid"):
        PixelGrid(1, 0.1)


def test_grid_sample_path_equals_explicit_weights():
    g = torch.Generator().manual_seed(5)
    grid = PixelGrid(15, 0.07, x0=-0.03, y0=0.04)
    img = torch.randn(2, 15, 15, generator=g, dtype=F64)
    x = torch.rand(2, 3, 30, generator=g, dtype=F64) * 1.4 - 0.7
    y = torch.rand(2, 3, 30, generator=g, dtype=F64) * 1.4 - 0.7
    from scorelens.lensing.interpolation import interpolate

    torch.testing.assert_close(interpolate(img, grid, x, y), sample(img, *bilinear_weights(grid, x, y)))


def test_differentiable_in_images_and_psfs():
    fm = small_model(n_det=4, s=2, n_exp=2, n_src=8)
    g = torch.Generator().manual_seed(6)
    mass = batched_mass(1)
    shifts = torch.zeros(1, 2, 2, dtype=F64)
    src = torch.rand(1, 8, 8, generator=g, dtype=F64, requires_grad=True)
    light = torch.rand(1, 8, 8, generator=g, dtype=F64, requires_grad=True)
    psf = torch.rand(2, 3, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, lt, p: fm(mass, shifts, s, lt, p), (src, light, psf))


def small_model_detector(detector, s=2):
    grid = ExposureGrid.regular((8, 8), 0.1, s, n_exp=2, offsets=torch.tensor([[0.013, -0.021], [-0.034, 0.008]]),
                                rotation=torch.tensor([0.0, 0.2]), dtype=F64)
    return ForwardModel(grid, PixelGrid(16, 0.04), PixelGrid(16, 0.06), detector=detector)


@pytest.mark.parametrize("s", [2, 3])
def test_sample_detector_with_the_pixel_convolved_psf_equals_integration(s):
    """An effective PSF is the optical PSF smoothed by the pixel: E[m] = s^-2 sum_{d<s} p[m - s//2 + d] per axis."""
    k = 13
    p = gaussian_psf(k, 1.3, n_exp=2)
    p[..., :2, :] = 0
    p[..., -2:, :] = 0
    p[..., :, :2] = 0
    p[..., :, -2:] = 0
    e = torch.zeros_like(p)
    for dy in range(s):
        for dx in range(s):
            e += torch.roll(p, shifts=(s // 2 - dy, s // 2 - dx), dims=(-2, -1))
    e /= s**2
    g = torch.Generator().manual_seed(7)
    mass = batched_mass(2, jitter=0.02, generator=g)
    shifts = 0.02 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    src, light = torch.rand(2, 2, 16, 16, generator=g, dtype=F64)
    integrate = small_model_detector("integrate", s)(mass, shifts, src, light, p)
    sample = small_model_detector("sample", s)(mass, shifts, src, light, e)
    torch.testing.assert_close(sample, integrate)


@pytest.mark.parametrize("which", ["source", "lens_light"])
def test_sample_detector_operator_adjoint_and_diag(which):
    fm = small_model_detector("sample")
    g = torch.Generator().manual_seed(8)
    mass = batched_mass(2, jitter=0.02, generator=g)
    shifts = 0.02 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    psf = torch.rand(2, 2, 6, 6, generator=g, dtype=F64)
    op = fm.source_operator(mass, shifts, psf) if which == "source" else fm.lens_light_operator(shifts, psf)
    assert_operator_matches_dense(op, 16, g)
    assert (op.rowsum_AAT() >= op.diag_AAT() - 1e-12).all()


def test_rowsum_bounds_aat_for_a_psf_with_negative_pixels():
    """A sampled PSF has small negative pixels: the rowsum diagonal is then that of A with |PSF|, still an upper
    bound of A A^T (D - A A^T positive semi-definite), where A A^T 1 is not."""
    fm = small_model_detector("sample")
    g = torch.Generator().manual_seed(9)
    mass = batched_mass(2, jitter=0.02, generator=g)
    shifts = 0.02 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    psf = torch.rand(2, 2, 6, 6, generator=g, dtype=F64) - 0.5  # about half of the pixels negative
    op = fm.source_operator(mass, shifts, psf)
    a = dense_matrix(op, 16)  # [2, 2 * 64, 256]
    aat = a @ a.transpose(-1, -2)
    # A with |PSF| is at least |A| entrywise, so its row sums are at least those of |A| |A|^T
    abs_rows = (a.abs() @ a.abs().transpose(-1, -2)).sum(-1).reshape(2, 2, 8, 8)
    assert (op.rowsum_AAT() >= abs_rows - 1e-10).all()
    for b in range(2):
        assert torch.linalg.eigvalsh(torch.diag(op.rowsum_AAT()[b].reshape(-1)) - aat[b]).min() > -1e-10
    # what the signed row sums would give: below diag(A A^T) somewhere, no bound at all
    assert (aat.sum(-1) < torch.diagonal(aat, dim1=-2, dim2=-1)).any()


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="detector must be one of"):
        small_model_detector("bin")
