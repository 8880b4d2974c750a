"""The sky of a mock lens system: true mass parameters, lens light and source, as drawn numbers and pixelated images.

Units: lengths and positions in arcsec in the lens frame of DESIGN.md (x east, y north); angles in radians
counter-clockwise from +x. Surface brightness is in electrons per detector-pixel area per exposure (the units of the
forward model's images), so a pixelated image holds, in each pixel, the mean surface brightness over that pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage, special

from ...errors import InputError
from ...lensing.grid import PixelGrid
from .sersic import render_sersic, sersic_total_flux

F64 = torch.float64


def draw_mass(rng: np.random.Generator, theta_E: Sequence[float], gamma_sigma: float, q: Sequence[float],
              center_max: float, gamma_ext_max: float, multipole_sigma: float) -> dict[str, float]:
    """True mass parameters (DESIGN names; `gamma` is the slope t, 1 = isothermal), near SLACS values.

    theta_E ~ U(theta_E), gamma ~ N(1, gamma_sigma) clipped to [0.7, 1.3], q ~ U(q), phi ~ U(0, pi),
    x0, y0 ~ U(-center_max, center_max), gamma_ext ~ U(0, gamma_ext_max), phi_ext ~ U(0, pi),
    a3, a4 ~ N(0, multipole_sigma), phi3 ~ U(0, 2 pi / 3), phi4 ~ U(0, pi / 2) (one period each).
    """
    return {
        "theta_E": float(rng.uniform(*theta_E)),
        "gamma": float(np.clip(rng.normal(1.0, gamma_sigma), 0.7, 1.3)),
        "q": float(rng.uniform(*q)),
        "phi": float(rng.uniform(0.0, math.pi)),
        "x0": float(rng.uniform(-center_max, center_max)),
        "y0": float(rng.uniform(-center_max, center_max)),
        "gamma_ext": float(rng.uniform(0.0, gamma_ext_max)),
        "phi_ext": float(rng.uniform(0.0, math.pi)),
        "a3": float(rng.normal(0.0, multipole_sigma)),
        "phi3": float(rng.uniform(0.0, 2.0 * math.pi / 3.0)),
        "a4": float(rng.normal(0.0, multipole_sigma)),
        "phi4": float(rng.uniform(0.0, math.pi / 2.0)),
    }


def _sersic_unit_flux(r_eff: float, n: float) -> float:
    """Total flux (arcsec^2 x intensity) of a Sersic component of unit I_e, r_eff in arcsec."""
    return float(sersic_total_flux(torch.tensor(1.0, dtype=F64), torch.tensor(r_eff, dtype=F64),
                                   torch.tensor(n, dtype=F64)))


def render_components(components: Sequence[Mapping[str, float]], grid: PixelGrid) -> np.ndarray:
    """Pixel-averaged sum of Sersic components on `grid`: [n, n] float64.

    Components hold amplitude (I_e, image units), r_eff (arcsec), n, q, phi (radians), x0, y0 (arcsec, lens frame).
    """
    if not components:
        return np.zeros((grid.n, grid.n))
    s = grid.pixel_scale
    cols = {
        "amplitude": [c["amplitude"] for c in components],
        "r_eff": [c["r_eff"] / s for c in components],
        "n": [c["n"] for c in components],
        "q": [c["q"] for c in components],
        "phi": [c["phi"] for c in components],
        "x0": [(c["x0"] - grid.x0) / s for c in components],
        "y0": [(c["y0"] - grid.y0) / s for c in components],
    }
    params = {k: torch.tensor([v], dtype=F64) for k, v in cols.items()}
    with torch.no_grad():
        return render_sersic(params, grid.n)[0].numpy()


def render_gaussians(clumps: Sequence[Mapping[str, float]], grid: PixelGrid) -> np.ndarray:
    """Pixel-averaged circular Gaussians (flux, sigma, x0, y0 in arcsec) on `grid`, exact per pixel: [n, n]."""
    out = np.zeros((grid.n, grid.n))
    s = grid.pixel_scale
    centres = (np.arange(grid.n) - (grid.n - 1) / 2) * s
    for c in clumps:
        def mass(axis_centres, centre, sigma=c["sigma"]):
            lo = (axis_centres - s / 2 - centre) / (math.sqrt(2.0) * sigma)
            return 0.5 * (special.erf(lo + s / (math.sqrt(2.0) * sigma)) - special.erf(lo))
        wy = mass(centres + grid.y0, c["y0"])
        wx = mass(centres + grid.x0, c["x0"])
        out += c["flux"] * np.outer(wy, wx) / s**2
    return out


def draw_lens_light(rng: np.random.Generator, mass: Mapping[str, float], n_components: Sequence[int],
                    total_flux: float, pixel_area: float) -> list[dict[str, float]]:
    """1-3 concentric-ish Sersic components of an early-type lens galaxy.

    The first is a de Vaucouleurs-like bulge (n 3-5, r_eff 0.8-2.0"); the others are compact (n 0.7-2.5, r_eff
    0.15-0.6"), each with 10-40% of the bulge's flux. Shapes follow the mass (q, phi) loosely. `total_flux`
    (electrons) is shared among them; amplitudes are I_e in electrons per detector pixel (area `pixel_area`
    arcsec^2).
    """
    k = int(rng.integers(n_components[0], n_components[1] + 1))
    xc = mass["x0"] + rng.normal(0.0, 0.003)
    yc = mass["y0"] + rng.normal(0.0, 0.003)
    comps, weights = [], []
    for i in range(k):
        if i == 0:
            n, r_eff, weight = rng.uniform(3.0, 5.0), rng.uniform(0.8, 2.0), 1.0
            q = float(np.clip(mass["q"] + rng.normal(0.0, 0.05), 0.45, 0.97))
            phi = mass["phi"] + rng.normal(0.0, 0.1)
        else:
            n, r_eff, weight = rng.uniform(0.7, 2.5), rng.uniform(0.15, 0.6), rng.uniform(0.1, 0.4)
            q = rng.uniform(0.5, 0.95)
            phi = mass["phi"] + rng.normal(0.0, 0.3)
        comps.append({"n": float(n), "r_eff": float(r_eff), "q": float(q), "phi": float(phi % math.pi),
                      "x0": float(xc + rng.normal(0.0, 0.002)), "y0": float(yc + rng.normal(0.0, 0.002))})
        weights.append(weight)
    weights = np.asarray(weights) / np.sum(weights)
    for comp, w in zip(comps, weights, strict=True):
        comp["flux"] = float(total_flux * w)
        comp["amplitude"] = float(comp["flux"] / _sersic_unit_flux(comp["r_eff"], comp["n"]) * pixel_area)
    return comps


def draw_source(rng: np.random.Generator, mass: Mapping[str, float]) -> dict:
    """A source galaxy of unit surface brightness scale: a Sersic disc plus 2-4 Gaussian star-forming clumps.

    Its centre lies within 0.02-0.3 theta_E of the lens centre, inside or astride the tangential caustic of
    SLACS-like lenses, so that it forms arcs or a ring. Fluxes are relative (I_e = 1); the generator rescales.
    """
    r = rng.uniform(0.02, 0.3) * mass["theta_E"]
    angle = rng.uniform(0.0, 2.0 * math.pi)
    xc, yc = mass["x0"] + r * math.cos(angle), mass["y0"] + r * math.sin(angle)
    sersic = {"amplitude": 1.0, "n": float(rng.uniform(0.7, 2.0)), "r_eff": float(rng.uniform(0.1, 0.3)),
              "q": float(rng.uniform(0.5, 0.9)), "phi": float(rng.uniform(0.0, math.pi)),
              "x0": float(xc), "y0": float(yc)}
    total = _sersic_unit_flux(sersic["r_eff"], sersic["n"])
    clumps = []
    for _ in range(int(rng.integers(2, 5))):
        clumps.append({"flux": float(total * rng.uniform(0.05, 0.2)), "sigma": float(rng.uniform(0.02, 0.06)),
                       "x0": float(xc + rng.normal(0.0, 0.6 * sersic["r_eff"])),
                       "y0": float(yc + rng.normal(0.0, 0.6 * sersic["r_eff"]))})
    return {"kind": "sersic_clumps", "x0": float(xc), "y0": float(yc), "sersic": [sersic], "clumps": clumps}


def render_source(source: Mapping, grid: PixelGrid) -> np.ndarray:
    """The drawn Sersic-plus-clumps source on `grid`, [n, n] float64 (scale as drawn)."""
    return render_components(source["sersic"], grid) + render_gaussians(source["clumps"], grid)


def check_source_image(image) -> np.ndarray:
    """A user's source image as a finite, non-negative-peaked float64 [h, w] array (InputError otherwise)."""
    try:
        array = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("source_image must be a 2-D array of numbers") from None
    if array.ndim != 2 or min(array.shape) < 4:
        raise InputError(f"source_image must be a 2-D array of at least 4 x 4 pixels, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"source_image has {int((~np.isfinite(array)).sum())} non-finite pixels (NaN or inf); "
                         "replace them before making a mock")
    if not array.max() > 0:
        raise InputError("source_image has no positive pixel: a source needs some light")
    return array


def resample_source_image(image: np.ndarray, grid: PixelGrid, center: tuple[float, float], fov: float) -> np.ndarray:
    """Place a galaxy image on the source grid: its longer side spans `fov` arcsec, centred at `center` (arcsec).

    Bilinear resampling; pixels outside the image are 0 and negative values (sky noise) are clipped to 0.
    Returns [n, n] float64 with the same maximum as the input's positive part would have at equal resolution.
    """
    h, w = image.shape
    step = fov / max(h, w)  # arcsec per input pixel
    xs, ys = grid.coordinates(dtype=F64)
    cols = (xs.numpy() - center[0]) / step + (w - 1) / 2
    rows = (ys.numpy() - center[1]) / step + (h - 1) / 2
    out = ndimage.map_coordinates(image, [rows, cols], order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, None)


def brightness_scale(unit: np.ndarray, background: np.ndarray, target_snr: float) -> float:
    """Factor c such that max over pixels of c u / sqrt(c u + b) equals target_snr.

    Args:
        unit: the lensed source at unit scale, electrons [..., H, W] (>= 0 somewhere positive).
        background: the variance of everything else per pixel (lens light + sky + read noise^2), same shape.
    """
    u, b = unit.ravel(), np.maximum(background.ravel(), 1e-12)
    keep = u > 0
    if not keep.any():
        raise InputError("the lensed source falls outside every exposure: move it or enlarge the frame")
    u, b = u[keep], b[keep]

    def snr(log_c):
        cu = math.exp(log_c) * u
        return float(np.max(cu / np.sqrt(cu + b)))

    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if snr(mid) < target_snr else (lo, mid)
    return math.exp(0.5 * (lo + hi))
