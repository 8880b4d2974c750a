"""The mass model against lenstronomy (EPL + SHEAR + MULTIPOLE), finite differences and edge cases."""

import math

import numpy as np
import pytest
import torch

from scorelens.lensing.epl import default_terms
from scorelens.lensing.mass import PARAM_NAMES, check_params, convergence, deflection, hessian, magnification_inverse

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.Util import param_util  # noqa: E402


def random_params(rng, q=None):
    return dict(
        theta_E=rng.uniform(0.5, 2.0),
        gamma=rng.uniform(0.5, 1.5),
        q=rng.uniform(0.2, 1.0) if q is None else q,
        phi=rng.uniform(-math.pi, math.pi),
        x0=rng.uniform(-0.4, 0.4),
        y0=rng.uniform(-0.4, 0.4),
        gamma_ext=rng.uniform(0.0, 0.15),
        phi_ext=rng.uniform(-math.pi, math.pi),
        a3=rng.normal(0.0, 0.02),
        phi3=rng.uniform(-math.pi, math.pi),
        a4=rng.normal(0.0, 0.02),
        phi4=rng.uniform(-math.pi, math.pi),
    )


def lenstronomy_kwargs(p):
    """The mapping of DESIGN.md: gamma + 1, (phi, q) -> (e1, e2), polar -> cartesian shear, a_m * theta_E."""
    e1, e2 = param_util.phi_q2_ellipticity(p["phi"], p["q"])
    g1, g2 = param_util.shear_polar2cartesian(p["phi_ext"], p["gamma_ext"])
    centre = dict(center_x=p["x0"], center_y=p["y0"])
    return [
        dict(theta_E=p["theta_E"], gamma=p["gamma"] + 1, e1=e1, e2=e2, **centre),
        dict(gamma1=g1, gamma2=g2),
        dict(m=3, a_m=p["a3"] * p["theta_E"], phi_m=p["phi3"], **centre),
        dict(m=4, a_m=p["a4"] * p["theta_E"], phi_m=p["phi4"], **centre),
    ]


def as_tensors(p, dtype=torch.float64, **kw):
    return {k: torch.tensor(v, dtype=dtype, **kw) for k, v in p.items()}


@pytest.fixture(scope="module")
def reference_sets():
    rng = np.random.default_rng(2015)
    qs = [1.0, 0.2] + [None] * 198
    return [random_params(rng, q) for q in qs], rng


def test_deflection_convergence_hessian_match_lenstronomy(reference_sets):
    sets, rng = reference_sets
    model = LensModel(["EPL", "SHEAR", "MULTIPOLE", "MULTIPOLE"])
    worst = {"alpha": 0.0, "kappa": 0.0, "hessian": 0.0}
    for p in sets:
        kw = lenstronomy_kwargs(p)
        x, y = rng.uniform(-3, 3, 300), rng.uniform(-3, 3, 300)
        # keep away from the centre, where the profiles diverge and relative errors say nothing
        far = np.hypot(x - p["x0"], y - p["y0"]) > 0.05
        x, y = x[far], y[far]
        ax, ay = model.alpha(x, y, kw)
        kappa = model.kappa(x, y, kw)
        fxx, fxy, _, fyy = model.hessian(x, y, kw)
        P = as_tensors(p)
        bx, by = deflection(P, torch.tensor(x), torch.tensor(y))
        err = np.hypot(bx.numpy() - ax, by.numpy() - ay) / np.hypot(ax, ay)
        worst["alpha"] = max(worst["alpha"], err.max())
        k = convergence(P, torch.tensor(x), torch.tensor(y)).numpy()
        worst["kappa"] = max(worst["kappa"], np.max(np.abs(k - kappa) / np.abs(kappa)))
        hxx, hxy, hyy = (h.numpy() for h in hessian(P, torch.tensor(x), torch.tensor(y)))
        scale = np.abs(fxx) + np.abs(fyy) + np.abs(fxy)
        herr = np.max((np.abs(hxx - fxx) + np.abs(hxy - fxy) + np.abs(hyy - fyy)) / scale)
        worst["hessian"] = max(worst["hessian"], herr)
    assert worst["alpha"] < 1e-6, worst
    assert worst["kappa"] < 1e-6, worst
    assert worst["hessian"] < 1e-6, worst


def test_float32_is_accurate_to_single_precision():
    rng = np.random.default_rng(1)
    model = LensModel(["EPL"])
    for _ in range(20):
        p = random_params(rng, q=0.2)
        x, y = rng.uniform(-3, 3, 200), rng.uniform(-3, 3, 200)
        ax, ay = model.alpha(x, y, lenstronomy_kwargs(p)[:1])
        P = {k: torch.tensor(p[k], dtype=torch.float32) for k in ("theta_E", "gamma", "q", "phi", "x0", "y0")}
        bx, by = deflection(P, torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
        err = np.hypot(bx.numpy() - ax, by.numpy() - ay) / np.hypot(ax, ay)
        assert np.median(err) < 1e-5 and err.max() < 1e-3


def test_series_length_follows_dtype():
    assert default_terms(torch.float64) > default_terms(torch.float32) > 20


def _loss(P, x, y, w):
    ax, ay = deflection(P, x, y)
    return (w[0] * ax + w[1] * ay).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_match_central_differences(seed):
    rng = np.random.default_rng(seed)
    p = random_params(rng)
    P = as_tensors(p, requires_grad=True)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(150, generator=g, dtype=torch.float64) * 6 - 3).requires_grad_(True)
    y = (torch.rand(150, generator=g, dtype=torch.float64) * 6 - 3).requires_grad_(True)
    w = torch.randn(2, 150, generator=g, dtype=torch.float64)
    _loss(P, x, y, w).backward()
    h = 1e-6
    for k in PARAM_NAMES:
        up = {n: (v.detach() + h if n == k else v.detach()) for n, v in P.items()}
        dn = {n: (v.detach() - h if n == k else v.detach()) for n, v in P.items()}
        fd = (_loss(up, x.detach(), y.detach(), w) - _loss(dn, x.detach(), y.detach(), w)) / (2 * h)
        assert P[k].grad.item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-7), k
    # positions: autograd's own finite-difference checker on a few rays
    Pd = {k: v.detach() for k, v in P.items()}
    xs, ys = x[:12].detach().clone().requires_grad_(True), y[:12].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: deflection(Pd, a, b), (xs, ys))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("slope", [0.5, 1.0, 1.5])
def test_no_nan_at_round_lens_centre_without_shear_or_multipoles(dtype, slope):
    p = dict(theta_E=1.2, gamma=slope, q=1.0, phi=0.3, x0=0.25, y0=-0.5, gamma_ext=0.0, phi_ext=0.0,
             a3=0.0, phi3=0.0, a4=0.0, phi4=0.0)
    P = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in p.items()}
    x = torch.tensor([0.25, 0.25, 1.0, -2.0], dtype=dtype, requires_grad=True)  # first two: the exact centre
    y = torch.tensor([-0.5, -0.5, 0.3, 0.0], dtype=dtype, requires_grad=True)
    ax, ay = deflection(P, x, y)
    (ax.sum() + 2 * ay.sum()).backward()
    values = [ax, ay, x.grad, y.grad] + [P[k].grad for k in PARAM_NAMES]
    assert all(torch.isfinite(v).all() for v in values)
    for h in hessian({k: v.detach() for k, v in P.items()}, x.detach(), y.detach()):
        assert torch.isfinite(h).all()
    assert torch.isfinite(convergence({k: v.detach() for k, v in P.items()}, x.detach(), y.detach())).all()


def test_round_isothermal_is_sis():
    P = as_tensors(dict(theta_E=1.3, gamma=1.0, q=1.0, phi=0.7, x0=0.0, y0=0.0))
    x = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, -3.0], dtype=torch.float64)
    ax, ay = deflection(P, x, y)
    r = torch.hypot(x, y)
    torch.testing.assert_close(ax, 1.3 * x / r)
    torch.testing.assert_close(ay, 1.3 * y / r)
    torch.testing.assert_close(magnification_inverse(P, x, y), 1 - 1.3 / r)


def test_broadcasting_contract():
    rng = np.random.default_rng(3)
    sets = [random_params(rng) for _ in range(5)]
    batched = {k: torch.tensor([s[k] for s in sets], dtype=torch.float64) for k in PARAM_NAMES}
    x = torch.linspace(-2, 2, 7, dtype=torch.float64)
    y = torch.linspace(1, -1, 7, dtype=torch.float64)
    ax, ay = deflection(batched, x, y)
    assert ax.shape == ay.shape == (5, 7)
    for i, s in enumerate(sets):
        sx, sy = deflection(as_tensors(s), x, y)
        assert sx.shape == (7,)
        torch.testing.assert_close(ax[i], sx)
        torch.testing.assert_close(ay[i], sy)
    grid = torch.zeros(3, 4, dtype=torch.float64) + 0.5
    assert deflection(batched, grid, grid)[0].shape == (5, 3, 4)


def test_parameter_names_are_checked():
    with pytest.raises(ValueError, match="unknown mass parameter"):
        check_params(dict(theta_E=1, gamma=1, q=1, phi=0, x0=0, y0=0, theta_e=1))
    with pytest.raises(ValueError, match="required"):
        check_params(dict(theta_E=1, gamma=1, q=1, phi=0))
    with pytest.raises(ValueError, match="go together"):
        check_params(dict(theta_E=1, gamma=1, q=1, phi=0, x0=0, y0=0, a3=0.01))
