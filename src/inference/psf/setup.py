"""The PSF step's model (`psf.step.PSFModel`) from the exposures' PSFs (`scorelens.data.psf.exposure_psfs`): its
groups, stars, operators and kernel maps."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from ...data.observations.exposure_set import ExposureSet
from ...data.psf.epsf import kernel_offsets
from ...data.psf.exposure_psfs import LensPSFs, PSFKind
from ...errors import InputError
from ...lensing.geometry import ModelGeometry
from ...priors.checkpoint import load_prior
from ..posterior_sde import FluxMap
from .stars import RESPONSES, KernelMap, StarList, fit_stars, given_psf_star, psf_rows
from .step import PSFModel, PSFStep, check_psf_prior_scale

log = logging.getLogger(__name__)


def psf_model(cfg: Mapping, psfs: LensPSFs, data: ExposureSet, geometry: ModelGeometry, prior_path, device, dtype
              ) -> PSFModel | None:
    """The PSF step's model (`psf.step.PSFModel`), or None when the PSFs stay fixed (`psf.sample`); prior_path:
    `priors.psf.path` resolved (None when not set)."""
    pcfg = (cfg["priors"].get("psf") or {})
    want = str(cfg["psf"]["sample"]).lower()
    if want not in ("auto", "true", "false"):
        raise InputError(f"psf.sample must be auto, true or false, got {want!r}")
    if want == "false" or (want == "auto" and pcfg.get("path") is None):
        return None
    if pcfg.get("path") is None:
        raise InputError("psf.sample=true needs a PSF prior: set priors.psf.path")
    given = str(cfg["psf"]["given"]).lower()
    if given not in ("fixed", "sample"):
        raise InputError(f"psf.given must be fixed or sample, got {given!r}")
    if pcfg.get("pixel_scale") is None:
        raise InputError("priors.psf.pixel_scale (arcsec per PSF prior pixel) is required to sample PSFs")
    response = pcfg["response"]
    if response not in RESPONSES:
        raise InputError(f"priors.psf.response must be one of {RESPONSES}, got {response!r}")
    prior = load_prior(prior_path, kind="psf", map_location=device).to(dtype).accelerate(
        **cfg["sampler"]["network"])
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
    rounds = int(cfg["psf"]["refine_rounds"])
    if rounds and stars.measured.any():
        gen = torch.Generator(device=device).manual_seed(int(cfg["seed"]) + 7919)
        model.refine_stars(gen, rounds=rounds)
    return model


def psf_groups(psf_cfg: Mapping, psfs: LensPSFs, data: ExposureSet, given: str) -> tuple[list, list[int]]:
    """The PSF groups: [(StarList, detector pixel scale)] and each exposure's group (-1: kept fixed).

    An exposure with at least `min_stars_sampled` stars of its own has its own P (even one bright star constrains
    P, with the prior's help); exposures without share the P of all exposures' stars; a given PSF is a group of its
    own (a pseudo-star) with `given: sample`, else kept fixed.
    """
    min_own = int(psf_cfg["min_stars_sampled"])
    keys, lists, group = {}, [], []
    for e, psf in zip(data.exposures, psfs.exposures, strict=True):
        is_given = psf.kind is PSFKind.GIVEN
        if is_given and given == "fixed":
            group.append(-1)
            continue
        own = psf.stars is not None and len(psf.stars.data) >= min_own
        key = e.name if (own or is_given) else "pooled"
        if key not in keys:
            if is_given:
                stars = given_psf_star(psf.psf, psf.oversampling, float(psf_cfg["given_noise"]))
            else:
                stars = fit_stars(psf.stars if own else psfs.pooled, psf.psf, psf.oversampling)
                if len(stars) == 0:
                    raise InputError(f"{e.name}: no star could be fitted for the PSF step; set psf.sample=false")
            log.info("PSF group %d (%s): %d star(s)", len(lists), key, len(stars))
            keys[key] = len(lists)
            lists.append((stars, e.pixel_scale))
        group.append(keys[key])
    return lists, group
