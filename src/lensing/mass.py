"""The parametric mass model: elliptical power law + external shear + multipoles m = 3, 4.

Parameters (names are a contract, see DESIGN.md), each a tensor:

    theta_E      Einstein radius (arcsec, intermediate-axis convention)
    gamma        power-law slope t; 1 is isothermal (lenstronomy's EPL gamma minus one)
    q, phi       axis ratio (minor/major) and major-axis angle (radians, counter-clockwise from +x)
    x0, y0       lens centre (arcsec)
    gamma_ext, phi_ext   external shear strength and angle (about the coordinate origin)
    a3, phi3, a4, phi4   multipole amplitudes relative to theta_E, and their angles (radians)

Shear and multipole groups may be left out (treated as zero). Positions x, y are in arcsec in the lens frame of
DESIGN.md. `deflection(params, x, y)` broadcasts "outer": parameters of shape P and coordinates of shape C give
results of shape P + C (0-d parameters with 1-D coordinates give 1-D results, [B] with [N] gives [B, N]). With
`outer=False` the shapes broadcast as they are, for callers that arrange them already ([B, 1, 1] against
[B, H, W], say).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .epl import epl_frame_convergence, epl_frame_deflection, epl_frame_hessian
from .multipole import multipole_convergence, multipole_deflection, multipole_hessian
from .shear import shear_components, shear_deflection, shear_hessian

EPL_NAMES = ("theta_E", "gamma", "q", "phi", "x0", "y0")
SHEAR_NAMES = ("gamma_ext", "phi_ext")
MULTIPOLE_NAMES = {3: ("a3", "phi3"), 4: ("a4", "phi4")}
PARAM_NAMES = EPL_NAMES + SHEAR_NAMES + MULTIPOLE_NAMES[3] + MULTIPOLE_NAMES[4]


def check_params(params: Mapping[str, Tensor]) -> None:
    """Raise ValueError naming the problem if params has unknown keys or an incomplete group."""
    unknown = sorted(set(params) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown mass parameter(s) {unknown}; valid names are {list(PARAM_NAMES)}")
    missing = [k for k in EPL_NAMES if k not in params]
    if missing:
        raise ValueError(f"mass parameters {missing} are required (the power law needs {list(EPL_NAMES)})")
    for group in (SHEAR_NAMES, *MULTIPOLE_NAMES.values()):
        present = [k for k in group if k in params]
        if present and len(present) != len(group):
            raise ValueError(f"mass parameters {list(group)} go together; got only {present}")


def _arrange(params: Mapping[str, Tensor], x: Tensor, outer: bool) -> dict[str, Tensor]:
    check_params(params)
    out = {}
    for k, v in params.items():
        v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
        out[k] = v.reshape(v.shape + (1,) * x.ndim) if outer else v
    return out


def _frame(p: Mapping[str, Tensor], x: Tensor, y: Tensor):
    """Offsets from the centre in the sky frame and in the profile frame, and the rotation's cos/sin."""
    dx, dy = x - p["x0"], y - p["y0"]
    c, s = torch.cos(p["phi"]), torch.sin(p["phi"])
    return dx, dy, c * dx + s * dy, -s * dx + c * dy, c, s


def _b(p: Mapping[str, Tensor]) -> Tensor:
    return p["theta_E"] * torch.sqrt(p["q"])


def deflection(params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, outer: bool = True, n_terms: int | None = None):
    """Deflection angles (alpha_x, alpha_y) in arcsec at positions (x, y) in arcsec.

    Differentiable in the parameters and positions (no NaN at q = 1 or at the centre). `n_terms` overrides the
    number of power-law series terms (default: enough for the dtype's precision down to q = 0.2).
    """
    p = _arrange(params, x, outer)
    dx, dy, u, v, c, s = _frame(p, x, y)
    au, av = epl_frame_deflection(u, v, _b(p), p["gamma"], p["q"], n_terms)
    ax, ay = c * au - s * av, s * au + c * av
    if "gamma_ext" in p:
        g1, g2 = shear_components(p["gamma_ext"], p["phi_ext"])
        sx, sy = shear_deflection(x, y, g1, g2)
        ax, ay = ax + sx, ay + sy
    for m, (a_name, phi_name) in MULTIPOLE_NAMES.items():
        if a_name in p:
            mx, my = multipole_deflection(dx, dy, m, p[a_name] * p["theta_E"], p[phi_name])
            ax, ay = ax + mx, ay + my
    return ax, ay


def ray_trace(params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, outer: bool = True, n_terms: int | None = None):
    """Source-plane positions beta = theta - alpha(theta) (arcsec)."""
    ax, ay = deflection(params, x, y, outer=outer, n_terms=n_terms)
    return x - ax, y - ay


def convergence(params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, outer: bool = True) -> Tensor:
    """Convergence kappa at (x, y)."""
    p = _arrange(params, x, outer)
    dx, dy, u, v, _, _ = _frame(p, x, y)
    kappa = epl_frame_convergence(u, v, _b(p), p["gamma"], p["q"])
    for m, (a_name, phi_name) in MULTIPOLE_NAMES.items():
        if a_name in p:
            kappa = kappa + multipole_convergence(dx, dy, m, p[a_name] * p["theta_E"], p[phi_name])
    return kappa


def hessian(params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, outer: bool = True, n_terms: int | None = None):
    """Second derivatives of the lensing potential (psi_xx, psi_xy, psi_yy) at (x, y)."""
    p = _arrange(params, x, outer)
    dx, dy, u, v, c, s = _frame(p, x, y)
    kappa, g1, g2 = epl_frame_hessian(u, v, _b(p), p["gamma"], p["q"], n_terms)
    # Rotate the frame's shear by 2 phi back to the sky.
    c2, s2 = c * c - s * s, 2 * c * s
    g1, g2 = g1 * c2 - g2 * s2, g1 * s2 + g2 * c2
    hxx, hxy, hyy = kappa + g1, g2, kappa - g1
    if "gamma_ext" in p:
        e1, e2 = shear_components(p["gamma_ext"], p["phi_ext"])
        sxx, sxy, syy = shear_hessian(e1, e2)
        hxx, hxy, hyy = hxx + sxx, hxy + sxy, hyy + syy
    for m, (a_name, phi_name) in MULTIPOLE_NAMES.items():
        if a_name in p:
            mxx, mxy, myy = multipole_hessian(dx, dy, m, p[a_name] * p["theta_E"], p[phi_name])
            hxx, hxy, hyy = hxx + mxx, hxy + mxy, hyy + myy
    return hxx, hxy, hyy


def magnification_inverse(params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, outer: bool = True) -> Tensor:
    """det(d beta / d theta) = (1 - psi_xx)(1 - psi_yy) - psi_xy^2; zero on the critical curves."""
    hxx, hxy, hyy = hessian(params, x, y, outer=outer)
    return (1 - hxx) * (1 - hyy) - hxy * hxy
