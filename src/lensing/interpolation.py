"""Bilinear interpolation of pixelated images at arbitrary positions, as an explicit sparse linear map.

Each position gets the flat indices of its 4 neighbouring pixel centres and their bilinear weights; neighbours that
fall outside the image get weight 0 (the image is zero beyond its edge). Sampling is a gather, its adjoint a
scatter-add with the same indices and weights, so forward and adjoint are exact transposes of each other. The
weights are differentiable in the positions (autograd), which carries gradients to the mass model and the shifts.
`interpolate` computes the same values with `grid_sample`, which is faster and lighter when only the nonlinear
forward model and its gradients are needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .grid import PixelGrid


def bilinear_weights(grid: PixelGrid, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Neighbour indices and weights of positions (x, y) [...] (arcsec) on `grid`.

    Returns:
        index: [..., 4] int64 flat pixel indices (row * n + col), clamped into range where the weight is 0.
        weight: [..., 4] bilinear weights, differentiable in x and y.
    """
    n = grid.n
    # Continuous pixel coordinates: pixel centre (i, j) at (i, j).
    fc = (x - grid.x0) / grid.pixel_scale + (n - 1) / 2
    fr = (y - grid.y0) / grid.pixel_scale + (n - 1) / 2
    c0 = torch.floor(fc.detach())
    r0 = torch.floor(fr.detach())
    tc = fc - c0
    tr = fr - r0
    c0 = c0.long()
    r0 = r0.long()
    cols = torch.stack((c0, c0 + 1, c0, c0 + 1), dim=-1)
    rows = torch.stack((r0, r0, r0 + 1, r0 + 1), dim=-1)
    weight = torch.stack(((1 - tc) * (1 - tr), tc * (1 - tr), (1 - tc) * tr, tc * tr), dim=-1)
    inside = (cols >= 0) & (cols < n) & (rows >= 0) & (rows < n)
    weight = torch.where(inside, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    index = torch.where(inside, rows * n + cols, torch.zeros((), dtype=torch.long, device=cols.device))
    return index, weight


def sample(image: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """Interpolate images [B, n, n] at positions given by index/weight [B, *P, 4] -> [B, *P]."""
    b = image.shape[0]
    flat = image.reshape(b, -1)
    pos_shape = index.shape[1:-1]
    idx = index.reshape(index.shape[0], -1).expand(b, -1)
    vals = torch.gather(flat, 1, idx).reshape(b, *pos_shape, 4)
    return (vals * weight).sum(-1)


def scatter(values: Tensor, index: Tensor, weight: Tensor, n: int) -> Tensor:
    """Adjoint of `sample`: spread values [B, *P] into images [B, n, n]."""
    b = values.shape[0]
    contrib = (values[..., None] * weight).reshape(b, -1)
    idx = index.reshape(index.shape[0], -1).expand(b, -1)
    out = torch.zeros(b, n * n, dtype=values.dtype, device=values.device)
    return out.scatter_add_(1, idx, contrib).reshape(b, n, n)


def interpolate(image: Tensor, grid: PixelGrid, x: Tensor, y: Tensor) -> Tensor:
    """Bilinear values of images [B, n, n] at positions (x, y) [B, *P] (arcsec) -> [B, *P]; zero beyond the edge.

    Equal to `sample(image, *bilinear_weights(grid, x, y))`, differentiable in the image and the positions.
    """
    b = image.shape[0]
    pos_shape = x.shape[1:]
    half = (grid.n - 1) / 2 * grid.pixel_scale
    # grid_sample with align_corners=True puts -1 and +1 on the centres of the first and last pixels.
    gx = ((x - grid.x0) / half).reshape(x.shape[0], -1, 1)
    gy = ((y - grid.y0) / half).reshape(y.shape[0], -1, 1)
    g = torch.stack((gx, gy), dim=-1).expand(b, -1, -1, -1)
    out = F.grid_sample(image[:, None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(b, *pos_shape)
