"""PSFs of the exposures for the sampler: the fixed ones (given, or ePSFs built from stars) and, with a PSF prior,
the PSF step's model (`psf.step.PSFModel`): its groups, stars, operators and kernel maps."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ...data.observations.exposure_set import ExposureSet
from ...data.psf.epsf import build_epsf, effective_psf_kernel, kernel_offsets
from ...data.psf.stars import StarStamps, find_settings, find_stars_in_flt
from ...errors import InputError
from ...lensing.geometry import ModelGeometry
from ...priors.checkpoint import load_prior
from ..posterior_sde import FluxMap
from .stars import RESPONSES, KernelMap, StarList, fit_stars, given_psf_star, psf_rows
from .step import PSFModel, PSFStep, check_psf_prior_scale

log = logging.getLogger(__name__)


@dataclass
class PSFData:
    """The PSFs of the exposures before sampling.

    kernels: [n_exp, K, K] effective-PSF kernels on the model's sub-pixel grid (K = geometry.psf_size).
    sources: per exposure, ("own", StarStamps, ePSF, oversampling) when it has enough stars of its own,
        ("pooled", StarStamps, ePSF, oversampling) when it shares the ePSF of all stars (its own few stars kept),
        ("given", None, PSF, oversampling) for a given PSF.
    pooled: the stars of all exposures together (StarStamps) when some exposure shares them, else None.
    """

    kernels: np.ndarray
    sources: list[tuple]
    pooled: object = None


def exposure_psfs(data: ExposureSet, geometry: ModelGeometry, psf_cfg: Mapping, find: Mapping) -> PSFData:
    """Effective-PSF kernels of the exposures and where each came from.

    A given PSF (co-adds) is used as it is. Otherwise the stars of each exposure's file give its ePSF; exposures
    with fewer than `psf_cfg["min_stars"]` stars share one ePSF from the stars of all exposures.
    """
    over = int(psf_cfg["epsf_oversampling"])
    size = 2 * (geometry.psf_size * over // (2 * geometry.upsample)) + 1  # ePSF pixels spanning the kernel
    star_settings = find_settings(find)
    stamps, sources = {}, {}
    for e in data.exposures:
        if e.psf is not None:
            sources[e.name] = ("given", None, e.psf, e.psf_oversampling)
            continue
        if e.path is None:
            raise InputError(f"exposure {e.name}: no PSF given and no file to find stars in")
        found = [st for _, st in find_stars_in_flt(e.path, data.ra, data.dec, settings=star_settings)]
        stamps[e.name] = StarStamps.concatenate(found, star_settings["stamp_size"])
    pooled = pooled_epsf = None
    for e in data.exposures:
        if e.name in sources:
            continue
        own = stamps[e.name]
        if len(own.data) >= psf_cfg["min_stars"]:
            sources[e.name] = ("own", own, build_epsf(own, oversampling=over, size=size), over)
            log.info("%s: ePSF from its %d stars", e.name, len(own.data))
            continue
        if pooled is None:
            pooled = StarStamps.concatenate(list(stamps.values()), star_settings["stamp_size"])
            if len(pooled.data) < psf_cfg["min_stars_pooled"]:
                raise InputError(f"{data.name}: {len(pooled.data)} usable stars in all exposures together, "
                                 f"fewer than {psf_cfg['min_stars_pooled']}; give a PSF or loosen stars.find")
            pooled_epsf = build_epsf(pooled, oversampling=over, size=size)
            log.info("one ePSF from the %d stars of all exposures", len(pooled.data))
        sources[e.name] = ("pooled", own, pooled_epsf, over)
    ordered = [sources[e.name] for e in data.exposures]
    kernels = np.stack([effective_psf_kernel(src[2], src[3], geometry.upsample, geometry.psf_size)
                        for src in ordered])
    return PSFData(kernels, ordered, pooled)


def psf_model(cfg: Mapping, psfs: PSFData, data: ExposureSet, geometry: ModelGeometry, prior_path, device, dtype
              ) -> PSFModel | None:
    """The PSF step's model (`psf.step.PSFModel`), or None when the PSFs stay fixed (`psf.sample`); prior_path:
    `priors.psf.path` resolved (None when not set)."""
    pcfg = (cfg["priors"].get("psf") or {})
    want = str(cfg["psf"].get("sample", "auto")).lower()
    if want not in ("auto", "true", "false"):
        raise InputError(f"psf.sample must be auto, true or false, got {want!r}")
    if want == "false" or (want == "auto" and pcfg.get("path") is None):
        return None
    if pcfg.get("path") is None:
        raise InputError("psf.sample=true needs a PSF prior: set priors.psf.path")
    given = str(cfg["psf"].get("given", "fixed")).lower()
    if given not in ("fixed", "sample"):
        raise InputError(f"psf.given must be fixed or sample, got {given!r}")
    if pcfg.get("pixel_scale") is None:
        raise InputError("priors.psf.pixel_scale (arcsec per PSF prior pixel) is required to sample PSFs")
    response = pcfg.get("response", "effective")
    if response not in RESPONSES:
        raise InputError(f"priors.psf.response must be one of {RESPONSES}, got {response!r}")
    prior = load_prior(prior_path, kind="psf", map_location=device).to(dtype)
    n = int(prior.net.config["resolution"])
    scale = float(pcfg["pixel_scale"])
    check_psf_prior_scale(scale, [e.pixel_scale for e in data.exposures], n)

    lists, group = psf_groups(cfg["psf"], psfs, data, given)
    if not lists:
        log.info("no PSF to sample (given PSFs kept fixed: psf.given=fixed)")
        return None

    stars = StarList.concatenate([s for s, _ in lists])
    star_group = np.concatenate([np.full(len(s), g) for g, (s, _) in enumerate(lists)])
    star_over = np.concatenate([np.full(len(s), det / scale) for s, det in lists])
    s = geometry.upsample
    offsets = kernel_offsets(geometry.psf_size, s)
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    krows = as_t(np.stack([psf_rows(offsets, n, e.pixel_scale / scale, response, 1.0 / s)
                           for e in data.exposures]))
    kernels = KernelMap(krows, torch.as_tensor(group, device=device), as_t(psfs.kernels))
    norm = prior.norm
    settings = PSFStep.from_config(cfg["sampler"].get("psf"), cfg["sampler"].get("sde"))
    log.info("PSF prior %s (%d pixels of %.4g arcsec, %s); %d PSF group(s), %d stars", pcfg["path"], n, scale,
             response, len(lists), len(stars))
    model = PSFModel(prior, FluxMap(float(norm.scale), float(norm.offset)), stars, star_group, len(lists), star_over,
                     response, kernels, settings, dtype=dtype, device=device)
    rounds = int(cfg["psf"].get("refine_rounds", 2))
    if rounds and stars.measured.any():
        gen = torch.Generator(device=device).manual_seed(int(cfg.get("seed", 0)) + 7919)
        model.refine_stars(gen, rounds=rounds)
    return model


def psf_groups(psf_cfg: Mapping, psfs: PSFData, data: ExposureSet, given: str) -> tuple[list, list[int]]:
    """The PSF groups: [(StarList, detector pixel scale)] and each exposure's group (-1: kept fixed).

    An exposure with at least `min_stars_sampled` stars of its own has its own P (even one bright star constrains
    P, with the prior's help); exposures without share the P of all exposures' stars; a given PSF is a group of its
    own (a pseudo-star) with `given: sample`, else kept fixed.
    """
    min_own = int(psf_cfg.get("min_stars_sampled", 1))
    keys, lists, group = {}, [], []
    for e, (kind, stamps, epsf, over) in zip(data.exposures, psfs.sources, strict=True):
        if kind == "given" and given == "fixed":
            group.append(-1)
            continue
        own = stamps is not None and len(stamps.data) >= min_own
        key = e.name if (own or kind == "given") else "pooled"
        if key not in keys:
            if kind == "given":
                stars = given_psf_star(epsf, over, float(psf_cfg.get("given_noise", 0.01)))
            else:
                stars = fit_stars(stamps if own else psfs.pooled, epsf, over)
                if len(stars) == 0:
                    raise InputError(f"{e.name}: no star could be fitted for the PSF step; set psf.sample=false")
            log.info("PSF group %d (%s): %d star(s)", len(lists), key, len(stars))
            keys[key] = len(lists)
            lists.append((stars, e.pixel_scale))
        group.append(keys[key])
    return lists, group
