"""On-the-fly simulated HST-like PSFs for a demo PSF prior (no star cutouts or PSF libraries needed).

Real PSF priors learn from empirical PSFs (`psf_dataset.PSFDataset`); this stream draws the analytic HST-like PSF
of the mock exposures (`scorelens.data.simulate.hst_psf.hst_like_psf`: obscured-aperture diffraction averaged over
the band, a Gaussian blur for jitter and charge diffusion, a mild elliptical stretch, a Moffat halo) with random
settings, so that a small PSF prior can be trained anywhere. PSFs are sampled on sub-pixels of `detector_pixel_scale /
oversampling` arcsec, `oversampling` per detector pixel along each axis (the forward model's `upsample`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from ..simulate.hst_psf import hst_like_psf
from .normalization import PixelNorm
from .stream import SimulatedStream, check_integer, check_number, check_range, log_uniform, uniform

log = logging.getLogger(__name__)


class PSFStream(SimulatedStream):
    """Simulated PSFs: [batch_size, 1, image_size, image_size] float32 per batch, network units.

    Each PSF is `hst_like_psf` with its own settings:
    - band: `n_wavelengths` equally weighted wavelengths spread evenly over `band_width` microns around a
      centre uniform in `band_center` (the effective wavelength moves with the colour of the star or galaxy);
    - blur: Gaussian sigma uniform in `blur_sigma` (arcsec): telescope jitter, charge diffusion and the core
      broadening of small focus changes (breathing);
    - ellipticity uniform in `ellipticity` at an angle uniform in [0, pi): astigmatism, which varies with focus
      and position on the detector;
    - halo: flux fraction uniform in `halo_fraction`, Moffat core radius log-uniform in `halo_radius` (arcsec).
    The PSF is integrated over each sub-pixel (`integration_oversample` midpoints per side), centred on pixel
    (image_size // 2, image_size // 2) (the convention of `scorelens.lensing.psf` and of conf/prior/psf.yaml), cut to
    image_size x image_size and normalised to unit sum.

    Normalisation: network units = PSF / `norm_scale` (`norm` = PixelNorm(scale=norm_scale), saved in the
    prior). The default 0.04 is conf/prior/psf.yaml's 0.01 for 4 sub-pixels per detector pixel, times the
    (4 / 2)^2 larger area of a sub-pixel at 2: either way a unit-sum HST PSF peaks at about 1.5 network units.

    Ranges are (low, high) pairs. Invalid arguments raise ValueError (InputError from `hst_like_psf` for
    settings it refuses).
    """

    def __init__(self, *, image_size: int = 32, batch_size: int = 32, batches_per_epoch: int = 1000, seed: int = 0,
                 oversampling: int = 2, detector_pixel_scale: float = 0.05, band_center=(0.76, 0.86),
                 band_width: float = 0.24, n_wavelengths: int = 5, blur_sigma=(0.008, 0.03),
                 ellipticity=(0.0, 0.08), halo_fraction=(0.02, 0.08), halo_radius=(0.15, 0.4),
                 diameter_m: float = 2.4, obscuration: float = 0.33, integration_oversample: int = 4,
                 norm_scale: float = 0.04):
        super().__init__(image_size=image_size, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                         seed=seed)
        who = type(self).__name__
        if self.image_size < 3:
            raise ValueError(f"{who}: image_size must be >= 3, got {image_size!r}")
        self.oversampling = check_integer(who, "oversampling", oversampling, 1)
        self.detector_pixel_scale = check_number(who, "detector_pixel_scale", detector_pixel_scale, 1e-6)
        self.band_center = check_range(who, "band_center", band_center, positive=True)
        self.band_width = check_number(who, "band_width", band_width, 0.0)
        self.n_wavelengths = check_integer(who, "n_wavelengths", n_wavelengths, 1)
        if self.band_center[0] - self.band_width / 2 <= 0:
            raise ValueError(f"{who}: band_center - band_width / 2 must stay positive (microns)")
        self.blur_sigma = check_range(who, "blur_sigma", blur_sigma, low=0.0)
        self.ellipticity = check_range(who, "ellipticity", ellipticity, 0.0, 0.49)
        self.halo_fraction = check_range(who, "halo_fraction", halo_fraction, 0.0, 0.99)
        self.halo_radius = check_range(who, "halo_radius", halo_radius, positive=True)
        self.diameter_m = check_number(who, "diameter_m", diameter_m, 1e-6)
        self.obscuration = check_number(who, "obscuration", obscuration, 0.0)
        if self.obscuration >= 1:
            raise ValueError(f"{who}: obscuration must be < 1, got {obscuration!r}")
        self.integration_oversample = check_integer(who, "integration_oversample", integration_oversample, 1)
        scale = check_number(who, "norm_scale", norm_scale, 0.0)
        if scale == 0:
            raise ValueError(f"{who}: norm_scale must be positive, got {norm_scale!r}")
        self.norm = PixelNorm(scale=scale)

    @property
    def pixel_scale(self) -> float:
        """Sub-pixel side in arcsec."""
        return self.detector_pixel_scale / self.oversampling

    def draw(self, generator: torch.Generator) -> Tensor:
        return self.render(self.sample_params(generator))

    def sample_params(self, generator: torch.Generator, batch_size: int | None = None) -> dict[str, Tensor]:
        """Draw the settings of `batch_size` PSFs (default: the stream's batch size): float64 tensors [B] under
        band_center (microns), blur_sigma, halo_radius (arcsec), ellipticity, ellipticity_angle (rad),
        halo_fraction."""
        count = self.batch_size if batch_size is None else check_integer(type(self).__name__, "batch_size",
                                                                            batch_size, 1)
        shape = (count,)
        return {
            "band_center": uniform(generator, shape, self.band_center),
            "blur_sigma": uniform(generator, shape, self.blur_sigma),
            "ellipticity": uniform(generator, shape, self.ellipticity),
            "ellipticity_angle": uniform(generator, shape, (0.0, np.pi)),
            "halo_fraction": uniform(generator, shape, self.halo_fraction),
            "halo_radius": log_uniform(generator, shape, self.halo_radius),
        }

    def render_psf(self, **settings: float) -> np.ndarray:
        """One unit-sum PSF [image_size, image_size] float64 (PSF units, not network units), peak at N // 2."""
        size = self.image_size
        odd = 2 * (size // 2) + 1  # hst_like_psf centres odd stamps on pixel K // 2 = size // 2
        centre = settings.pop("band_center")
        half = self.band_width / 2
        wavelengths = tuple(np.linspace(centre - half, centre + half, self.n_wavelengths)) if self.n_wavelengths > 1 \
            else (centre,)
        stamp = hst_like_psf(odd, self.pixel_scale, wavelengths_um=wavelengths, diameter_m=self.diameter_m,
                             obscuration=self.obscuration, oversample=self.integration_oversample, **settings)
        stamp = stamp[:size, :size]  # even sizes drop the last row and column; the centre stays at size // 2
        return stamp / stamp.sum()

    @torch.no_grad()
    def render(self, params: dict[str, Tensor]) -> Tensor:
        """PSFs [B, 1, image_size, image_size] float32 in network units (unit-sum PSF / norm scale)."""
        count = len(params["band_center"])
        stamps = [self.render_psf(**{k: float(v[i]) for k, v in params.items()}) for i in range(count)]
        psf = torch.from_numpy(np.stack(stamps))
        return self.norm.to_net(psf).float().unsqueeze(1)
