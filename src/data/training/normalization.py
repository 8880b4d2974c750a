"""The one place that maps data fluxes to a prior network's pixel values and back.

x_net = (flux - offset) / scale. The mapping is saved with every checkpoint, so the sampler converts data to the
units the prior learned in and never guesses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PixelNorm:
    """Affine flux <-> network-unit map.

    Attributes:
        scale: flux per network unit (data units, e.g. electrons per pixel), > 0.
        offset: flux that maps to 0 in network units.
    """

    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset)):
            raise ValueError(f"PixelNorm needs a finite scale > 0 and a finite offset, got {self}")

    def to_net(self, flux):
        """Flux (tensor or array, any shape) -> network units."""
        return (flux - self.offset) / self.scale

    def to_flux(self, x):
        """Network units -> flux."""
        return x * self.scale + self.offset

    def config(self) -> dict:
        return asdict(self)
