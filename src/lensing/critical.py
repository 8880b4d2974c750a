"""Critical curves and caustics of the mass model, as polylines in arcsec (for figures).

The critical curves are the zero contours of det(d beta / d theta), traced on a grid with marching squares
(contourpy) and polished with a few Newton steps along the gradient of the determinant; the caustics are their
images through the lens equation.
"""

from __future__ import annotations

from collections.abc import Mapping

import contourpy
import numpy as np
import torch
from torch import Tensor

from .mass import magnification_inverse, ray_trace


def _as_single(params: Mapping[str, Tensor], dtype) -> dict[str, Tensor]:
    out = {}
    for k, v in params.items():
        v = torch.as_tensor(v, dtype=dtype).detach().cpu()
        if v.numel() != 1:
            raise ValueError(f"critical curves take one mass model (0-d parameters); {k} has shape {tuple(v.shape)}")
        out[k] = v.reshape(())
    return out


def critical_curves(
    params: Mapping[str, Tensor],
    half_width: float,
    center: tuple[float, float] = (0.0, 0.0),
    n: int = 401,
    newton_steps: int = 3,
    min_points: int = 8,
) -> list[np.ndarray]:
    """Critical curves inside the square of half side `half_width` (arcsec) about `center`.

    Returns a list of [M, 2] float64 arrays of (x, y) in arcsec, one per closed or open curve (curves shorter
    than `min_points` vertices, such as numerical specks at the centre of a cusp, are dropped).
    """
    p = _as_single(params, torch.float64)
    a = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(a + center[1], a + center[0], indexing="ij")
    det = magnification_inverse(p, xx, yy).numpy()
    det = np.where(np.isfinite(det), det, np.nan)
    gen = contourpy.contour_generator(xx.numpy(), yy.numpy(), det, line_type=contourpy.LineType.Separate)
    curves = [c for c in gen.lines(0.0) if len(c) >= min_points]
    return [_polish(p, c, newton_steps) for c in curves]


def _polish(p: Mapping[str, Tensor], curve: np.ndarray, steps: int) -> np.ndarray:
    """Newton steps toward det = 0 along the gradient of det; points whose step would be large are left alone."""
    pts = torch.tensor(curve, dtype=torch.float64)
    spacing = float(np.median(np.hypot(*np.diff(curve, axis=0).T))) if len(curve) > 1 else 0.0
    for _ in range(steps):
        x = pts[:, 0].clone().requires_grad_(True)
        y = pts[:, 1].clone().requires_grad_(True)
        det = magnification_inverse(p, x, y)
        gx, gy = torch.autograd.grad(det.sum(), (x, y))
        g2 = gx * gx + gy * gy
        dx = -det.detach() * gx / g2
        dy = -det.detach() * gy / g2
        ok = torch.isfinite(dx) & torch.isfinite(dy) & (torch.hypot(dx, dy) < spacing)
        pts = pts + torch.stack((torch.where(ok, dx, 0.0), torch.where(ok, dy, 0.0)), dim=-1)
    return pts.numpy()


def caustics(params: Mapping[str, Tensor], curves: list[np.ndarray]) -> list[np.ndarray]:
    """Map critical curves [M, 2] to the source plane: the caustics, as [M, 2] arrays in arcsec."""
    p = _as_single(params, torch.float64)
    out = []
    for c in curves:
        c = torch.as_tensor(c, dtype=torch.float64)
        bx, by = ray_trace(p, c[:, 0], c[:, 1])
        out.append(torch.stack((bx, by), dim=-1).numpy())
    return out
