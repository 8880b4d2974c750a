"""The SLACS catalogue: Bolton et al. 2008 (ApJ 682, 964) lens models and redshifts, and lens configs built from it.

The CSV read here has one row per lens with columns name, ra_deg, dec_deg, z_lens, z_source (Bolton et al. 2008
Table 4), b_SIE_arcsec, q_SIE, PA_SIE_deg (Table 5; PA in degrees east of north), and the rootnames of the
four-point dithered ACS/WFC F814W exposures (`;`-separated). Position angles are converted to the DESIGN.md frame
here, once: phi = 90 deg - PA (radians, counter-clockwise from +x = east), wrapped to [-pi/2, pi/2).

    scorelens-data catalog CSV OUT_DIR      # writes OUT_DIR/J0029.yaml ... from the catalogue

Each file extends `conf/lens/base/slacs.yaml` through its Hydra defaults (`lens/base/slacs` must be on Hydra's
search path: conf/ is, wherever OUT_DIR is).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import InputError

log = logging.getLogger(__name__)

CITATION = "Bolton et al. 2008, ApJ 682, 964"
BASE = "base/slacs"  # conf/lens/base/slacs.yaml, what every SLACS lens config extends
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
    """The YAML text of `conf/lens/<short name>.yaml` for one catalogue row.

    The file extends `conf/lens/base/slacs.yaml` (its Hydra `defaults`), which holds the layout and `init`'s fixed
    parameters (isothermal, no offset, shear or multipoles); the file holds this lens's facts, with plain values
    so that `--cfg job` shows them as they are.
    """
    short = short_name(rec["name"])
    phi = pa_to_phi(rec["PA_SIE_deg"])
    roots = rec["rootnames"] or ([rec["snapshot_rootname"]] if rec["snapshot_rootname"] else [])
    catalog = [f"b_SIE_arcsec: {rec['b_SIE_arcsec']:g}", f"q_SIE: {rec['q_SIE']:g}",
               f"PA_SIE_deg: {rec['PA_SIE_deg']:g}"]
    if rec["sigma_sdss_kms"] is not None:
        catalog.append(f"sigma_sdss_kms: {rec['sigma_sdss_kms']:g}")
    lines = [
        f"# {rec['name']}. Redshifts and SIE model: {CITATION} (Tables 4 and 5).",
        f"defaults: [{BASE}@_here_, _self_]   # the layout and init's fixed parameters: conf/lens/{BASE}.yaml",
        f"name: {short}",
        f"sdss_name: {rec['name']}",
        f"ra: {rec['ra_deg']:.5f}",
        f"dec: {rec['dec_deg']:.5f}",
        f"z_lens: {rec['z_lens']:g}",
        f"z_source: {rec['z_source']:g}",
        _padded(f"init: {{theta_E: {rec['b_SIE_arcsec']:g}, q: {rec['q_SIE']:g}, phi: {phi:.4f}}}",
                "# their SIE: theta_E = b, phi = 90 deg - PA (radians)"),
        f"catalog: {{{', '.join(catalog)}}}",
    ]
    if not rec["rootnames"]:
        lines.append("# Only a single snapshot exposure is listed for this lens; add the dithered visit when found.")
    lines.append(f"rootnames: [{', '.join(roots)}]")
    lines += _flow_list("exposures", [f"{short}/{r}_flt.fits" for r in roots])
    return "\n".join(lines) + "\n"


def _padded(text: str, comment: str, column: int = 48) -> str:
    return f"{text:<{column - 1}} {comment}"


def _flow_list(key: str, items: list[str], per_line: int = 4) -> list[str]:
    """`key: [a, b, ...]` as a YAML flow list over lines of `per_line` items (eight exposures take two lines)."""
    rows = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    indent = " " * (len(key) + 3)
    return (f"{key}: [" + f",\n{indent}".join(rows) + "]").splitlines()


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
