"""From a composed infer config to a sampling `Problem`: data, model geometry, PSFs, priors and flux maps.

PSFs (`scorelens.data.psf.exposure_psfs`): a co-add's given PSF, or one ePSF per exposure built from its stars;
both are effective PSFs (they include the pixel response), so the forward model runs with detector="sample" and the
kernel is the ePSF point-sampled at the model's sub-pixels (`scorelens.data.psf.epsf.effective_psf_kernel`). With a
PSF prior, the PSF step's model (`psf/setup.py`) replaces them by each chain's own draws.

Flux maps: each prior works in its own network units; `flux.<kind>.scale` is the data's units per network unit.
`auto` takes a robust peak of the data (the `flux.peak_percentile` percentile of the usable pixels) divided by
`flux.<kind>.net_peak`, the peak a typical image has in the prior's network units.

Source grid: `lensing.source.pixel_scale`, unless the lens config gives `source_fov` (arcsec across the grid, or
`auto`: SOURCE_FOV_FRACTION of the cutout's width). `auto` reads the image, not the start finder's Einstein radius:
the grid is built before the finder runs (the finder draws its source onto it), and a resumed run, which does not
run the finder, must build the same grid. Why a half: an isothermal lens maps image radius r to source radius
|r - theta_E|, so with the arcs about half-way out (theta_E ~ R / 2 of a cutout of half width R) every pixel of the
cutout lands within R / 2 of the centre, a square half the cutout's width.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..data.observations.exposure_set import ExposureSet
from ..data.observations.lens import load_lens
from ..data.psf.exposure_psfs import exposure_psfs
from ..errors import InputError
from ..lensing.forward import ForwardModel
from ..lensing.geometry import ModelGeometry
from ..lensing.grid import ExposureGrid
from ..priors.checkpoint import load_prior
from .gibbs import Problem
from .likelihood import GaussianLikelihood
from .parameters import ParameterSpace
from .posterior_sde import FluxMap
from .psf.setup import psf_model

log = logging.getLogger(__name__)

SOURCE_FOV_FRACTION = 0.5  # source grid width / cutout width for `lens.source_fov: auto` (module docstring)


def resolve(path: str | Path, root: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def lens_data_dir(cfg: Mapping, root: str | Path) -> Path:
    """The folder a lens's relative file paths start from: `lens.data_dir` (conf/lens/fits.yaml: the folder the
    command runs in), else `paths.data_dir`; either relative to `root`."""
    return resolve(cfg["lens"].get("data_dir") or cfg["paths"]["data_dir"], root)


def source_pixel_scale(lens: Mapping, source: Mapping, data: ExposureSet) -> float:
    """The source grid's pixel scale (arcsec): `lens.source_fov` (a width in arcsec, or auto: SOURCE_FOV_FRACTION
    of the widest exposure's width) over `source.n` pixels, else `source.pixel_scale` (conf/lensing) as set."""
    fov = lens.get("source_fov")
    if fov is None:
        return float(source["pixel_scale"])
    if fov == "auto":
        width = max(max(e.shape) * e.pixel_scale for e in data.exposures)
        fov = SOURCE_FOV_FRACTION * width
        log.info("source grid %.3f arcsec across (lens.source_fov: auto, %.2g of the %.3f-arcsec cutout)", fov,
                 SOURCE_FOV_FRACTION, width)
    return float(fov) / int(source["n"])


def auto_flux(data: ExposureSet, percentile: float, net_peak: float) -> float:
    """Data units per network unit: a robust peak of the usable pixels over the prior's typical network peak."""
    vals = np.concatenate([e.data[e.mask] for e in data.exposures])
    return float(max(np.percentile(vals, percentile), 1e-12) / net_peak)


def fetch_exposures(cfg: Mapping, root: str | Path) -> None:
    """With `observations.mast.fetch`, download from MAST the FLT files a lens config names by rootnames that are
    not in place yet (a SLACS lens's first run); says so in the log."""
    from ..data.observations.mast import download, missing
    from .config import is_mock

    lens, mast = cfg["lens"], cfg["observations"].get("mast") or {}
    if not mast.get("fetch") or not lens.get("rootnames") or not lens.get("exposures") or is_mock(lens):
        return  # a mock's files are simulated on first use, not fetched
    data_dir = lens_data_dir(cfg, root)
    todo = missing(lens, data_dir, "flt")
    if todo:
        log.info("%d of %s's exposures are not in %s: fetching them from MAST (observations.mast.fetch=false "
                 "turns this off)", len(todo), lens["name"], todo[0][1].parent)
        download(lens, data_dir, "flt", mast["download_url"])


def build_problem(cfg: Mapping, root: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> tuple[Problem, ExposureSet, ModelGeometry]:
    """Everything the sampler needs, from the composed infer config (paths relative to `root`)."""
    obs = cfg["observations"]
    fetch_exposures(cfg, root)
    data = load_lens(cfg["lens"], lens_data_dir(cfg, root), size=obs["cutout"], dq_bad_bits=obs["dq_bad_bits"],
                     sky=obs["sky"])
    scales = {round(e.pixel_scale, 6) for e in data.exposures}
    stacked = data.stacked()
    det_scale = float(np.mean([e.pixel_scale for e in data.exposures]))
    footprint = float(max(np.abs(stacked["x"]).max(), np.abs(stacked["y"]).max())) + det_scale / 2
    source = {**cfg["lensing"]["source"],
              "pixel_scale": source_pixel_scale(cfg["lens"], cfg["lensing"]["source"], data)}
    geometry = ModelGeometry.from_config({**cfg["lensing"], "source": source}, det_scale, footprint=footprint)
    as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    grid = ExposureGrid.from_detector(as_t(stacked["x"]), as_t(stacked["y"]), geometry.upsample)
    model = ForwardModel(grid, geometry.source, geometry.lens_light, n_terms=geometry.n_terms, detector="sample",
                         margin=geometry.margin)
    likelihood = GaussianLikelihood(as_t(stacked["data"]), as_t(stacked["variance"]),
                                    torch.as_tensor(stacked["mask"], device=device))
    psfs = exposure_psfs(data, geometry, cfg["psf"], cfg["stars"]["find"])
    psf = as_t(psfs.kernels)
    log.info("%s: %d exposure(s) of %s pixels at %s arcsec; model upsample %d, PSF %d, rays %d pixels beyond "
             "the edges; lens light %d x %.4f arcsec", data.name, len(data), data.exposures[0].shape, sorted(scales),
             geometry.upsample, geometry.psf_size, geometry.margin, geometry.lens_light.n,
             geometry.lens_light.pixel_scale)

    s = cfg["sampler"]
    half = 0.5 * max(data.exposures[0].shape) * min(e.pixel_scale for e in data.exposures)  # arcsec
    space = ParameterSpace(s["parameters"], len(data), shift_max=s["shifts"]["max"] or half,
                           shift_scale=s["shifts"]["scale"], fix_first_shift=s["shifts"]["fix_first"])
    priors, flux = {}, {}
    for kind, grid_ in (("source", geometry.source), ("lens_light", geometry.lens_light)):
        pcfg = cfg["priors"].get(kind)
        if pcfg is None or pcfg.get("path") is None:
            priors[kind] = None
            continue
        prior = load_prior(resolve(pcfg["path"], root), kind=kind, image_size=grid_.n, map_location=device)
        priors[kind] = prior.to(dtype).accelerate(**cfg["sampler"]["network"])
        fcfg = cfg["flux"][kind]
        scale = fcfg["scale"]
        if scale == "auto":
            scale = auto_flux(data, cfg["flux"]["peak_percentile"], fcfg["net_peak"])
        flux[kind] = FluxMap(float(scale))
        log.info("%s prior %s; flux scale %.4g data units per network unit", kind, pcfg["path"], flux[kind].scale)
    if priors.get("source") is None:
        raise InputError("priors.source.path is required: the source is sampled with its score prior")
    psf_path = (cfg["priors"].get("psf") or {}).get("path")
    psf_step = psf_model(cfg, psfs, data, geometry, None if psf_path is None else resolve(psf_path, root), device,
                         dtype)
    return Problem(model, likelihood, space, priors, flux, psf, psf_step), data, geometry
