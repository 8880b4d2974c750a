"""A mock lens system drawn and rendered in memory (`build_mock`): the exposures' pointings and WCSs, the scene
(mass, lens light, source, stars), the noiseless frames (`render_frames`) and the detector's noise and artefacts.

Randomness: each part draws from its own stream, numpy SeedSequence([seed, stream]), so changing one part of the
settings leaves the others' draws as they were. Noiseless frames come from the project's forward model
(`scorelens.lensing.forward.ForwardModel`, float64) on the per-pixel sky grid of each WCS, so the truth files plus
the FITS headers reproduce them exactly (`mock.render_truth`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from astropy.io import fits
from astropy.wcs import WCS

from ...errors import InputError
from ...lensing.binning import bin_pixels
from ...lensing.forward import ForwardModel
from ...lensing.grid import ExposureGrid, PixelGrid
from ..observations.sky_grid import cutout_grid, sky_to_pixel, tangent_offsets, tangent_to_sky
from . import scene
from .detector import expose
from .flt_files import cd_matrix, flt_hdulist, roundtrip_header, wcs_header
from .hst_psf import hst_like_psf
from .mock_config import FORMAT, VERSION, MockConfig, config_hash, source_image_hash

F64 = torch.float64
TRUTH_NPZ = "truth.npz"


# The mock detector's geometric distortion (SIP, pixels, about the frame centre): ~0.1 px at 100 px from it.
SIP_COEFFICIENTS = {
    "A": {(2, 0): 1.2e-5, (1, 1): -6.0e-6, (0, 2): 4.0e-6, (3, 0): 2.0e-9},
    "B": {(2, 0): -3.0e-6, (1, 1): 9.0e-6, (0, 2): -5.0e-6, (0, 3): 1.5e-9},
}

# Independent random streams (numpy SeedSequence([seed, stream])): changing one part leaves the others as they were.
_MASS, _LENS_LIGHT, _SOURCE, _PSF, _POINTING, _SHIFTS, _STARS, _BRIGHTNESS, _DETECTOR, _CATALOG = range(10)


def simulated_catalog(mass: Mapping, scatter, rng: np.random.Generator) -> dict:
    """What a published SIE model of the mock would say, as SLACS lenses have Bolton et al. (2008)'s: the true
    theta_E, q and phi with Gaussian errors of scatter (theta_E fraction, q, phi radians), q kept in (0.2, 1]."""
    d_theta, d_q, d_phi = scatter
    return {"theta_E": float(mass["theta_E"] * (1.0 + d_theta * rng.standard_normal())),
            "q": float(np.clip(mass["q"] + d_q * rng.standard_normal(), 0.2, 1.0)),
            "phi": float(mass["phi"] + d_phi * rng.standard_normal()),
            "note": "an SIE model as a catalogue would give it: the truth with errors of catalog_scatter"}


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
                       "image_fov": cfg.source_image_fov, "image_sha256": source_image_hash(source_image)}
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
        "format": FORMAT, "version": VERSION, "config": cfg.as_dict(), "config_hash": config_hash(cfg, source_image),
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

