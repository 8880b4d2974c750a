"""Circular multipoles of order m >= 2 (Xu et al. 2013 appendix B; lenstronomy's MULTIPOLE).

    psi = r a / (1 - m^2) cos(m (theta - phi_m)),   kappa = a cos(m (theta - phi_m)) / (2 r)

with (r, theta) polar coordinates about the lens centre and `a` the amplitude in arcsec (scorelens passes
a = a_m theta_E, its amplitudes being relative to the Einstein radius).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _polar(dx: Tensor, dy: Tensor):
    """r, cos(theta), sin(theta), with a ray exactly at the centre moved by a negligible amount (no 0/0)."""
    tiny = torch.finfo(dx.dtype).eps
    at_centre = (dx.abs() < tiny) & (dy.abs() < tiny)
    dx = torch.where(at_centre, torch.full_like(dx, tiny), dx)
    r = torch.sqrt(dx * dx + dy * dy)
    return r, dx / r, dy / r


def _harmonic(c: Tensor, s: Tensor, m: int, phi_m: Tensor):
    """cos(m (theta - phi_m)) and sin(m (theta - phi_m)) from cos(theta), sin(theta), without atan2."""
    re, im = c, s
    for _ in range(m - 1):  # (c + i s)^m
        re, im = re * c - im * s, re * s + im * c
    cm, sm = torch.cos(m * phi_m), torch.sin(m * phi_m)
    return re * cm + im * sm, im * cm - re * sm


def multipole_deflection(dx: Tensor, dy: Tensor, m: int, a: Tensor, phi_m: Tensor) -> tuple[Tensor, Tensor]:
    """Deflection (arcsec) at offsets (dx, dy) from the centre (arcsec)."""
    _, c, s = _polar(dx, dy)
    cos_m, sin_m = _harmonic(c, s, m, phi_m)
    k = a / (1 - m * m)
    return k * (c * cos_m + m * s * sin_m), k * (s * cos_m - m * c * sin_m)


def multipole_hessian(dx: Tensor, dy: Tensor, m: int, a: Tensor, phi_m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(psi_xx, psi_xy, psi_yy): the potential is homogeneous of degree 1, so the Hessian is tangential only."""
    r, c, s = _polar(dx, dy)
    cos_m, _ = _harmonic(c, s, m, phi_m)
    k = a * cos_m / r
    return k * s * s, -k * s * c, k * c * c


def multipole_convergence(dx: Tensor, dy: Tensor, m: int, a: Tensor, phi_m: Tensor) -> Tensor:
    """Convergence at offsets (dx, dy) from the centre."""
    r, c, s = _polar(dx, dy)
    cos_m, _ = _harmonic(c, s, m, phi_m)
    return a * cos_m / (2 * r)
