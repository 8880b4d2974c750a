"""summary.ecsv: the mass posterior in physical units, as an astropy table.

One row per statistic (`statistic`: median, p16, p84, p2.5, p97.5, p0.5, p99.5: quantiles of all chains' draws
pooled, the columns of summary.csv) and one column per quantity, each with its unit and a description:
- `theta_E` (arcsec), `theta_E_kpc` (kpc at z_lens) and `M_E` (solMass: the projected mass inside the Einstein
  radius, pi Sigma_cr (D_l theta_E)^2 = c^2 D_l D_s theta_E^2 / (4 G D_ls)), the last two only with redshifts;
- `gamma` (the slope t, 1 isothermal), `q`, `x0`, `y0` (arcsec east and north of the lens position);
- `pa`, `pa_ext`, `pa3`, `pa4`: position angles in degrees east of north (the astronomers' convention; the
  sampler's angles are radians counter-clockwise from east), in [0, 180), [0, 180), [0, 120), [0, 90): the
  period of each angle's symmetry. Angle quantiles are taken on the circle: the draws are unwrapped about their
  circular mean first, so an interval across 0 is one interval (its lower end may then be negative);
- `gamma_ext`, `a3`, `a4`: dimensionless.
The table's metadata name the cosmology (`cosmology` in conf/infer.yaml, an astropy realization, default
Planck18), the lens and its redshifts, and each mass parameter's split R-hat and bulk ESS (`rhat`, `ess_bulk`:
as in summary.csv). Read it with `astropy.table.QTable.read(path)`: columns are Quantities.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy import constants
from astropy.cosmology import realizations
from astropy.table import QTable

from ..atomic import atomic_write
from ..errors import InputError
from .diagnostics import quantiles
from .results import QUANTILE_COLUMNS, summarize

# sampled angle -> (column, period of its symmetry in radians)
ANGLES = {"phi": ("pa", np.pi), "phi_ext": ("pa_ext", np.pi), "phi3": ("pa3", 2 * np.pi / 3),
          "phi4": ("pa4", np.pi / 2)}
PLAIN = {"gamma": (u.dimensionless_unscaled, "power-law slope t of the convergence (1: isothermal)"),
         "q": (u.dimensionless_unscaled, "axis ratio, minor / major"),
         "x0": (u.arcsec, "lens centre, east of the lens position"),
         "y0": (u.arcsec, "lens centre, north of the lens position"),
         "gamma_ext": (u.dimensionless_unscaled, "external shear strength"),
         "a3": (u.dimensionless_unscaled, "m = 3 multipole amplitude, relative to theta_E"),
         "a4": (u.dimensionless_unscaled, "m = 4 multipole amplitude, relative to theta_E")}
ANGLE_TEXT = {"pa": "major-axis position angle of the mass, east of north",
              "pa_ext": "external shear position angle, east of north",
              "pa3": "m = 3 multipole position angle, east of north",
              "pa4": "m = 4 multipole position angle, east of north"}


def cosmology(name: str):
    """The astropy cosmology realization called `name` (e.g. Planck18); a one-line InputError otherwise."""
    if name not in realizations.available:
        raise InputError(f"cosmology={name!r}: write one of astropy's realizations "
                         f"({', '.join(realizations.available)})")
    return getattr(realizations, name)


def position_angle(phi: np.ndarray, period: float) -> np.ndarray:
    """Degrees east of north of angles phi (radians counter-clockwise from east, i.e. from +x towards +y = north),
    in [0, period) with period in radians."""
    return np.mod(90.0 - np.degrees(phi), np.degrees(period))


def circular_quantiles(deg: np.ndarray, period_deg: float, probs: list[float]) -> np.ndarray:
    """Quantiles at probs of angles deg (any shape, degrees) with the given period: the draws unwrapped about their
    circular mean, then all quantiles moved by whole periods so that the median lies in [0, period)."""
    d = np.asarray(deg, dtype=np.float64)
    a = d * (2 * np.pi / period_deg)
    centre = np.degrees(np.arctan2(np.sin(a).mean(), np.cos(a).mean())) * period_deg / 360.0
    unwrapped = centre + np.mod(d - centre + period_deg / 2, period_deg) - period_deg / 2
    median = quantiles(unwrapped, [0.5])[0]
    return quantiles(unwrapped, probs) - np.floor(median / period_deg) * period_deg


def einstein_mass(theta_e_arcsec: np.ndarray, z_lens: float, z_source: float, cosmo) -> u.Quantity:
    """Projected mass inside the Einstein radius, c^2 D_l D_s theta_E^2 / (4 G D_ls), in solar masses."""
    d_l = cosmo.angular_diameter_distance(z_lens)
    d_s = cosmo.angular_diameter_distance(z_source)
    try:  # astropy >= 8 takes (z1, z2); older versions only have the _z1z2 form
        d_ls = cosmo.angular_diameter_distance(z_lens, z_source)
    except TypeError:
        d_ls = cosmo.angular_diameter_distance_z1z2(z_lens, z_source)
    theta = (np.asarray(theta_e_arcsec) * u.arcsec).to(u.rad).value
    return (constants.c**2 / (4 * constants.G) * d_l * d_s / d_ls * theta**2).to(u.solMass)


def summary_table(params: Mapping[str, np.ndarray], lens: Mapping, cosmology_name: str,
                  rows: list[dict] | None = None) -> QTable:
    """The table of this module's docstring from params {name: [chains, draws]} (the sampler's physical
    parameters) and the lens config (name, ra, dec, z_lens, z_source); rows: summary.csv's rows
    (`results.summarize(params)`, computed here when not given) for R-hat and ESS."""
    cosmo = cosmology(cosmology_name)
    probs = list(QUANTILE_COLUMNS.values())
    z_l, z_s = lens.get("z_lens"), lens.get("z_source")
    cols: dict[str, tuple[u.Quantity, str]] = {}

    def add(name: str, draws: np.ndarray, unit, text: str, period_deg: float | None = None) -> None:
        q = quantiles(draws, probs) if period_deg is None else circular_quantiles(draws, period_deg, probs)
        cols[name] = (np.asarray(q) * unit, text)

    if "theta_E" in params:
        theta = np.asarray(params["theta_E"], dtype=np.float64)
        add("theta_E", theta, u.arcsec, "Einstein radius (intermediate-axis convention)")
        if z_l is not None:
            scale = cosmo.kpc_proper_per_arcmin(z_l).to(u.kpc / u.arcsec).value
            add("theta_E_kpc", theta * scale, u.kpc, f"Einstein radius at z_lens = {z_l:g}")
            if z_s is not None:
                add("M_E", einstein_mass(theta, z_l, z_s, cosmo).value, u.solMass,
                    "projected mass inside the Einstein radius")
    for name, (unit, text) in PLAIN.items():
        if name in params:
            add(name, np.asarray(params[name], dtype=np.float64), unit, text)
    for name, (col, period) in ANGLES.items():
        if name in params:
            add(col, position_angle(np.asarray(params[name], dtype=np.float64), period), u.deg, ANGLE_TEXT[col],
                np.degrees(period))
    rows = summarize(params) if rows is None else rows
    table = QTable()
    table["statistic"] = list(QUANTILE_COLUMNS)
    table["statistic"].description = "posterior quantile of all chains' draws pooled (p16: 16th percentile)"
    for name, (values, text) in cols.items():
        table[name] = values
        table[name].description = text
    table.meta.update({
        "lens": str(lens.get("name", "")), "ra": lens.get("ra"), "dec": lens.get("dec"), "z_lens": z_l,
        "z_source": z_s, "cosmology": cosmology_name,
        "cosmology_parameters": {"H0": float(cosmo.H0.value), "Om0": float(cosmo.Om0)},
        "rhat": {r["parameter"]: float(r["rhat"]) for r in rows},
        "ess_bulk": {r["parameter"]: float(r["ess_bulk"]) for r in rows},
    })
    return table


def write_summary_table(path: str | Path, params: Mapping[str, np.ndarray], lens: Mapping,
                        cosmology_name: str, rows: list[dict] | None = None) -> QTable:
    """Write summary.ecsv (atomically) and return its table (rows: as for `summary_table`)."""
    table = summary_table(params, lens, cosmology_name, rows)
    atomic_write(path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
    return table
