"""The parameters MALA samples: mass parameters and per-exposure alignment shifts, as one flat vector per chain.

Each parameter has a prior from the config (`conf/sampler/*.yaml`, key `parameters`):

    uniform: [low, high]        flat inside, impossible outside (a proposal there is rejected)
    normal: [mean, sd]          Gaussian
    periodic: P                 flat angle, folded into [0, P) after each proposal (axes: pi, m-fold multipoles: 2pi/m)

plus a `scale` (a typical posterior width, arcsec or radians or dimensionless) that sets MALA's diagonal
preconditioner, and `fixed: true` to hold it at its initial value. Shifts (arcsec, x then y for each exposure) are
uniform within +-`shift_max`; the first exposure's shift is held at zero by default, because moving every exposure
together is the same as moving the lens and the source.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..lensing.mass import PARAM_NAMES


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # uniform | normal | periodic
    a: float  # low | mean | period
    b: float  # high | sd | unused
    scale: float
    fixed: bool = False


def _spec(name: str, cfg: Mapping) -> ParamSpec:
    kinds = [k for k in ("uniform", "normal", "periodic") if k in cfg]
    if len(kinds) != 1:
        raise ValueError(f"parameter {name}: give exactly one of uniform, normal, periodic (got {sorted(cfg)})")
    kind = kinds[0]
    if kind == "periodic":
        a, b = float(cfg["periodic"]), 0.0
        if not a > 0:
            raise ValueError(f"parameter {name}: the period must be positive")
    else:
        a, b = (float(v) for v in cfg[kind])
        if kind == "uniform" and not a < b:
            raise ValueError(f"parameter {name}: uniform needs low < high, got [{a}, {b}]")
        if kind == "normal" and not b > 0:
            raise ValueError(f"parameter {name}: normal needs sd > 0, got {b}")
    scale = float(cfg.get("scale", 0.0))
    if not scale > 0:
        raise ValueError(f"parameter {name}: `scale` (a typical posterior width, > 0) is required")
    return ParamSpec(name, kind, a, b, scale, bool(cfg.get("fixed", False)))


class ParameterSpace:
    """Mass parameters (names of DESIGN.md) then shifts (shift_<e>_x, shift_<e>_y), as vectors [B, D].

    Args:
        mass_cfg: mapping of each mass parameter name to its prior settings (see the module docstring).
        n_exp: number of exposures.
        shift_max: bound of the uniform prior on each shift component (arcsec).
        shift_scale: preconditioner scale of the shifts (arcsec).
        fix_first_shift: hold exposure 0's shift at zero.
    """

    def __init__(self, mass_cfg: Mapping[str, Mapping], n_exp: int, shift_max: float, shift_scale: float,
                 fix_first_shift: bool = True):
        unknown = sorted(set(mass_cfg) - set(PARAM_NAMES))
        missing = sorted(set(PARAM_NAMES) - set(mass_cfg))
        if unknown or missing:
            raise ValueError(f"sampler parameters: unknown {unknown}, missing {missing}; names are {PARAM_NAMES}")
        specs = [_spec(n, mass_cfg[n]) for n in PARAM_NAMES]
        for e in range(n_exp):
            for axis in ("x", "y"):
                specs.append(ParamSpec(f"shift_{e}_{axis}", "uniform", -shift_max, shift_max, shift_scale,
                                       fixed=fix_first_shift and e == 0))
        self.specs = specs
        self.n_exp = n_exp
        self.names = [s.name for s in specs]
        self.free = torch.tensor([not s.fixed for s in specs])

    @property
    def dim(self) -> int:
        return len(self.specs)

    def _col(self, attr: str, like: Tensor) -> Tensor:
        return torch.tensor([getattr(s, attr) for s in self.specs], dtype=like.dtype, device=like.device)

    def vector(self, mass: Mapping[str, Tensor], shifts: Tensor) -> Tensor:
        """mass {name: [B]}, shifts [B, n_exp, 2] -> [B, D]."""
        m = torch.stack([torch.as_tensor(mass[n]) for n in PARAM_NAMES], dim=-1)
        return torch.cat([m, shifts.reshape(shifts.shape[0], -1).to(m)], dim=-1)

    def split(self, v: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """[B, D] -> (mass {name: [B]}, shifts [B, n_exp, 2])."""
        k = len(PARAM_NAMES)
        mass = {n: v[:, i] for i, n in enumerate(PARAM_NAMES)}
        return mass, v[:, k:].reshape(v.shape[0], self.n_exp, 2)

    def precond(self, like: Tensor) -> Tensor:
        """Diagonal preconditioner of the free parameters [D_free]: scale^2."""
        return self._col("scale", like)[self.free.to(like.device)] ** 2

    def free_part(self, v: Tensor) -> Tensor:
        """[B, D] -> [B, D_free]."""
        return v[:, self.free.to(v.device)]

    def embed(self, free: Tensor, v: Tensor) -> Tensor:
        """Put free values [B, D_free] into a copy of the full vectors v [B, D]."""
        out = v.clone()
        out[:, self.free.to(v.device)] = free
        return out

    def log_prior(self, v: Tensor) -> Tensor:
        """log prior [B] (constants dropped); -inf outside uniform bounds."""
        out = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        for i, s in enumerate(self.specs):
            x = v[:, i]
            if s.kind == "normal":
                out = out - 0.5 * ((x - s.a) / s.b) ** 2
            elif s.kind == "uniform" and not s.fixed:
                inside = (x >= s.a) & (x <= s.b)
                out = torch.where(inside, out, torch.full_like(out, -math.inf))
        return out

    def wrap(self, v: Tensor) -> Tensor:
        """Fold periodic parameters into [0, period)."""
        cols = [torch.remainder(v[:, i], s.a) if s.kind == "periodic" else v[:, i] for i, s in enumerate(self.specs)]
        return torch.stack(cols, dim=-1)
