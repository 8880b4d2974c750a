"""The sky level of a calibrated exposure, to subtract before modelling.

Calibrated ACS FLT/FLC images keep the sky in SCI (AstroDrizzle measures it and records it as MDRIZSKY without
removing it), and the lens model has no background term, so the loader subtracts a constant per chip:

- "header": the chip's MDRIZSKY keyword (SCI's units), or the "median" estimate where the file has none;
- "median": the sigma-clipped median of the chip's good pixels (a whole WFC chip is mostly sky);
- "none": nothing (data already sky-subtracted);
- a number: that value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ...errors import InputError

log = logging.getLogger(__name__)

METHODS = ("header", "median", "none")


def clipped_median(values: np.ndarray) -> float:
    """3-sigma-clipped median of the finite `values` (astropy, as the star finder's chip background); nan if none."""
    from astropy.stats import sigma_clipped_stats

    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan")
    return float(sigma_clipped_stats(v, sigma=3.0, maxiters=10)[1])


def sky_level(sci: np.ndarray, bad: Callable[[], np.ndarray], header: dict, method, where: str = "") -> float:
    """The constant to subtract from a chip's SCI (its units), by `method` (module docstring).

    sci: [H, W] the whole chip; bad: returns the [H, W] bool mask of pixels unfit for the estimate (bad DQ), called
    only when the chip's pixels are needed.
    """
    if isinstance(method, bool):
        raise InputError(f"observations.sky must be one of {METHODS} or a number, got {method!r}")
    if isinstance(method, int | float):
        return float(method)
    if method not in METHODS:
        raise InputError(f"observations.sky must be one of {METHODS} or a number, got {method!r}")
    if method == "none":
        return 0.0
    if method == "header":
        value = header.get("MDRIZSKY")
        if value is not None and np.isfinite(float(value)):
            return float(value)
        log.info("%s: no MDRIZSKY keyword; sky from the chip's clipped median", where)
    level = clipped_median(sci[~bad()])
    if not np.isfinite(level):
        raise InputError(f"{where}: no good pixel to estimate the sky from; set observations.sky to a number or 'none'")
    return level
