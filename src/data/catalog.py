"""The SLACS catalogue: Bolton et al. 2008 (ApJ 682, 964) lens models and redshifts, and lens configs built from it.

The CSV read here has one row per lens with columns name, ra_deg, dec_deg, z_lens, z_source (Bolton et al. 2008
Table 4), b_SIE_arcsec, q_SIE, PA_SIE_deg (Table 5; PA in degrees east of north), and the rootnames of the
four-point dithered ACS/WFC F814W exposures (`;`-separated). Position angles are converted to the DESIGN.md frame
here, once: phi = 90 deg - PA (radians, counter-clockwise from +x = east), wrapped to [-pi/2, pi/2).

    scorelens-data catalog CSV OUT_DIR      # writes OUT_DIR/J0029.yaml ... from the catalogue
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import InputError

log = logging.getLogger(__name__)

CITATION = "Bolton et al. 2008, ApJ 682, 964"
REQUIRED = ("name", "ra_deg", "dec_deg", "z_lens", "z_source", "b_SIE_arcsec", "q_SIE", "PA_SIE_deg")


def pa_to_phi(pa_deg: float) -> float:
    """Major-axis position angle east of north (degrees) -> angle counter-clockwise from +x = east (radians)."""
    phi = math.radians(90.0 - pa_deg)
    return (phi + math.pi / 2) % math.pi - math.pi / 2


def short_name(sdss_name: str) -> str:
    """'SDSSJ1430+4105' -> 'J1430'."""
    s = sdss_name.removeprefix("SDSS")
    if not s.startswith("J") or len(s) < 5:
        raise InputError(f"cannot make a short lens name from {sdss_name!r}; expected 'SDSSJhhmm+ddmm'")
    return s[:5]


def read_catalog(path: str | Path) -> list[dict]:
    """Rows of the catalogue CSV with numbers parsed; raises InputError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: catalogue file not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path}: the catalogue has no rows")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise InputError(f"{path}: the catalogue lacks column(s) {missing}")
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            rec = {k: float(row[k]) for k in REQUIRED if k != "name"}
        except ValueError as e:
            raise InputError(f"{path}, line {i}: {e}") from None
        rec["name"] = row["name"]
        roots = (row.get("acs_f814w_dither_rootnames") or "").strip()
        rec["rootnames"] = [r for r in roots.split(";") if r]
        rec["snapshot_rootname"] = (row.get("snapshot_rootname") or "").strip() or None
        rec["sigma_sdss_kms"] = float(row["sigma_sdss_kms"]) if row.get("sigma_sdss_kms") else None
        out.append(rec)
    return out


def lens_config(rec: dict) -> str:
    """The YAML text of `conf/lens/<short name>.yaml` for one catalogue row."""
    short = short_name(rec["name"])
    phi = pa_to_phi(rec["PA_SIE_deg"])
    roots = rec["rootnames"] or ([rec["snapshot_rootname"]] if rec["snapshot_rootname"] else [])
    lines = [
        f"# {rec['name']}. Redshifts and SIE model: {CITATION} (Tables 4 and 5).",
        f"# init: their SIE (b = {rec['b_SIE_arcsec']:g} arcsec, q = {rec['q_SIE']:g}, "
        f"PA = {rec['PA_SIE_deg']:g} deg east of north) in scorelens' convention, phi = 90 deg - PA.",
        f"name: {short}",
        f"sdss_name: {rec['name']}",
        f"ra: {rec['ra_deg']:.5f}",
        f"dec: {rec['dec_deg']:.5f}",
        f"z_lens: {rec['z_lens']:g}",
        f"z_source: {rec['z_source']:g}",
        "init:",
        f"  theta_E: {rec['b_SIE_arcsec']:g}",
        "  gamma: 1.0",
        f"  q: {rec['q_SIE']:g}",
        f"  phi: {phi:.4f}",
        "  x0: 0.0",
        "  y0: 0.0",
        "  gamma_ext: 0.0",
        "  phi_ext: 0.0",
        "  a3: 0.0",
        "  phi3: 0.0",
        "  a4: 0.0",
        "  phi4: 0.0",
        "catalog:",
        f"  b_SIE_arcsec: {rec['b_SIE_arcsec']:g}",
        f"  q_SIE: {rec['q_SIE']:g}",
        f"  PA_SIE_deg: {rec['PA_SIE_deg']:g}",
    ]
    if rec["sigma_sdss_kms"] is not None:
        lines.append(f"  sigma_sdss_kms: {rec['sigma_sdss_kms']:g}")
    if not rec["rootnames"]:
        lines.append("# Only a single snapshot exposure is listed for this lens; add the dithered visit when found.")
    lines.append(f"rootnames: [{', '.join(roots)}]")
    lines.append("exposures:")
    lines += [f"  - {short}/{r}_flt.fits" for r in roots]
    return "\n".join(lines) + "\n"


def write_lens_configs(catalog: str | Path, out_dir: str | Path) -> list[Path]:
    """Write one lens config per catalogue row; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rec in read_catalog(catalog):
        path = out_dir / f"{short_name(rec['name'])}.yaml"
        atomic_write_text(path, lens_config(rec))
        written.append(path)
    log.info("wrote %d lens configs to %s", len(written), out_dir)
    return written
