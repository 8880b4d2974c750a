"""Mock SLACS-like lens systems with known truth, written as ACS/WFC FLT-like FITS exposures plus truth files.

A mock is a lens galaxy (1-3 Sersic components) with an elliptical power-law mass, external shear and m = 3, 4
multipoles, a lensed source (a given galaxy image, else a Sersic disc with clumps), a few stars, observed in
`n_exp` dithered F814W exposures. Each exposure has its own WCS (TAN + SIP, a 4-point box dither, tiny roll
differences) and a small alignment shift that is applied when rendering but is *not* in the WCS (the sampler's
job is to find it; exposure 0 is the reference with zero shift). Noiseless frames come from the project's forward
model (`scorelens.lensing.forward.ForwardModel`, float64) on the per-pixel sky grid of each WCS, so the truth files plus
the FITS headers reproduce them exactly (`render_truth`).

Per exposure, in electrons: SCI = Poisson(model + sky) + N(0, read_noise^2) + cosmic rays + hot pixels (the sky
is *kept*, as in calibrated FLTs, and recorded as MDRIZSKY); ERR = sqrt(model + sky + read_noise^2); DQ flags
cosmic rays with 8192 and hot pixels with 4. The frame is a small sub-array of a WFC chip (`frame`, default
200 x 200 pixels) rather than the whole 4096 x 2048 chip.

Files in `out_dir`: `<rootname>_flt.fits` per exposure, `truth.json` (numbers) and `truth.npz` (arrays); see
`build_mock` for their contents. `truth.json` is written last and marks a complete mock.

    scorelens-data mock OUT_DIR [--seed N] [--overwrite]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from astropy.wcs import WCS

from . import scene
from .detector import expose
from ...atomic import atomic_write
from .flt_files import cd_matrix, flt_hdulist, roundtrip_header, wcs_header
from .hst_psf import hst_like_psf
from ..observations.sky_grid import cutout_grid, sky_to_pixel, tangent_offsets, tangent_to_sky
from ...errors import InputError
from ...lensing.binning import bin_pixels
from ...lensing.forward import ForwardModel
from ...lensing.grid import ExposureGrid, PixelGrid

log = logging.getLogger(__name__)

FORMAT = "scorelens-mock"
VERSION = 1
TRUTH_JSON = "truth.json"
TRUTH_NPZ = "truth.npz"
F64 = torch.float64

# The mock detector's geometric distortion (SIP, pixels, about the frame centre): ~0.1 px at 100 px from it.
SIP_COEFFICIENTS = {
    "A": {(2, 0): 1.2e-5, (1, 1): -6.0e-6, (0, 2): 4.0e-6, (3, 0): 2.0e-9},
    "B": {(2, 0): -3.0e-6, (1, 1): 9.0e-6, (0, 2): -5.0e-6, (0, 3): 1.5e-9},
}

# Independent random streams (numpy SeedSequence([seed, stream])): changing one part leaves the others as they were.
_MASS, _LENS_LIGHT, _SOURCE, _PSF, _POINTING, _SHIFTS, _STARS, _BRIGHTNESS, _DETECTOR, _CATALOG = range(10)


@dataclass(frozen=True)
class MockConfig:
    """Settings of a mock (the `mock:` block of conf/lens/mock.yaml, plus the lens's name, position, redshifts).

    Units: pixel_scale arcsec per detector pixel; exptime seconds; sky electrons per pixel per exposure; read_noise
    electrons; zeropoint AB magnitude of 1 electron/s; lens_mag the lens galaxy's total AB magnitude range;
    source_snr the range of the brightest lensed-source pixel's signal-to-noise in exposure 0; source_grid
    (pixels, arcsec per pixel); source_image_fov arcsec spanned by a given source image's longer side; psf_size
    fine pixels (odd); star_flux electrons per exposure; cosmic_density events per pixel per exposure;
    bad_pixel_fraction hot pixels per pixel; dither (columns, rows) detector pixels per exposure (cycled, with
    half-pixel steps added after each cycle); roll_sigma degrees; shift_sigma arcsec; the mass ranges as in
    `scene.draw_mass`.
    """

    seed: int = 1
    name: str = "mock"
    ra: float = 150.11916
    dec: float = 2.20583
    z_lens: float = 0.285
    z_source: float = 0.575
    n_exp: int = 4
    frame: tuple[int, int] = (200, 200)
    cutout: int = 128
    pixel_scale: float = 0.05
    upsample: int = 2
    exptime: float = 420.0
    sky: float = 35.0
    read_noise: float = 4.5
    zeropoint: float = 25.94
    lens_mag: tuple[float, float] = (17.0, 18.0)
    n_lens_light: tuple[int, int] = (1, 3)
    source_snr: tuple[float, float] = (20.0, 50.0)
    source_grid: tuple[int, float] = (256, 0.015)
    source_image_fov: float = 1.2
    psf_size: int = 65
    n_stars: int = 3
    star_flux: tuple[float, float] = (2.0e4, 3.0e5)
    cosmic_density: float = 1.25e-3
    bad_pixel_fraction: float = 5.0e-4
    sip: bool = True
    dither: tuple[tuple[float, float], ...] = ((0.0, 0.0), (5.0, 1.5), (2.5, 4.0), (-2.5, 2.5))
    roll_sigma: float = 0.002
    shift_sigma: float = 0.004
    theta_E: tuple[float, float] = (1.0, 1.6)
    gamma_sigma: float = 0.1
    q: tuple[float, float] = (0.6, 0.9)
    center_max: float = 0.05
    gamma_ext_max: float = 0.05
    multipole_sigma: float = 0.005
    catalog_scatter: tuple[float, float, float] = (0.03, 0.05, 0.1)
    rootname: str = "jmock0"

    def as_dict(self) -> dict:
        """Plain JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def rootnames(self) -> list[str]:
        return [f"{self.rootname}{e + 1:02d}q" for e in range(self.n_exp)]

    def file_names(self) -> list[str]:
        return [f"{r}_flt.fits" for r in self.rootnames()]


@dataclass
class MockPaths:
    """Where a mock lies: its directory, FLT files (one per exposure) and truth files."""

    root: Path
    exposures: list[Path] = field(default_factory=list)
    truth_json: Path | None = None
    truth_npz: Path | None = None


@dataclass
class MockTruth:
    """A mock's truth: `meta` (the contents of truth.json) and `arrays` (those of truth.npz), from `root`."""

    root: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    @property
    def mass(self) -> dict[str, float]:
        return dict(self.meta["mass"])

    @property
    def shifts(self) -> np.ndarray:
        return np.asarray(self.meta["shifts"], dtype=np.float64)

    def source_grid(self) -> PixelGrid:
        return PixelGrid(**self.meta["source_grid"])

    def lens_light_grid(self) -> PixelGrid:
        return PixelGrid(**self.meta["lens_light_grid"])

    def exposure_paths(self) -> list[Path]:
        return [self.root / e["file"] for e in self.meta["exposures"]]


# --------------------------------------------------------------------------------------------- validation


def _fail(name: str, what: str, value) -> InputError:
    return InputError(f"mock setting {name} must be {what}, got {value!r}")


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise _fail(name, f"an integer >= {minimum}", value)
    return int(value)


def _float(name, value, minimum=None, positive=False):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(name, "a number", value) from None
    if not math.isfinite(number) or (minimum is not None and number < minimum) or (positive and number <= 0):
        bound = " and > 0" if positive else (f" and >= {minimum}" if minimum is not None else "")
        raise _fail(name, "finite" + bound, value)
    return number


def _pair(name, value, convert, ordered=True):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise _fail(name, "a pair [a, b]", value)
    pair = (convert(f"{name}[0]", value[0]), convert(f"{name}[1]", value[1]))
    if ordered and pair[0] > pair[1]:
        raise _fail(name, "a pair with low <= high", value)
    return pair


def _checked(cfg: MockConfig) -> MockConfig:
    """The config with every field checked and in canonical types (tuples, ints, floats); InputError otherwise."""
    nonneg = lambda n, v: _float(n, v, minimum=0.0)  # noqa: E731
    pos = lambda n, v: _float(n, v, positive=True)  # noqa: E731
    frame = cfg.frame if isinstance(cfg.frame, Sequence) and not isinstance(cfg.frame, str) else (cfg.frame,) * 2
    frame = _pair("frame", frame, lambda n, v: _int(n, v, 16), ordered=False)
    cutout = _int("cutout", cfg.cutout, 8)
    if cutout > min(frame):
        raise InputError(f"mock frame {frame[0]} x {frame[1]} is smaller than the cutout {cutout}: the frame must "
                         "hold the cutout (and the stars outside it)")
    n_exp = _int("n_exp", cfg.n_exp, 1)
    dither = cfg.dither
    if isinstance(dither, (str, bytes)) or not isinstance(dither, Sequence) or len(dither) < 1:
        raise _fail("dither", "a list of [columns, rows] offsets", dither)
    dither = tuple(_pair(f"dither[{i}]", d, lambda n, v: _float(n, v), ordered=False) for i, d in enumerate(dither))
    psf_size = _int("psf_size", cfg.psf_size, 3)
    if psf_size % 2 == 0:
        raise _fail("psf_size", "odd", psf_size)
    n_light = _pair("n_lens_light", cfg.n_lens_light, lambda n, v: _int(n, v, 1))
    if n_light[1] > 3:
        raise _fail("n_lens_light", "within [1, 3]", cfg.n_lens_light)
    q = _pair("q", cfg.q, pos)
    if q[1] > 1:
        raise _fail("q", "within (0, 1]", cfg.q)
    rootname = str(cfg.rootname)
    if not re.fullmatch(r"[a-z0-9]{1,7}", rootname):
        raise _fail("rootname", "1-7 lowercase letters or digits", cfg.rootname)
    if not isinstance(cfg.sip, (bool, np.bool_)):
        raise _fail("sip", "true or false", cfg.sip)
    return MockConfig(
        seed=_int("seed", cfg.seed, 0), name=str(cfg.name),
        ra=_float("ra", cfg.ra) % 360.0, dec=_float("dec", cfg.dec),
        z_lens=pos("z_lens", cfg.z_lens), z_source=pos("z_source", cfg.z_source),
        n_exp=n_exp, frame=frame, cutout=cutout, pixel_scale=pos("pixel_scale", cfg.pixel_scale),
        upsample=_int("upsample", cfg.upsample, 1), exptime=pos("exptime", cfg.exptime),
        sky=nonneg("sky", cfg.sky), read_noise=nonneg("read_noise", cfg.read_noise),
        zeropoint=_float("zeropoint", cfg.zeropoint), lens_mag=_pair("lens_mag", cfg.lens_mag, _float),
        n_lens_light=n_light, source_snr=_pair("source_snr", cfg.source_snr, pos),
        source_grid=(_int("source_grid[0]", cfg.source_grid[0], 8), pos("source_grid[1]", cfg.source_grid[1])),
        source_image_fov=pos("source_image_fov", cfg.source_image_fov), psf_size=psf_size,
        n_stars=_int("n_stars", cfg.n_stars, 0), star_flux=_pair("star_flux", cfg.star_flux, pos),
        cosmic_density=nonneg("cosmic_density", cfg.cosmic_density),
        bad_pixel_fraction=nonneg("bad_pixel_fraction", cfg.bad_pixel_fraction), sip=bool(cfg.sip),
        dither=dither, roll_sigma=nonneg("roll_sigma", cfg.roll_sigma),
        shift_sigma=nonneg("shift_sigma", cfg.shift_sigma), theta_E=_pair("theta_E", cfg.theta_E, pos),
        gamma_sigma=nonneg("gamma_sigma", cfg.gamma_sigma), q=q, center_max=nonneg("center_max", cfg.center_max),
        gamma_ext_max=nonneg("gamma_ext_max", cfg.gamma_ext_max),
        multipole_sigma=nonneg("multipole_sigma", cfg.multipole_sigma),
        catalog_scatter=_catalog_scatter(cfg.catalog_scatter), rootname=rootname,
    )


def _catalog_scatter(value) -> tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise _fail("catalog_scatter", "[theta_E fraction, q, phi radians]", value)
    return tuple(_float(f"catalog_scatter[{i}]", v, minimum=0.0) for i, v in enumerate(value))


def simulated_catalog(mass: Mapping, scatter, rng: np.random.Generator) -> dict:
    """What a published SIE model of the mock would say, as SLACS lenses have Bolton et al. (2008)'s: the true
    theta_E, q and phi with Gaussian errors of scatter (theta_E fraction, q, phi radians), q kept in (0.2, 1]."""
    d_theta, d_q, d_phi = scatter
    return {"theta_E": float(mass["theta_E"] * (1.0 + d_theta * rng.standard_normal())),
            "q": float(np.clip(mass["q"] + d_q * rng.standard_normal(), 0.2, 1.0)),
            "phi": float(mass["phi"] + d_phi * rng.standard_normal()),
            "note": "an SIE model as a catalogue would give it: the truth with errors of catalog_scatter"}


def mock_config(**settings) -> MockConfig:
    """A checked MockConfig from keyword settings (InputError names an unknown or bad one)."""
    names = {f.name for f in dataclasses.fields(MockConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise InputError(f"unknown mock setting(s) {unknown}; valid ones are {sorted(names)}")
    if "source_grid" in settings:
        grid = settings["source_grid"]
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) != 2:
            raise _fail("source_grid", "a pair [pixels, arcsec per pixel]", grid)
    return _checked(MockConfig(**settings))


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *more]))


# ------------------------------------------------------------------------------------------------ geometry


def _exposure_headers(cfg: MockConfig, rng: np.random.Generator) -> tuple[list[fits.Header], list[dict]]:
    """Per exposure: the WCS header (as read back from a file) and its pointing record.

    CRPIX is the frame centre for every exposure (the distortion is tied to the detector); the pointing CRVAL moves
    so that the lens lands at the frame centre + a common offset of up to 1.5 px + the exposure's dither.
    """
    h, w = cfg.frame
    centre = ((w + 1) / 2.0, (h + 1) / 2.0)  # FITS 1-based (x, y)
    offset = rng.uniform(-1.5, 1.5, size=2)
    orientat = rng.uniform(0.0, 360.0)
    headers, records = [], []
    for e in range(cfg.n_exp):
        base = np.asarray(cfg.dither[e % len(cfg.dither)], dtype=np.float64)
        dither = base + 0.5 * (e // len(cfg.dither))
        roll = orientat + (rng.normal(0.0, cfg.roll_sigma) if e > 0 else 0.0)
        cd = cd_matrix(cfg.pixel_scale, roll)
        # the lens sits at pixel `where`; the pointing is the sky at the frame centre then
        where = (centre[0] + offset[0] + dither[0], centre[1] + offset[1] + dither[1])
        helper = WCS(wcs_header((cfg.ra, cfg.dec), where, cd))
        crval = [float(v) for v in helper.wcs_pix2world([centre], 1)[0]]
        header = roundtrip_header(wcs_header(crval, centre, cd, SIP_COEFFICIENTS if cfg.sip else None))
        headers.append(header)
        records.append({"orientat": float(roll), "dither": [float(v) for v in dither],
                        "crval": [header["CRVAL1"], header["CRVAL2"]], "crpix": [header["CRPIX1"], header["CRPIX2"]]})
    return headers, records


def _lens_light_grid(grids: Sequence[tuple[np.ndarray, np.ndarray]], cfg: MockConfig) -> PixelGrid:
    """A square image-plane grid centred on the lens, at pixel_scale / upsample, covering every exposure's frame."""
    extent = max(max(np.abs(x).max(), np.abs(y).max()) for x, y in grids) + cfg.pixel_scale + 6 * cfg.shift_sigma
    step = cfg.pixel_scale / cfg.upsample
    return PixelGrid(2 * math.ceil(extent / step) + 2, step)


def _apparent_pixel(wcs: WCS, ra0: float, dec0: float, x: float, y: float, shift) -> tuple[float, float]:
    """0-based (row, col) where a point at true lens-frame position (x, y) appears in an exposure: at the pixel
    whose WCS position plus the exposure's shift is (x, y)."""
    ra, dec = tangent_to_sky(x - shift[0], y - shift[1], ra0, dec0)
    row, col = sky_to_pixel(wcs, ra, dec)
    return float(row), float(col)


def _place_stars(cfg: MockConfig, rng: np.random.Generator, wcs_list: Sequence[WCS],
                 cutout_centres: Sequence[tuple[int, int]], shifts: np.ndarray) -> list[dict]:
    """Stars at random sub-pixel positions inside every frame (4 px from its edges), outside every cutout (3 px
    clear of it) and 8 px apart; positions drawn in exposure 0 (its shift is zero, so these are true positions).
    `pixels` records where each star appears in each exposure (its shift included)."""
    h, w = cfg.frame
    margin, clear, apart = 4.0, cfg.cutout / 2 + 3.0, 8.0
    stars: list[dict] = []
    for _ in range(200 * max(cfg.n_stars, 1)):
        if len(stars) == cfg.n_stars:
            break
        row, col = rng.uniform(margin, h - 1 - margin), rng.uniform(margin, w - 1 - margin)
        ra, dec = (float(v) for v in wcs_list[0].all_pix2world([[col, row]], 0)[0])
        pixels = [tuple(float(v) for v in sky_to_pixel(wcs, ra, dec)) for wcs in wcs_list]
        ok = all(margin <= r <= h - 1 - margin and margin <= c <= w - 1 - margin
                 and max(abs(r - cr), abs(c - cc)) > clear
                 for (r, c), (cr, cc) in zip(pixels, cutout_centres, strict=True))
        ok = ok and all(math.hypot(row - s["pixels"][0][0], col - s["pixels"][0][1]) > apart for s in stars)
        if ok:
            x, y = (float(v) for v in tangent_offsets(ra, dec, cfg.ra, cfg.dec))
            flux = math.exp(rng.uniform(*np.log(cfg.star_flux)))
            seen = [list(_apparent_pixel(wcs, cfg.ra, cfg.dec, x, y, shift)) for wcs, shift in zip(wcs_list, shifts,
                                                                                                  strict=True)]
            stars.append({"ra": ra, "dec": dec, "x": x, "y": y, "flux": float(flux), "pixels": seen})
    if len(stars) < cfg.n_stars:
        raise InputError(f"no room for {cfg.n_stars} stars outside the {cfg.cutout}-pixel cutout in a "
                         f"{cfg.frame[0]} x {cfg.frame[1]} frame: enlarge the frame or lower n_stars")
    return stars


# ----------------------------------------------------------------------------------------------- rendering


def _render_stars(wcs_list: Sequence[WCS], meta: Mapping, fine_shape: tuple[int, int]) -> np.ndarray:
    """Stars as images [n_exp, H, W] (electrons), exactly: each star's PSF stamp is drawn at its sub-pixel position
    on the supersampled grid (its apparent position: true position minus the exposure's shift), then binned.

    The stamp is the exposure's PSF (`meta['psf']` settings) moved by the sub-pixel offset, the same function
    that made the PSF array of the truth, so a star is that PSF translated (pixel-integrated, edges cut alike).
    """
    s = meta["upsample"]
    out = np.zeros((len(wcs_list), *fine_shape))
    shifts = np.asarray(meta["shifts"], dtype=np.float64)
    psf_meta = meta["psf"]
    size, half = psf_meta["size"], psf_meta["size"] // 2
    for e, wcs in enumerate(wcs_list):
        for star in meta["stars"]:
            # 0-based detector pixel p -> supersampled pixel (p + 1/2) s - 1/2
            row, col = (v * s + (s - 1) / 2.0 for v in _apparent_pixel(wcs, meta["ra"], meta["dec"], star["x"],
                                                                       star["y"], shifts[e]))
            r0, c0 = round(row), round(col)
            stamp = hst_like_psf(size, psf_meta["pixel_scale"], offset=(row - r0, col - c0),
                                 **psf_meta["per_exposure"][e])
            top, left = r0 - half, c0 - half
            rows = slice(max(top, 0), min(top + size, fine_shape[0]))
            cols = slice(max(left, 0), min(left + size, fine_shape[1]))
            if rows.start < rows.stop and cols.start < cols.stop:
                out[e, rows, cols] += star["flux"] * s * s * stamp[rows.start - top:rows.stop - top,
                                                                   cols.start - left:cols.stop - left]
    return bin_pixels(torch.from_numpy(out), s).numpy()


def render_frames(wcs_list: Sequence[WCS], meta: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Noiseless frames of a mock from its WCSs and truth, in float64.

    Args:
        wcs_list: each exposure's WCS (as in its FITS file).
        meta: truth.json's contents (ra, dec, frame, upsample, mass, shifts, source_grid, lens_light_grid, stars).
        arrays: source [n_s, n_s], lens_light [n_l, n_l] (electrons per detector pixel area), psf [n_exp, K, K]
            (on the supersampled grid, unit sum). Stars are drawn from meta['psf'] settings, which made `psf`.

    Returns:
        lensed_source, lens_light, noiseless (their sum), stars, noiseless_stars (with stars): each [n_exp, H, W].
    """
    h, w = meta["frame"]
    grids = [cutout_grid(wcs, meta["ra"], meta["dec"], (h, w)) for wcs in wcs_list]
    x = torch.from_numpy(np.stack([g[0] for g in grids]))
    y = torch.from_numpy(np.stack([g[1] for g in grids]))
    grid = ExposureGrid.from_detector(x, y, meta["upsample"])
    model = ForwardModel(grid, PixelGrid(**meta["source_grid"]), PixelGrid(**meta["lens_light_grid"]))
    mass = {k: torch.tensor([float(v)], dtype=F64) for k, v in meta["mass"].items()}
    shifts = torch.tensor(meta["shifts"], dtype=F64)[None]
    psf = torch.from_numpy(np.asarray(arrays["psf"], dtype=np.float64))
    with torch.no_grad():
        parts = model.components(mass, shifts, torch.from_numpy(np.asarray(arrays["source"], np.float64))[None],
                                 torch.from_numpy(np.asarray(arrays["lens_light"], np.float64))[None], psf)
    stars = _render_stars(wcs_list, meta, grid.fine_shape)
    lensed, light = parts["source"][0].numpy(), parts["lens_light"][0].numpy()
    noiseless = lensed + light
    return {"lensed_source": lensed, "lens_light": light, "noiseless": noiseless, "stars": stars,
            "noiseless_stars": noiseless + stars, "sky_x": x.numpy(), "sky_y": y.numpy()}


# ------------------------------------------------------------------------------------------------ building


def _source_image_hash(image: np.ndarray | None) -> str | None:
    if image is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(image, dtype="<f8").tobytes() + str(image.shape).encode()).hexdigest()


def _config_hash(cfg: MockConfig, image: np.ndarray | None) -> str:
    text = json.dumps({"format": FORMAT, "version": VERSION, "config": cfg.as_dict(),
                       "source_image": _source_image_hash(image)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def build_mock(cfg: MockConfig, source_image: np.ndarray | None = None) -> tuple[dict, dict, list[fits.HDUList]]:
    """Draw and render a mock in memory.

    Returns:
        meta: the truth.json contents: format, version, config, config_hash, seed, name, ra, dec (degrees; the
            tangent point of the lens frame), z_lens, z_source, mass (DESIGN names), shifts [n_exp][2] (arcsec,
            exposure 0 is zero), frame [H, W], cutout, pixel_scale, upsample, exptime, sky [n_exp], read_noise,
            zeropoint, source_grid and lens_light_grid (PixelGrid fields), lens_light (magnitude, total_flux,
            Sersic components), source (kind, centre, peak_snr, scale, components), psf (settings per exposure),
            stars (ra, dec, x, y: true position; flux; pixels [n_exp][row, col]: where each exposure shows it),
            exposures (file, rootname, orientat, dither, crval, crpix, lens_pixel [row, col] of ra, dec without
            shift, cutout_center [row, col], sky, n_cosmic_rays, n_bad_pixels).
        arrays: truth.npz contents: source [n_s, n_s], lens_light [n_l, n_l], psf [n_exp, K, K]; lensed_source,
            lens_light_image, noiseless, stars, noiseless_stars, cosmic_rays, sky_x, sky_y, each [n_exp, H, W].
        hdulists: the FLT-like files, one per exposure.
    """
    seed = cfg.seed
    h, w = cfg.frame
    mass = scene.draw_mass(_rng(seed, _MASS), cfg.theta_E, cfg.gamma_sigma, cfg.q, cfg.center_max,
                                cfg.gamma_ext_max, cfg.multipole_sigma)

    # exposures' geometry
    headers, pointings = _exposure_headers(cfg, _rng(seed, _POINTING))
    wcs_list = [WCS(hd) for hd in headers]
    lens_pixels, cutout_centres = [], []
    half = cfg.cutout // 2
    for e, wcs in enumerate(wcs_list):
        row, col = (float(v) for v in sky_to_pixel(wcs, cfg.ra, cfg.dec))
        centre = (int(round(row)), int(round(col)))
        if not (centre[0] - half >= 0 and centre[0] - half + cfg.cutout <= h
                and centre[1] - half >= 0 and centre[1] - half + cfg.cutout <= w):
            raise InputError(f"the {cfg.cutout}-pixel cutout around the lens does not fit in the {h} x {w} frame of "
                             f"exposure {e} (lens at pixel {row:.1f}, {col:.1f}): enlarge the frame or shrink dither")
        lens_pixels.append([row, col])
        cutout_centres.append(centre)
    shifts = np.zeros((cfg.n_exp, 2))
    shifts[1:] = _rng(seed, _SHIFTS).normal(0.0, cfg.shift_sigma, size=(cfg.n_exp - 1, 2))

    # lens light on a grid that covers every frame
    grids = [cutout_grid(wcs, cfg.ra, cfg.dec, cfg.frame) for wcs in wcs_list]
    light_grid = _lens_light_grid(grids, cfg)
    rng = _rng(seed, _LENS_LIGHT)
    magnitude = float(rng.uniform(*cfg.lens_mag))
    total_flux = cfg.exptime * 10.0 ** (-0.4 * (magnitude - cfg.zeropoint))
    light_components = scene.draw_lens_light(rng, mass, cfg.n_lens_light, total_flux, cfg.pixel_scale**2)
    lens_light = scene.render_components(light_components, light_grid)

    # source at unit scale
    n_s, s_s = cfg.source_grid
    source_grid = PixelGrid(n_s, s_s)
    drawn = scene.draw_source(_rng(seed, _SOURCE), mass)
    if source_image is None:
        unit_source = scene.render_source(drawn, source_grid)
        source_meta = drawn
    else:
        centre = (drawn["x0"], drawn["y0"])
        unit_source = scene.resample_source_image(source_image, source_grid, centre, cfg.source_image_fov)
        source_meta = {"kind": "image", "x0": centre[0], "y0": centre[1], "image_shape": list(source_image.shape),
                       "image_fov": cfg.source_image_fov, "image_sha256": _source_image_hash(source_image)}
    if not unit_source.max() > 0:
        raise InputError("the source image lands outside the source grid: enlarge source_grid or shrink "
                         "source_image_fov")

    # PSFs, slightly different per exposure
    rng = _rng(seed, _PSF)
    psf_settings = [{"blur_sigma": float(0.018 * rng.uniform(0.9, 1.1)), "ellipticity": float(rng.uniform(0, 0.04)),
                     "ellipticity_angle": float(rng.uniform(0, math.pi)), "halo_fraction": 0.05, "halo_radius": 0.25}
                    for _ in range(cfg.n_exp)]
    psf = np.stack([hst_like_psf(cfg.psf_size, cfg.pixel_scale / cfg.upsample, **p) for p in psf_settings])

    meta = {
        "format": FORMAT, "version": VERSION, "config": cfg.as_dict(), "config_hash": _config_hash(cfg, source_image),
        "seed": seed, "name": cfg.name, "ra": cfg.ra, "dec": cfg.dec, "z_lens": cfg.z_lens, "z_source": cfg.z_source,
        "mass": mass, "catalog": simulated_catalog(mass, cfg.catalog_scatter, _rng(seed, _CATALOG)),
        "shifts": shifts.tolist(), "frame": [h, w], "cutout": cfg.cutout,
        "pixel_scale": cfg.pixel_scale, "upsample": cfg.upsample, "exptime": cfg.exptime,
        "sky": [cfg.sky] * cfg.n_exp, "read_noise": cfg.read_noise, "zeropoint": cfg.zeropoint,
        "source_grid": dataclasses.asdict(source_grid), "lens_light_grid": dataclasses.asdict(light_grid),
        "lens_light": {"magnitude": magnitude, "total_flux": total_flux, "components": light_components},
        "source": source_meta,
        "psf": {"size": cfg.psf_size, "pixel_scale": cfg.pixel_scale / cfg.upsample, "per_exposure": psf_settings},
        "stars": [],
        "units": {"positions": "arcsec, x east and y north of (ra, dec)", "angles": "radians counter-clockwise from +x",
                  "images": "electrons per detector pixel per exposure", "gamma": "power-law slope t, 1 = isothermal",
                  "shifts": "arcsec added to each exposure's WCS sky positions; exposure 0 is the reference"},
    }

    # brightness of the source: the brightest lensed pixel of exposure 0 reaches the drawn signal-to-noise
    unit_frames = render_frames(wcs_list[:1], {**meta, "shifts": meta["shifts"][:1]},
                                {"source": unit_source, "lens_light": lens_light, "psf": psf[:1]})
    target = float(_rng(seed, _BRIGHTNESS).uniform(*cfg.source_snr))
    scale = scene.brightness_scale(unit_frames["lensed_source"], unit_frames["lens_light"] + cfg.sky
                                        + cfg.read_noise**2, target)
    source = unit_source * scale
    meta["source"] = {**source_meta, "peak_snr": target, "scale": scale}
    meta["stars"] = _place_stars(cfg, _rng(seed, _STARS), wcs_list, cutout_centres, shifts)

    arrays = {"source": source, "lens_light": lens_light, "psf": psf}
    frames = render_frames(wcs_list, meta, arrays)

    names = cfg.file_names()
    hdulists, exposures, cosmic = [], [], []
    for e, (wcs_hdr, rootname) in enumerate(zip(headers, cfg.rootnames(), strict=True)):
        shot = expose(_rng(seed, _DETECTOR, e), frames["noiseless_stars"][e], cfg.sky, cfg.read_noise,
                      cfg.cosmic_density, cfg.bad_pixel_fraction)
        cosmic.append(shot["cosmic_rays"].astype(np.float32))
        exposures.append({"file": names[e], "rootname": rootname, **pointings[e], "lens_pixel": lens_pixels[e],
                          "cutout_center": list(cutout_centres[e]), "sky": cfg.sky,
                          "n_cosmic_rays": shot["n_cosmic_rays"], "n_bad_pixels": shot["n_bad_pixels"]})
        primary = {
            "ORIGIN": ("scorelens mock", "simulated; not an HST observation"),
            "TELESCOP": "HST", "INSTRUME": "ACS", "DETECTOR": "WFC", "FILTER1": "CLEAR1L", "FILTER2": "F814W",
            "EXPTIME": (cfg.exptime, "exposure time (s)"), "ROOTNAME": rootname, "FILENAME": names[e],
            "TARGNAME": cfg.name.upper(), "RA_TARG": (cfg.ra, "lens RA (deg)"), "DEC_TARG": (cfg.dec, "lens Dec (deg)"),
            "EXPSTART": (53990.1 + 0.01 * e, "exposure start (MJD)"),
            **{f"READNSE{amp}": (cfg.read_noise, "read noise (electrons)") for amp in "ABCD"},
            "MOCKSEED": (seed, "seed of the mock generator"),
        }
        extra = {"MDRIZSKY": (cfg.sky, "sky level in SCI (electrons per pixel)"),
                 "ORIENTAT": (pointings[e]["orientat"], "position angle of image y axis (deg E of N)"),
                 "CCDCHIP": 1}
        hdulists.append(flt_hdulist(primary, wcs_hdr, shot["sci"], shot["err"], shot["dq"], extra))
    meta["exposures"] = exposures
    meta["files"] = {"exposures": names, "truth_npz": TRUTH_NPZ}

    arrays.update({"lensed_source": frames["lensed_source"].astype(np.float32),
                   "lens_light_image": frames["lens_light"].astype(np.float32),
                   "noiseless": frames["noiseless"], "stars": frames["stars"],
                   "noiseless_stars": frames["noiseless_stars"], "cosmic_rays": np.stack(cosmic),
                   "sky_x": frames["sky_x"], "sky_y": frames["sky_y"]})
    return meta, arrays, hdulists


# ------------------------------------------------------------------------------------------------- writing


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An .npz (numpy.load reads it) with fixed member timestamps, so equal arrays give identical bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def _json_text(meta: Mapping) -> str:
    return json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n"


def _paths(root: Path, names: Sequence[str]) -> MockPaths:
    return MockPaths(root, [root / n for n in names], root / TRUTH_JSON, root / TRUTH_NPZ)


def _existing(root: Path) -> dict | None:
    try:
        meta = json.loads((root / TRUTH_JSON).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise InputError(f"{root / TRUTH_JSON} exists but cannot be read ({err}); remove it or pass overwrite=True") \
            from None
    if not isinstance(meta, dict):
        raise InputError(f"{root / TRUTH_JSON} is not a mock's truth file; remove it or pass overwrite=True")
    return meta


def make_mock(out_dir, *, source_image=None, overwrite: bool = False, **settings) -> MockPaths:
    """Generate a mock lens system and write it into `out_dir` (created if needed).

    Args:
        out_dir: directory for the FLT files and truth files.
        source_image: optional 2-D galaxy image used as the source (resampled so that its longer side spans
            source_image_fov arcsec); else a Sersic disc plus clumps.
        overwrite: replace a different mock already in out_dir (otherwise that is an InputError). A mock with the
            same settings and seed that is complete is kept as it is.
        settings: MockConfig fields (seed, n_exp, frame, cutout, pixel_scale, upsample, exptime, sky, read_noise,
            ...); defaults as in MockConfig and conf/lens/mock.yaml.

    Returns:
        MockPaths of the files.
    """
    cfg = mock_config(**settings)
    image = None if source_image is None else scene.check_source_image(source_image)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(f"mock output {root} exists and is not a directory")
    paths = _paths(root, cfg.file_names())
    try:
        old = _existing(root)
    except InputError:
        if not overwrite:
            raise
        old = {}  # unreadable: replaced
    if old is not None:
        complete = all((root / n).is_file() for n in old.get("files", {}).get("exposures", [])) and \
            (root / TRUTH_NPZ).is_file()
        if old.get("config_hash") == _config_hash(cfg, image) and complete and not overwrite:
            log.info("mock in %s already holds these settings (seed %s): kept", root, cfg.seed)
            return paths
        if not overwrite and complete:
            raise InputError(f"{root} holds a different mock (seed {old.get('seed')}); pass overwrite=True "
                             "(--overwrite) or choose another directory")
    log.info("making mock %s (seed %d, %d exposures of %d x %d pixels) in %s", cfg.name, cfg.seed, cfg.n_exp,
             *cfg.frame, root)
    meta, arrays, hdulists = build_mock(cfg, image)

    root.mkdir(parents=True, exist_ok=True)
    if old is not None:
        # the directory holds no complete mock until the new truth.json lands
        (root / TRUTH_JSON).unlink(missing_ok=True)
        for name in set(old.get("files", {}).get("exposures", [])) - set(cfg.file_names()):
            if (root / name).is_file() and name.endswith("_flt.fits"):
                (root / name).unlink()
    for path, hdul in zip(paths.exposures, hdulists, strict=True):
        atomic_write(path, lambda tmp, hdul=hdul: hdul.writeto(tmp, output_verify="exception"))
    atomic_write(paths.truth_npz, lambda tmp: _write_npz(tmp, arrays))
    text = _json_text(meta)
    atomic_write(paths.truth_json, lambda tmp: tmp.write_text(text))
    log.info("mock written: %s (theta_E %.3f, source peak SNR %.1f)", root, meta["mass"]["theta_E"],
             meta["source"]["peak_snr"])
    return paths


def make_mock_from_config(lens_cfg: Mapping, data_dir, overwrite: bool = False) -> MockPaths:
    """Generate (or keep) the mock that a lens config describes (conf/lens/mock.yaml: name, ra, dec, z_lens,
    z_source and a `mock:` block with `out_dir`, relative to data_dir unless absolute, and MockConfig settings)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(lens_cfg):
            lens_cfg = OmegaConf.to_container(lens_cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    block = dict(lens_cfg.get("mock") or {})
    out = Path(block.pop("out_dir", lens_cfg.get("name", "mock")))
    root = out if out.is_absolute() else Path(data_dir) / out
    top = {k: lens_cfg[k] for k in ("name", "ra", "dec", "z_lens", "z_source") if k in lens_cfg}
    return make_mock(root, overwrite=overwrite, **top, **block)


# ------------------------------------------------------------------------------------------------- reading


def load_truth(root) -> MockTruth:
    """The truth of the mock in directory `root` (InputError if it is not a complete mock)."""
    root = Path(root)
    meta = _existing(root)
    if meta is None or meta.get("format") != FORMAT:
        raise InputError(f"{root} holds no mock lens ({TRUTH_JSON} missing or of another format)")
    if meta.get("version") != VERSION:
        raise InputError(f"{root} holds a mock of format version {meta.get('version')}, this code reads {VERSION}; "
                         "regenerate it with overwrite=True")
    try:
        with np.load(root / TRUTH_NPZ, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {root / TRUTH_NPZ}: {err}") from None
    return MockTruth(root, meta, arrays)


def read_wcs(path) -> WCS:
    """The WCS of an FLT file's SCI extension (SIP included), as any reader of the file gets it."""
    with fits.open(path) as hdul:
        return WCS(hdul["SCI"].header, hdul)


def render_truth(root) -> dict[str, np.ndarray]:
    """Rebuild a mock's noiseless frames from its truth files and the WCS in its FITS files alone.

    Returns:
        The dict of `render_frames` (lensed_source, lens_light, noiseless, stars, noiseless_stars, sky_x, sky_y;
        each [n_exp, H, W], float64), equal to the stored frames to float64 round-off.
    """
    truth = load_truth(root)
    wcs_list = [read_wcs(p) for p in truth.exposure_paths()]
    return render_frames(wcs_list, truth.meta, truth.arrays)
