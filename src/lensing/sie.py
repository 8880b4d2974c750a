"""The singular isothermal ellipsoid (the power law of `epl.py` at slope t = 1) in closed form.

In the profile's frame (u along the major axis), with b = theta_E sqrt(q) as in `epl.py`, f = sqrt(1 - q^2) and
psi = sqrt(q^2 u^2 + v^2) (Kormann, Schneider & Bartelmann 1994; Keeton 2001):

    alpha_u = (b / f) atan(f u / psi),    alpha_v = (b / f) atanh(f v / psi)

The power-law series needs tens of terms; this needs two transcendental functions, which is what a search over
many starts wants. q is held below 1 - 1e-4 (f >= 0.014) so the division by f stays exact in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sie_frame_deflection(u: Tensor, v: Tensor, b: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Deflection (alpha_u, alpha_v), arcsec, at frame positions (u, v), arcsec; b, q broadcast against u, v."""
    q = torch.clamp(q, max=1.0 - 1e-4)
    f = torch.sqrt(1.0 - q * q)
    psi = torch.sqrt(q * q * u * u + v * v).clamp(min=1e-9)
    # |f v / psi| <= f < 1, so atanh is finite everywhere, the centre included
    return b / f * torch.atan(f * u / psi), b / f * torch.atanh(f * v / psi)


def sie_deflection(x: Tensor, y: Tensor, theta_E: Tensor, q: Tensor, phi: Tensor, x0: Tensor, y0: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Deflection (alpha_x, alpha_y), arcsec, at sky positions (x, y), arcsec, of an SIE with Einstein radius
    theta_E (intermediate-axis convention), axis ratio q, major-axis angle phi (radians from +x) and centre
    (x0, y0); parameters broadcast against x, y."""
    c, s = torch.cos(phi), torch.sin(phi)
    dx, dy = x - x0, y - y0
    au, av = sie_frame_deflection(c * dx + s * dy, -s * dx + c * dy, theta_E * torch.sqrt(q), q)
    return c * au - s * av, s * au + c * av
