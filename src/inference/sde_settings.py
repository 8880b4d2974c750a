"""How one image is drawn by the reverse posterior SDE: the settings that the Gibbs stages and the PSF step share.

In conf/sampler/, `sampler.sde` holds them once; every stage's `sde` block and `sampler.psf.sde` override only what
differs (`SDESettings.from_config(shared).override(block, where)`). Every value is checked here, in one place: a
typo or a bad value is a one-line `InputError` that names the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

from ..errors import InputError
from ..priors.predictors import PREDICTORS
from ..priors.sde import VESDE

COVARIANCES = ("diag", "rowsum")


class SettingError(InputError):
    """A bad value of one setting: `key` names it, `reason` says what is wrong."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key} {reason}")
        self.key, self.reason = key, reason


def as_int(key: str, value, minimum: int) -> int:
    """`value` as an int >= minimum (a float with an integral value passes), else a SettingError."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingError(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def as_float(key: str, value, optional: bool = False) -> float | None:
    """`value` as a finite float (None passes when `optional`), else a SettingError."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SettingError(key, f"must be a number{' or null' if optional else ''}, got {value!r}")
    return float(value)


def check_keys(cfg: Mapping, known, where: str) -> None:
    """One line naming the keys of `cfg` that are not in `known`."""
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class SDESettings:
    """The reverse posterior SDE of one image draw (`posterior_sde.sample_component`).

    steps: predictor steps, uniform in diffusion time t from the start to the end of the draw.
    predictor: euler_maruyama, heun or reverse_diffusion (`scorelens.priors.predictors`).
    corrector_steps: Langevin corrector steps after each predictor step; snr: their signal-to-noise ratio.
    covariance: what stands for A A^T in the convolved likelihood, diag or rowsum (`posterior_sde.posterior_score`).
    t_start: where a draw starts: 1 draws afresh from pure noise; less re-noises the current image to that time
        (a partial chain: cheaper, and correlated with the current image).
    t_min: where a draw ends (the remaining noise sigma(t_min), in the prior's network units, is then denoised).
    sigma_end: null, or end where the diffusion noise falls to this fraction of the (tempered) data noise, in the
        prior's units (no earlier than t_min, no later than t_start / 2); the lens images' blocks only.
    """

    steps: int = 100
    predictor: str = "euler_maruyama"
    corrector_steps: int = 0
    snr: float = 0.16
    covariance: str = "rowsum"
    t_start: float = 1.0
    t_min: float = 1e-5
    sigma_end: float | None = None

    def __post_init__(self):
        as_int("steps", self.steps, 1)
        as_int("corrector_steps", self.corrector_steps, 0)
        if self.predictor not in PREDICTORS:
            raise SettingError("predictor", f"must be one of {PREDICTORS}, got {self.predictor!r}")
        if self.covariance not in COVARIANCES:
            raise SettingError("covariance", f"must be one of {COVARIANCES}, got {self.covariance!r}")
        if not as_float("snr", self.snr) > 0:
            raise SettingError("snr", f"must be > 0, got {self.snr}")
        if not 0 < as_float("t_min", self.t_min) < 1:
            raise SettingError("t_min", f"must be in (0, 1), got {self.t_min}")
        if not self.t_min < as_float("t_start", self.t_start) <= 1:
            raise SettingError("t_start", f"must be in (t_min, 1] = ({self.t_min}, 1], got {self.t_start}")
        sigma_end = as_float("sigma_end", self.sigma_end, optional=True)
        if sigma_end is not None and not sigma_end > 0:
            raise SettingError("sigma_end", f"must be > 0 or null, got {sigma_end}")

    @classmethod
    def from_config(cls, cfg: Mapping | None, where: str = "sampler.sde") -> SDESettings:
        """The settings of `cfg` (missing keys: the defaults above); `where` names it in errors."""
        return cls().override(cfg, where)

    def override(self, cfg: Mapping | None, where: str) -> SDESettings:
        """These settings with the values of `cfg` (a partial mapping) in place of their own; `where` names `cfg`
        in errors, e.g. "sampler.stages.anneal.sde"."""
        cfg = dict(cfg or {})
        check_keys(cfg, [f.name for f in fields(self)], where)
        try:
            numbers = {"steps": lambda k, v: as_int(k, v, 1), "corrector_steps": lambda k, v: as_int(k, v, 0),
                       "snr": as_float, "t_start": as_float, "t_min": as_float,
                       "sigma_end": lambda k, v: as_float(k, v, optional=True)}
            values = {k: numbers[k](k, v) if k in numbers else v for k, v in cfg.items()}
            return replace(self, **values)
        except SettingError as e:
            raise InputError(f"{where}.{e.key} {e.reason}") from None

    def end_time(self, sde: VESDE, temperature: float, noise: float, scale: float, t_start: float) -> float:
        """Where an image draw starting at `t_start` ends: t_min, or with `sigma_end` the time at which the
        diffusion noise is sigma_end sqrt(T) times the data noise `noise` (data units), in network units (`scale`
        data units per network unit), kept within [t_min, t_start / 2]."""
        if self.sigma_end is None:
            return self.t_min
        # below this noise the (tempered) likelihood fixes the image and further steps barely move it
        sigma = self.sigma_end * math.sqrt(temperature) * noise / scale
        t_end = float(sde.t_of_sigma(torch.tensor(sigma, dtype=torch.float64)))
        return min(max(t_end, self.t_min), 0.5 * t_start)
