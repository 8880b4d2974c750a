"""An inference-ready score prior: network (EMA weights), SDE, image shape, kind and pixel normalisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.training.normalization import PixelNorm
from .ncsnpp import NCSNpp
from .sampling import sample_reverse_sde
from .sde import VESDE

KINDS = ("source", "lens_light", "psf")
PRECISIONS = ("float32", "bfloat16")


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
        self._run = None  # the network as `accelerate` set it up; None: as it is

    def accelerate(self, precision: str = "float32", channels_last: bool = False, compile: bool = False) -> ScorePrior:
        """Evaluate the network faster at inference: `precision` "bfloat16" runs it under bfloat16 autocast (its
        output is cast back to the input's dtype, so the likelihood, the mass gradients and every sum stay in the
        sampler's dtype); `channels_last` stores weights and inputs in NHWC order (faster convolutions on GPUs);
        `compile` wraps it in torch.compile with static shapes (one compilation per batch shape, cached: the
        sampler's shapes are few, the chains' count and the PSF groups'). Returns self."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "float32" and not channels_last and not compile:
            self._run = None
            return self
        bf16 = precision == "bfloat16"
        if bf16:  # autocast lowers float32 only: a float64 network (sampler.dtype=float64) runs from float32
            self.net.float()
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        net = torch.compile(self.net, dynamic=False) if compile else self.net
        dtype = next(self.net.parameters()).dtype

        def run(x: Tensor, sigma: Tensor) -> Tensor:
            xin = x.to(dtype)
            xin = xin.contiguous(memory_format=torch.channels_last) if channels_last else xin
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = net(xin, sigma.to(dtype))
            return out.to(x.dtype).contiguous()

        self._run = run
        return self

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this prior models."""
        cfg = self.net.config
        return (cfg["channels"], cfg["resolution"], cfg["resolution"])

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Score of the noised prior at time t [B] for x [B, C, H, W] (network units)."""
        if self._run is not None:
            return self._run(x, self.sde.sigma(t))
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
