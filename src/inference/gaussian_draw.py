"""Exact draws from the Gaussian conditional of pixelated images under a linear model, matrix-free.

For images x = (x_1, ..., x_k) (source, lens light; flux units) seen through linear maps A_i, data y with per-pixel
weights w = mask / (T v), and a Gaussian coupling x_i ~ N(z_i, rho_i^2 I) to given images z_i, the conditional of x
is Gaussian with precision and mean

    Q = diag(rho_i^-2 I) + A^T W A,    Q mu = rho^-2 z + A^T W (y - r)      (A x = sum_i A_i x_i, r: the fixed rest)

A draw is made by perturbing both sides and solving once ("perturb and optimise", Papandreou & Yuille 2010):
x = Q^-1 (rho^-2 (z + rho eps_1) + A^T W (y - r + sqrt(T v) eps_2)), which is distributed exactly as N(mu, Q^-1).
The solve is conjugate gradients, batched over chains (each chain its own Q), with the diagonal (rho^-2 + (A^T W A)
1) as preconditioner: A >= 0, so its row sums bound the diagonal of A^T W A from above and CG needs few iterations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

Images = list[Tensor]


def _dot(a: Images, b: Images) -> Tensor:
    """Per-chain inner product of two lists of [B, ...] tensors, [B]."""
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b, strict=True))


def _axpy(alpha: Tensor, x: Images, y: Images) -> Images:
    """y + alpha x with a per-chain alpha [B]."""
    return [yi + alpha.reshape(-1, *([1] * (xi.ndim - 1))) * xi for xi, yi in zip(x, y, strict=True)]


def conjugate_gradient(apply: Callable[[Images], Images], b: Images, x0: Images, precond: Images,
                       tol: float = 1e-6, max_iter: int = 500) -> tuple[Images, int, Tensor]:
    """Solve Q x = b for every chain by preconditioned CG; Q symmetric positive definite, applied by `apply`.

    b, x0, precond: lists of [B, ...] tensors (precond: the inverse of a diagonal approximation of Q). Stops when
    every chain's residual norm is below tol times its |b|. Returns x, the iterations and the relative residuals [B].
    """
    x = [v.clone() for v in x0]
    r = [bi - qi for bi, qi in zip(b, apply(x), strict=True)]
    z = [p * ri for p, ri in zip(precond, r, strict=True)]
    p = [zi.clone() for zi in z]
    rz = _dot(r, z)
    b_norm = _dot(b, b).sqrt().clamp_min(torch.finfo(b[0].dtype).tiny)
    rel = _dot(r, r).sqrt() / b_norm
    it = 0
    while it < max_iter and bool((rel > tol).any()):
        qp = apply(p)
        # chains already converged take no step (their alpha is 0), so their answer no longer changes
        active = rel > tol
        alpha = torch.where(active, rz / _dot(p, qp).clamp_min(torch.finfo(rz.dtype).tiny), torch.zeros_like(rz))
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, qp, r)
        z = [pc * ri for pc, ri in zip(precond, r, strict=True)]
        rz_new = _dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(torch.finfo(rz.dtype).tiny), torch.zeros_like(rz))
        p = _axpy(beta, p, z)
        rz = rz_new
        rel = _dot(r, r).sqrt() / b_norm
        it += 1
    return x, it, rel


def gaussian_draw(operators: Sequence, z: Images, rho: Sequence[float], data: Tensor, rest: Tensor, weight: Tensor,
                  std: Tensor, generator: torch.Generator | None = None, tol: float = 1e-6,
                  max_iter: int = 500) -> Images:
    """One exact draw of the images x_i given the couplings N(z_i, rho_i^2) and the data (module docstring).

    operators: the A_i (x_i [B, n_i, n_i] -> [B, n_exp, H, W], with `.adjoint`); z: the z_i; rho: the rho_i (flux
    units, > 0); data [n_exp, H, W]; rest [B, n_exp, H, W], the part of the model outside x; weight [n_exp, H, W]
    = mask / (T v); std [n_exp, H, W] = sqrt(T v) (where used). Returns the x_i, [B, n_i, n_i] each.
    """
    inv = [1.0 / (r * r) for r in rho]

    def forward(x: Images) -> Tensor:
        return sum(op(xi) for op, xi in zip(operators, x, strict=True))

    def apply(x: Images) -> Images:
        wy = weight * forward(x)
        return [c * xi + op.adjoint(wy) for c, op, xi in zip(inv, operators, x, strict=True)]

    def noise(like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)

    y = data - rest
    y = y + std * noise(y)
    wy = weight * y
    b = [c * (zi + r * noise(zi)) + op.adjoint(wy) for c, r, op, zi in zip(inv, rho, operators, z, strict=True)]
    ones = weight * forward([torch.ones_like(zi) for zi in z])
    precond = [1.0 / (c + op.adjoint(ones)) for c, op in zip(inv, operators, strict=True)]
    x, iterations, rel = conjugate_gradient(apply, b, list(z), precond, tol, max_iter)
    if bool((rel > tol).any()):
        log.warning("image draw: conjugate gradients stopped after %d iterations at relative residual %.2g (> %.1g); "
                    "the draw is approximate", iterations, float(rel.max()), tol)
    else:
        log.debug("image draw: conjugate gradients converged in %d iterations", iterations)
    return x
