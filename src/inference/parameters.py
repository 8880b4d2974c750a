"""The parameters MALA samples: mass parameters and per-exposure alignment shifts, as one flat vector per chain.

Two vectors of the same length D describe a chain's parameters:

- the physical vector v: the mass parameters of DESIGN.md in their order (theta_E, gamma, q, phi, x0, y0,
  gamma_ext, phi_ext, a3, phi3, a4, phi4), then the shifts (shift_<e>_x, shift_<e>_y, arcsec). The model, the
  recorded samples, samples.h5, summary.csv and the figures read this one.
- the sampled vector u: the same slots, with each (amplitude, angle) pair replaced by its Cartesian components, on
  which MALA moves and the priors are defined:

      ellipticity   (e1, e2) = e (cos 2 phi, sin 2 phi),  e = (1 - q) / (1 + q)   (lenstronomy's convention)
      shear         (gamma1, gamma2) = gamma_ext (cos 2 phi_ext, sin 2 phi_ext)   (lensing/shear.py)
      multipole m   (a_m cos m phi_m, a_m sin m phi_m), m = 3, 4

  The Cartesian components have no period and no polar singularity (q = 1, gamma_ext = 0, a_m = 0 are ordinary
  points), so MALA's proposal density needs no folding of angles. Going back, q = (1 - e) / (1 + e) and the angles
  are folded into one period for reporting only: phi, phi_ext in [0, pi), phi_m in [0, 2 pi / m), with a_m >= 0.
  A signed amplitude is the same multipole as its absolute value turned by half a period: (a, phi_m) and
  (-a, phi_m + pi / m) give the same mass, and likewise (gamma_ext, phi_ext) and (-gamma_ext, phi_ext + pi / 2);
  a start written with a negative amplitude is reported with |a| and the turned angle.

The priors come from the config (`conf/sampler/*.yaml`, key `parameters`), one entry per scalar and one per pair:

    theta_E, gamma, x0, y0:   uniform: [low, high]  (flat inside, impossible outside)  or  normal: [mean, sd]
    ellipticity, shear,       normal: sd   isotropic Gaussian on the two components, centred at zero; with
    multipole3, multipole4                 max: r, truncated to the disk of radius r (ellipticity: q >= (1-r)/(1+r))
                              disk: r      flat inside the disk of radius r

each with a `scale` (a typical posterior width of the coordinate, or of each Cartesian component: MALA's diagonal
preconditioner is scale^2) and optionally `fixed: true`, which holds the coordinate(s) at the chain's start (then
the prior and the scale may be left out). The ellipticity's support is |e| < 1 (q > 0) whatever the prior. Shifts
are uniform within +-`shift_max`; the first exposure's shift is held at zero by default, because moving every
exposure together is the same as moving the lens and the source.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from ..lensing.mass import PARAM_NAMES

SCALARS = ("theta_E", "gamma", "x0", "y0")


@dataclass(frozen=True)
class PairKind:
    """A pair of physical parameters (amplitude, angle) sampled as Cartesian components (c1, c2) =
    rho (cos k angle, sin k angle), where rho is the amplitude (the ellipticity's e for q)."""

    key: str  # the config entry
    physical: tuple[str, str]  # (amplitude, angle) names of DESIGN.md
    coords: tuple[str, str]  # names of the Cartesian components
    k: int  # angle multiplier: the angle's period is 2 pi / k


PAIRS = {
    "ellipticity": PairKind("ellipticity", ("q", "phi"), ("e1", "e2"), 2),
    "shear": PairKind("shear", ("gamma_ext", "phi_ext"), ("gamma1", "gamma2"), 2),
    "multipole3": PairKind("multipole3", ("a3", "phi3"), ("a3_cos", "a3_sin"), 3),
    "multipole4": PairKind("multipole4", ("a4", "phi4"), ("a4_cos", "a4_sin"), 4),
}
CONFIG_KEYS = SCALARS + tuple(PAIRS)
# the entries of the polar form, for a one-line pointer to the pair that replaced them
_OLD_KEYS = {name: pair for pair in PAIRS.values() for name in pair.physical}
_EXAMPLE = {"ellipticity": "{normal: 0.2, max: 0.667, scale: 0.003}", "shear": "{normal: 0.05, max: 0.3, scale: 0.003}",
            "multipole3": "{normal: 0.01, scale: 0.002}", "multipole4": "{normal: 0.01, scale: 0.002}"}


# ------------------------------------------------------------------------------------------- transforms


def to_cartesian(rho: Tensor, angle: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(rho cos k angle, rho sin k angle): the Cartesian components of a pair, same shapes as the inputs."""
    return rho * torch.cos(k * angle), rho * torch.sin(k * angle)


def to_polar(c1: Tensor, c2: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(rho >= 0, angle in [0, 2 pi / k)) from the Cartesian components (inverse of `to_cartesian` up to the
    angle's period and the sign of rho).

    At c1 = c2 = 0 the angle is 0; there the derivatives are taken as zero rather than NaN (the model does not
    depend on the angle when the amplitude is zero, so nothing downstream needs them).
    """
    r2 = c1 * c1 + c2 * c2
    nz = r2 > 0
    # substitute a harmless point where r2 = 0, so that neither sqrt nor atan2 sees 0/0 in the backward pass
    rho = torch.where(nz, torch.sqrt(torch.where(nz, r2, torch.ones_like(r2))), torch.zeros_like(r2))
    angle = torch.atan2(torch.where(nz, c2, torch.zeros_like(c2)), torch.where(nz, c1, torch.ones_like(c1))) / k
    return rho, torch.remainder(angle, 2 * math.pi / k)


def q_to_e(q: Tensor) -> Tensor:
    """Ellipticity modulus e = (1 - q) / (1 + q) of an axis ratio q (q = 1: 0; q > 1 gives e < 0, the same
    ellipse turned by 90 degrees)."""
    return (1 - q) / (1 + q)


def e_to_q(e: Tensor) -> Tensor:
    """Axis ratio q = (1 - e) / (1 + e) of an ellipticity modulus 0 <= e < 1."""
    return (1 - e) / (1 + e)


def polar_to_pair(kind: PairKind, amplitude: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """The Cartesian components of `kind` from its physical (amplitude, angle); q for the ellipticity."""
    rho = q_to_e(amplitude) if kind.key == "ellipticity" else amplitude
    return to_cartesian(rho, angle, kind.k)


def pair_to_polar(kind: PairKind, c1: Tensor, c2: Tensor) -> tuple[Tensor, Tensor]:
    """The physical (amplitude >= 0, angle in one period) of `kind` from its Cartesian components; q for the
    ellipticity."""
    rho, angle = to_polar(c1, c2, kind.k)
    return (e_to_q(rho) if kind.key == "ellipticity" else rho), angle


def canonical_mass(mass: Mapping[str, float]) -> dict[str, float]:
    """Physical mass parameters {name: number} in the convention of the samples: each pair's amplitude >= 0 (q <= 1)
    and its angle folded into one period; the same mass model (float64 round trip through the Cartesian pairs).
    Entries other than the pairs are copied."""
    out = {k: float(v) for k, v in mass.items()}
    for pair in PAIRS.values():
        a_name, phi_name = pair.physical
        if a_name in out and phi_name in out:
            a, phi = torch.tensor(out[a_name], dtype=torch.float64), torch.tensor(out[phi_name], dtype=torch.float64)
            a, phi = pair_to_polar(pair, *polar_to_pair(pair, a, phi))
            out[a_name], out[phi_name] = float(a), float(phi)
    return out


# ----------------------------------------------------------------------------------------------- priors


class ParameterError(InputError):
    """A bad `parameters` entry: `key` names it (dotted below the `parameters` node; None: the node itself), `reason`
    says what is wrong."""

    def __init__(self, key: str | None, reason: str):
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key, self.reason = key, reason


@dataclass(frozen=True)
class ScalarPrior:
    """One scalar coordinate. kind: uniform (a, b = low, high), normal (a, b = mean, sd) or None (fixed without a
    prior); scale: MALA's preconditioner scale, same units as the parameter."""

    name: str
    kind: str | None
    a: float
    b: float
    scale: float
    fixed: bool = False

    def log_prior(self, x: Tensor) -> Tensor:
        """log density of x [B] up to a constant; -inf outside a uniform's bounds. A fixed coordinate contributes
        nothing (it may sit anywhere)."""
        if self.fixed or self.kind is None:
            return torch.zeros_like(x)
        if self.kind == "normal":
            return -0.5 * ((x - self.a) / self.b) ** 2
        inside = (x >= self.a) & (x <= self.b)
        return torch.where(inside, torch.zeros_like(x), torch.full_like(x, -math.inf))


@dataclass(frozen=True)
class PairPrior:
    """One Cartesian pair. kind: normal (sd: the isotropic standard deviation of each component), disk, or None
    (fixed without a prior); radius: where the prior is truncated (normal's `max`, disk's radius; inf: nowhere);
    support: the physical bound on the modulus (1 for the ellipticity: q > 0; inf otherwise)."""

    pair: PairKind
    kind: str | None
    sd: float
    radius: float
    scale: float
    fixed: bool = False
    support: float = math.inf

    def log_prior(self, c1: Tensor, c2: Tensor) -> Tensor:
        """log density at the components c1, c2 [B] up to a constant; -inf outside the disk (or the support)."""
        out = torch.zeros_like(c1)
        if self.fixed or self.kind is None:
            return out
        r2 = c1 * c1 + c2 * c2
        if self.kind == "normal":
            out = out - 0.5 * r2 / self.sd**2
        outside = (r2 > self.radius**2) | ~self.in_support(c1, c2)
        return torch.where(outside, torch.full_like(out, -math.inf), out)

    def in_support(self, c1: Tensor, c2: Tensor) -> Tensor:
        """[B] bool: whether the modulus is below the physical bound (the ellipticity's |e| < 1, q > 0)."""
        return c1 * c1 + c2 * c2 < self.support**2


def _number(key: str, setting: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParameterError(f"{key}.{setting}", f"must be a number, got {value!r}")
    return float(value)


def _check_settings(key: str, cfg, allowed: tuple[str, ...]) -> dict:
    if not isinstance(cfg, Mapping):
        raise ParameterError(key, f"must be a mapping of settings ({', '.join(allowed)}), got {cfg!r}")
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ParameterError(key, f"unknown setting(s) {unknown}; allowed: {', '.join(allowed)}")
    return dict(cfg)


def _scale(key: str, cfg: Mapping, fixed: bool, what: str) -> float:
    if fixed and "scale" not in cfg:
        return 1.0  # never used: a fixed coordinate does not move
    if "scale" not in cfg:
        raise ParameterError(key, f"`scale` ({what}, > 0: MALA's preconditioner) is required")
    scale = _number(key, "scale", cfg["scale"])
    if not scale > 0:
        raise ParameterError(f"{key}.scale", f"must be > 0, got {scale}")
    return scale


def scalar_prior(name: str, cfg) -> ScalarPrior:
    """The prior of scalar `name` from its config entry ({uniform: [low, high] | normal: [mean, sd], scale,
    fixed}); a ParameterError naming the entry otherwise."""
    cfg = _check_settings(name, cfg, ("uniform", "normal", "scale", "fixed"))
    fixed = bool(cfg.get("fixed", False))
    kinds = [k for k in ("uniform", "normal") if k in cfg]
    if len(kinds) > 1 or (not kinds and not fixed):
        raise ParameterError(name, "give exactly one of uniform: [low, high] or normal: [mean, sd] (or fixed: "
                                   f"true), got {sorted(cfg)}")
    scale = _scale(name, cfg, fixed, "a typical posterior width in the parameter's units")
    if not kinds:
        return ScalarPrior(name, None, 0.0, 0.0, scale, fixed)
    kind = kinds[0]
    pair = cfg[kind]
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise ParameterError(f"{name}.{kind}", f"must be a list of two numbers, got {pair!r}")
    a, b = (_number(name, kind, v) for v in pair)
    if kind == "uniform" and not a < b:
        raise ParameterError(f"{name}.uniform", f"needs low < high, got [{a}, {b}]")
    if kind == "normal" and not b > 0:
        raise ParameterError(f"{name}.normal", f"needs sd > 0, got [{a}, {b}]")
    return ScalarPrior(name, kind, a, b, scale, fixed)


def pair_prior(key: str, cfg) -> PairPrior:
    """The prior of pair `key` (ellipticity, shear, multipole3, multipole4) from its config entry ({normal: sd,
    max: r | disk: r, scale, fixed}); a ParameterError naming the entry otherwise."""
    pair = PAIRS[key]
    cfg = _check_settings(key, cfg, ("normal", "max", "disk", "scale", "fixed"))
    fixed = bool(cfg.get("fixed", False))
    kinds = [k for k in ("normal", "disk") if k in cfg]
    if len(kinds) > 1 or (not kinds and not fixed):
        raise ParameterError(key, f"give exactly one of normal: sd or disk: radius (or fixed: true), got "
                                  f"{sorted(cfg)}; e.g. {key}: {_EXAMPLE[key]}")
    if "max" in cfg and "normal" not in cfg:
        raise ParameterError(f"{key}.max", "truncates the normal prior; a disk prior gives its radius as disk: r")
    scale = _scale(key, cfg, fixed, f"a typical posterior width of each of {', '.join(pair.coords)}")
    support = 1.0 if key == "ellipticity" else math.inf
    if not kinds:
        return PairPrior(pair, None, 0.0, math.inf, scale, fixed, support)
    kind = kinds[0]
    value = cfg[kind]
    if isinstance(value, list | tuple):
        what = "the sd of each component" if kind == "normal" else "the radius"
        raise ParameterError(f"{key}.{kind}", f"is one number ({what}; the prior is centred at zero), got {value!r}")
    value = _number(key, kind, value)
    if not value > 0:
        raise ParameterError(f"{key}.{kind}", f"must be > 0 ({'sd' if kind == 'normal' else 'radius'}), got {value}")
    if kind == "normal":
        radius = _number(key, "max", cfg["max"]) if "max" in cfg else math.inf
        if not radius > 0:
            raise ParameterError(f"{key}.max", f"must be > 0, got {radius}")
        return PairPrior(pair, "normal", value, radius, scale, fixed, support)
    return PairPrior(pair, "disk", 0.0, value, scale, fixed, support)


# ----------------------------------------------------------------------------------------------- the space


class ParameterSpace:
    """The physical and sampled vectors [B, D] of the mass parameters and shifts (see the module docstring).

    Args:
        mass_cfg: the config's `parameters` entries: theta_E, gamma, x0, y0, ellipticity, shear, multipole3,
            multipole4.
        n_exp: number of exposures.
        shift_max: bound of the uniform prior on each shift component (arcsec).
        shift_scale: preconditioner scale of the shifts (arcsec).
        fix_first_shift: hold exposure 0's shift at zero.

    Attributes: names (physical names, D), coords (sampled names, D; the same slots), free ([D] bool: the
    coordinates MALA moves).
    """

    def __init__(self, mass_cfg: Mapping[str, Mapping], n_exp: int, shift_max: float, shift_scale: float,
                 fix_first_shift: bool = True):
        if not isinstance(mass_cfg, Mapping):
            raise ParameterError(None, f"must map the entries {', '.join(CONFIG_KEYS)} to their priors, got "
                                       f"{mass_cfg!r}")
        for key in mass_cfg:  # the polar entries first: they explain the new form rather than calling it unknown
            if key in _OLD_KEYS:
                pair = _OLD_KEYS[key]
                raise ParameterError(key, f"{' and '.join(pair.physical)} are sampled as the Cartesian pair "
                                          f"({', '.join(pair.coords)}); replace their entries by one `{pair.key}: "
                                          f"{_EXAMPLE[pair.key]}` (see conf/sampler/default.yaml)")
        for key in mass_cfg:
            if key not in CONFIG_KEYS:
                close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ParameterError(key, f"unknown entry{hint}; the entries are {', '.join(CONFIG_KEYS)}")
        missing = [k for k in CONFIG_KEYS if k not in mass_cfg]
        if missing:
            raise ParameterError(None, f"missing entries {missing}; the entries are {', '.join(CONFIG_KEYS)}")
        self.scalars = {n: scalar_prior(n, mass_cfg[n]) for n in SCALARS}
        self.pairs = {k: pair_prior(k, mass_cfg[k]) for k in PAIRS}
        self.n_exp = n_exp
        self.shift_max = float(shift_max)
        self.shift_scale = float(shift_scale)
        self.fix_first_shift = bool(fix_first_shift)
        shift_names = [f"shift_{e}_{axis}" for e in range(n_exp) for axis in ("x", "y")]
        coords = {n: n for n in PARAM_NAMES}
        for pair in PAIRS.values():
            coords.update(dict(zip(pair.physical, pair.coords, strict=True)))
        self.names = list(PARAM_NAMES) + shift_names
        self.coords = [coords[n] for n in PARAM_NAMES] + shift_names
        self._index = {n: i for i, n in enumerate(self.names)}
        fixed, scale = [], []
        for n in PARAM_NAMES:
            prior = self.scalars.get(n) or next(p for p in self.pairs.values() if n in p.pair.physical)
            fixed.append(prior.fixed)
            scale.append(prior.scale)
        for e in range(n_exp):
            fixed += [fix_first_shift and e == 0] * 2
            scale += [shift_scale] * 2
        self.free = ~torch.tensor(fixed)
        self._scale = scale

    @property
    def dim(self) -> int:
        return len(self.names)

    # --- physical vectors ----------------------------------------------------------------------------------
    def vector(self, mass: Mapping[str, Tensor], shifts: Tensor) -> Tensor:
        """Physical vector [B, D] from mass {name: [B]} and shifts [B, n_exp, 2]."""
        m = torch.stack([torch.as_tensor(mass[n]) for n in PARAM_NAMES], dim=-1)
        return torch.cat([m, shifts.reshape(shifts.shape[0], -1).to(m)], dim=-1)

    def split(self, v: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Physical vector [B, D] -> (mass {name: [B]}, shifts [B, n_exp, 2])."""
        k = len(PARAM_NAMES)
        mass = {n: v[:, i] for i, n in enumerate(PARAM_NAMES)}
        return mass, v[:, k:].reshape(v.shape[0], self.n_exp, 2)

    # --- between the two vectors -----------------------------------------------------------------------------
    def to_sampled(self, v: Tensor) -> Tensor:
        """Physical [B, D] -> sampled [B, D]: each (amplitude, angle) pair to its Cartesian components."""
        u = v.clone()
        for pair in PAIRS.values():
            i, j = (self._index[n] for n in pair.physical)
            u[:, i], u[:, j] = polar_to_pair(pair, v[:, i], v[:, j])
        return u

    def to_physical(self, u: Tensor) -> Tensor:
        """Sampled [B, D] -> physical [B, D] (amplitudes >= 0, angles folded into one period); differentiable."""
        cols = list(u.unbind(-1))
        for pair in PAIRS.values():
            i, j = (self._index[n] for n in pair.physical)
            cols[i], cols[j] = pair_to_polar(pair, u[:, i], u[:, j])
        return torch.stack(cols, dim=-1)

    def unpack(self, u: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Sampled [B, D] -> the model's inputs: (mass {name: [B]}, shifts [B, n_exp, 2]), physical."""
        return self.split(self.to_physical(u))

    # --- what MALA sees ---------------------------------------------------------------------------------------
    def precond(self, like: Tensor) -> Tensor:
        """Diagonal preconditioner of the free sampled coordinates [D_free]: scale^2."""
        scale = torch.tensor(self._scale, dtype=like.dtype, device=like.device)
        return scale[self.free.to(like.device)] ** 2

    def free_part(self, u: Tensor) -> Tensor:
        """[B, D] -> [B, D_free]."""
        return u[:, self.free.to(u.device)]

    def embed(self, free: Tensor, u: Tensor) -> Tensor:
        """Put free values [B, D_free] into a copy of the full vectors u [B, D]."""
        out = u.clone()
        out[:, self.free.to(u.device)] = free
        return out

    def log_prior(self, u: Tensor) -> Tensor:
        """log prior [B] of sampled vectors u [B, D] (constants dropped); -inf outside a bound."""
        out = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        for name, prior in self.scalars.items():
            out = out + prior.log_prior(u[:, self._index[name]])
        for prior in self.pairs.values():
            i, j = (self._index[n] for n in prior.pair.physical)
            out = out + prior.log_prior(u[:, i], u[:, j])
        k = len(PARAM_NAMES)
        for e in range(self.n_exp):
            if self.fix_first_shift and e == 0:
                continue
            s = u[:, k + 2 * e: k + 2 * e + 2]
            inside = (s.abs() <= self.shift_max).all(-1)
            out = torch.where(inside, out, torch.full_like(out, -math.inf))
        return out

    def free_log_prob(self, u: Tensor, log_likelihood: Callable[[dict[str, Tensor], Tensor], Tensor]
                      ) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """MALA's target over the free coordinates of u [B, D]: free [B, D_free] -> (log prior + log_likelihood(mass,
        shifts) [B], its gradient [B, D_free]); a chain whose value is not finite gets a zero gradient (MALA rejects
        it)."""
        def log_prob(free: Tensor) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                free = free.detach().requires_grad_(True)
                full = self.embed(free, u)
                lp = self.log_prior(full) + log_likelihood(*self.unpack(full))
                ok = torch.isfinite(lp)
                (grad,) = torch.autograd.grad(torch.where(ok, lp, torch.zeros_like(lp)).sum(), free)
            return lp.detach(), grad

        return log_prob

    def outside(self, u: Tensor) -> list[str]:
        """The config entries (and shift names) whose prior is zero at some chain of u [B, D]."""
        bad = []
        for name, prior in self.scalars.items():
            if not torch.isfinite(prior.log_prior(u[:, self._index[name]])).all():
                bad.append(name)
        for key, prior in self.pairs.items():
            i, j = (self._index[n] for n in prior.pair.physical)
            ok = torch.isfinite(prior.log_prior(u[:, i], u[:, j])) & prior.in_support(u[:, i], u[:, j])
            if not ok.all():
                bad.append(key)
        k = len(PARAM_NAMES)
        for e in range(self.n_exp):
            if not (self.fix_first_shift and e == 0) and (u[:, k + 2 * e: k + 2 * e + 2].abs() > self.shift_max).any():
                bad.append(f"shift_{e}")
        return bad
