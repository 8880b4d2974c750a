"""Download a lens's HST exposures from MAST.

    scorelens-data mast J1430 [--data-dir data] [--kind flt|flc]

and `python infer.py lens=J1430` on its first run (`observations.mast.fetch: auto`) take the lens config, ask MAST
once for all the calibrated exposures its `rootnames` name (astroquery: one observation query, one product list),
and put them where the lens config expects them (`paths.data_dir`/<exposures>). Each file is streamed into
`<file>.part` and renamed when complete; a download that is cut resumes from the bytes already there (HTTP Range).
What goes wrong is said in one line: no network (which files to fetch by hand and where to put them), a rootname
MAST does not know, a proprietary exposure (log in with a MAST token), or MAST's own error.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from ...errors import InputError, one_line

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read of a download


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


def missing(lens: Mapping, data_dir: Path, kind: str = "flt") -> list[tuple[str, Path]]:
    """The `targets` whose destination file is not there yet."""
    return [(f, d) for f, d in targets(lens, data_dir, kind) if not d.is_file()]


def _network_error(err: BaseException) -> bool:
    """Whether `err` (or what caused it) says the network or MAST cannot be reached."""
    import requests

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (requests.ConnectionError, requests.Timeout, socket.gaierror, socket.timeout,
                            ConnectionError, TimeoutError)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _offline_message(todo: list[tuple[str, Path]], kind: str) -> str:
    names = " ".join(f for f, _ in todo)
    return (f"cannot reach MAST; download {names} (HST, ACS/WFC, calibrated '{kind.upper()}' products) from "
            f"https://mast.stsci.edu and put them in {todo[0][1].parent}")


def query_products(files: list[str]):
    """MAST's product rows (an astropy Table) of the named files, in one observation query and one product list."""
    from astroquery.mast import Observations

    roots = sorted({f.split("_")[0] for f in files})
    observations = Observations.query_criteria(obs_id=roots, obs_collection="HST")
    if len(observations) == 0:
        return observations
    products = Observations.get_product_list(observations)
    return Observations.filter_products(products, productFilename=list(files))


def fetch(url: str, dest: Path, session=None, label: str = "") -> Path:
    """Stream `url` into `dest`.part, resuming from the bytes a cut download left there, then rename it to `dest`.
    HTTP errors raise requests.HTTPError; `dest` appears only complete."""
    import requests
    from rich.progress import Progress

    session = session or requests.Session()
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=60) as r:
        if r.status_code == 416:  # the part file already holds everything
            part.replace(dest)
            return dest
        r.raise_for_status()
        if have and r.status_code != 206:  # the server ignored the range: start again
            have = 0
        total = have + int(r.headers.get("Content-Length", 0) or 0)
        if have:
            log.info("resuming %s at %.1f MB", label or dest.name, have / 1e6)
        with part.open("ab" if have else "wb") as f, \
                Progress(disable=not sys.stderr.isatty(), transient=True) as bar:
            task = bar.add_task(f"MAST {label or dest.name}", total=total or None, completed=have)
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                bar.advance(task, len(chunk))
    part.replace(dest)
    return dest


def _rights(row) -> str:
    return str(row["dataRights"]).upper() if "dataRights" in row.colnames else "PUBLIC"


def download(lens: Mapping, data_dir: Path, kind: str, download_url: str) -> list[Path]:
    """Fetch the lens's missing exposures (`kind`: flt or flc) from MAST's file service `download_url`
    (conf/observations: mast.download_url); returns all destination paths. InputError (one line) when MAST cannot
    be reached, does not know a file, holds it as proprietary, or fails otherwise."""
    wanted = targets(lens, data_dir, kind)
    todo = missing(lens, data_dir, kind)
    if not todo:
        log.info("all %d exposures of %s are already in place", len(wanted), lens["name"])
        return [d for _, d in wanted]
    try:
        import requests
        from astroquery.exceptions import RemoteServiceError
    except ImportError:
        raise InputError(_offline_message(todo, kind)) from None
    try:
        products = query_products([f for f, _ in todo])
    except Exception as err:  # sorted into what the user can do about it
        if _network_error(err):
            raise InputError(_offline_message(todo, kind)) from None
        kind_of = "MAST refused the query" if isinstance(err, RemoteServiceError) else "the MAST query failed"
        raise InputError(f"{kind_of}: {one_line(err)}") from None
    by_name = {str(row["productFilename"]): row for row in products} if len(products) else {}
    unknown = [f for f, _ in todo if f not in by_name]
    if unknown:
        raise InputError(f"MAST has no product {', '.join(unknown)} for {lens['name']}; check the rootnames in "
                         f"conf/lens/{lens['name']}.yaml (and --kind: flt or flc)")
    private = [f for f, _ in todo if _rights(by_name[f]) != "PUBLIC"]
    if private:
        raise InputError(f"{', '.join(private)} of {lens['name']} are proprietary (exclusive access) at MAST; log in "
                         "with a MAST token first (astroquery: Observations.login(token=...)) or wait for their "
                         "release")
    log.info("fetching %d exposure(s) of %s from MAST into %s", len(todo), lens["name"], todo[0][1].parent)
    session = requests.Session()
    for fname, dest in todo:
        url = f"{download_url}?uri={quote(str(by_name[fname]['dataURI']), safe=':/')}"
        try:
            fetch(url, dest, session, fname)
        except requests.HTTPError as err:
            code = err.response.status_code if err.response is not None else None
            if code in (401, 403):
                raise InputError(f"MAST refused {fname} (HTTP {code}): proprietary data need a MAST token "
                                 "(astroquery: Observations.login(token=...))") from None
            raise InputError(f"downloading {fname} from MAST failed: {one_line(err)}") from None
        except Exception as err:  # a cut connection: resumable
            if _network_error(err):
                raise InputError(_offline_message([(f, d) for f, d in todo if not d.is_file()], kind) +
                                 " (what was downloaded is kept; run again to resume)") from None
            raise
        log.info("downloaded %s -> %s", fname, dest)
    return [d for _, d in wanted]
