"""The settings of a mock lens system (`MockConfig`), their checks, and the hash that identifies a mock's files.

`mock_config(**settings)` is the one way in: it refuses unknown settings and checks every value, so a bad value in
conf/lens/mock.yaml's `mock:` block is one `InputError` line naming it. The config hash (`config_hash`) covers the
settings and a given source image; a mock folder whose truth.json carries the same hash holds this mock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import InputError

FORMAT = "scorelens-mock"
VERSION = 1


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
    n_exp: int = 4
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


def source_image_hash(image: np.ndarray | None) -> str | None:
    """SHA-256 (hex) of a given source image's float64 pixels and shape; None without one."""
    if image is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(image, dtype="<f8").tobytes() + str(image.shape).encode()).hexdigest()


def config_hash(cfg: MockConfig, image: np.ndarray | None) -> str:
    """SHA-256 (hex) of a mock's format, version, settings and source image: equal hashes, equal files."""
    text = json.dumps({"format": FORMAT, "version": VERSION, "config": cfg.as_dict(),
                       "source_image": source_image_hash(image)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()

