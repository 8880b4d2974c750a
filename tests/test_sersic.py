"""Sersic constant, profile, total flux and rendering, against independent numpy and scipy references."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy import integrate, special

from scorelens.data.simulate.sersic import render_sersic, sersic_b, sersic_profile, sersic_total_flux

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ numpy references


def ref_b(n):
    return special.gammaincinv(2.0 * np.asarray(n, dtype=float), 0.5)


def ref_profile(x, y, amplitude, r_eff, n, q, phi, x0, y0):
    """I(x, y) from the definition: rotate by -phi about the centre, intermediate-axis elliptical radius."""
    dx, dy = np.asarray(x) - x0, np.asarray(y) - y0
    x_major = np.cos(phi) * dx + np.sin(phi) * dy
    y_minor = -np.sin(phi) * dx + np.cos(phi) * dy
    radius = np.sqrt(q * x_major**2 + y_minor**2 / q)
    return amplitude * np.exp(-ref_b(n) * ((radius / r_eff) ** (1.0 / n) - 1.0))


def ref_pixel(row, col, size, *args):
    """Integral of ref_profile over pixel (row, col) by scipy dblquad, split to put the cusp on corners."""
    x0, y0 = args[-2], args[-1]
    xc, yc = col - (size - 1) / 2, row - (size - 1) / 2
    xs = [xc - 0.5] + ([x0] if abs(x0 - xc) < 0.5 else []) + [xc + 0.5]
    ys = [yc - 0.5] + ([y0] if abs(y0 - yc) < 0.5 else []) + [yc + 0.5]
    total = 0.0
    for xa, xb in pairwise(xs):
        for ya, yb in pairwise(ys):
            total += integrate.dblquad(lambda y, x: ref_profile(x, y, *args), xa, xb, ya, yb,
                                       epsabs=0, epsrel=1e-7)[0]
    return total


def ref_frame_flux(size, amplitude, r_eff, n, q, phi, x0, y0):
    """Flux inside the square image, in polar coordinates about the centre.

    Along a ray at angle t the elliptical radius is r e(t), so the radial integral up to the frame edge rho(t)
    is the enclosed-flux law F P(2n, b (rho e / r_eff)^(1/n)) / (2 pi e^2), F the total flux.
    """
    b = ref_b(n)
    flux = 2 * np.pi * n * amplitude * r_eff**2 * np.exp(b) * b ** (-2 * n) * special.gamma(2 * n)
    half = size / 2

    def rho(t):
        c, s = np.cos(t), np.sin(t)
        exits = [((half if d > 0 else -half) - p) / d for d, p in ((c, x0), (s, y0)) if d != 0]
        return min(exits)

    def integrand(t):
        e2 = q * np.cos(t - phi) ** 2 + np.sin(t - phi) ** 2 / q
        enclosed = special.gammainc(2 * n, b * (rho(t) * np.sqrt(e2) / r_eff) ** (1 / n))
        return flux / (2 * np.pi) * enclosed / e2

    corners = np.mod(np.arctan2([half - y0, half - y0, -half - y0, -half - y0],
                                [half - x0, -half - x0, half - x0, -half - x0]), 2 * np.pi)
    breaks = np.concatenate([[0.0], np.sort(corners), [2 * np.pi]])
    return sum(integrate.quad(integrand, a, c, epsabs=0, epsrel=1e-10, limit=200)[0]
               for a, c in pairwise(breaks))


def random_values(seed, shape, r_eff, n, centre):
    """Random component parameters (numpy arrays of shape `shape`)."""
    rng = np.random.default_rng(seed)
    return {"amplitude": rng.uniform(0.5, 2, shape), "r_eff": rng.uniform(*r_eff, shape),
            "n": rng.uniform(*n, shape), "q": rng.uniform(0.2, 1, shape), "phi": rng.uniform(-3, 3, shape),
            "x0": rng.uniform(-centre, centre, shape), "y0": rng.uniform(-centre, centre, shape)}


def one(dtype=torch.float64, **values):
    """Render parameters [1, 1] of one component."""
    return {k: torch.tensor([[float(v)]], dtype=dtype) for k, v in values.items()}


# ----------------------------------------------------------------------------------------------- b_n


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_sersic_b_matches_scipy(dtype, tol):
    n = torch.linspace(0.2, 10.0, 397, dtype=dtype)
    b = sersic_b(n)
    assert b.dtype == dtype and b.shape == n.shape
    expected = ref_b(n.double().numpy())
    assert np.max(np.abs(b.double().numpy() - expected) / expected) < tol


def test_sersic_b_gradient_matches_finite_difference():
    n = torch.tensor([0.2, 0.7, 1.0, 3.3, 6.0, 9.99, 10.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sersic_b(n).sum(), n)
    step = 1e-5
    expected = (ref_b(n.detach().numpy() + step) - ref_b(n.detach().numpy() - step)) / (2 * step)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-7)


# -------------------------------------------------------------------------------------------- profile


def test_profile_matches_numpy_and_broadcasts():
    shape = (2, 3)
    values = random_values(0, shape, r_eff=(1, 5), n=(0.3, 8), centre=2)
    y, x = np.meshgrid(np.linspace(-6, 6, 13), np.linspace(-7, 7, 11), indexing="ij")
    got = sersic_profile(torch.from_numpy(x), torch.from_numpy(y),
                         **{k: torch.from_numpy(v)[..., None, None] for k, v in values.items()})
    assert got.shape == (2, 3, 13, 11)
    for i in range(shape[0]):
        for k in range(shape[1]):
            expected = ref_profile(x, y, *(values[key][i, k] for key in values))
            np.testing.assert_allclose(got[i, k].numpy(), expected, rtol=1e-10)


def test_profile_equals_amplitude_on_the_effective_isophote():
    r_eff, q, phi, x0, y0, amplitude = 3.0, 0.4, 0.6, 1.5, -0.5, 2.5
    t = np.linspace(0, 2 * np.pi, 17)
    # the isophote R = r_eff: semi-axes r_eff / sqrt(q) along phi and r_eff sqrt(q) across
    major, minor = r_eff / np.sqrt(q) * np.cos(t), r_eff * np.sqrt(q) * np.sin(t)
    x = x0 + np.cos(phi) * major - np.sin(phi) * minor
    y = y0 + np.sin(phi) * major + np.cos(phi) * minor
    for n in (0.5, 2.0, 7.0):
        got = sersic_profile(torch.from_numpy(x), torch.from_numpy(y), amplitude=amplitude, r_eff=r_eff, n=n,
                             q=q, phi=phi, x0=x0, y0=y0)
        np.testing.assert_allclose(got.numpy(), amplitude, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_profile_value_and_gradient_at_the_centre(dtype):
    leaf = lambda v: torch.tensor(v, dtype=dtype, requires_grad=True)  # noqa: E731
    params = {"amplitude": leaf(1.5), "r_eff": leaf(2.0), "n": leaf(6.0), "q": leaf(0.5), "phi": leaf(0.3),
              "x0": leaf(1.25), "y0": leaf(-0.75)}
    x, y = leaf(1.25), leaf(-0.75)
    value = sersic_profile(x, y, **params)
    assert value.dtype == dtype
    np.testing.assert_allclose(value.item(), 1.5 * np.exp(ref_b(6.0)), rtol=1e-5)
    grads = torch.autograd.grad(value, [x, y, *params.values()])
    assert all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------------------------- flux


@pytest.mark.parametrize("n", [0.3, 0.5, 1.0, 2.5, 4.0, 6.0, 10.0])
def test_total_flux_matches_radial_quadrature(n):
    amplitude, r_eff = 1.7, 2.3
    ring = lambda r: 2 * np.pi * r * ref_profile(r, 0.0, amplitude, r_eff, n, 1.0, 0.0, 0.0, 0.0)  # noqa: E731
    expected = integrate.quad(ring, 0, np.inf, epsabs=0, epsrel=1e-11, limit=400)[0]
    got = sersic_total_flux(*(torch.tensor(v, dtype=torch.float64) for v in (amplitude, r_eff, n)))
    np.testing.assert_allclose(got.item(), expected, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rendered_image_sums_to_the_flux_in_the_frame(dtype):
    values = dict(amplitude=1.0, r_eff=6.0, n=4.0, q=0.7, phi=0.5, x0=0.3, y0=-0.2)
    image = render_sersic(one(dtype, **values), 128)
    assert image.shape == (1, 128, 128) and image.dtype == dtype
    in_frame = ref_frame_flux(128, *values.values())
    total = sersic_total_flux(*(torch.tensor(values[k]) for k in ("amplitude", "r_eff", "n")))
    # n = 4 wings: ~3% of the flux falls outside the frame, hence the in-frame reference
    assert 0.95 < in_frame / total.item() < 0.99
    np.testing.assert_allclose(image.sum().item(), in_frame, rtol=2e-3)


def test_centre_refinement_is_needed_for_cuspy_profiles():
    values = dict(amplitude=1.0, r_eff=2.0, n=6.0, q=0.7, phi=0.3, x0=0.0, y0=0.0)
    in_frame = ref_frame_flux(64, *values.values())
    refined = render_sersic(one(**values), 64).sum().item() / in_frame - 1
    coarse = render_sersic(one(**values), 64, center_box=0).sum().item() / in_frame - 1
    assert abs(refined) < 2e-3
    assert abs(coarse) > 0.02


@pytest.mark.parametrize("centre", [(0.0, 0.0), (0.37, -0.21)])
def test_cusp_pixels_match_dblquad(centre):
    # size 15: (0, 0) is the centre of pixel (7, 7), where every nested level has a sample on the cusp
    values = dict(amplitude=1.0, r_eff=1.5, n=6.0, q=0.7, phi=0.4, x0=centre[0], y0=centre[1])
    image = render_sersic(one(torch.float32, **values), 15)[0].double().numpy()
    for row, col in [(7, 7), (7, 8), (6, 7)]:
        expected = ref_pixel(row, col, 15, *values.values())
        assert abs(image[row, col] / expected - 1) < 1e-2, (row, col, image[row, col], expected)


# ------------------------------------------------------------------------------------------ rendering


def test_pixel_and_angle_conventions():
    size = 25
    # a compact, elongated Gaussian (n = 0.5) centred on pixel (row 10, column 15)
    values = dict(amplitude=1.0, r_eff=1.2, n=0.5, q=0.3, x0=3.0, y0=-2.0)
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2

    def moments(phi):
        image = render_sersic(one(**values, phi=phi), size)[0].numpy()
        w = image / image.sum()
        mx, my = (w * x).sum(), (w * y).sum()
        cov = [(w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()]
        return image, (mx, my), cov

    image, mean, (var_x, var_y, cov) = moments(0.0)
    assert np.unravel_index(np.argmax(image), image.shape) == (10, 15)
    np.testing.assert_allclose(mean, [3.0, -2.0], atol=1e-4)
    assert var_x > 5 * var_y and abs(cov) < 1e-9  # major axis along +x, the columns
    _, _, (var_x, var_y, cov) = moments(np.pi / 2)
    assert var_y > 5 * var_x  # turned onto +y, the rows
    _, _, (var_x, var_y, cov) = moments(np.pi / 4)
    assert cov > 0.4 * var_x  # counter-clockwise from +x towards +y: along the diagonal x = y


def test_batch_mask_and_components_add_up():
    params = random_values(1, (2, 3), r_eff=(1, 4), n=(0.5, 6), centre=4)
    params = {k: torch.from_numpy(v) for k, v in params.items()}
    mask = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], dtype=torch.float64)
    batch = render_sersic(params, 24, mask)
    for i in range(2):
        expected = torch.zeros(24, 24, dtype=torch.float64)
        for k in range(3):
            if mask[i, k]:
                single = {key: v[i : i + 1, k : k + 1] for key, v in params.items()}
                expected += mask[i, k] * render_sersic(single, 24)[0]
        torch.testing.assert_close(batch[i], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(render_sersic({**params, "mask": mask}, 24), batch)
    empty = render_sersic(params, 24, torch.zeros(2, 3))
    assert torch.equal(empty, torch.zeros(2, 24, 24, dtype=torch.float64))


def test_windows_crossing_the_frame_edge():
    # the same component rendered on a 33 x 33 frame and on a 41 x 41 frame that extends it by 4 px per side
    values = dict(amplitude=1.0, r_eff=1.5, n=5.0, q=0.6, phi=1.0, y0=-1.3)
    for x0 in (15.6, 16.5, 17.4, -16.9):  # centre in the last pixel, on the edge, and just outside the frame
        small = render_sersic(one(**values, x0=x0), 33)[0]
        large = render_sersic(one(**values, x0=x0), 41)[0]
        torch.testing.assert_close(small, large[4:-4, 4:-4], rtol=1e-10, atol=1e-14)


def test_float32_matches_float64():
    params = random_values(2, (3, 5), r_eff=(1, 20), n=(0.5, 8), centre=5)
    image64 = render_sersic({k: torch.from_numpy(v) for k, v in params.items()}, 48)
    image32 = render_sersic({k: torch.from_numpy(v).float() for k, v in params.items()}, 48)
    assert image32.dtype == torch.float32
    torch.testing.assert_close(image32.double(), image64, rtol=1e-4, atol=1e-6 * image64.max().item())


def test_render_is_differentiable():
    params = {k: v.requires_grad_() for k, v in one(amplitude=1.0, r_eff=2.0, n=3.0, q=0.6, phi=0.2, x0=0.3,
                                                     y0=0.1).items()}
    image = render_sersic(params, 16)
    grads = torch.autograd.grad(image.sum(), [params["amplitude"], params["r_eff"], params["n"]])
    flux = image.sum().item()
    np.testing.assert_allclose(grads[0].item(), flux, rtol=1e-10)  # linear in the amplitude
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("change", [
    {"size": 0}, {"center_box": 4}, {"center_oversample": 1}, {"oversample": 0},
])
def test_render_rejects_bad_settings(change):
    params = one(amplitude=1.0, r_eff=2.0, n=3.0, q=0.6, phi=0.2, x0=0.0, y0=0.0)
    kwargs = {"size": 8, **change}
    with pytest.raises(ValueError):
        render_sersic(params, **kwargs)


def test_render_rejects_bad_params():
    good = one(amplitude=1.0, r_eff=2.0, n=3.0, q=0.6, phi=0.2, x0=0.0, y0=0.0)
    with pytest.raises(ValueError, match="keys"):
        render_sersic({k: v for k, v in good.items() if k != "phi"}, 8)
    with pytest.raises(ValueError, match="r_eff"):
        render_sersic({**good, "r_eff": torch.tensor([[-1.0]], dtype=torch.float64)}, 8)
    with pytest.raises(ValueError, match="shape"):
        render_sersic({k: v[0] for k, v in good.items()}, 8)
    assert math.isfinite(render_sersic(good, 8).sum().item())
