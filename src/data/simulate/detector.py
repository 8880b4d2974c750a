"""Detector effects of mock ACS/WFC exposures: sky, Poisson and read noise, cosmic rays and bad pixels.

All images are [H, W] in electrons. The sky stays in SCI (calibrated FLTs are not sky-subtracted; the level goes to
the header keyword MDRIZSKY). ERR is the true 1-sigma noise, sqrt(model + sky + read_noise^2); cosmic-ray and
bad-pixel values are not in ERR: those pixels are flagged in DQ instead.
"""

from __future__ import annotations

import math

import numpy as np

from .flt_files import DQ_BAD_PIXEL, DQ_COSMIC_RAY


def observe(rng: np.random.Generator, model: np.ndarray, sky: float,
            read_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Noisy counts and their 1-sigma errors: (Poisson(model + sky) + N(0, read_noise^2), sqrt(model + sky + rn^2)).

    Args:
        model: noiseless image [H, W], electrons (>= 0).
    """
    expected = np.clip(model + sky, 0.0, None)
    counts = rng.poisson(expected).astype(np.float64) + rng.normal(0.0, read_noise, size=model.shape)
    return counts, np.sqrt(expected + read_noise**2)


def cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], density: float) -> tuple[np.ndarray, int]:
    """Charge deposited by cosmic rays: [H, W] electrons (0 where none) and the number of events.

    Events ~ Poisson(density H W); each is a straight track of length ~ Exp(2.5 px) (at most 15 px: most are
    blobs of 1-3 pixels) at a random angle, depositing 10^U(2.9, 4.3) electrons spread evenly along it.
    """
    h, w = shape
    out = np.zeros(shape)
    n = int(rng.poisson(density * h * w))
    for _ in range(n):
        r0, c0 = rng.uniform(-0.5, h - 0.5), rng.uniform(-0.5, w - 0.5)
        length = min(rng.exponential(2.5), 15.0)
        angle = rng.uniform(0.0, math.pi)
        charge = 10.0 ** rng.uniform(2.9, 4.3)
        steps = max(1, math.ceil(4 * length))
        t = (np.arange(steps) + 0.5) / steps - 0.5
        rows = np.rint(r0 + t * length * math.sin(angle)).astype(int)
        cols = np.rint(c0 + t * length * math.cos(angle)).astype(int)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        np.add.at(out, (rows[inside], cols[inside]), charge / steps)
    return out, n


def bad_pixels(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Extra counts of hot pixels: [H, W] electrons, U(200, 3000) on ~fraction H W random pixels, else 0."""
    h, w = shape
    out = np.zeros(shape)
    n = int(rng.poisson(fraction * h * w))
    idx = rng.choice(h * w, size=min(n, h * w), replace=False)
    out.ravel()[idx] = rng.uniform(200.0, 3000.0, size=idx.size)
    return out


def expose(rng: np.random.Generator, model: np.ndarray, sky: float, read_noise: float, cosmic_density: float,
           bad_fraction: float) -> dict[str, np.ndarray | int]:
    """One exposure of a noiseless image [H, W] (electrons): SCI, ERR, DQ and what was added.

    Returns:
        sci [H, W] float64 (sky included), err [H, W] float64, dq [H, W] int16 (4 = bad pixel, 8192 = cosmic ray),
        cosmic_rays [H, W] (deposited electrons), n_cosmic_rays, n_bad_pixels.
    """
    sci, err = observe(rng, model, sky, read_noise)
    cr, n_cr = cosmic_rays(rng, model.shape, cosmic_density)
    hot = bad_pixels(rng, model.shape, bad_fraction)
    dq = np.zeros(model.shape, dtype=np.int16)
    dq[cr > 0] |= DQ_COSMIC_RAY
    dq[hot > 0] |= DQ_BAD_PIXEL
    return {"sci": sci + cr + hot, "err": err, "dq": dq, "cosmic_rays": cr, "n_cosmic_rays": n_cr,
            "n_bad_pixels": int((hot > 0).sum())}
