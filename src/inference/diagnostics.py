"""Convergence diagnostics of MCMC draws: rank-normalised split R-hat, bulk effective sample size, quantiles.

Every function takes the draws of one scalar as an array [chains, draws] (any units; the results are unitless
except the quantiles, which are in the draws' units) and follows Vehtari, Gelman, Simpson, Carpenter & Buerkner
(2021), "Rank-normalization, folding, and localization: an improved R-hat for assessing convergence of MCMC",
Bayesian Analysis 16(2):

- each chain is split into its first and second half (an odd draw in the middle is left out), so that a trend
  within a chain shows up as disagreement between halves, and a single chain still has an R-hat;
- the pooled draws are replaced by the normal scores of their ranks (rank normalisation), so heavy tails and
  infinite variances do no harm;
- `rhat` is the larger of the bulk R-hat (of the rank-normalised draws) and the tail R-hat (of the rank-normalised
  folded draws |x - median|, which sees chains that differ in scale only);
- `ess_bulk` is the effective sample size of the rank-normalised split chains, with the autocorrelations of all
  chains combined and summed in pairs over Geyer's (1992) initial monotone sequence.

Undefined cases give NaN without numpy warnings: a constant parameter (held fixed by the sampler) and fewer than
`MIN_DRAWS` draws per chain (callers log why, once). Non-finite draws give NaN too.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata

# two draws per half-chain is the least for a within-half variance
MIN_DRAWS = 4


def _as_chains(x: np.ndarray) -> np.ndarray:
    """Draws as float64 [chains, draws]; a 1-D array is one chain."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"draws must be [chains, draws], got shape {a.shape}")
    return a


def defined(x: np.ndarray) -> bool:
    """Whether R-hat and ESS are defined for draws x [chains, draws]: enough draws, all finite, not constant."""
    a = _as_chains(x)
    return a.shape[1] >= MIN_DRAWS and bool(np.isfinite(a).all()) and bool(np.ptp(a) > 0)


def split_chains(x: np.ndarray) -> np.ndarray:
    """[chains, draws] -> [2 chains, draws // 2]: each chain's first half, then its second half; with an odd number
    of draws the middle one is left out."""
    a = _as_chains(x)
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half:]], axis=0)


def rank_normalize(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks, same shape as x [chains, draws]: Phi^-1((r - 3/8) / (S + 1/4)) with r the
    rank among all S draws (ties get their average rank)."""
    a = np.asarray(x, dtype=np.float64)
    r = rankdata(a, axis=None).reshape(a.shape)
    return ndtri((r - 0.375) / (a.size + 0.25))


def _variances(z: np.ndarray) -> tuple[float, float]:
    """Within-chain variance W and the pooled estimate var+ = (n - 1) / n W + B / n of draws z [m, n]."""
    n = z.shape[1]
    w = float(np.mean(np.var(z, axis=1, ddof=1)))
    b_over_n = float(np.var(np.mean(z, axis=1), ddof=1)) if z.shape[0] > 1 else 0.0
    return w, (n - 1) / n * w + b_over_n


def _split_rhat(z: np.ndarray) -> float:
    """Classic R-hat sqrt(var+ / W) of chains z [m, n] (already split)."""
    w, var_plus = _variances(z)
    if w <= 1e-12 * var_plus:  # every chain constant (up to rounding), at values that differ: no mixing at all
        return np.inf
    return float(np.sqrt(var_plus / w))


def rhat_bulk(x: np.ndarray) -> float:
    """Rank-normalised split R-hat of draws x [chains, draws] (the bulk of the distribution); NaN if undefined."""
    if not defined(x):
        return np.nan
    return _split_rhat(rank_normalize(split_chains(x)))


def rhat_tail(x: np.ndarray) -> float:
    """Rank-normalised split R-hat of the folded draws |x - median| [chains, draws] (their scale); NaN if
    undefined."""
    if not defined(x):
        return np.nan
    a = _as_chains(x)
    folded = np.abs(a - np.median(a))
    if np.ptp(folded) == 0:  # e.g. two values symmetric about the median: the folded draws tell nothing
        return np.nan
    return _split_rhat(rank_normalize(split_chains(folded)))


def rhat(x: np.ndarray) -> float:
    """R-hat of draws x [chains, draws]: the larger of the bulk and tail rank-normalised split R-hat (1 when the
    chains agree; above 1.01 to 1.05 they have not mixed). NaN if undefined (see the module docstring)."""
    if not defined(x):
        return np.nan
    bulk, tail = rhat_bulk(x), rhat_tail(x)
    return bulk if np.isnan(tail) else max(bulk, tail)


def autocovariance(x: np.ndarray) -> np.ndarray:
    """Autocovariances of each chain, [m, n] from x [m, n]: acov[c, t] = sum_i (x_i - mean)(x_{i+t} - mean) / n
    (the biased, positive-definite estimator), by FFT with enough zero padding that nothing wraps around."""
    a = np.asarray(x, dtype=np.float64)
    n = a.shape[1]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(a - a.mean(axis=1, keepdims=True), n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def ess(z: np.ndarray) -> float:
    """Effective sample size of chains z [m, n] (used as given: split and normalise them first): m n / tau with
    tau = -1 + 2 sum_k P_k, P_k = rho_2k + rho_2k+1 over Geyer's initial monotone sequence (stop before the first
    P_k <= 0, and take the running minimum), where rho_t = 1 - (W - mean_c s_c^2 rho_t,c) / var+ combines the
    chains' autocorrelations rho_t,c with the between-chain variance."""
    m, n = z.shape
    acov = autocovariance(z)
    w, var_plus = _variances(z)
    if var_plus == 0.0:
        return np.nan
    # s_c^2 rho_t,c, with s_c^2 the unbiased within-chain variance
    rho = 1.0 - (w - acov.mean(axis=0) * n / (n - 1)) / var_plus
    pairs = rho[: 2 * (n // 2)].reshape(-1, 2).sum(axis=1)
    stop = np.flatnonzero(pairs <= 0)
    pairs = pairs[: stop[0]] if stop.size else pairs
    tau = -1.0 + 2.0 * float(np.minimum.accumulate(pairs).sum()) if pairs.size else -1.0
    # antithetic chains can drive tau towards 0; cap the ESS at S log10(S) draws, S = m n
    s = m * n
    tau = max(tau, 1.0 / np.log10(s))
    return s / tau


def ess_bulk(x: np.ndarray) -> float:
    """Bulk effective sample size of draws x [chains, draws]: the ESS of the rank-normalised split chains, about the
    number of independent draws that would estimate the median and central intervals as well. NaN if undefined."""
    if not defined(x):
        return np.nan
    return ess(rank_normalize(split_chains(x)))


def quantiles(x: np.ndarray, probs) -> np.ndarray:
    """Quantiles of all draws x [chains, draws] pooled, at probabilities probs [K] in [0, 1] (linear interpolation
    between order statistics), [K] in the draws' units."""
    return np.quantile(np.asarray(x, dtype=np.float64).ravel(), np.asarray(probs, dtype=np.float64))


def disagreeing_chains(x: np.ndarray, n_sd: float = 3.0, rel: float = 0.005) -> dict | None:
    """Whether the chains of x [chains, draws] sit in different places (separate modes, or chains stuck): some
    chain's median differs from another's by more than `n_sd` pooled within-chain standard deviations AND by more
    than `rel` times the pooled median's magnitude. Returns None when they agree (or with fewer than `MIN_DRAWS`
    draws per chain or non-finite draws), else {"medians": [chains], "low": chain index, "high": chain index,
    "sd": the pooled within-chain sd} (medians and sd in the draws' units)."""
    a = _as_chains(x)
    if a.shape[0] < 2 or a.shape[1] < MIN_DRAWS or not np.isfinite(a).all():
        return None
    med = np.median(a, axis=1)
    sd = float(np.sqrt(np.mean(np.var(a, axis=1, ddof=1))))
    low, high = int(np.argmin(med)), int(np.argmax(med))
    gap = float(med[high] - med[low])
    if gap > n_sd * sd and gap > rel * abs(float(np.median(a))):
        return {"medians": med, "low": low, "high": high, "sd": sd}
    return None
