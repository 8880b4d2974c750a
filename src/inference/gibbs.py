"""The Gibbs sampler: source -> (mass, shifts) -> lens light -> PSF, for B chains at once, in stages.

One sweep at temperature T (likelihood variance inflated T times), `GibbsSampler.sweep`:

1. source block, S | M, L, P: the reverse posterior SDE (`posterior_sde.py`) from t_start, re-noising the current
   S (t_start < 1, a cheap partial chain) or from pure noise (t_start = 1);
2. mass block, (mass, shifts) | S, L, P: MALA steps on the exact (tempered) likelihood times the parameter prior,
   in the sampled coordinates of `parameters.py` (angles through Cartesian pairs: nothing is folded);
3. lens-light block, L | S, M, P: like S;
4. PSF block, P | stars: with a PSF prior (`psf/step.py`), each chain's P drawn from the stars by the reverse
   posterior SDE for every `sampler.psf.every`-th sweep (and when the chain starts; none after the run's last
   sweep); the sweep is recorded before this block, so a recorded sample's images and mass go with the P they were
   drawn under. Without a PSF prior, the given PSFs (co-adds) or the ePSFs built from the exposures' stars are held
   fixed.

Each block gets what it conditions on as arguments: the current state, and the forward model's PSF kernels,
computed once per sweep from P. MALA's step sizes carry over from sweep to sweep and from stage to stage (rescaled
to each sweep's temperature), while its Robbins-Monro adaptation restarts at each stage's first sweep, so that
every stage's burn-in adapts from scratch.

The stages and their schedules are in `stages.py`; the state, random generator included, in `state.py`, written
after every sweep by the caller: a run killed and resumed continues exactly where it was.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..errors import InputError
from ..lensing.forward import ForwardModel
from .distributed import Ranks, gather_record, gather_state, merge_metrics, shard_state
from .gaussian_draw import gaussian_draw
from .likelihood import GaussianLikelihood
from .mala import MALA, MALATuning
from .mass_in_draw import source_and_mass
from .parameters import ParameterSpace
from .posterior_sde import FluxMap, sample_component
from .psf.step import PSFModel
from .sde_settings import SDESettings
from .split import SplitSettings, collapsed_log_likelihood, coupling, denoise
from .stages import Stage
from .state import SamplerState

log = logging.getLogger(__name__)


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
    """Runs sweeps and stages of `problem` on a `SamplerState` (see `initial_state`).

    mala_step: the chains' initial MALA step size (units of the preconditioner's scales); target_accept: the
    acceptance rate burn-in adapts the step sizes toward. ranks: this process's place when the chains are spread
    over several processes (`distributed.py`): sweeps then run on the state's block of chains (`shard_state`),
    metrics and records cover all chains, and `run` branches and reseeds on all chains.
    """

    def __init__(self, problem: Problem, mala_step: float = 0.5, target_accept: float = 0.574,
                 split: SplitSettings | None = None, ranks: Ranks | None = None):
        self.p = problem
        self.ranks = ranks or Ranks()
        self.mala_step = mala_step
        self.target_accept = target_accept
        self.split = split or SplitSettings()
        self.precond = problem.space.precond(problem.psf)

    def initial_state(self, init: Mapping[str, float | Tensor], chains: int, seed: int, source: Tensor | None = None,
                      lens_light: Tensor | None = None) -> SamplerState:
        """Chains at the initial mass model `init` (physical parameters by their DESIGN.md names, as a lens
        config's `init` gives them, each a number or [B] one per chain; converted to the sampled coordinates, where
        fixed ones stay) with zero shifts, and the images `source` [B, n, n] and `lens_light` [B, m, m] (None:
        zeros); generator seeded from `seed`; with a PSF model, each chain's first P drawn from it. InputError when
        the start lies outside the prior of a free parameter."""
        ref, model, space = self.p.psf, self.p.model, self.p.space
        mass = {k: torch.as_tensor(v, dtype=ref.dtype, device=ref.device).expand(chains).clone()
                for k, v in init.items()}
        shifts = torch.zeros(chains, model.n_exp, 2, dtype=ref.dtype, device=ref.device)
        u = space.to_sampled(space.vector(mass, shifts))
        outside = space.outside(u)
        if outside:
            raise InputError(f"the start (lens.init) lies outside the prior of sampler.parameters {outside}; move "
                             f"the start or widen the prior")
        gen = torch.Generator(device=ref.device).manual_seed(int(seed))

        def image(given: Tensor | None, n: int) -> Tensor:
            if given is None:
                return torch.zeros(chains, n, n, dtype=ref.dtype, device=ref.device)
            return given.to(ref).expand(chains, n, n).clone()

        psf = None if self.p.psf_model is None else self.p.psf_model.sample(None, chains, gen)
        return SamplerState(u=u, source=image(source, model.source.n), lens_light=image(lens_light, model.lens_light.n),
                            mala=MALATuning.start(chains, self.mala_step, ref.dtype, ref.device),
                            rng=gen.get_state(), psf=psf)

    def kernels(self, psf: Tensor | None) -> Tensor:
        """The forward model's PSFs: [B, n_exp, K, K] from each chain's P [B, G, p, p], or the fixed [n_exp, K, K]
        when psf is None."""
        return self.p.psf if psf is None else self.p.psf_model.kernels(psf)

    def model_images(self, state: SamplerState, kernels: Tensor | None = None) -> Tensor:
        """The chains' model images [B, n_exp, H, W] (kernels: `self.kernels(state.psf)` when not given)."""
        mass, shifts = self.p.space.unpack(state.u)
        return self.p.model(mass, shifts, state.source, state.lens_light,
                            self.kernels(state.psf) if kernels is None else kernels)

    # --- the blocks of a sweep: each returns the new value of what it samples ------------------------------------
    def image_block(self, kind: str, state: SamplerState, kernels: Tensor, sde: SDESettings, temperature: float,
                    t_start: float, gen: torch.Generator) -> Tensor:
        """New `kind` ("source" or "lens_light") images [B, n, n] given the rest of `state`; the current ones
        when that component has no prior."""
        current = getattr(state, kind)
        prior = self.p.priors.get(kind)
        if prior is None:
            return current
        mass, shifts = self.p.space.unpack(state.u)
        to_source = self.p.model.source_operator(mass, shifts, kernels)
        to_light = self.p.model.lens_light_operator(shifts, kernels)
        if kind == "source":
            op, rest = to_source, to_light(state.lens_light)
        else:
            op, rest = to_light, to_source(state.source)
        flux = self.p.flux[kind]
        t_min = sde.end_time(prior.sde, temperature, self.p.noise, flux.scale, t_start)
        return sample_component(prior, self.p.likelihood, op, rest, flux, sde,
                                x_start=None if t_start >= 1.0 else current, t_start=t_start, t_min=t_min,
                                temperature=temperature, generator=gen)

    def source_mass_block(self, state: SamplerState, kernels: Tensor, stage: Stage, temperature: float,
                          t_start: float, gen: torch.Generator) -> dict:
        """The source block with `stage.mass_in_draw` MALA steps on the mass and shifts before each step of its
        reverse SDE (`mass_in_draw.py`), in place (state.source, state.u); returns the in-draw acceptance rate."""
        prior = self.p.priors["source"]
        t_min = stage.sde.end_time(prior.sde, temperature, self.p.noise, self.p.flux["source"].scale, t_start)
        tuning = state.mala.at_temperature(temperature)
        state.source, state.u, acc, prop = source_and_mass(
            self.p, self.precond, state.u, state.lens_light, kernels, stage.sde,
            x_start=None if t_start >= 1.0 else state.source, t_start=t_start, t_min=t_min, temperature=temperature,
            step=tuning.step, mala_steps=stage.mass_in_draw, target_accept=self.target_accept, generator=gen,
            covariance=self.split.covariance)
        return {"draw_acceptance": float(acc.sum() / prop.sum().clamp(min=1))}

    def mass_block(self, state: SamplerState, kernels: Tensor, stage: Stage, temperature: float, adapt: bool,
                   gen: torch.Generator, rho: Mapping[str, float] | None = None) -> tuple[Tensor, MALATuning]:
        """`stage.mala_steps` MALA steps on the free sampled coordinates of the mass and shifts given the images,
        kernels and temperature: the new sampled vector [B, D] and MALA's tuning (as `state.mala`'s, rescaled to
        `temperature`). With `rho` (split Gibbs: the coupling noise of each split image, flux units), the images
        are the clean copies z and their noisy copies are integrated out (`split.collapsed_log_likelihood`)."""
        space, model, likelihood = self.p.space, self.p.model, self.p.likelihood
        u0, source, lens_light = state.u, state.source, state.lens_light
        images = {"source": source, "lens_light": lens_light}

        def log_likelihood(mass, shifts):
            if rho:
                return collapsed_log_likelihood(model, likelihood, mass, shifts, images, rho, kernels, temperature,
                                                self.split.covariance)
            return likelihood.log_prob(model(mass, shifts, source, lens_light, kernels), temperature)

        log_prob = space.free_log_prob(u0, log_likelihood)
        kernel = MALA(log_prob, self.precond, target_accept=self.target_accept)
        chain = kernel.resume(space.free_part(u0), state.mala.at_temperature(temperature))
        chain = kernel.run(chain, stage.mala_steps, gen, adapt=adapt)
        return space.embed(chain.x, u0), chain.tuning(temperature)

    def split_blocks(self, state: SamplerState, kernels: Tensor, stage: Stage, k: int, temperature: float,
                     gen: torch.Generator) -> None:
        """The blocks of a split-Gibbs sweep (`split.py`), in place: (mass, shifts) | z with the noisy copies x
        integrated out, x | z, mass (an exact Gaussian draw, source and lens light jointly), then z | x (each
        prior's reverse SDE from the coupling's noise level). Images without a prior stay fixed."""
        r = coupling(stage.rho_at(k), temperature, self.p.noise)
        kinds = [kind for kind in ("source", "lens_light") if self.p.priors.get(kind) is not None]
        rho = {kind: r for kind in kinds}
        state.u, state.mala = self.mass_block(state, kernels, stage, temperature, stage.adapts(k), gen, rho=rho)
        if not kinds:
            return
        mass, shifts = self.p.space.unpack(state.u)
        ops = {"source": self.p.model.source_operator(mass, shifts, kernels),
               "lens_light": self.p.model.lens_light_operator(shifts, kernels)}
        lk = self.p.likelihood
        rest = torch.zeros_like(lk.data).expand(state.chains, *lk.data.shape)
        for kind in ("source", "lens_light"):
            if kind not in kinds:
                rest = rest + ops[kind](getattr(state, kind))
        tv = temperature * lk.variance
        x = gaussian_draw([ops[kind] for kind in kinds], [getattr(state, kind) for kind in kinds],
                          [rho[kind] for kind in kinds], lk.data, rest, lk.mask / tv, tv.sqrt(), gen,
                          self.split.cg_tol, self.split.cg_max_iter)
        for kind, xi in zip(kinds, x, strict=True):
            setattr(state, kind, denoise(self.p.priors[kind], self.p.flux[kind], xi, rho[kind], stage.sde, gen))

    def psf_block(self, state: SamplerState, gen: torch.Generator) -> Tensor:
        """Each chain's new P [B, G, p, p] from the stars; a chain whose draw is not finite keeps its P rather than
        poisoning its images."""
        new = self.p.psf_model.sample(state.psf, state.chains, gen)
        ok = torch.isfinite(new).flatten(1).all(1)
        return torch.where(ok[:, None, None, None], new, state.psf)

    # --- sweeps and stages -------------------------------------------------------------------------------------
    @torch.no_grad()
    def sweep(self, state: SamplerState, stage: Stage, k: int, next_sweep: bool = True) -> dict:
        """Sweep k of `stage`, in place; returns its metrics (reduced chi^2 per exposure, acceptance, ...).
        `next_sweep`: whether another sweep follows (the PSF block draws the P it will run under, when due)."""
        gen = state.generator()
        temperature, t_start = stage.temperature_at(k), stage.t_start_at(k)
        kernels = self.kernels(state.psf)
        if k == 0:
            state.mala = stage_tuning(state.mala)
        before = state.mala
        metrics_extra = {}
        if stage.rho is not None:
            self.split_blocks(state, kernels, stage, k, temperature, gen)
        else:
            if stage.mass_in_draw and self.p.priors.get("source") is not None:
                metrics_extra = self.source_mass_block(state, kernels, stage, temperature, t_start, gen)
            else:
                state.source = self.image_block("source", state, kernels, stage.sde, temperature, t_start, gen)
            state.u, state.mala = self.mass_block(state, kernels, stage, temperature, stage.adapts(k), gen)
            state.lens_light = self.image_block("lens_light", state, kernels, stage.sde, temperature, t_start, gen)
        metrics = self.metrics(state, kernels, before, stage, k, temperature)
        metrics.update(metrics_extra)
        metrics = merge_metrics(metrics, state.chains, self.ranks)
        if stage.records(k):
            state.records.append(gather_record(state.record(self.p.space.to_physical(state.u)), self.ranks))
        state.history.append(metrics)
        if next_sweep and self.p.psf_model is not None and self.p.psf_model.due(state.done):
            state.psf = self.psf_block(state, gen)
        state.rng = gen.get_state()
        return metrics

    def metrics(self, state: SamplerState, kernels: Tensor, before: MALATuning, stage: Stage, k: int,
                temperature: float) -> dict:
        """One sweep's metrics: reduced chi^2 per exposure (mean over chains), each chain's chi^2 over all used
        pixels (`chain_chi2`), MALA's acceptance in the sweep (since `before`) and mean step, the chains' mean
        physical parameters and, with a PSF model, the stars' chi^2."""
        lk = self.p.likelihood
        chi2_all = lk.chi2(self.model_images(state, kernels))  # [B, n_exp]
        chi2 = chi2_all / lk.n_pixels
        mala = state.mala
        acc = (mala.accepted - before.accepted).sum() / (mala.proposed - before.proposed).sum().clamp(min=1)
        metrics = {"stage": stage.name, "sweep": k, "temperature": temperature, "chi2": chi2.mean(0).tolist(),
                   "chain_chi2": chi2_all.sum(-1).tolist(), "acceptance": float(acc),
                   "mala_step": float(mala.step.mean()),
                   "mass": dict(zip(self.p.space.names, self.p.space.to_physical(state.u).mean(0).tolist(),
                                    strict=True))}
        if state.psf is not None:
            metrics["psf_chi2"] = float(self.p.psf_model.reduced_chi2(state.psf).mean())
        return metrics

    def branch(self, state: SamplerState) -> SamplerState:
        """The state with one chain per recorded sweep of every chain, K B chains (record j of chain b at j B + b),
        each starting from its record's mass, shifts, images and P, with its chain's MALA step sizes; the records,
        branch points now, are cleared. The generator carries on (branching draws nothing)."""
        records = state.records
        k = len(records)
        if k == 0:
            raise InputError("a branching stage found no recorded sweeps to branch from")
        cat = lambda name: torch.cat([getattr(r, name) for r in records])  # noqa: E731
        state.u = self.p.space.to_sampled(cat("v"))
        state.source, state.lens_light = cat("source"), cat("lens_light")
        state.psf = None if records[0].psf is None else cat("psf")
        state.mala = state.mala.repeat(k)
        state.records = []
        return state

    def reseed(self, state: SamplerState, temperature: float, sigmas: float, scatter: float = 0.0) -> SamplerState:
        """Chains in clearly worse-fitting modes restart from the better chains' states, in place.

        A chain whose chi^2 (all exposures, untempered) exceeds the best chain's by more than `sigmas` times the
        larger of T sqrt(2 N) and sqrt(2) `scatter` sits where the posterior has next to no weight (its likelihood
        e^(-Delta chi^2 / 2) times smaller), so its chain is spent; it takes the state of a chain within the limit
        (mass, shifts, images, P and MALA's step sizes; the best first, in turn). N: used pixels; sqrt(2 N) is the
        standard deviation of a chi^2 of N pixels, and draws at temperature T scatter T times as much; `scatter`:
        how much a chain's own chi^2 varied from sweep to sweep (`chi2_scatter`), which is larger where the draws
        are not yet at equilibrium (a difference of two chains: sqrt(2) times it). Non-finite chi^2 counts as
        worst. Deterministic, so a run resumed before the stage's first sweep reseeds identically."""
        lk = self.p.likelihood
        chi2 = lk.chi2(self.model_images(state)).sum(-1)
        chi2 = torch.where(torch.isfinite(chi2), chi2, torch.full_like(chi2, math.inf))
        limit = chi2.min() + sigmas * max(temperature * math.sqrt(2.0 * float(lk.n_pixels.sum())),
                                          math.sqrt(2.0) * scatter)
        bad = (chi2 > limit).nonzero().flatten()
        if len(bad) == 0 or not torch.isfinite(chi2.min()):
            return state
        good = torch.argsort(chi2)[: len(chi2) - len(bad)]
        index = torch.arange(len(chi2), device=chi2.device)
        index[bad] = good[torch.arange(len(bad), device=chi2.device) % len(good)]
        reduced = (chi2 / lk.n_pixels.sum()).tolist()
        log.info("%d of %d chains fit clearly worse (reduced chi2 %s; best %.3f, limit %.3f at T = %.3g): they "
                 "restart from chains %s", len(bad), len(chi2), [round(reduced[i], 3) for i in bad.tolist()],
                 min(reduced), float(limit) / float(lk.n_pixels.sum()), temperature, index[bad].tolist())

        state.u = state.u[index]
        state.source, state.lens_light = state.source[index], state.lens_light[index]
        state.psf = None if state.psf is None else state.psf[index]
        state.mala = state.mala.take(index)
        return state

    def run(self, state: SamplerState, stages: list[Stage], save: Callable[[SamplerState], None] | None = None,
            on_sweep: Callable[[Stage, int, dict], None] | None = None) -> SamplerState:
        """Continue from `state` (its stage and sweep counters; with several processes, this rank's block:
        `distributed.shard_state`) to the end of the last stage, calling `save(state)` after every sweep. A
        branching stage (`Stage.branch`) first turns the records into chains (`branch`), and a stage with `reseed`
        restarts the chains of clearly worse-fitting modes from the better ones (`reseed`; after branching), both on
        all chains; a run killed before such a stage's first sweep is saved does both again from the same state,
        identically."""
        while state.stage < len(stages):
            stage = stages[state.stage]
            if stage.branch and state.sweep == 0:
                state = shard_state(self.branch(gather_state(state, self.ranks)), self.ranks)
            if stage.reseed is not None and state.sweep == 0 and state.stage > 0:  # the first has none to compare
                before = stages[state.stage - 1]
                state = shard_state(self.reseed(gather_state(state, self.ranks),
                                                before.temperature_at(before.sweeps - 1), stage.reseed,
                                                chi2_scatter(state.history, before.name)), self.ranks)
            while state.sweep < stage.sweeps:
                k = state.sweep
                last = state.stage == len(stages) - 1 and k == stage.sweeps - 1
                metrics = self.sweep(state, stage, k, next_sweep=not last)
                state.sweep = k + 1
                if save is not None:
                    save(state)
                if on_sweep is not None:
                    on_sweep(stage, k, metrics)
            state.stage += 1
            state.sweep = 0
            if save is not None:
                save(state)
        return state


def stage_tuning(tuning: MALATuning) -> MALATuning:
    """MALA's tuning at a stage's first sweep: the step sizes the previous stage ended with (the starting point;
    the mass block rescales them to the sweep's temperature) and the counters, with the Robbins-Monro adaptation
    restarted, so that the stage's burn-in adapts with the recursion's full gain rather than with the small one the
    earlier stages' steps left (k^-0.6 after hundreds of steps)."""
    return tuning.restart()


def chi2_scatter(history: list[dict], stage: str, last: int = 5) -> float:
    """How much a chain's chi^2 varies from sweep to sweep at the end of `stage`: the median over chains of the
    standard deviation of each chain's chi^2 (`chain_chi2` of the metrics) over the stage's last `last` sweeps of
    `history`; 0 with fewer than two such sweeps."""
    rows = [m["chain_chi2"] for m in history if m.get("stage") == stage and "chain_chi2" in m][-last:]
    if len(rows) < 2 or len({len(r) for r in rows}) != 1:
        return 0.0
    values = torch.tensor(rows, dtype=torch.float64)
    sd = values.std(0)
    sd = sd[torch.isfinite(sd)]
    return float(sd.quantile(0.5)) if len(sd) else 0.0
