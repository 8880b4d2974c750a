"""Mock co-added lens images rendered by lenstronomy, an independent code: the judge of our own forward model.

The project's own mocks (`mock.py`) are rendered by `scorelens.lensing.forward.ForwardModel`, the same code the
sampler fits with; a model error would then be invisible. Here lenstronomy renders the lens instead: its EPL +
SHEAR + MULTIPOLE (m = 3, 4) mass, Sersic lens light and a real galaxy image as the source (its `INTERPOL`
profile), convolved with a given PSF, as one drizzled-like co-add in e-/s with a 1-sigma noise map. The files are
what `conf/lens/fits.yaml` reads:

    image.fits, noise_map.fits, psf.fits, truth.json      (truth.json last: it marks a complete mock)

Frame: no WCS; the lens frame's origin (x east, y north, arcsec) is the centre pixel (H // 2, W // 2), north up
and east left, as `scorelens.data.observations.coadd` assumes without a WCS. Truth mass parameters in truth.json
use DESIGN.md's names (gamma is the slope t, lenstronomy's gamma - 1; a_m is lenstronomy's a_m / theta_E).

lenstronomy is a dev dependency (`pip install -e ".[dev]"`); it is imported only when a mock is made.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from ...atomic import atomic_write, atomic_write_text
from ...errors import InputError
from . import scene

FORMAT = "scorelens-lenstronomy-coadd"


@dataclass(frozen=True)
class CoaddMockSettings:
    """What a co-add mock draws from. Units: size pixels per side; pixel_scale arcsec; exptime seconds (of the
    whole co-add); background_rms e-/s per pixel (sky and read noise together, Gaussian); zeropoint AB magnitude
    of 1 e-/s; lens_mag the lens light's AB magnitude within the image; source_snr the range of the brightest
    lensed-source pixel's signal-to-noise; source_size the range of the source galaxy's flux-weighted rms radius
    (arcsec); source_offset the source centre's distance from the lens centre (fractions of theta_E); the mass
    ranges as in `scene.draw_mass`; supersampling sub-pixels per pixel side in lenstronomy's rendering."""

    size: int = 100
    pixel_scale: float = 0.05
    exptime: float = 2200.0
    background_rms: float = 0.006
    zeropoint: float = 25.94
    lens_mag: tuple[float, float] = (17.0, 18.0)
    n_lens_light: tuple[int, int] = (1, 3)
    source_snr: tuple[float, float] = (20.0, 50.0)
    source_size: tuple[float, float] = (0.1, 0.3)
    source_offset: tuple[float, float] = (0.02, 0.3)
    theta_E: tuple[float, float] = (0.8, 1.8)
    gamma_sigma: float = 0.1
    q: tuple[float, float] = (0.5, 0.95)
    center_max: float = 0.05
    gamma_ext_max: float = 0.08
    multipole_sigma: float = 0.005
    supersampling: int = 5


def lenstronomy_mass(p: dict) -> tuple[list[str], list[dict]]:
    """DESIGN.md mass parameters -> lenstronomy's lens model list and kwargs (EPL, SHEAR, MULTIPOLE m = 3, 4)."""
    from lenstronomy.Util import param_util

    e1, e2 = param_util.phi_q2_ellipticity(p["phi"], p["q"])
    g1, g2 = param_util.shear_polar2cartesian(p["phi_ext"], p["gamma_ext"])
    centre = {"center_x": p["x0"], "center_y": p["y0"]}
    kwargs = [{"theta_E": p["theta_E"], "gamma": p["gamma"] + 1.0, "e1": e1, "e2": e2, **centre},
              {"gamma1": g1, "gamma2": g2},
              {"m": 3, "a_m": p["a3"] * p["theta_E"], "phi_m": p["phi3"], **centre},
              {"m": 4, "a_m": p["a4"] * p["theta_E"], "phi_m": p["phi4"], **centre}]
    return ["EPL", "SHEAR", "MULTIPOLE", "MULTIPOLE"], kwargs


def prepare_galaxy(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A galaxy stamp made ready as a source: sky (the border's median) subtracted, negatives clipped, shifted so
    that its flux-weighted centroid is the middle, and its flux-weighted rms radius in stamp pixels.

    Returns:
        (stamp [h, w] float64 >= 0, rms radius in pixels).
    """
    a = scene.check_source_image(image)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    a = np.clip(a - np.median(border), 0.0, None)
    if not a.sum() > 0:
        raise InputError("a source galaxy stamp has no light above its border's median")
    rows, cols = np.indices(a.shape, dtype=np.float64)
    w = a / a.sum()
    rc, cc = float((w * rows).sum()), float((w * cols).sum())
    a = np.clip(ndimage.shift(a, ((a.shape[0] - 1) / 2 - rc, (a.shape[1] - 1) / 2 - cc), order=1), 0.0, None)
    w = a / a.sum()
    r2 = (w * ((rows - (a.shape[0] - 1) / 2) ** 2 + (cols - (a.shape[1] - 1) / 2) ** 2)).sum()
    return a, float(math.sqrt(r2))


def check_psf(psf: np.ndarray) -> np.ndarray:
    """The PSF kernel as float64, odd-sided, of unit sum (InputError otherwise)."""
    k = np.asarray(psf, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 or not np.isfinite(k).all():
        raise InputError(f"the mock's PSF must be a finite, odd-sided square kernel, got shape {k.shape}")
    return k / k.sum()


def read_galaxies(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Galaxy stamps from files: every 2-D image HDU of a FITS file, or an HDF5 file's `images` [n, h, w]."""
    import h5py

    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError(f"galaxy file {path} does not exist")
        try:
            if path.suffix.lower() in (".h5", ".hdf5"):
                with h5py.File(path, "r") as f:
                    if "images" not in f:
                        raise InputError(f"{path}: no dataset 'images' [n, h, w] of galaxy stamps")
                    out += [np.asarray(g, dtype=np.float64) for g in f["images"][:]]
            else:
                with fits.open(path) as hdul:
                    out += [np.asarray(h.data, dtype=np.float64) for h in hdul
                            if getattr(h, "is_image", False) and h.data is not None and h.data.ndim == 2]
        except OSError as err:
            raise InputError(f"{path}: not a readable FITS or HDF5 file ({err})") from None
    if not out:
        raise InputError(f"no 2-D galaxy image in {', '.join(map(str, paths))}")
    return out


def read_psf(path: str | Path, half: int = 20) -> np.ndarray:
    """A PSF image from a FITS file, cut to (2 half + 1)^2 pixels about its brightest pixel, of unit sum."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"PSF file {path} does not exist")
    p = np.asarray(fits.getdata(path), dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all():
        raise InputError(f"{path}: the PSF must be one finite 2-D image, got shape {p.shape}")
    r, c = np.unravel_index(np.argmax(p), p.shape)
    half = min(half, r, c, p.shape[0] - 1 - r, p.shape[1] - 1 - c)
    if half < 1:
        raise InputError(f"{path}: the PSF's peak lies on its edge")
    k = p[r - half:r + half + 1, c - half:c + half + 1]
    return k / k.sum()


def _image_model(settings: CoaddMockSettings, psf: np.ndarray, lens_models: list[str], n_light: int):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    n, s = settings.size, settings.pixel_scale
    # x = -(col - n // 2) s, y = (row - n // 2) s: the frame coadd.py assumes for an image without a WCS
    data = ImageData(image_data=np.zeros((n, n)), ra_at_xy_0=(n // 2) * s, dec_at_xy_0=-(n // 2) * s,
                     transform_pix2angle=np.array([[-s, 0.0], [0.0, s]]))
    return ImageModel(data, PSF(psf_type="PIXEL", kernel_point_source=psf), lens_model_class=LensModel(lens_models),
                      source_model_class=LightModel(["INTERPOL"]),
                      lens_light_model_class=LightModel(["SERSIC_ELLIPSE"] * n_light),
                      kwargs_numerics={"supersampling_factor": settings.supersampling})


def render(seed: int, galaxies: Sequence[np.ndarray], psf: np.ndarray,
           settings: CoaddMockSettings = CoaddMockSettings()) -> tuple[dict[str, np.ndarray], dict]:
    """Draw and render one co-add mock in memory.

    Args:
        seed: the random seed (everything drawn follows from it).
        galaxies: real galaxy stamps to choose the source from (any pixel scale: each is rescaled to a drawn size).
        psf: the PSF kernel at the image's pixel scale, odd-sided.
        settings: what to draw from.

    Returns:
        ({"image", "noise_map", "model" (noiseless), "lens_light", "lensed_source": [size, size] e-/s,
        "psf": the kernel}, truth dict).
    """
    from lenstronomy.Util import param_util

    if not galaxies:
        raise InputError("a co-add mock needs at least one source galaxy stamp")
    psf = check_psf(psf)
    rng = np.random.default_rng(seed)
    st = settings
    mass = scene.draw_mass(rng, st.theta_E, st.gamma_sigma, st.q, st.center_max, st.gamma_ext_max,
                           st.multipole_sigma)
    lens_flux = 10.0 ** (-0.4 * (rng.uniform(*st.lens_mag) - st.zeropoint))  # e-/s
    comps = scene.draw_lens_light(rng, mass, st.n_lens_light, lens_flux, st.pixel_scale ** 2)
    index = int(rng.integers(len(galaxies)))
    stamp, rms_px = prepare_galaxy(galaxies[index])
    size = float(rng.uniform(*st.source_size))
    offset, angle = rng.uniform(*st.source_offset) * mass["theta_E"], rng.uniform(0.0, 2.0 * math.pi)
    src = {"center_x": mass["x0"] + offset * math.cos(angle), "center_y": mass["y0"] + offset * math.sin(angle),
           "phi_G": float(rng.uniform(0.0, 2.0 * math.pi)), "scale": size / rms_px}
    snr = float(rng.uniform(*st.source_snr))

    lens_models, kw_lens = lenstronomy_mass(mass)
    model = _image_model(st, psf, lens_models, len(comps))
    kw_light = []
    for c in comps:
        e1, e2 = param_util.phi_q2_ellipticity(c["phi"], c["q"])
        kw_light.append({"amp": c["amplitude"], "R_sersic": c["r_eff"], "n_sersic": c["n"], "e1": e1, "e2": e2,
                         "center_x": c["x0"], "center_y": c["y0"]})
    kw_source = [{"image": stamp, "amp": 1.0, **src}]
    light = model.image(kwargs_lens=kw_lens, kwargs_lens_light=kw_light, source_add=False, lens_light_add=True)
    light *= lens_flux / light.sum()  # the magnitude is the light within the image
    unit = model.image(kwargs_lens=kw_lens, kwargs_source=kw_source, source_add=True, lens_light_add=False)
    if not unit.max() > 0:
        raise InputError(f"seed {seed}: the lensed source falls outside the image")
    t = st.exptime
    # signal-to-noise in counts: c u t / sqrt(c u t + L t + (rms t)^2)
    c = scene.brightness_scale(unit * t, light * t + (st.background_rms * t) ** 2, snr)
    lensed = c * unit
    clean = light + lensed
    counts = rng.poisson(np.clip(clean, 0.0, None) * t).astype(np.float64)
    image = counts / t + rng.normal(0.0, st.background_rms, clean.shape)
    noise = np.sqrt(st.background_rms ** 2 + np.clip(clean, 0.0, None) / t)
    truth = {"format": FORMAT, "seed": seed, "mass": mass, "settings": dataclasses.asdict(st),
             "lens_light": comps, "lens_flux": lens_flux,
             "source": {"galaxy": index, "rms_radius": size, "snr": snr, "amp": c, **src},
             "units": "e-/s per pixel", "frame": "lens at pixel (H // 2, W // 2), north up, east left, no WCS"}
    return {"image": image, "noise_map": noise, "model": clean, "lens_light": light, "lensed_source": lensed,
            "psf": psf}, truth


def _write_fits(path: Path, data: np.ndarray, header: dict) -> None:
    hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float64))
    for k, v in header.items():
        hdu.header[k] = v
    atomic_write(path, lambda tmp: hdu.writeto(tmp, output_verify="exception"))


def make_coadd_mock(out_dir, seed: int, galaxies: Sequence[np.ndarray], psf: np.ndarray,
                    settings: CoaddMockSettings = CoaddMockSettings()) -> Path:
    """Render a co-add mock (`render`) and write it to `out_dir`; a complete mock of the same seed and settings
    already there is kept. Returns out_dir."""
    root = Path(out_dir)
    truth_path = root / "truth.json"
    if truth_path.is_file():
        try:
            old = json.loads(truth_path.read_text())
        except ValueError:
            old = {}
        if old.get("seed") == seed and old.get("settings") == json.loads(json.dumps(dataclasses.asdict(settings))) \
                and all((root / f).is_file() for f in ("image.fits", "noise_map.fits", "psf.fits")):
            return root
    arrays, truth = render(seed, galaxies, psf, settings)
    head = {"BUNIT": "ELECTRONS/S", "PIXSCALE": (settings.pixel_scale, "arcsec per pixel"),
            "ORIGIN": "scorelens lenstronomy_coadd"}
    _write_fits(root / "image.fits", arrays["image"], {**head, "EXPTIME": settings.exptime})
    _write_fits(root / "noise_map.fits", arrays["noise_map"], head)
    _write_fits(root / "psf.fits", arrays["psf"], {"PIXSCALE": settings.pixel_scale})
    atomic_write_text(truth_path, json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return root
