"""Critical curves and caustics against analytic cases and lenstronomy's magnification."""

import numpy as np
import pytest
import torch

from scorelens.lensing.critical import caustics, critical_curves
from scorelens.lensing.mass import ray_trace

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.Util import param_util  # noqa: E402


def tensors(**kw):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in kw.items()}


def test_sis_critical_curve_is_the_einstein_ring_and_its_caustic_a_point():
    p = tensors(theta_E=1.3, gamma=1.0, q=1.0, phi=0.0, x0=0.2, y0=-0.1)
    curves = critical_curves(p, half_width=2.5, center=(0.2, -0.1), n=201)
    assert len(curves) == 1
    r = np.hypot(curves[0][:, 0] - 0.2, curves[0][:, 1] + 0.1)
    np.testing.assert_allclose(r, 1.3, atol=1e-6)
    (c,) = caustics(p, curves)
    np.testing.assert_allclose(c, np.broadcast_to([0.2, -0.1], c.shape), atol=1e-5)


def test_sie_with_shear_critical_curves_have_infinite_magnification_in_lenstronomy():
    q, phi, te = 0.6, 0.5, 1.4
    p = tensors(theta_E=te, gamma=1.0, q=q, phi=phi, x0=0.0, y0=0.0, gamma_ext=0.05, phi_ext=-0.3,
                a3=0.0, phi3=0.0, a4=0.01, phi4=0.5)
    curves = critical_curves(p, half_width=3.0)
    assert len(curves) >= 1
    e1, e2 = param_util.phi_q2_ellipticity(phi, q)
    g1, g2 = param_util.shear_polar2cartesian(-0.3, 0.05)
    kw = [dict(theta_E=te, gamma=2.0, e1=e1, e2=e2, center_x=0, center_y=0), dict(gamma1=g1, gamma2=g2),
          dict(m=4, a_m=0.01 * te, phi_m=0.5, center_x=0, center_y=0)]
    model = LensModel(["EPL", "SHEAR", "MULTIPOLE"])
    pts = np.concatenate(curves)
    fxx, fxy, _, fyy = model.hessian(pts[:, 0], pts[:, 1], kw)
    det = (1 - fxx) * (1 - fyy) - fxy**2
    assert np.abs(det).max() < 1e-8
    # the caustic of an elliptical lens encloses the centre and is far smaller than the critical curve
    caus = caustics(p, curves)
    tangential = max(caus, key=lambda c: np.ptp(c[:, 0]))
    bx, by = ray_trace(p, torch.tensor(pts[:, 0]), torch.tensor(pts[:, 1]))
    assert np.ptp(tangential[:, 0]) < 0.5 * np.ptp(pts[:, 0])
    assert np.allclose(np.concatenate(caus), np.stack((bx.numpy(), by.numpy()), -1))


def test_critical_curves_need_one_model():
    p = {k: torch.zeros(2) + v for k, v in dict(theta_E=1.0, gamma=1.0, q=1.0, phi=0.0, x0=0.0, y0=0.0).items()}
    with pytest.raises(ValueError, match="one mass model"):
        critical_curves(p, half_width=2.0)
