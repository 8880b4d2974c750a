"""PSFs for the PSF prior: a map-style dataset over a PSF library (stacks, STDPSF cubes, TinyTim files or a folder
of them; `scorelens.data.psf.library.PSFLibrary`), in network units.

Each item is a library PSF ([N, N] at `oversampling`, centred on pixel N // 2, unit sum) mapped to network units by
`norm` (x = (psf - offset) / scale; with scale 0.01, a unit-sum ACS/WFC F814W PSF at 4x, whose peak is about 0.01,
peaks near 1).

Augmentation. A PSF's orientation and handedness are fixed by the telescope and the detector: the spider's
diffraction spikes, the aberrations (coma, astigmatism) and the geometric distortion of the field all have fixed
directions on the detector, so a rotated or mirrored PSF is the PSF of no real observation and would teach the
prior shapes the data never show. Hence no rotations and no flips. The one optional augmentation, `jitter`, moves
each PSF by a uniform random sub-pixel offset (up to `jitter` fine pixels): real PSFs are centred only to the
accuracy of their centroid, and the offset is a translation, which the physics allows. It is off by default,
because the sampler fits each exposure's alignment shift separately and a jittered prior would trade off against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import InputError
from ..psf.library import PSFLibrary, PSFSource
from .normalization import PixelNorm

AUGMENTATIONS = ("none", "jitter")


class PSFDataset(Dataset):
    """PSFs [1, N, N] (float32, network units) for the PSF prior.

    Args:
        path: a stack (.h5/.hdf5/.npy), a FITS file, or a folder of them.
        image_size: N, pixels at `oversampling`.
        channels: must be 1.
        oversampling, key, cube_oversampling, image_oversampling, stack_oversampling, detector_pixel_scale,
            clip_negative, centre_box: how the files are read and prepared (`PSFLibrary`).
        augment: "none" or "jitter" (random sub-pixel translation; no rotations or flips, see the module).
        jitter: largest jitter offset, fine pixels.
        norm: unit-sum PSF -> network units.
    """

    def __init__(self, path: str | Path, image_size: int, channels: int = 1, oversampling: float = 4,
                 key: str = "images", cube_oversampling: float = 4, image_oversampling: float = 1,
                 stack_oversampling: float | None = None, detector_pixel_scale: float | None = None,
                 clip_negative: bool = True, centre_box: float = 1.5, augment: str = "none", jitter: float = 0.25,
                 norm: dict | PixelNorm | None = None):
        if channels != 1:
            raise InputError(f"PSFs have one channel, got channels={channels} (set prior.channels: 1)")
        if augment not in AUGMENTATIONS:
            raise InputError(f"PSF augment must be one of {AUGMENTATIONS} (no rotations or flips: a PSF's "
                             f"orientation is fixed by the telescope), got {augment!r}")
        if not (image_size >= 3 and oversampling > 0 and jitter >= 0):
            raise InputError(f"PSFDataset needs image_size >= 3, oversampling > 0 and jitter >= 0, got {image_size}, "
                             f"{oversampling}, {jitter}")
        self.augment = augment
        self.jitter = float(jitter)
        self.norm = norm if isinstance(norm, PixelNorm) else PixelNorm(**dict(norm or {}))
        self.library = PSFLibrary(path, image_size, oversampling=oversampling, key=key,
                                  cube_oversampling=cube_oversampling, image_oversampling=image_oversampling,
                                  stack_oversampling=stack_oversampling, detector_pixel_scale=detector_pixel_scale,
                                  clip_negative=clip_negative, centre_box=centre_box)

    @property
    def oversampling(self) -> float:
        """Fine pixels per detector pixel of the PSFs."""
        return self.library.oversampling

    @property
    def sources(self) -> list[PSFSource]:
        """The files the PSFs come from, in order."""
        return self.library.sources

    def psf(self, i: int) -> np.ndarray:
        """PSF i as prepared (unit sum, centred, [N, N] float64), before augmentation and normalisation."""
        return self.library.psf(i)

    def __len__(self) -> int:
        return len(self.library)

    def __getitem__(self, i: int) -> torch.Tensor:
        psf = self.psf(int(i))
        if self.augment == "jitter" and self.jitter > 0:
            from scipy import ndimage

            offset = (torch.rand(2, dtype=torch.float64) * 2 - 1).numpy() * self.jitter
            psf = np.clip(ndimage.shift(psf, offset, order=3, mode="constant"), 0.0, None)
            psf = psf / psf.sum()
        img = torch.from_numpy(np.ascontiguousarray(psf, dtype=np.float32))[None]
        return self.norm.to_net(img).contiguous()
