"""From the start finder's modes to the chains' first states: which mode each chain starts in, overdispersed.

Modes within `evidence_gap` (natural log units) of the best share the chains round-robin, best first, so a second
mode the data do not rule out is explored, and disagreeing chains show in R-hat; worse modes get none. Each chain
is jittered about its mode by `jitter` times the typical width of the start finder's own optimum (`SPREAD`), wider
than the posterior, so that the chains' agreement at the end means something.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...lensing.grid import PixelGrid
from .finder import RADIUS, Mode, StartResult

log = logging.getLogger(__name__)

# sd of each chain's jitter about its mode, per unit of `jitter`, in the finder's coordinates
SPREAD = {"log_theta_E": 0.005, "e1": 0.01, "e2": 0.01, "x0": 0.005, "y0": 0.005, "g1": 0.005, "g2": 0.005}


@dataclass
class ChainStart:
    """mass: {physical parameter name: [B]}; source [B, n_s, n_s] and lens_light [B, n_l, n_l]: the chains' first
    images (data units per detector pixel); mode: [B] which mode each chain starts in."""

    mass: dict[str, Tensor]
    source: Tensor
    lens_light: Tensor
    mode: list[int]


def chain_starts(result: StartResult, chains: int, source_grid: PixelGrid, light_grid: PixelGrid, jitter: float,
                 evidence_gap: float, generator: torch.Generator, dtype=torch.float32, device=None) -> ChainStart:
    """Spread `chains` chains over the modes of `result` (see the module docstring)."""
    best = result.modes[0].log_evidence
    used = [m for m in result.modes if m.log_evidence >= best - evidence_gap]
    assign = [i % len(used) for i in range(chains)]
    masses, sources, lights = [], [], []
    images = {i: result.finder.images(used[i], source_grid, light_grid) for i in set(assign)}
    for i in assign:
        masses.append(_jittered(used[i], jitter, generator))
        src, light = images[i]
        sources.append(src)
        lights.append(light)
    mass = {k: torch.tensor([m[k] for m in masses], dtype=dtype, device=device) for k in masses[0]}
    return ChainStart(mass, torch.stack(sources).to(device, dtype), torch.stack(lights).to(device, dtype), assign)


def _jittered(mode: Mode, jitter: float, generator: torch.Generator) -> dict[str, float]:
    """The mode's mass with its finder coordinates moved by Gaussian noise of sd jitter * SPREAD."""
    params = dict(mode.params)
    noise = torch.randn(len(SPREAD), generator=generator, dtype=torch.float64)
    for (k, sd), z in zip(SPREAD.items(), noise.tolist(), strict=True):
        params[k] = params[k] + jitter * sd * z
    # keep the jittered ellipticity and shear physical (|e| < 1)
    for (a, b), r in RADIUS.items():
        if a not in SPREAD:
            continue
        n = max(1.0, math.hypot(params[a], params[b]) / r)
        params[a], params[b] = params[a] / n, params[b] / n
    return Mode(params, mode.log_evidence, mode.chi2, mode.amplitudes).mass()
