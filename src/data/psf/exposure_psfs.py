"""The PSFs of a lens's exposures before sampling: where each comes from, the PSF itself, its stars, and the forward
model's kernels. Inference holds the kernels fixed, or hands the stars to the PSF step (`scorelens.inference.psf`).

Where an exposure's PSF comes from (`PSFKind`):
- OWN: an ePSF built from the exposure's own stars (at least `min_stars` of them);
- POOLED: the ePSF of the stars of all exposures together (the exposure has fewer stars of its own);
- GIVEN: a PSF that came with the data (co-adds), used as it is.

PSFs are [K, K] arrays, unit sum, centred on pixel (K // 2, K // 2), `oversampling` pixels per detector pixel; they
are effective PSFs (the pixel response included), so the forward model reads them with detector="sample"
(`epsf.effective_psf_kernel`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ...lensing.geometry import ModelGeometry
from ..observations.exposure_set import ExposureSet
from .epsf import build_epsf, effective_psf_kernel
from .stars import StarStamps, find_settings, find_stars_in_flt

log = logging.getLogger(__name__)


class PSFKind(enum.Enum):
    """Where an exposure's PSF comes from (see the module's docstring)."""

    OWN = "own"
    POOLED = "pooled"
    GIVEN = "given"


@dataclass(frozen=True, eq=False)
class ExposurePSF:
    """The PSF of one exposure before sampling.

    Attributes:
        name: the exposure's name.
        kind: where `psf` comes from.
        psf: [K, K] float64, unit sum, centred on pixel K // 2: the ePSF of the exposure's stars (OWN), of all
            exposures' stars (POOLED), or the PSF given with the data (GIVEN).
        oversampling: PSF pixels per detector pixel.
        stars: the exposure's own stars (also when too few for an ePSF of their own); None for a given PSF.
    """

    name: str
    kind: PSFKind
    psf: np.ndarray
    oversampling: float
    stars: StarStamps | None = None


@dataclass(frozen=True, eq=False)
class LensPSFs:
    """The PSFs of a lens's exposures, in the order of its `ExposureSet`.

    Attributes:
        exposures: one `ExposurePSF` per exposure.
        kernels: [n_exp, K, K] float64 forward-model kernels on the model's sub-pixel grid (K = the model's PSF
            size), each PSF point-sampled there (`effective_psf_kernel`), unit sum.
        pooled: the stars of all exposures together; None when every PSF is given.
    """

    exposures: tuple[ExposurePSF, ...]
    kernels: np.ndarray
    pooled: StarStamps | None = None

    def __len__(self) -> int:
        return len(self.exposures)

    def __iter__(self) -> Iterator[ExposurePSF]:
        return iter(self.exposures)


def exposure_psfs(data: ExposureSet, geometry: ModelGeometry, psf_cfg: Mapping, find: Mapping) -> LensPSFs:
    """The PSFs of the exposures, from their data and the config.

    A given PSF (co-adds) is used as it is. Otherwise the stars found in each exposure's file give its ePSF;
    exposures with fewer than `min_stars` stars share one ePSF from the stars of all exposures.

    Args:
        data: the lens's exposures.
        geometry: the model's geometry (its `upsample` and `psf_size` set the kernels' grid).
        psf_cfg: the config's `psf` block: `epsf_oversampling` (ePSF pixels per detector pixel), `min_stars` (the
            fewest stars for an exposure's own ePSF), `min_stars_pooled` (the fewest stars of all exposures for
            the pooled ePSF; fewer is an InputError).
        find: the config's `stars.find` block (`stars.find_settings`).
    """
    over = int(psf_cfg["epsf_oversampling"])
    min_stars, min_pooled = psf_cfg["min_stars"], psf_cfg["min_stars_pooled"]
    size = 2 * (geometry.psf_size * over // (2 * geometry.upsample)) + 1  # ePSF pixels spanning the kernel
    star_settings = find_settings(find)
    stamps: dict[str, StarStamps] = {}
    psfs: dict[str, ExposurePSF] = {}
    for e in data.exposures:
        if e.psf is not None:
            psfs[e.name] = ExposurePSF(e.name, PSFKind.GIVEN, e.psf, e.psf_oversampling)
            continue
        if e.path is None:
            raise InputError(f"exposure {e.name}: no PSF given and no file to find stars in")
        found = [st for _, st in find_stars_in_flt(e.path, data.ra, data.dec, settings=star_settings)]
        stamps[e.name] = StarStamps.concatenate(found, star_settings["stamp_size"])
    pooled = StarStamps.concatenate(list(stamps.values()), star_settings["stamp_size"]) if stamps else None
    pooled_epsf = None
    for e in data.exposures:
        if e.name in psfs:
            continue
        own = stamps[e.name]
        if len(own.data) >= min_stars:
            psfs[e.name] = ExposurePSF(e.name, PSFKind.OWN, build_epsf(own, oversampling=over, size=size), over, own)
            log.info("%s: ePSF from its %d stars", e.name, len(own.data))
            continue
        if pooled_epsf is None:
            if len(pooled.data) < min_pooled:
                raise InputError(f"{data.name}: {len(pooled.data)} usable stars in all exposures together, "
                                 f"fewer than {min_pooled}; give a PSF or loosen stars.find")
            pooled_epsf = build_epsf(pooled, oversampling=over, size=size)
            log.info("one ePSF from the %d stars of all exposures", len(pooled.data))
        psfs[e.name] = ExposurePSF(e.name, PSFKind.POOLED, pooled_epsf, over, own)
    ordered = tuple(psfs[e.name] for e in data.exposures)
    kernels = np.stack([effective_psf_kernel(p.psf, p.oversampling, geometry.upsample, geometry.psf_size)
                        for p in ordered])
    return LensPSFs(ordered, kernels, pooled)
