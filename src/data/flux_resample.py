"""Flux-conserving resampling of images between pixel grids (galaxy stamps, PSFs): the one resampler of the data.

Along one axis, the cumulative flux at the input pixel edges is interpolated by a cubic spline, and each output
pixel gets the difference of that curve between its two edges: each output pixel holds the flux of a smooth
density that integrates exactly to every input pixel's value. So the flux of any span between input edges is kept
(an unshifted copy or an integer block sum is exact), and the total is conserved for the part of the input the
output covers (outside the input the flux is zero). Next to an unresolved core a spline can ring by a few
per cent of the peak (`epsf.prepare_psf` clips PSFs at zero; galaxy stamps carry noise of either sign anyway).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline


def resample_axis(a: np.ndarray, axis: int, edges_in: np.ndarray, edges_out: np.ndarray) -> np.ndarray:
    """Resample `a` along `axis` from pixels with edges `edges_in` [n_in + 1] to pixels with edges `edges_out`
    [n_out + 1] (both increasing, in one coordinate); values are flux per pixel. Returns a with that axis n_out."""
    a = np.asarray(a, dtype=np.float64)
    edges_in = np.asarray(edges_in, dtype=np.float64)
    zero = np.zeros_like(np.take(a, [0], axis=axis))
    cumulative = np.concatenate([zero, np.cumsum(a, axis=axis)], axis=axis)
    inside = np.clip(np.asarray(edges_out, dtype=np.float64), edges_in[0], edges_in[-1])
    return np.diff(CubicSpline(edges_in, cumulative, axis=axis)(inside), axis=axis)
