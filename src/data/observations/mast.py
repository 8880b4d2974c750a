"""Download a lens's HST exposures from MAST.

    scorelens-data mast J1430 [--data-dir data] [--kind flt|flc]

takes the lens config `lens=J1430` (composed by the command line), asks MAST (astroquery) for the calibrated
exposures named by its `rootnames`, and puts them where the lens config expects them (`paths.data_dir`/<exposures>).
Without a network it says in one line which files to fetch and where to put them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ...errors import InputError

log = logging.getLogger(__name__)

def targets(lens: Mapping, data_dir: Path, kind: str = "flt") -> list[tuple[str, Path]]:
    """(MAST product file name, destination path) for each exposure of the lens."""
    roots = lens.get("rootnames") or []
    exposures = lens.get("exposures") or []
    if not roots or len(roots) != len(exposures):
        raise InputError(f"lens {lens.get('name')!r} lists no MAST rootnames matching its exposures; "
                         "it is not an FLT-based lens config")
    out = []
    for root, rel in zip(roots, exposures, strict=True):
        dest = Path(rel) if Path(rel).is_absolute() else data_dir / rel
        if kind == "flc":
            dest = dest.with_name(dest.name.replace("_flt.fits", "_flc.fits"))
        out.append((f"{root}_{kind}.fits", dest))
    return out


def download(lens: Mapping, data_dir: Path, kind: str = "flt") -> list[Path]:
    """Fetch missing exposures; returns all destination paths. Raises InputError when MAST cannot be reached."""
    wanted = targets(lens, data_dir, kind)
    missing = [(f, d) for f, d in wanted if not d.is_file()]
    if not missing:
        log.info("all %d exposures of %s are already in place", len(wanted), lens["name"])
        return [d for _, d in wanted]
    where = missing[0][1].parent
    names = " ".join(f for f, _ in missing)
    offline = (f"cannot reach MAST; download {names} (HST, ACS/WFC, calibrated '{kind.upper()}' products) "
               f"from https://mast.stsci.edu and put them in {where}")
    try:
        from astroquery.mast import Observations
    except ImportError:
        raise InputError(offline) from None
    try:
        for fname, dest in missing:
            root = fname.split("_")[0]
            products = Observations.get_product_list(Observations.query_criteria(obs_id=root))
            products = Observations.filter_products(products, productFilename=fname)
            if len(products) == 0:
                raise InputError(f"MAST has no product {fname} for {lens['name']}; check the rootnames in its config")
            with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
                manifest = Observations.download_products(products, download_dir=tmp, cache=False)
                got = Path(manifest["Local Path"][0])
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(got), dest.with_suffix(".part"))
                dest.with_suffix(".part").replace(dest)
            log.info("downloaded %s -> %s", fname, dest)
    except InputError:
        raise
    except Exception as e:  # network errors come in many types; the user needs the same advice for each
        log.debug("MAST query failed: %r", e)
        raise InputError(offline) from None
    return [d for _, d in wanted]
