"""Sersic surface-brightness profiles and their pixel-integrated rendering.

    I(R) = I_e exp(-b_n [(R / r_eff)^(1/n) - 1]),      P(2n, b_n) = 1/2,

with I_e the intensity at the effective (half-light) radius r_eff and P the regularised lower incomplete
gamma function. The elliptical radius uses the intermediate-axis convention

    R^2 = q x'^2 + y'^2 / q,   x' =  cos(phi) (x - x0) + sin(phi) (y - y0),
                               y' = -sin(phi) (x - x0) + cos(phi) (y - y0),

so the isophote of radius R is an ellipse of semi-axes R / sqrt(q) (along the major axis, at angle phi
counter-clockwise from +x towards +y) and R sqrt(q), with the area of the circle of radius R. Hence the total
flux 2 pi n I_e r_eff^2 e^(b_n) b_n^(-2n) Gamma(2n) does not depend on q.

Image convention of `render_sersic` (lengths in pixels): pixel (i, j) of an image of side `size` (row i,
column j) is the unit square centred on

    x = j - (size - 1) / 2,   y = i - (size - 1) / 2,

so (0, 0) is the image centre (a pixel centre for odd sizes, a pixel corner for even sizes), x grows with the
column index and y with the row index. An angle phi therefore turns from the column axis towards the row axis
(counter-clockwise when displayed with the origin at the lower left). Rendered values are pixel averages of
I (the integral over the pixel divided by its area of 1 px^2), in the units of the amplitude.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import Tensor

log = logging.getLogger(__name__)

PARAM_KEYS = ("amplitude", "r_eff", "n", "q", "phi", "x0", "y0")
# Sersic indices n over which b_n is solved to float64 round-off (the range simulations may draw from).
INDEX_LIMITS = (0.2, 10.0)

# b_n solver: Newton on log(b) from the asymptotic start converges to float64 round-off in <= 4 steps over
# n in [0.2, 10]; two more cost nothing.
_NEWTON_STEPS = 6
# Below this index the Ciotti & Bertin series is poor; the small-x form of P(a, x) is a better start there.
_SMALL_N = 0.36

# Centre refinement: nested levels stop once a single deepest-level sample at the very cusp, I(0) h^2, is at
# most this fraction of the component's total flux (h: deepest sample spacing).
_CUSP_FLUX_TOL = 1e-6
_MAX_LEVELS = 8
# Elements per temporary [components, size, size] tensor of the whole-image pass: small enough (1 MiB in
# float32) to stay in cache, which matters more than the per-chunk Python overhead.
_CHUNK_ELEMENTS = 1 << 18


# ------------------------------------------------------------------------------------------------- b_n


def _solve_b(n: Tensor) -> Tensor:
    """b_n for float64 n > 0 (any shape), by Newton steps on log(b) for P(2n, b) = 1/2."""
    a = 2.0 * n
    inv = 1.0 / n
    # Ciotti & Bertin (1999), eq. 18
    series = 2.0 * n - 1.0 / 3.0 + inv * (
        4.0 / 405.0 + inv * (46.0 / 25515.0 + inv * (131.0 / 1148175.0 - inv * (2194697.0 / 30690717750.0)))
    )
    # P(a, x) ~ x^a / Gamma(a + 1) for small x, the regime of small n
    small = torch.exp((torch.special.gammaln(a + 1.0) - math.log(2.0)) / a)
    u = torch.log(torch.where(n < _SMALL_N, small, series.clamp_min(1e-3)))
    lgamma_a = torch.special.gammaln(a)
    for _ in range(_NEWTON_STEPS):
        x = torch.exp(u)
        residual = torch.special.gammainc(a, x) - 0.5
        # d P(a, e^u) / du = x * x^(a-1) e^-x / Gamma(a); Newton in u keeps b positive
        slope = torch.exp(a * u - x - lgamma_a)
        u = u - residual / slope
    return torch.exp(u)


def _dp_da(a: Tensor, x: Tensor) -> Tensor:
    """d P(a, x) / da (float64), from the series P(a, x) = sum_k x^(a+k) e^-x / Gamma(a+k+1) termwise.

    The terms are a Poisson-like profile around k ~ x - a; 10 sqrt(x) + 40 of them reach round-off.
    """
    terms = int(math.ceil(10.0 * math.sqrt(float(x.max())) + 40.0)) if x.numel() else 1
    k = torch.arange(terms, dtype=x.dtype, device=x.device)
    shifted = a[..., None] + k + 1.0
    log_x = torch.log(x)[..., None]
    log_terms = (shifted - 1.0) * log_x - x[..., None] - torch.special.gammaln(shifted)
    return (torch.exp(log_terms) * (log_x - torch.special.digamma(shifted))).sum(dim=-1)


class _SersicB(torch.autograd.Function):
    """b_n with the implicit-function derivative db/dn = -2 (dP/da) / (dP/dx) at (a, x) = (2n, b_n)."""

    @staticmethod
    def forward(ctx, n: Tensor) -> Tensor:
        b = _solve_b(n.detach().to(torch.float64))
        ctx.save_for_backward(n.detach().to(torch.float64), b)
        return b.to(n.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        n, b = ctx.saved_tensors
        a = 2.0 * n
        dp_dx = torch.exp((a - 1.0) * torch.log(b) - b - torch.special.gammaln(a))
        return grad * (-2.0 * _dp_da(a, b) / dp_dx).to(grad.dtype)


def sersic_b(n: Tensor) -> Tensor:
    """Sersic constant b_n solving P(2n, b_n) = 1/2, elementwise.

    Args:
        n: Sersic indices (any shape), > 0. Accurate to ~1e-12 relative for n in [0.2, 10] (float64).

    Returns:
        b_n, same shape and dtype as n. Solved in float64; differentiable in n.
    """
    n = torch.as_tensor(n)
    if not n.is_floating_point():
        n = n.to(torch.get_default_dtype())
    return _SersicB.apply(n)


# ---------------------------------------------------------------------------------------------- profile


def _quadratic_form(r_eff: Tensor, q: Tensor, phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients (a, c, d) with (R / r_eff)^2 = a dx^2 + c dx dy + d dy^2 (units length^-2)."""
    cos, sin = torch.cos(phi), torch.sin(phi)
    scale = r_eff**-2
    a = (q * cos**2 + sin**2 / q) * scale
    c = 2.0 * cos * sin * (q - 1.0 / q) * scale
    d = (q * sin**2 + cos**2 / q) * scale
    return a, c, d


def _radius_sq(dx: Tensor, dy: Tensor, form: tuple[Tensor, Tensor, Tensor], inplace: bool = False) -> Tensor:
    """(R / r_eff)^2 at offsets (dx, dy) from the centre (broadcast shapes).

    Written as dy (c dx + d dy) + a dx^2 so that, on separable grids (dx [.., 1, W], dy [.., H, 1]), only
    three operations are full size.
    """
    a, c, d = form
    s = c * dx + d * dy
    if inplace:
        return s.mul_(dy).add_(a * dx * dx)
    return s * dy + a * dx * dx


def _shape_term(s: Tensor, n: Tensor, b: Tensor, inplace: bool = False) -> Tensor:
    """exp(-b_n (R / r_eff)^(1/n)) from s = (R / r_eff)^2.

    The clamp keeps the value and gradient finite at R = 0, where it gives t = tiny^(1/2n) instead of 0 (at
    worst t = 0.013, in float32 for n = 10); log-multiply-exp is faster than pow on CPU.
    """
    tiny = torch.finfo(s.dtype).tiny
    if inplace:
        return s.clamp_min_(tiny).log_().mul_(0.5 / n).exp_().mul_(-b).exp_()
    return torch.exp(-b * torch.exp(torch.log(s.clamp_min(tiny)) * (0.5 / n)))


def _like(value, ref: Tensor) -> Tensor:
    """A parameter as a tensor of the floating dtype and device of ref (tensors keep their own dtype)."""
    if isinstance(value, Tensor):
        return value.to(device=ref.device)
    return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)


def sersic_profile(x: Tensor, y: Tensor, *, amplitude, r_eff, n, q, phi, x0, y0) -> Tensor:
    """Sersic surface brightness I at positions (x, y).

    Args:
        x, y: coordinates (any broadcastable shapes, e.g. grids [H, W]).
        amplitude: I_e, the intensity at R = r_eff.
        r_eff: effective radius (> 0, same length unit as x, y).
        n: Sersic index (> 0).
        q: axis ratio in (0, 1].
        phi: position angle of the major axis (radians, counter-clockwise from +x towards +y).
        x0, y0: centre.
        All parameters broadcast against x and y (e.g. [B, K, 1, 1] against [H, W] gives [B, K, H, W]).

    Returns:
        I(x, y), the broadcast shape. Finite, with finite gradients, at the centre, where I = I_e e^(b_n).
    """
    amplitude, r_eff, n, q, phi, x0, y0 = (_like(v, x) for v in (amplitude, r_eff, n, q, phi, x0, y0))
    s = _radius_sq(x - x0, y - y0, _quadratic_form(r_eff, q, phi))
    t = torch.exp(torch.log(s.clamp_min(torch.finfo(s.dtype).tiny)) * (0.5 / n))  # (R / r_eff)^(1/n)
    t = torch.where(s > 0, t, 0.0)  # the exact centre value I_e e^(b_n) rather than the clamped one
    return amplitude * torch.exp(sersic_b(n) * (1.0 - t))


def sersic_total_flux(amplitude: Tensor, r_eff: Tensor, n: Tensor) -> Tensor:
    """Total flux 2 pi n I_e r_eff^2 e^(b_n) b_n^(-2n) Gamma(2n) (broadcast shape; independent of q).

    Units: amplitude times length^2, e.g. intensity x px^2 with r_eff in pixels.
    """
    n = torch.as_tensor(n)
    amplitude, r_eff = _like(amplitude, n), _like(r_eff, n)
    b = sersic_b(n)
    # in logs: e^b, b^(-2n) and Gamma(2n) each overflow or underflow separately for large n
    log_shape = b - 2.0 * n * torch.log(b) + torch.special.gammaln(2.0 * n)
    return 2.0 * math.pi * n * amplitude * r_eff**2 * torch.exp(log_shape)


# -------------------------------------------------------------------------------------------- rendering


def _flatten_active(params: Mapping[str, Tensor],
                    mask: Tensor | None) -> tuple[dict[str, Tensor], Tensor, int]:
    """Validate params [B, K]; return the active components' parameters [N], their image index [N], and B."""
    missing = [key for key in PARAM_KEYS if key not in params]
    if missing:
        raise ValueError(f"render_sersic params lack the keys {missing}")
    if mask is None:
        mask = params.get("mask")
    ref = params["amplitude"]
    if not ref.is_floating_point():
        raise ValueError(f"render_sersic params must be floating point, got {ref.dtype}")
    try:
        tensors = torch.broadcast_tensors(*(_like(params[key], ref).to(ref.dtype) for key in PARAM_KEYS))
    except RuntimeError as err:
        raise ValueError(f"render_sersic params do not broadcast: {err}") from None
    if tensors[0].ndim != 2:
        raise ValueError(f"render_sersic params must have shape [B, K], got {tuple(tensors[0].shape)}")
    if mask is None:
        weight = torch.ones_like(tensors[0])
    else:
        weight = _like(mask, ref).to(ref.dtype).expand_as(tensors[0])
    active = weight != 0
    flat = {key: t[active] for key, t in zip(PARAM_KEYS, tensors, strict=True)}
    for key in ("r_eff", "n", "q"):
        if not bool((flat[key] > 0).all()):
            raise ValueError(f"render_sersic needs {key} > 0 for every active component")
    flat["amplitude"] = flat["amplitude"] * weight[active]
    image_index = torch.nonzero(active, as_tuple=True)[0]
    return flat, image_index, tensors[0].shape[0]


def _refinement_levels(r_eff: Tensor, n: Tensor, b: Tensor, factor: int) -> int:
    """Number of nested centre levels so that I(0) h^2 <= tol x total flux for every component.

    I(0) h^2 / flux = kappa(n) (h / r_eff)^2 with kappa = b^(2n) / (2 pi n Gamma(2n)); kappa grows from ~0.2
    at n = 0.5 to ~1e7 at n = 10, so cuspy or compact components need deeper levels (h = factor^-levels px).
    """
    with torch.no_grad():
        n64, b64, r64 = n.double(), b.double(), r_eff.double()
        log_kappa = (2.0 * n64 * torch.log(b64) - torch.log(2.0 * math.pi * n64)
                     - torch.special.gammaln(2.0 * n64))
        log_h = torch.log(r64) + 0.5 * (math.log(_CUSP_FLUX_TOL) - log_kappa)
        levels = max(int(torch.ceil(-log_h / math.log(factor)).max().item()), 1)
    if levels > _MAX_LEVELS:
        log.warning("centre refinement capped at %d levels (%d wanted): the cusp of the most compact "
                    "component is integrated less accurately", _MAX_LEVELS, levels)
    return min(levels, _MAX_LEVELS)


def _window_axis(position: Tensor, size: int, factor: int, box: int, levels: int):
    """Per-level sample offsets and pixel indices along one axis of the nested centre windows.

    Level l >= 1 covers `box` cells of side factor^-(l-1) px centred on the cell holding the component centre,
    each sampled at `factor` midpoints; the samples of level l are the midpoints of the level-(l+1) cells.

    Args:
        position: component centres [N] (px, image convention of the module).

    Returns:
        Per level, (offsets [N, box*factor] from the centre in px (float64), pixel index of each cell
        [N, box] (int64), membership of each sample in the next level's window [N, box*factor] (bool)).
    """
    half = box // 2
    edge = position.detach().double() + size / 2.0  # pixel j spans [j, j + 1) in these units
    pixel = torch.floor(edge)
    frac = edge - pixel  # centre position inside its level cell, in cell units, in [0, 1)
    pixel = pixel.long()
    inner = torch.zeros_like(pixel)  # index of the centre's level cell among the pixel's level cells
    cell_offsets = torch.arange(-half, box - half, device=position.device)
    sample = torch.arange(box * factor, device=position.device)
    axis = []
    for level in range(1, levels + 1):
        cell_size = float(factor) ** (1 - level)
        offsets = ((sample + 0.5) / factor - half - frac[:, None]) * cell_size
        cells_per_pixel = factor ** (level - 1)
        cell_pixel = pixel[:, None] + torch.div(inner[:, None] + cell_offsets, cells_per_pixel,
                                                rounding_mode="floor")
        sub = torch.floor(frac * factor)  # the centre's sub-cell = next level's centre cell
        in_next = (sample - half * factor - sub.long()[:, None]).abs() <= half
        axis.append((offsets, cell_pixel, in_next))
        inner = inner * factor + sub.long()
        frac = frac * factor - sub
    return axis


def _render_chunk(p: dict[str, Tensor], b: Tensor, size: int, oversample: int, factor: int, box: int,
                  levels: int, inplace: bool) -> Tensor:
    """Pixel-averaged images [N, size, size] of single components with parameters p [N]."""
    count = p["amplitude"].shape[0]
    dtype, device = p["amplitude"].dtype, p["amplitude"].device
    col = lambda t: t.view(count, 1, 1)  # noqa: E731
    n, b3, x0, y0 = col(p["n"]), col(b), col(p["x0"]), col(p["y0"])
    form = tuple(col(t) for t in _quadratic_form(p["r_eff"], p["q"], p["phi"]))
    # I = (I_e e^b_n) exp(-b_n t): the per-component factor is applied once to the summed samples
    scale = col(p["amplitude"] * torch.exp(b))
    grid = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0

    image = None
    for row_step in range(oversample):
        dy = (grid + ((row_step + 0.5) / oversample - 0.5)).view(1, size, 1) - y0
        for col_step in range(oversample):
            dx = (grid + ((col_step + 0.5) / oversample - 0.5)).view(1, 1, size) - x0
            value = _shape_term(_radius_sq(dx, dy, form, inplace), n, b3, inplace)
            image = value if image is None else (image.add_(value) if inplace else image + value)
    image = image * (scale / oversample**2)
    if levels == 0:
        return image

    # Nested centre windows: the coarse samples of each window are replaced by finer ones (rather than
    # corrected by a fine-minus-coarse difference, which cancels catastrophically when a coarse sample sits on
    # the cusp).
    comp = torch.arange(count, device=device).view(count, 1, 1)
    x_axis = _window_axis(p["x0"], size, factor, box, levels)
    y_axis = _window_axis(p["y0"], size, factor, box, levels)
    flat = image.reshape(-1)
    for level, ((dx, px, x_next), (dy, py, y_next)) in enumerate(zip(x_axis, y_axis, strict=True), start=1):
        rows, cols = py[:, :, None], px[:, None, :]  # [N, box, 1], [N, 1, box]
        inside = ((rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)).expand(count, box, box)
        index = ((comp * size + rows.clamp(0, size - 1)) * size + cols.clamp(0, size - 1))[inside]
        if level == 1:
            flat = (flat.index_fill_ if inplace else flat.index_fill)(0, index, 0.0)
        value = _shape_term(_radius_sq(dx.to(dtype)[:, None, :], dy.to(dtype)[:, :, None], form), n, b3)
        if level < levels:
            value = value * ~(y_next[:, :, None] & x_next[:, None, :])
        weight = scale * float(factor) ** (-2 * level)  # sample area in px^2 (pixel area 1)
        cell = value.view(count, box, factor, box, factor).sum(dim=(2, 4)) * weight
        flat = (flat.index_add_ if inplace else flat.index_add)(0, index, cell[inside])
    return flat.view(count, size, size)


def render_sersic(params: Mapping[str, Tensor], size: int, mask: Tensor | None = None, *, oversample: int = 3,
                  center_oversample: int = 15, center_box: int = 5) -> Tensor:
    """Render sums of Sersic components as pixel-averaged images.

    Each pixel is averaged over an `oversample` x `oversample` grid of sub-pixel midpoints. Around each
    component centre, the `center_box` x `center_box` pixels are instead integrated with
    `center_oversample` x `center_oversample` midpoints per pixel, and the same refinement is nested inside
    the `center_box` x `center_box` sub-cells around the centre, and so on, until a sample at the cusp
    carries a negligible flux (a uniform sub-grid alone cannot integrate the cusp of a large-n profile:
    a midpoint landing on it can carry more than the whole flux). Levels are chosen per call from the most
    demanding active component (at most 8).

    Args:
        params: tensors [B, K] (broadcastable) under the keys amplitude (I_e), r_eff (px), n, q, phi (rad),
            x0, y0 (px, module image convention: (0, 0) at the image centre).
        size: image side in pixels.
        mask: [B, K] boolean or float; components with mask 0 are skipped, others have their amplitude
            multiplied by it. Defaults to params["mask"] when present, else all components are active.
        oversample: sub-pixel midpoints per pixel side everywhere (>= 1).
        center_oversample: midpoints per cell side in the centre windows (>= 2).
        center_box: side of the centre windows in cells, odd; 0 disables the centre refinement.

    Returns:
        [B, size, size] pixel-averaged intensity, in the dtype of params["amplitude"].
    """
    if size < 1 or oversample < 1:
        raise ValueError(f"render_sersic needs size >= 1 and oversample >= 1, got {size}, {oversample}")
    if center_box < 0 or (center_box > 0 and center_box % 2 == 0):
        raise ValueError(f"render_sersic center_box must be 0 or odd, got {center_box}")
    if center_box > 0 and center_oversample < 2:
        raise ValueError(f"render_sersic center_oversample must be >= 2, got {center_oversample}")
    flat, image_index, batch = _flatten_active(params, mask)
    ref = params["amplitude"]
    out = torch.zeros(batch, size, size, dtype=ref.dtype, device=ref.device)
    if image_index.numel() == 0:
        return out
    b = sersic_b(flat["n"])
    levels = _refinement_levels(flat["r_eff"], flat["n"], b, center_oversample) if center_box else 0
    # in-place arithmetic on the large temporaries unless a gradient must flow through them
    inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in flat.values()))
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    for start in range(0, image_index.numel(), chunk):
        part = slice(start, start + chunk)
        images = _render_chunk({k: v[part] for k, v in flat.items()}, b[part], size, oversample,
                               center_oversample, center_box, levels, inplace)
        out = (out.index_add_ if inplace else out.index_add)(0, image_index[part], images)
    return out
