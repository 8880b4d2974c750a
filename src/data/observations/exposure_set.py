"""The in-memory form of a lens's imaging data, whatever it came from (FLT/FLC exposures, a co-add, an HDF5 file).

Every loader ends here, and the sampler starts here: one `Exposure` per image, each a square cutout centred on the
lens with its own pixel -> sky grid, and an `ExposureSet` holding them for one lens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass
class Chip:
    """One ACS/WFC chip of an FLT/FLC file (or the single image of a co-add).

    sci, err: [H, W] float64 in `unit` (ERR is the 1-sigma noise); dq: [H, W] int data-quality flags (0 = good);
    wcs: astropy WCS with distortion (SIP and lookup tables) or None; extver: the SCI extension version (1 or 2).
    header: the primary and SCI header keywords (SCI's win where both have one), as a plain dict.
    path: the file it came from; name: ROOTNAME (else the file stem); unit: BUNIT of SCI as given (ELECTRONS,
    ELECTRONS/S, ...); exptime: EXPTIME in seconds (0 when absent); filter: e.g. 'F814W' ('' when unknown).
    """

    sci: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    wcs: object | None
    extver: int = 1
    header: dict = field(default_factory=dict)
    path: Path | None = None
    name: str = ""
    unit: str = ""
    exptime: float = 0.0
    filter: str = ""


@dataclass
class Exposure:
    """A lens cutout of one image.

    Attributes:
        name: rootname or file stem.
        path: the file it came from.
        data: [N, N] float64 pixel values in `unit` (e.g. electrons for FLTs, e-/s for drizzled co-adds).
        variance: [N, N] float64 noise variance (ERR^2) in unit^2; positive wherever `mask` is True.
        mask: [N, N] bool, True where the pixel is used (good DQ, finite, not masked by the user).
        x, y: [N, N] float64 arcsec sky positions of the pixel centres in the lens frame of DESIGN.md.
        pixel_scale: mean detector pixel size, arcsec.
        unit: BUNIT of the data.
        exptime: exposure time in seconds (0 when unknown).
        filter: e.g. 'F814W' ('' when unknown).
        origin: (row, col) of the cutout's first pixel in the chip; chip: SCI extension version.
        psf: a given PSF [K, K] (co-adds), unit sum, sampled `psf_oversampling` times per detector pixel; None
            when the PSF is to be built from stars.
        n_nonfinite: pixels masked because SCI or ERR was NaN or infinite.
        wcs: the chip's WCS (None for co-adds without one).
    """

    name: str
    path: Path | None
    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    x: np.ndarray
    y: np.ndarray
    pixel_scale: float
    unit: str = ""
    exptime: float = 0.0
    filter: str = ""
    origin: tuple[int, int] = (0, 0)
    chip: int = 1
    psf: np.ndarray | None = None
    psf_oversampling: int = 1
    n_nonfinite: int = 0
    wcs: object | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def crop(self, size: int) -> Exposure:
        """The central size x size pixels, keeping the centre pixel (H // 2, W // 2) at the centre (size // 2);
        the exposure itself when it is not larger."""
        h, w = self.shape
        if size >= h and size >= w:
            return self
        cut = central_window(self.shape, size)
        r0, c0 = cut[0].start, cut[1].start
        return replace(self, data=self.data[cut], variance=self.variance[cut], mask=self.mask[cut], x=self.x[cut],
                       y=self.y[cut], origin=(self.origin[0] + r0, self.origin[1] + c0))


def central_window(shape, size: int | None) -> tuple[slice, slice]:
    """The central size x size pixels of an image of `shape` (all of it for None), keeping the centre pixel
    (H // 2, W // 2) at the window's centre (size // 2): the pixels `Exposure.crop` keeps."""
    h, w = shape
    if size is None or (size >= h and size >= w):
        return np.s_[0:h, 0:w]
    r0, c0 = max(h // 2 - size // 2, 0), max(w // 2 - size // 2, 0)
    return np.s_[r0:r0 + size, c0:c0 + size]


@dataclass
class ExposureSet:
    """All images of one lens: name, ra/dec (degrees) of the lens centre (None for a co-add without WCS whose
    position was not given), and the exposures (same cutout shape)."""

    name: str
    ra: float | None
    dec: float | None
    exposures: list[Exposure]

    def __len__(self) -> int:
        return len(self.exposures)

    def stacked(self) -> dict[str, np.ndarray]:
        """data, variance, mask, x, y as [n_exp, N, N] arrays."""
        keys = ("data", "variance", "mask", "x", "y")
        return {k: np.stack([getattr(e, k) for e in self.exposures]) for k in keys}
