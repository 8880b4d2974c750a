"""Smooth basis images of the start finder: Gaussian blobs for the source, concentric elliptical Gaussians (a
multi-Gaussian expansion) for the lens light.

Both are evaluated at given sky positions, so the same functions serve the source plane (at ray-traced positions
beta) and the image plane (at the rays theta). Each basis image peaks at 1; fluxes come from the linear amplitudes
the finder solves for. Positions in arcsec; batches of starts B come first.
"""

from __future__ import annotations

import torch
from torch import Tensor


def blob_centres(n: int, fov: float, dtype=torch.float32, device=None) -> Tensor:
    """Centres [n * n, 2] (x, y, arcsec) of an n x n square grid spanning `fov` arcsec (centre to centre) about 0."""
    a = torch.linspace(-fov / 2, fov / 2, n, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(a, a, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def source_blobs(bx: Tensor, by: Tensor, centre: Tensor, offsets: Tensor, width: float) -> Tensor:
    """Gaussian blobs of sd `width` at `centre` + `offsets`, evaluated at source-plane positions.

    bx, by: [B, *S] positions; centre: [B, 2] the grid's centre per start; offsets: [K, 2] blob offsets from it.
    Returns [B, K, *S].
    """
    extra = (1,) * (bx.ndim - 1)
    cx = (centre[:, 0, None] + offsets[None, :, 0]).reshape(*centre.shape[:1], -1, *extra)
    cy = (centre[:, 1, None] + offsets[None, :, 1]).reshape(*centre.shape[:1], -1, *extra)
    r2 = (bx[:, None] - cx) ** 2 + (by[:, None] - cy) ** 2
    return torch.exp(-0.5 * r2 / width**2)


def _frame(x: Tensor, y: Tensor, centre: Tensor, e1: Tensor, e2: Tensor):
    """Offsets (u, v) along the major and minor axes about centre [B, 2], and q, for ellipticity (e1, e2) [B]
    (e = (1 - q)/(1 + q), major axis at atan2(e2, e1) / 2); x, y: [B, *S]; q shaped to broadcast."""
    extra = (1,) * (x.ndim - 1)
    shape = lambda t: t.reshape(-1, *extra)  # noqa: E731
    e = torch.sqrt(e1**2 + e2**2 + 1e-12)
    phi = 0.5 * torch.atan2(e2, e1)
    c, s = shape(torch.cos(phi)), shape(torch.sin(phi))
    dx, dy = x - shape(centre[:, 0]), y - shape(centre[:, 1])
    return c * dx + s * dy, -s * dx + c * dy, shape((1 - e) / (1 + e))


def light_gaussians(x: Tensor, y: Tensor, centre: Tensor, e1: Tensor, e2: Tensor, sigmas: Tensor,
                    blur: float = 0.0) -> Tensor:
    """Concentric elliptical Gaussians, [B, *S] positions -> [B, J, *S].

    Component j has sd sigmas[j] / sqrt(q) along the major axis and sigmas[j] sqrt(q) along the minor one (the
    area of the circle of sd sigmas[j]) and peak 1, before it is convolved with an isotropic Gaussian of sd `blur`
    (arcsec; the PSF), which widens each axis and lowers the peak so that the flux is kept.
    """
    u, v, q = _frame(x, y, centre, e1, e2)
    s2 = sigmas.reshape(1, -1, *(1,) * (x.ndim - 1)) ** 2
    q = q[:, None]
    su2, sv2 = s2 / q + blur**2, s2 * q + blur**2
    return torch.sqrt(s2 * s2 / (su2 * sv2)) * torch.exp(-0.5 * (u[:, None] ** 2 / su2 + v[:, None] ** 2 / sv2))
