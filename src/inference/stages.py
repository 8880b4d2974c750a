"""The stages of a Gibbs run and their schedules (conf/sampler/: `sampler.stages`).

`sampler.stages` maps stage names to their settings and runs them in the mapping's order; an experiment or a user
changes one stage by its name (`sampler.stages.anneal.sweeps=40`) and removes one by setting it to null. A stage
runs `sweeps` sweeps:

- temperature: [first sweep, last sweep], geometric in between (a number: constant); the likelihood's variance is
  inflated that many times, 1 being the true likelihood;
- sde: the image blocks' reverse-SDE settings, `sampler.sde` with this block's values in place (`sde_settings.py`);
  first_t_start: the start time of the stage's first sweep when it differs from `sde.t_start`;
- mala_steps: MALA steps on the mass and shifts per sweep; burn_in: the first sweeps, where MALA adapts its step
  sizes (never recorded); record: the last sweeps, kept as posterior samples;
- branch: true starts the stage with one chain from each recorded sweep of every chain of the previous stage
  (B x record chains; the paper's fine-tuning of every annealed sample): those records are the branch points,
  not posterior samples;
- rho: null, the images drawn by the reverse posterior SDE given the mass and the mass given the images; or
  [first sweep, last sweep] (geometric; a number: constant), split Gibbs (`split.py`) with coupling noise rho
  times the tempered data noise, the mass updated with the images integrated out;
- mass_in_draw: MALA steps on the mass and shifts before each predictor step of the source draw
  (`mass_in_draw.py`), which lets the mass move while the source is noisy; 0: only the mass block after it;
- reseed: null, or a number k: before the stage's first sweep (after branching), chains whose chi^2 exceeds the
  best chain's by more than k times the larger of T sqrt(2 N) (N used pixels, T the previous stage's last
  temperature) and the chains' own sweep-to-sweep chi^2 scatter restart from the better chains' states
  (`GibbsSampler.reseed`): modes whose fit is that much worse carry next to no posterior weight, and chains left
  in them would only widen the intervals with a mode the data rule out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import InputError
from .sde_settings import SDESettings, SettingError, as_float, as_int, check_keys

# a stage must say these itself: a stage whose name is misspelt in an override then fails instead of running
# with defaults beside the one it was meant to change
REQUIRED = ("sweeps", "temperature")


@dataclass(frozen=True)
class Stage:
    """Settings of one stage (see the module docstring); temperature: (first sweep, last sweep)."""

    name: str
    sweeps: int
    temperature: tuple[float, float] = (1.0, 1.0)
    sde: SDESettings = field(default_factory=SDESettings)
    first_t_start: float | None = None
    mala_steps: int = 10
    burn_in: int = 0
    record: int = 0
    rho: tuple[float, float] | None = None
    branch: bool = False
    mass_in_draw: int = 0
    reseed: float | None = None

    def __post_init__(self):
        where = f"sampler.stages.{self.name}"
        try:
            as_int("sweeps", self.sweeps, 1)
            as_int("mala_steps", self.mala_steps, 0)
            as_int("burn_in", self.burn_in, 0)
            as_int("record", self.record, 0)
            as_int("mass_in_draw", self.mass_in_draw, 0)
            first = as_float("first_t_start", self.first_t_start, optional=True)
            reseed = as_float("reseed", self.reseed, optional=True)
        except SettingError as e:
            raise InputError(f"{where}.{e.key} {e.reason}") from None
        if self.burn_in > self.sweeps or self.record > self.sweeps:
            raise InputError(f"{where}: need burn_in and record <= sweeps, got {self.burn_in}, {self.record} of "
                             f"{self.sweeps}")
        if self.record and self.burn_in > self.sweeps - self.record:
            raise InputError(f"{where}: burn-in sweeps (MALA adapting) overlap the recorded ones; need burn_in <= "
                             f"sweeps - record")
        if len(self.temperature) != 2 or not min(self.temperature) >= 1.0:
            raise InputError(f"{where}.temperature: temperatures must be >= 1 (1 is the true likelihood), got "
                             f"{list(self.temperature)}")
        if self.rho is not None and (len(self.rho) != 2 or not min(self.rho) > 0):
            raise InputError(f"{where}.rho: the coupling noise must be > 0 (a number or [first, last]) or null, got "
                             f"{list(self.rho)}")
        if self.rho is not None and self.sde.predictor == "heun":
            raise InputError(f"{where}.sde.predictor: split Gibbs draws the images by the prior's reverse SDE from "
                             f"the coupling's noise, which the deterministic heun cannot do; use euler_maruyama or "
                             f"reverse_diffusion")
        if self.mass_in_draw and self.rho is not None:
            raise InputError(f"{where}: mass_in_draw moves the mass inside the posterior-SDE source draw, which a "
                             f"split-Gibbs stage (rho) does not run; set one of them")
        if reseed is not None and not reseed > 0:
            raise InputError(f"{where}.reseed: the limit (standard deviations of chi^2) must be > 0, or null to keep "
                             f"every chain, got {reseed}")
        if first is not None and not self.sde.t_min < first <= 1:
            raise InputError(f"{where}.first_t_start must be in (t_min, 1] = ({self.sde.t_min}, 1], got {first}")

    @classmethod
    def from_config(cls, name: str, cfg: Mapping, sde: SDESettings | None = None) -> Stage:
        """The stage `name` from its config block; its `sde` block overrides `sde` (the shared `sampler.sde`)."""
        where = f"sampler.stages.{name}"
        if not isinstance(cfg, Mapping):
            raise InputError(f"{where} must be a mapping of settings (or null to leave the stage out), got {cfg!r}")
        cfg = dict(cfg)
        check_keys(cfg, [f for f in cls.__dataclass_fields__ if f != "name"], where)
        missing = [k for k in REQUIRED if k not in cfg]
        if missing:
            raise InputError(f"{where}: missing {missing}; a stage gives its sweeps and temperature (to change a stage "
                             f"of conf/sampler/, spell its name as there)")
        cfg["sde"] = (sde or SDESettings()).override(cfg.get("sde"), f"{where}.sde")
        try:
            for key in ("temperature", "rho"):
                t = cfg.get(key)
                if t is None:
                    continue
                pair = [t, t] if not isinstance(t, list | tuple) else list(t)
                cfg[key] = tuple(as_float(key, v) for v in pair)
        except SettingError as e:
            raise InputError(f"{where}.{e.key} {e.reason}") from None
        return cls(name=str(name), **cfg)

    def temperature_at(self, k: int) -> float:
        """Temperature of sweep k: geometric from temperature[0] to temperature[1] over the stage's sweeps."""
        return _geometric(self.temperature, k, self.sweeps)

    def rho_at(self, k: int) -> float | None:
        """Coupling noise of split Gibbs in sweep k (multiples of the tempered data noise), geometric from rho[0]
        to rho[1]; None when the stage does not split."""
        if self.rho is None:
            return None
        return _geometric(self.rho, k, self.sweeps)

    def t_start_at(self, k: int) -> float:
        """Diffusion time the image draws of sweep k start at."""
        return self.first_t_start if (k == 0 and self.first_t_start is not None) else self.sde.t_start

    def adapts(self, k: int) -> bool:
        """Whether MALA adapts its step sizes in sweep k (burn-in)."""
        return k < self.burn_in

    def records(self, k: int) -> bool:
        """Whether sweep k is kept as a posterior sample."""
        return k >= self.sweeps - self.record


def _geometric(pair: tuple[float, float], k: int, n: int) -> float:
    """Value at step k of n, geometric from pair[0] (k = 0) to pair[1] (k = n - 1)."""
    a, b = pair
    if n == 1:
        return b
    f = k / (n - 1)
    return math.exp((1 - f) * math.log(a) + f * math.log(b))


def stages_from_config(sampler: Mapping) -> list[Stage]:
    """The stages of `sampler` (the composed `sampler` config: `stages`, a mapping, and the shared `sde`), in
    order; stages set to null are left out."""
    stages = sampler.get("stages")
    if not isinstance(stages, Mapping):
        raise InputError("sampler.stages must map stage names to their settings, e.g. {init: {sweeps: 20, "
                         f"temperature: [100, 10]}}, got {type(stages).__name__}")
    shared = SDESettings.from_config(sampler.get("sde"), "sampler.sde")
    out = [Stage.from_config(name, cfg, shared) for name, cfg in stages.items() if cfg is not None]
    if not out:
        raise InputError("sampler.stages: no stage to run")
    check_branches(out)
    return out


def check_branches(stages: list[Stage]) -> None:
    """A branching stage needs branch points: the stage before it records (record > 0), and no earlier stage does
    (the branched chains' records would not line up with theirs)."""
    for i, stage in enumerate(stages):
        if not isinstance(stage.branch, bool):
            raise InputError(f"sampler.stages.{stage.name}.branch must be true or false, got {stage.branch!r}")
        if not stage.branch:
            continue
        if i == 0 or stages[i - 1].record == 0:
            before = "it is the first stage" if i == 0 else f"sampler.stages.{stages[i - 1].name}.record is 0"
            raise InputError(f"sampler.stages.{stage.name}.branch: the stage branches from the previous stage's "
                             f"recorded sweeps, but {before}; give the previous stage a record > 0 or set branch: "
                             f"false")
        early = [s.name for s in stages[: i - 1] if s.record]
        if early:
            raise InputError(f"sampler.stages.{stage.name}.branch: stages {early} before the branch points record "
                             f"samples of fewer chains; set their record to 0")
