"""An inference-ready score prior: network (EMA weights), SDE, image shape, kind and pixel normalisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.training.normalization import PixelNorm
from .ncsnpp import NCSNpp
from .sampling import sample_reverse_sde
from .sde import VESDE

KINDS = ("source", "lens_light", "psf")


class ScorePrior(nn.Module):
    """A learned prior p(x) over images [C, H, W] in network units.

    Args:
        net: score network `net(x, sigma)`.
        sde: the VE SDE the network was trained under.
        kind: "source", "lens_light" or "psf".
        norm: flux <-> network units of this prior.
    """

    def __init__(self, net: NCSNpp, sde: VESDE, kind: str, norm: PixelNorm):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"prior kind must be one of {KINDS}, got {kind!r}")
        self.net = net
        self.sde = sde
        self.kind = kind
        self.norm = norm

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this prior models."""
        cfg = self.net.config
        return (cfg["channels"], cfg["resolution"], cfg["resolution"])

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Score of the noised prior at time t [B] for x [B, C, H, W] (network units)."""
        return self.net(x, self.sde.sigma(t))

    @torch.no_grad()
    def sample(self, n: int, *, steps: int = 1000, corrector_steps: int = 0, snr: float = 0.16,
               generator: torch.Generator | None = None, flux_units: bool = False, **kwargs) -> Tensor:
        """Draw n samples [n, C, H, W] by the reverse-time SDE; in network units unless `flux_units`."""
        param = next(self.net.parameters())
        x = sample_reverse_sde(self.score, self.sde, (n, *self.image_shape), steps=steps,
                               corrector_steps=corrector_steps, snr=snr, generator=generator,
                               device=param.device, dtype=param.dtype, **kwargs)
        return self.norm.to_flux(x) if flux_units else x

    def describe(self) -> dict:
        """Plain-dict metadata stored beside the weights in a prior checkpoint."""
        return {"kind": self.kind, "net": self.net.config, "sde": self.sde.config(), "norm": self.norm.config()}
