"""The Gibbs sampler: source -> (mass, shifts) -> lens light -> PSF, for B chains at once, in stages.

One sweep at temperature T (likelihood variance inflated T times):

1. source S | rest: the reverse posterior SDE (`posterior_sde.py`) from t_start, re-noising the current S (t_start
   < 1, a cheap partial chain) or from pure noise (t_start = 1);
2. mass and shifts | S, L, P: `mala_steps` MALA steps on the exact (tempered) likelihood times the parameter prior;
3. lens light L | rest: like S;
4. PSFs P | stars: with a PSF prior (`psf/step.py`), each chain's P drawn from the stars by the reverse posterior SDE
   when the chain starts and every `sampler.psf.every` sweeps, as the next sweep opens (so a recorded sweep's
   images and mass go with the P they were drawn under); without one, the given PSFs (co-adds) or the ePSFs built
   from the exposures' stars, held fixed.

Stages come from the config (`conf/sampler/`): each has a number of sweeps, a temperature schedule (geometric from
`temperature[0]` to `temperature[1]`), SDE settings, MALA settings, how many of its first sweeps are burn-in (MALA
step sizes adapt there), and how many of its last sweeps are recorded as posterior samples. The whole state,
random generator included, is a plain dict of tensors, written atomically after every sweep by the caller: a run
killed and resumed continues exactly where it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..errors import InputError
from ..lensing.forward import ForwardModel
from ..priors.sampling import PREDICTORS
from .likelihood import GaussianLikelihood
from .mala import MALA, MALAState
from .parameters import ParameterSpace
from .posterior_sde import FluxMap, sample_component
from .psf.step import PSFModel


@dataclass(frozen=True)
class Stage:
    """Settings of one stage (see the module docstring); temperatures are (first sweep, last sweep)."""

    name: str
    sweeps: int
    temperature: tuple[float, float] = (1.0, 1.0)
    t_start: float = 0.3
    first_t_start: float | None = None
    sde_steps: int = 30
    predictor: str = "euler_maruyama"
    sigma_end: float | None = None
    corrector_steps: int = 1
    snr: float = 0.16
    covariance: str = "diag"
    mala_steps: int = 10
    burn_in: int = 0
    record: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping) -> Stage:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise InputError(f"stage {cfg.get('name')!r}: unknown setting(s) {unknown}; known: {sorted(known)}")
        cfg = dict(cfg)
        t = cfg.get("temperature", 1.0)
        cfg["temperature"] = (float(t), float(t)) if isinstance(t, int | float) else tuple(float(v) for v in t)
        stage = cls(**cfg)
        if stage.sweeps < 1 or not 0 <= stage.burn_in <= stage.sweeps or not 0 <= stage.record <= stage.sweeps:
            raise InputError(f"stage {stage.name!r}: need sweeps >= 1 and 0 <= burn_in, record <= sweeps")
        if min(stage.temperature) < 1.0:
            raise InputError(f"stage {stage.name!r}: temperatures must be >= 1 (1 is the true likelihood)")
        if not 0 < stage.t_start <= 1:
            raise InputError(f"stage {stage.name!r}: t_start must be in (0, 1]")
        if stage.predictor not in PREDICTORS:
            raise InputError(f"stage {stage.name!r}: predictor must be one of {PREDICTORS}, got {stage.predictor!r}")
        if stage.sigma_end is not None and not stage.sigma_end > 0:
            raise InputError(f"stage {stage.name!r}: sigma_end must be > 0 or null")
        if stage.record and stage.burn_in > stage.sweeps - stage.record:
            raise InputError(f"stage {stage.name!r}: burn-in sweeps (MALA adapting) overlap the recorded ones; "
                             f"need burn_in <= sweeps - record")
        return stage

    def temperature_at(self, k: int) -> float:
        """Geometric schedule over the stage's sweeps."""
        t0, t1 = self.temperature
        if self.sweeps == 1:
            return t1
        f = k / (self.sweeps - 1)
        return math.exp((1 - f) * math.log(t0) + f * math.log(t1))


@dataclass
class Problem:
    """What stays fixed while sampling: the forward model, likelihood, parameter space, priors and flux maps.

    priors: {"source": ScorePrior, "lens_light": ScorePrior or None}; flux: {"source": FluxMap, ...};
    psf: [n_exp, K, K] PSFs on the model's supersampled grid (the fixed ones; with `psf_model` each chain's own).
    psf_model: the PSF step (`psf.step.PSFModel`), or None to hold `psf` fixed.
    """

    model: ForwardModel
    likelihood: GaussianLikelihood
    space: ParameterSpace
    priors: Mapping[str, object]
    flux: Mapping[str, FluxMap]
    psf: Tensor
    psf_model: PSFModel | None = None

    @cached_property
    def noise(self) -> float:
        """Median noise standard deviation of the used pixels, data units."""
        lk = self.likelihood
        return float(lk.variance[lk.mask].sqrt().median())


class GibbsSampler:
    """Runs sweeps and stages on a state dict (see `initial_state`)."""

    def __init__(self, problem: Problem, mala_step: float = 0.5, target_accept: float = 0.574):
        self.p = problem
        self.mala_step = mala_step
        self.kernel = MALA(self._log_prob, problem.space.precond(problem.psf), target_accept=target_accept,
                           wrap=self._wrap)
        self._ctx: dict = {}
        self._kernels: tuple[Tensor, Tensor] | None = None

    # --- state -----------------------------------------------------------------------------------------------
    def initial_state(self, init: Mapping[str, float], chains: int, seed: int) -> dict:
        """Chains at the initial mass model with zero shifts and empty images; generator seeded from `seed`."""
        ref = self.p.psf
        mass = {k: torch.full((chains,), float(v), dtype=ref.dtype, device=ref.device) for k, v in init.items()}
        shifts = torch.zeros(chains, self.p.model.n_exp, 2, dtype=ref.dtype, device=ref.device)
        v = self.p.space.wrap(self.p.space.vector(mass, shifts))
        gen = torch.Generator(device=ref.device).manual_seed(int(seed))
        state = {
            "v": v,
            "source": torch.zeros(chains, self.p.model.source.n, self.p.model.source.n, dtype=ref.dtype,
                                  device=ref.device),
            "lens_light": torch.zeros(chains, self.p.model.lens_light.n, self.p.model.lens_light.n,
                                      dtype=ref.dtype, device=ref.device),
            "mala_step": torch.full((chains,), self.mala_step, dtype=ref.dtype, device=ref.device),
            "accepted": torch.zeros(chains, dtype=torch.long, device=ref.device),
            "proposed": torch.zeros(chains, dtype=torch.long, device=ref.device),
            "nonfinite": torch.zeros(chains, dtype=torch.long, device=ref.device),
            "stage": 0,
            "sweep": 0,
            "rng": gen.get_state(),
            "records": [],
            "history": [],
        }
        if self.p.psf_model is not None:
            state["psf"] = self.p.psf_model.sample(None, chains, gen)
            state["rng"] = gen.get_state()
        return state

    def generator(self, state: dict) -> torch.Generator:
        gen = torch.Generator(device=self.p.psf.device)
        gen.set_state(state["rng"])
        return gen

    # --- pieces of a sweep -----------------------------------------------------------------------------------
    def kernels(self, state: dict) -> Tensor:
        """The forward model's PSFs: [B, n_exp, K, K] from each chain's P, or the fixed [n_exp, K, K]."""
        if self.p.psf_model is None or "psf" not in state:
            return self.p.psf
        # a sweep asks several times while P stays the same tensor (a draw replaces it): map it once per draw
        psf = state["psf"]
        if self._kernels is None or self._kernels[0] is not psf:
            self._kernels = (psf, self.p.psf_model.kernels(psf))
        return self._kernels[1]

    def model_images(self, state: dict) -> Tensor:
        mass, shifts = self.p.space.split(state["v"])
        return self.p.model(mass, shifts, state["source"], state["lens_light"], self.kernels(state))

    def _log_prob(self, free: Tensor) -> tuple[Tensor, Tensor]:
        ctx = self._ctx
        with torch.enable_grad():
            free = free.detach().requires_grad_(True)
            v = self.p.space.embed(free, ctx["v"])
            lp = self.p.space.log_prior(v)
            mass, shifts = self.p.space.split(v)
            model = self.p.model(mass, shifts, ctx["source"], ctx["lens_light"], ctx["psf"])
            lp = lp + self.p.likelihood.log_prob(model, ctx["temperature"])
            ok = torch.isfinite(lp)
            (grad,) = torch.autograd.grad(torch.where(ok, lp, torch.zeros_like(lp)).sum(), free)
        return lp.detach(), grad

    def _wrap(self, free: Tensor) -> Tensor:
        v = self.p.space.embed(free, self._ctx["v"])
        return self.p.space.free_part(self.p.space.wrap(v))

    def update_mass(self, state: dict, stage: Stage, temperature: float, adapt: bool, gen: torch.Generator) -> None:
        self._ctx = {"v": state["v"], "source": state["source"], "lens_light": state["lens_light"],
                     "temperature": temperature, "psf": self.kernels(state)}
        # the conditional's width scales as sqrt(T) where the likelihood dominates: carry the adapted step along
        # the temperature schedule rather than leaving it tuned to an earlier, hotter sweep
        prev = state.get("mala_temperature")
        if prev is not None and prev != temperature:
            state["mala_step"] = state["mala_step"] * math.sqrt(temperature / prev)
        state["mala_temperature"] = float(temperature)
        ms = self.kernel.init(self.p.space.free_part(state["v"]), state["mala_step"])
        ms = MALAState(ms.x, ms.log_prob, ms.grad, ms.step, state["accepted"], state["proposed"], state["nonfinite"],
                       n_adapt=int(state.get("n_adapt", 0)))
        ms = self.kernel.run(ms, stage.mala_steps, gen, adapt=adapt)
        state["v"] = self.p.space.embed(ms.x, state["v"])
        state["mala_step"], state["accepted"], state["proposed"] = ms.step, ms.accepted, ms.proposed
        state["nonfinite"], state["n_adapt"] = ms.nonfinite, ms.n_adapt
        self._ctx = {}

    def update_image(self, state: dict, kind: str, stage: Stage, temperature: float, t_start: float,
                     gen: torch.Generator) -> None:
        prior = self.p.priors.get(kind)
        if prior is None:
            return
        mass, shifts = self.p.space.split(state["v"])
        psf = self.kernels(state)
        op_s = self.p.model.source_operator(mass, shifts, psf)
        op_l = self.p.model.lens_light_operator(shifts, psf)
        if kind == "source":
            op, rest, x = op_s, op_l(state["lens_light"]), state["source"]
        else:
            op, rest, x = op_l, op_s(state["source"]), state["lens_light"]
        t_min = 1e-5
        if stage.sigma_end is not None:
            # end where the diffusion noise is a fraction of the (tempered) data noise: below it the likelihood
            # fixes the image and further steps barely move it
            sigma = stage.sigma_end * math.sqrt(temperature) * self.p.noise / self.p.flux[kind].scale
            t_min = float(prior.sde.t_of_sigma(torch.tensor(sigma, dtype=torch.float64)))
            t_min = min(max(t_min, 1e-5), 0.5 * t_start)
        state[kind] = sample_component(
            prior, self.p.likelihood, op, rest, self.p.flux[kind], x_start=None if t_start >= 1.0 else x,
            t_start=t_start, t_min=t_min, steps=stage.sde_steps, corrector_steps=stage.corrector_steps, snr=stage.snr,
            predictor=stage.predictor,
            temperature=temperature, covariance=stage.covariance, generator=gen,
        )

    @torch.no_grad()
    def sweep(self, state: dict, stage: Stage, k: int) -> dict:
        """Sweep k of `stage`, in place; returns per-sweep metrics (reduced chi^2 per exposure, acceptance)."""
        gen = self.generator(state)
        temperature = stage.temperature_at(k)
        t_start = stage.first_t_start if (k == 0 and stage.first_t_start is not None) else stage.t_start
        acc0, prop0 = state["accepted"].clone(), state["proposed"].clone()
        if self.p.psf_model is not None and self.p.psf_model.due(len(state["history"])):
            # P closes the previous sweep (S -> M -> L -> P); drawn here, the images and mass of this sweep, and
            # its record, go with the P they were drawn under
            new = self.p.psf_model.sample(state["psf"], state["v"].shape[0], gen)
            # a chain whose draw is not finite keeps its PSFs rather than poisoning its images
            ok = torch.isfinite(new).flatten(1).all(1)
            state["psf"] = torch.where(ok[:, None, None, None], new, state["psf"])
        self.update_image(state, "source", stage, temperature, t_start, gen)
        self.update_mass(state, stage, temperature, adapt=k < stage.burn_in, gen=gen)
        self.update_image(state, "lens_light", stage, temperature, t_start, gen)
        state["rng"] = gen.get_state()
        chi2 = self.p.likelihood.reduced_chi2(self.model_images(state))
        acc = (state["accepted"] - acc0).sum() / (state["proposed"] - prop0).sum().clamp(min=1)
        metrics = {"stage": stage.name, "sweep": k, "temperature": temperature,
                   "chi2": chi2.mean(0).tolist(), "acceptance": float(acc),
                   "mala_step": float(state["mala_step"].mean()),
                   "mass": dict(zip(self.p.space.names, state["v"].mean(0).tolist(), strict=True))}
        if "psf" in state:
            metrics["psf_chi2"] = float(self.p.psf_model.reduced_chi2(state["psf"]).mean())
        if k >= stage.sweeps - stage.record:
            record = {"v": state["v"].clone(), "source": state["source"].clone(),
                      "lens_light": state["lens_light"].clone()}
            if "psf" in state:
                record["psf"] = state["psf"].clone()
            state["records"].append(record)
        state["history"].append(metrics)
        return metrics

    def run(self, state: dict, stages: list[Stage], save: Callable[[dict], None] | None = None,
            on_sweep: Callable[[Stage, int, dict], None] | None = None) -> dict:
        """Continue from `state` (stage and sweep counters inside it) to the end of the last stage, calling
        `save(state)` after every sweep."""
        while state["stage"] < len(stages):
            stage = stages[state["stage"]]
            while state["sweep"] < stage.sweeps:
                k = state["sweep"]
                metrics = self.sweep(state, stage, k)
                state["sweep"] = k + 1
                if save is not None:
                    save(state)
                if on_sweep is not None:
                    on_sweep(stage, k, metrics)
            state["stage"] += 1
            state["sweep"] = 0
            if save is not None:
                save(state)
        return state
