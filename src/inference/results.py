"""Writing posterior samples and their summary (the output contract of DESIGN.md).

`samples.h5`: one 1-D dataset [N] per mass parameter (names of DESIGN.md) and per shift component (shift_<e>_x,
shift_<e>_y, arcsec), N = draws x chains, ordered by recorded sweep and, within a sweep, by chain (chain index
fastest); int datasets `chain` and `draw` [N] give each sample's chain and its recorded sweep (0, 1, ...), and the
attributes `chains` and `draws` their numbers, so `x.reshape(draws, chains).T` (or `x[chain == c]`) is x per chain,
[chains, draws]. Image stacks in the same order: `source` [N, n, n], `lens_light` [N, n, n] (fluxes in the data's
units per detector pixel; attributes say so), `psf`: the forward model's PSF kernels, [N, n_exp, K, K] when sampled
(then also `psf_upsampled` [N, n_exp, n, n], each exposure's P on the PSF prior's grid) or the fixed [n_exp, K, K].

`summary.csv`: one row per mass parameter, columns `SUMMARY_COLUMNS`: parameter, then quantiles of all chains'
draws pooled (median, p16, p84: the 68% interval; p2.5, p97.5: 95%; p0.5, p99.5: 99%), then `rhat` (rank-normalised
split R-hat, the larger of bulk and folded-tail, `diagnostics.rhat`) and `ess_bulk` (bulk effective sample size,
`diagnostics.ess_bulk`); both NaN for a parameter the sampler holds fixed and with fewer than
`diagnostics.MIN_DRAWS` draws per chain. `diagnostic_warnings` says in words what a reader should not trust.

Both files are written to a temporary file and renamed, so a killed run never leaves a half-written result.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_write
from ..lensing.mass import PARAM_NAMES
from .diagnostics import MIN_DRAWS, disagreeing_chains, ess_bulk, quantiles, rhat

# column -> probability of the pooled quantile, in the order of the columns of summary.csv
QUANTILE_COLUMNS = {"median": 0.5, "p16": 0.16, "p84": 0.84, "p2.5": 0.025, "p97.5": 0.975, "p0.5": 0.005,
                    "p99.5": 0.995}
SUMMARY_COLUMNS = ["parameter", *QUANTILE_COLUMNS, "rhat", "ess_bulk"]
# chains with a larger R-hat have not mixed (Vehtari et al. 2021 recommend 1.01 for final results; 1.05 is the
# bound past which the intervals mean little)
RHAT_MAX = 1.05
# with bulk ESS 100 about 2.5 effective draws lie beyond each end of the 95% band (0.5 beyond the 99% band):
# fewer, and those quantiles are mostly noise
ESS_MIN = 100
# chains whose theta_E medians differ by more than this many pooled within-chain sd and this fraction sit apart
MODE_N_SD, MODE_REL = 3.0, 0.005


def by_chain(flat: np.ndarray, chains: int) -> np.ndarray:
    """Samples as stored, [N] with the chain index fastest, -> [chains, draws]."""
    a = np.asarray(flat)
    if a.shape[0] % chains:
        raise ValueError(f"{a.shape[0]} samples do not split into {chains} chains")
    return a.reshape(-1, chains, *a.shape[1:]).swapaxes(0, 1)


def flatten(x: np.ndarray) -> np.ndarray:
    """[chains, draws] -> [N = draws x chains] with the chain index fastest (the inverse of `by_chain`)."""
    a = np.asarray(x)
    return a.swapaxes(0, 1).reshape(-1, *a.shape[2:])


def _shape(params: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(chains, draws) shared by all params {name: [chains, draws]}."""
    shapes = {np.shape(v) for v in params.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"parameters must all be [chains, draws], got shapes {sorted(shapes)}")
    return next(iter(shapes))


def write_samples(path: str | Path, params: Mapping[str, np.ndarray], images: Mapping[str, np.ndarray],
                  attrs: Mapping[str, object] | None = None) -> Path:
    """Write samples.h5: params {name: [chains, draws]}, stored flat [N] with `chain`, `draw` [N] beside them;
    images {name: [N, ...]} in the same order (chain fastest) or without a sample axis (fixed PSFs)."""
    chains, draws = _shape(params)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for k, v in params.items():
                f.create_dataset(k, data=flatten(np.asarray(v, dtype=np.float64)))
            f.create_dataset("chain", data=np.tile(np.arange(chains, dtype=np.int32), draws))
            f.create_dataset("draw", data=np.repeat(np.arange(draws, dtype=np.int32), chains))
            for k, v in images.items():
                f.create_dataset(k, data=np.asarray(v, dtype=np.float32), compression="gzip", compression_opts=4)
            f.attrs["chains"], f.attrs["draws"] = chains, draws
            for k, v in (attrs or {}).items():
                f.attrs[k] = v

    return atomic_write(path, write)


def summarize(params: Mapping[str, np.ndarray]) -> list[dict]:
    """One row per mass parameter present in params {name: [chains, draws]}: pooled quantiles (columns of
    `QUANTILE_COLUMNS`, the parameter's units), R-hat and bulk ESS (NaN where undefined)."""
    rows = []
    for name in PARAM_NAMES:
        if name in params:
            x = np.asarray(params[name], dtype=np.float64)
            q = quantiles(x, list(QUANTILE_COLUMNS.values()))
            rows.append({"parameter": name, **dict(zip(QUANTILE_COLUMNS, q.tolist(), strict=True)),
                         "rhat": rhat(x), "ess_bulk": ess_bulk(x)})
    return rows


def _cell(key: str, value) -> str:
    if key == "parameter":
        return value
    if key == "rhat":
        return f"{value:.4f}"
    if key == "ess_bulk":
        return f"{value:.0f}"
    return f"{value:.6g}"


def write_summary(path: str | Path, params: Mapping[str, np.ndarray]) -> list[dict]:
    """Write summary.csv (columns `SUMMARY_COLUMNS`) from params {name: [chains, draws]}; returns its rows."""
    rows = summarize(params)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            w.writeheader()
            for row in rows:
                w.writerow({k: _cell(k, v) for k, v in row.items()})

    atomic_write(path, write)
    return rows


def diagnostic_warnings(params: Mapping[str, np.ndarray], rows: list[dict],
                        chain_chi2: np.ndarray | None = None) -> list[str]:
    """What not to trust in the summary `rows` of params {name: [chains, draws]}, one sentence per problem: too
    few draws for any diagnostic; mass parameters with R-hat > `RHAT_MAX` (chains not mixed); bulk ESS <
    `ESS_MIN` (the 95% and 99% bands are noise); chains whose theta_E medians sit apart (separate modes or stuck
    chains; `diagnostics.disagreeing_chains`), with each chain's reduced chi^2 when `chain_chi2` [chains] is given
    (which of the modes fits the data). Parameters held fixed (R-hat NaN) are never named."""
    chains, draws = _shape(params)
    if draws < MIN_DRAWS:
        return [f"R-hat and ESS need at least {MIN_DRAWS} recorded sweeps per chain, got {draws}: they are NaN "
                f"in summary.csv (record more sweeps in the last stage)"]
    out = []
    high = [f"{r['parameter']} {r['rhat']:.3f}" for r in rows if r["rhat"] > RHAT_MAX]  # NaN compares False
    if high:
        out.append(f"R-hat > {RHAT_MAX}: the chains have not mixed, do not trust the intervals of "
                   f"{', '.join(high)}")
    few = [f"{r['parameter']} {r['ess_bulk']:.0f}" for r in rows if r["ess_bulk"] < ESS_MIN]
    if few:
        out.append(f"bulk ESS < {ESS_MIN}: too few effective draws for the 2.5/97.5% (and 0.5/99.5%) quantiles "
                   f"of {', '.join(few)}")
    if "theta_E" in params:
        modes = disagreeing_chains(np.asarray(params["theta_E"], dtype=np.float64), MODE_N_SD, MODE_REL)
        if modes is not None:
            med, lo, hi = modes["medians"], modes["low"], modes["high"]
            out.append(f"chains disagree about theta_E (separate modes or stuck chains): chain {lo} median "
                       f"{med[lo]:.4f} vs chain {hi} median {med[hi]:.4f} arcsec, more than {MODE_N_SD:g} "
                       f"within-chain sd ({modes['sd']:.2g}) and {MODE_REL:.1%} apart; medians by chain: "
                       + ", ".join(f"{c}: {m:.4f}" for c, m in enumerate(med))
                       + ("" if chain_chi2 is None else "; reduced chi^2 by chain (mean over its recorded sweeps): "
                          + ", ".join(f"{c}: {x:.3f}" for c, x in enumerate(np.asarray(chain_chi2)))))
    return out
