"""Elliptical power-law (EPL) mass profile, Tessore & Metcalf 2015 (arXiv:1507.01819).

Work in the profile's own frame: (u, v) in arcsec relative to the lens centre, u along the major axis. With the
slope t (1 = isothermal), axis ratio q and scale b (b = theta_E sqrt(q) for the intermediate-axis Einstein radius):

    R = sqrt(q^2 u^2 + v^2),   e^{i phi} = (q u + i v) / R,   kappa = (2 - t)/2 (b/R)^t
    alpha = 2b/(1+q) (b/R)^(t-1) Omega(phi),   Omega = sum_n Omega_n,   Omega_0 = e^{i phi},
    Omega_n = -f (2n - 2 + t)/(2n + 2 - t) e^{2 i phi} Omega_{n-1},   f = (1 - q)/(1 + q).

The series converges like f^n (f = 2/3 at q = 0.2); `default_terms` picks enough terms for the dtype's precision.
The deflection is homogeneous of degree 1 - t about the centre, which gives the shear in closed form,
gamma = ((1 - t) alpha - z kappa) / conj(z) (complex, z = u + i v), so the Hessian needs no extra series.

The backward pass is written out (a custom autograd function) instead of recorded: recording the series would store
every term for every ray, which at millions of rays per chain batch costs gigabytes. The backward recomputes the
series together with its derivatives in t, f and phi, and never stores more than a few ray-sized tensors.
Complex numbers are carried as (real, imaginary) pairs of real tensors so that compilers handle them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def default_terms(dtype: torch.dtype, q_min: float = 0.2) -> int:
    """Number of series terms for the truncation error to fall below the dtype's resolution down to q_min."""
    f = (1.0 - q_min) / (1.0 + q_min)
    if f <= 0.0:
        return 1
    eps = torch.finfo(dtype).eps
    # The tail after N terms is below f^N / (1 - f) (|c_n| < 1); a margin of 4 terms covers rounding.
    return int(math.ceil(math.log(eps * (1.0 - f)) / math.log(f))) + 4


Q_FLOOR = 0.1  # flatter lenses than this get the series length of q = 0.1 (their deflections lose precision)


def _terms(dtype: torch.dtype, q: Tensor) -> int:
    """Series length for the flattest lens in q (a host sync), or for q >= 0.2 while compiling.

    Samplers propose flat lenses now and then that their prior rejects; the floor keeps those from costing
    thousands of terms (q -> 0 needs unboundedly many)."""
    if torch.compiler.is_compiling():
        return default_terms(dtype)
    q_min = min(1.0, float(q.detach().min()))
    return default_terms(dtype, max(q_min, Q_FLOOR))


def _safe_origin(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Move rays that sit exactly on the centre by a negligible amount so no 0/0 appears in values or gradients."""
    tiny = torch.finfo(u.dtype).eps
    at_centre = (u.abs() < tiny) & (v.abs() < tiny)
    return torch.where(at_centre, torch.full_like(u, tiny), u), v


def _angles(u: Tensor, v: Tensor, q: Tensor):
    """R, cos(phi), sin(phi), cos(2 phi), sin(2 phi) of the elliptical angle phi."""
    qu = q * u
    r2 = qu * qu + v * v
    R = torch.sqrt(r2)
    c, s = qu / R, v / R
    return R, c, s, c * c - s * s, 2 * c * s


def _series(c: Tensor, s: Tensor, c2: Tensor, s2: Tensor, t: Tensor, f: Tensor, n_terms: int, derivatives: bool):
    """Omega and, with derivatives=True, dOmega/dt, dOmega/df and dOmega/dphi, each as (re, im)."""
    o_re, o_im = c, s
    sum_re, sum_im = c, s
    if derivatives:
        dt_re, dt_im = torch.zeros_like(c), torch.zeros_like(s)  # dOmega_n/dt
        df_re, df_im = torch.zeros_like(c), torch.zeros_like(s)  # dOmega_n/df
        st_re, st_im = dt_re, dt_im
        sf_re, sf_im = df_re, df_im
        sp_re, sp_im = c, s  # sum of (2n+1) Omega_n; dOmega/dphi = i * this
    for n in range(1, n_terms + 1):
        num = 2 * n - 2 + t
        den = 2 * n + 2 - t
        cn = num / den
        k = -f * cn
        # w * Omega_{n-1}, w = e^{2 i phi}
        wo_re = c2 * o_re - s2 * o_im
        wo_im = c2 * o_im + s2 * o_re
        if derivatives:
            dcn = (4 * n) / (den * den)
            wt_re = c2 * dt_re - s2 * dt_im
            wt_im = c2 * dt_im + s2 * dt_re
            wf_re = c2 * df_re - s2 * df_im
            wf_im = c2 * df_im + s2 * df_re
            # d/dt (-f c_n w O) = -f (c_n' w O + c_n w dO/dt);  d/df = -c_n w O - f c_n w dO/df
            dt_re = -f * (dcn * wo_re + cn * wt_re)
            dt_im = -f * (dcn * wo_im + cn * wt_im)
            df_re = -cn * (wo_re + f * wf_re)
            df_im = -cn * (wo_im + f * wf_im)
            st_re, st_im = st_re + dt_re, st_im + dt_im
            sf_re, sf_im = sf_re + df_re, sf_im + df_im
        o_re, o_im = k * wo_re, k * wo_im
        sum_re, sum_im = sum_re + o_re, sum_im + o_im
        if derivatives:
            sp_re, sp_im = sp_re + (2 * n + 1) * o_re, sp_im + (2 * n + 1) * o_im
    if not derivatives:
        return sum_re, sum_im
    return (sum_re, sum_im), (st_re, st_im), (sf_re, sf_im), (-sp_im, sp_re)


def _reduce(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to an input's shape."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(dim=tuple(range(extra))) if extra > 0 else grad
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def _deflection_frame(u, v, b, t, q, n_terms):
    """Deflection (alpha_u, alpha_v) in the profile frame, plus the pieces the derivatives reuse."""
    R, c, s, c2, s2 = _angles(u, v, q)
    f = (1 - q) / (1 + q)
    om_re, om_im = _series(c, s, c2, s2, t, f, n_terms, derivatives=False)
    amp = 2 * b / (1 + q) * (b / R) ** (t - 1)
    return amp * om_re, amp * om_im


class _EPLDeflection(torch.autograd.Function):
    """(u, v, b, t, q) -> (alpha_u, alpha_v) in the profile frame, with a hand-written backward."""

    @staticmethod
    def forward(u, v, b, t, q, n_terms):
        return _deflection_frame(u, v, b, t, q, n_terms)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, v, b, t, q, n_terms = inputs
        ctx.save_for_backward(u, v, b, t, q)
        ctx.n_terms = n_terms

    @staticmethod
    def backward(ctx, g_re, g_im):
        u, v, b, t, q = ctx.saved_tensors
        n_terms = ctx.n_terms
        R, c, s, c2, s2 = _angles(u, v, q)
        f = (1 - q) / (1 + q)
        (om_re, om_im), (ot_re, ot_im), (of_re, of_im), (op_re, op_im) = _series(
            c, s, c2, s2, t, f, n_terms, derivatives=True
        )
        bR = b / R
        amp = 2 * b / (1 + q) * bR ** (t - 1)
        a_re, a_im = amp * om_re, amp * om_im

        def proj(d_re, d_im):  # Re(conj(G) dalpha) for G = g_re + i g_im
            return g_re * d_re + g_im * d_im

        grads = [None] * 5
        need = ctx.needs_input_grad
        if need[0] or need[1]:
            kappa = (2 - t) / 2 * bR**t
            # gamma = ((1 - t) alpha - z kappa) / conj(z) = ((1-t) alpha - z kappa) z / |z|^2
            n_re = (1 - t) * a_re - u * kappa
            n_im = (1 - t) * a_im - v * kappa
            zz = u * u + v * v
            g1 = (n_re * u - n_im * v) / zz
            g2 = (n_re * v + n_im * u) / zz
            # dalpha/du = (kappa + g1) + i g2,  dalpha/dv = g2 + i (kappa - g1)
            grads[0] = proj(kappa + g1, g2)
            grads[1] = proj(g2, kappa - g1)
        if need[2]:
            grads[2] = proj(t * a_re, t * a_im) / b
        if need[3]:
            log_bR = torch.log(bR)
            grads[3] = proj(a_re * log_bR + amp * ot_re, a_im * log_bR + amp * ot_im)
        if need[4]:
            dR = q * u * u / R
            dphi = -u * v / (R * R)
            df = -2 / (1 + q) ** 2
            scale = -1 / (1 + q) - (t - 1) * dR / R
            grads[4] = proj(
                a_re * scale + amp * (op_re * dphi + of_re * df),
                a_im * scale + amp * (op_im * dphi + of_im * df),
            )
        shapes = [x.shape for x in (u, v, b, t, q)]
        out = [None if g is None else _reduce(g, sh) for g, sh in zip(grads, shapes, strict=True)]
        return (*out, None)


def epl_frame_deflection(u: Tensor, v: Tensor, b: Tensor, t: Tensor, q: Tensor, n_terms: int | None = None):
    """EPL deflection (alpha_u, alpha_v) in the profile frame (arcsec); inputs broadcast together.

    Without `n_terms`, the series is as long as the roundest-to-flattest lens of the batch needs (q of 0.7 needs a
    third of the terms of q = 0.2); under torch.compile, where that would break the graph, it covers q >= 0.2.
    """
    n_terms = _terms(u.dtype, q) if n_terms is None else int(n_terms)
    u, v = _safe_origin(u, v)
    return _EPLDeflection.apply(u, v, b, t, q, n_terms)


def epl_frame_hessian(u: Tensor, v: Tensor, b: Tensor, t: Tensor, q: Tensor, n_terms: int | None = None):
    """(kappa, gamma1, gamma2) in the profile frame.

    psi_uu = kappa + gamma1, psi_vv = kappa - gamma1, psi_uv = gamma2.
    """
    n_terms = _terms(u.dtype, q) if n_terms is None else int(n_terms)
    u, v = _safe_origin(u, v)
    a_re, a_im = _deflection_frame(u, v, b, t, q, n_terms)
    R = torch.sqrt((q * u) ** 2 + v * v)
    kappa = (2 - t) / 2 * (b / R) ** t
    n_re = (1 - t) * a_re - u * kappa
    n_im = (1 - t) * a_im - v * kappa
    zz = u * u + v * v
    return kappa, (n_re * u - n_im * v) / zz, (n_re * v + n_im * u) / zz


def epl_frame_convergence(u: Tensor, v: Tensor, b: Tensor, t: Tensor, q: Tensor) -> Tensor:
    """EPL convergence in the profile frame."""
    u, v = _safe_origin(u, v)
    R = torch.sqrt((q * u) ** 2 + v * v)
    return (2 - t) / 2 * (b / R) ** t
