"""Is a posterior calibrated? Interval coverage and TARP expected coverage over many lenses of known truth.

For each of many simulated lenses the sampler returns draws of the parameters; with the truths known:
  - interval coverage: the fraction of lenses whose truth lies in the central p interval of its own posterior's
    draws (one parameter at a time); calibrated posteriors give p (binomial scatter sqrt(p (1 - p) / n_lenses));
  - TARP expected coverage (Lemos et al. 2023, arXiv:2302.03026): all parameters at once. For lens i and a random
    reference point r_i, f_i is the fraction of draws nearer to r_i than the truth is; the expected coverage at
    credibility a is the fraction of lenses with f_i < a. Calibrated posteriors give a straight line (ECP(a) = a
    for all a); over- or under-confident and biased posteriors bend away from it, and the largest deviation
    summarises how far.
Parameters should be scaled to comparable units before TARP (it uses Euclidean distances): `standardise`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def central_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of 1-D draws: their (1 - level) / 2 and (1 + level) / 2 quantiles."""
    lo, hi = np.quantile(np.asarray(draws, dtype=np.float64), [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def covered(draws: np.ndarray, truth: float, level: float) -> bool:
    """Whether `truth` lies in the central `level` interval of the 1-D `draws`."""
    lo, hi = central_interval(draws, level)
    return bool(lo <= truth <= hi)


def coverage(draws: Sequence[np.ndarray], truths: Sequence[float], level: float) -> tuple[float, float]:
    """Fraction of lenses whose truth lies in their central `level` interval, and its binomial standard error.

    Args:
        draws: per lens, the 1-D draws of one parameter (lenses may have different numbers of draws).
        truths: per lens, the true value.
    """
    if len(draws) != len(truths) or not len(draws):
        raise ValueError(f"need one truth per lens and at least one lens, got {len(draws)} and {len(truths)}")
    hits = np.array([covered(d, t, level) for d, t in zip(draws, truths, strict=True)], dtype=np.float64)
    frac = float(hits.mean())
    return frac, float(np.sqrt(level * (1.0 - level) / len(hits)))


def standardise(draws: Sequence[np.ndarray], truths: np.ndarray, low: np.ndarray, high: np.ndarray):
    """Map parameters to [0, 1] by the box [low, high] (e.g. the range the truths were drawn from).

    Args:
        draws: per lens, [S_i, D]; truths [n, D]; low, high [D].

    Returns:
        (draws as a list of [S_i, D], truths [n, D]), scaled.
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if np.any(high <= low):
        raise ValueError("every parameter's box needs high > low")
    span = high - low
    return [(np.asarray(d, dtype=np.float64) - low) / span for d in draws], \
        (np.asarray(truths, dtype=np.float64) - low) / span


def tarp_coverage(draws: Sequence[np.ndarray], truths: np.ndarray, references: np.ndarray,
                  alphas: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TARP expected coverage probabilities.

    Args:
        draws: per lens, posterior draws [S_i, D].
        truths: [n, D], the true parameters.
        references: [n, D], one reference point per lens, drawn independently of the data (e.g. uniform over the
            box the truths came from).
        alphas: credibility levels in [0, 1] (default 101 levels).

    Returns:
        (alphas [K], expected coverage [K], f [n]: per lens the fraction of draws nearer the reference than its truth).
    """
    truths, references = np.asarray(truths, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if truths.shape != references.shape or truths.ndim != 2 or len(draws) != truths.shape[0]:
        raise ValueError(f"truths {truths.shape} and references {references.shape} must both be [n, D] with one "
                         f"row per lens ({len(draws)})")
    alphas = np.linspace(0.0, 1.0, 101) if alphas is None else np.asarray(alphas, dtype=np.float64)
    f = np.empty(len(draws))
    for i, d in enumerate(draws):
        d = np.asarray(d, dtype=np.float64)
        if d.ndim != 2 or d.shape[1] != truths.shape[1]:
            raise ValueError(f"lens {i}: draws must be [S, {truths.shape[1]}], got {d.shape}")
        dist = np.linalg.norm(d - references[i], axis=1)
        f[i] = np.mean(dist < np.linalg.norm(truths[i] - references[i]))
    ecp = np.array([np.mean(f < a) for a in alphas])
    return alphas, ecp, f


def tarp_deviation(alphas: np.ndarray, ecp: np.ndarray) -> float:
    """The largest |ECP(a) - a|: 0 for a calibrated posterior."""
    return float(np.max(np.abs(np.asarray(ecp) - np.asarray(alphas))))
