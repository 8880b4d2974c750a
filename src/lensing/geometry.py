"""The model's sampling, decided in one place: ray supersampling, PSF sampling, source and lens-light grids.

The ray grid has `upsample` x `upsample` rays per detector pixel; PSFs are sampled on that same grid, so a PSF
from elsewhere (an ePSF at oversampling 4, say) is resampled to `upsample` before use; the lens light defaults to
the ray grid's spacing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .grid import PixelGrid


@dataclass(frozen=True)
class ModelGeometry:
    """upsample: rays (and PSF samples) per detector pixel per axis; psf_size: PSF side in sub-pixels;
    source, lens_light: the pixelated images' grids; n_terms: power-law series length (None: by dtype);
    margin: detector pixels traced beyond the cutouts' edges (light the PSF spreads into them; see `forward.py`)."""

    upsample: int
    psf_size: int
    source: PixelGrid
    lens_light: PixelGrid
    n_terms: int | None = None
    margin: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping, detector_pixel_scale: float, footprint: float | None = None) -> ModelGeometry:
        """Build from a `conf/lensing` mapping for a detector of `detector_pixel_scale` arcsec.

        footprint: the largest |x| or |y| (arcsec, pixel edges included) any exposure's pixel reaches; with
        `lens_light.pixel_scale` null the lens-light grid is made at least twice that wide.
        """
        up = cfg["upsample"]
        if int(up) != up or up < 1:
            raise ValueError(f"lensing.upsample must be a positive integer, got {up}")
        up = int(up)
        if not detector_pixel_scale > 0:
            raise ValueError(f"the detector pixel scale must be positive, got {detector_pixel_scale}")
        psf_size = int(cfg["psf_size"])
        if psf_size < 1:
            raise ValueError(f"lensing.psf_size must be positive, got {psf_size}")
        margin = cfg.get("margin", 0)
        if margin == "auto":
            margin = -(-(psf_size // 2) // up)  # the PSF's half-width in detector pixels, rounded up
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise ValueError(f"lensing.margin must be a non-negative integer or auto, got {margin!r}")
        src, light = cfg["source"], cfg["lens_light"]
        light_scale = light.get("pixel_scale")
        if light_scale is None:
            light_scale = detector_pixel_scale / up
            if footprint is not None:
                light_scale = max(light_scale, 2.0 * float(footprint) / int(light["n"]))
        return cls(
            upsample=up,
            psf_size=psf_size,
            source=_pixel_grid(src, src["pixel_scale"]),
            lens_light=_pixel_grid(light, light_scale),
            n_terms=cfg.get("n_terms"),
            margin=margin,
        )


def _pixel_grid(cfg: Mapping, pixel_scale: float) -> PixelGrid:
    return PixelGrid(int(cfg["n"]), float(pixel_scale), float(cfg.get("x0", 0.0)), float(cfg.get("y0", 0.0)))
