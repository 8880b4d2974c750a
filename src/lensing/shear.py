"""External shear about the coordinate origin: psi = (gamma1 (x^2 - y^2) + 2 gamma2 x y) / 2.

gamma1 = gamma_ext cos(2 phi_ext), gamma2 = gamma_ext sin(2 phi_ext) (lenstronomy's shear_polar2cartesian).
"""

from __future__ import annotations

import torch
from torch import Tensor


def shear_components(gamma_ext: Tensor, phi_ext: Tensor) -> tuple[Tensor, Tensor]:
    """Cartesian shear (gamma1, gamma2) from strength and angle (radians)."""
    return gamma_ext * torch.cos(2 * phi_ext), gamma_ext * torch.sin(2 * phi_ext)


def shear_deflection(x: Tensor, y: Tensor, gamma1: Tensor, gamma2: Tensor) -> tuple[Tensor, Tensor]:
    """Deflection (arcsec) at sky positions x, y (arcsec)."""
    return gamma1 * x + gamma2 * y, gamma2 * x - gamma1 * y


def shear_hessian(gamma1: Tensor, gamma2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(psi_xx, psi_xy, psi_yy), constant over the sky."""
    return gamma1, gamma2, -gamma1
