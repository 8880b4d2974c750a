"""samples.nc: the posterior samples as ArviZ InferenceData (netCDF4/HDF5), dims (chain, draw).

Groups: `posterior`, every sampled scalar as in samples.h5 (mass parameters by their DESIGN.md names, the
sampler's radians and units; per-exposure shifts shift_<e>_x, shift_<e>_y in arcsec), and `sample_stats`,
`reduced_chi2` (each draw's reduced chi^2, mean over the exposures). `az.summary`, `az.plot_trace`, `az.rhat`
and `az.ess` read it as it is: `az.from_netcdf("samples.nc")`. Images stay in samples.h5 (their stacks are large
and ArviZ has nothing to say about them).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..atomic import atomic_write


def arviz():
    """The arviz module, imported without its notice about a coming major version (a FutureWarning that would
    otherwise end up in every run's log)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def inference_data(params: Mapping[str, np.ndarray], reduced_chi2: np.ndarray | None = None,
                   attrs: Mapping[str, object] | None = None):
    """InferenceData of params {name: [chains, draws]} and reduced_chi2 [chains, draws]; attrs (numbers and strings:
    netCDF attributes) are the InferenceData's own (`idata.attrs`)."""
    az = arviz()
    posterior = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    stats = None if reduced_chi2 is None else {"reduced_chi2": np.asarray(reduced_chi2, dtype=np.float64)}
    clean = {k: v for k, v in (attrs or {}).items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return az.from_dict(posterior=posterior, sample_stats=stats, attrs=clean)


def write_inference_data(path: str | Path, params: Mapping[str, np.ndarray], reduced_chi2: np.ndarray | None = None,
                         attrs: Mapping[str, object] | None = None):
    """Write samples.nc atomically; returns the InferenceData."""
    idata = inference_data(params, reduced_chi2, attrs)
    atomic_write(path, lambda tmp: idata.to_netcdf(str(tmp), engine="h5netcdf"))
    return idata
