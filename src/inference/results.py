"""Writing posterior samples and their summary (the output contract of DESIGN.md).

`samples.h5`: one 1-D dataset per mass parameter (names of DESIGN.md) and per shift component (shift_<e>_x,
shift_<e>_y, arcsec), and image stacks `source` [N, n, n], `lens_light` [N, n, n] (fluxes in the data's units per
detector pixel; attributes say so), `psf`: the forward model's PSF kernels, [N, n_exp, K, K] when sampled (then
also `psf_upsampled` [N, n_exp, n, n], each exposure's P on the PSF prior's grid) or the fixed [n_exp, K, K].
`summary.csv`: columns parameter,median,p16,p84, one row per mass parameter. Both are written to a temporary file
and renamed, so a killed run never leaves a half-written result.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_write
from ..lensing.mass import PARAM_NAMES


def write_samples(path: str | Path, params: Mapping[str, np.ndarray], images: Mapping[str, np.ndarray],
                  attrs: Mapping[str, object] | None = None) -> Path:
    """Write samples.h5: params {name: [N]}, images {name: [N, ...]} (numpy arrays)."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for k, v in params.items():
                f.create_dataset(k, data=np.asarray(v, dtype=np.float64))
            for k, v in images.items():
                f.create_dataset(k, data=np.asarray(v, dtype=np.float32), compression="gzip", compression_opts=4)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v

    return atomic_write(path, write)


def summarize(params: Mapping[str, np.ndarray]) -> list[dict]:
    """Median and 16th/84th percentiles of each mass parameter present."""
    rows = []
    for name in PARAM_NAMES:
        if name in params:
            p16, med, p84 = np.percentile(np.asarray(params[name], dtype=np.float64), [16, 50, 84])
            rows.append({"parameter": name, "median": med, "p16": p16, "p84": p84})
    return rows


def write_summary(path: str | Path, params: Mapping[str, np.ndarray]) -> Path:
    """Write summary.csv with columns parameter,median,p16,p84."""
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["parameter", "median", "p16", "p84"])
            w.writeheader()
            for row in summarize(params):
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    return atomic_write(path, write)
