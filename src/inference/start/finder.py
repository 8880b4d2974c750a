"""The start finder: where the chains begin, found from the data alone (`lens.init_from: auto`).

The pixelated source and lens light make the likelihood of a mass model nearly flat far from the truth (they absorb
what the mass gets wrong), so the chains need a start in the right basin. The finder searches it with a smaller,
semi-linear model in which everything but a few nonlinear parameters is solved exactly:

- mass: a singular isothermal ellipsoid + external shear, in Cartesian form (theta_E, e1, e2, x0, y0, gamma1,
  gamma2), with the slope and the multipoles left to the sampler;
- source: a square grid of Gaussian blobs in the source plane about a free centre (xs, ys); lens light: concentric
  elliptical Gaussians (a multi-Gaussian expansion) about a free centre with a free ellipticity. Both are linear in
  their amplitudes, which are solved for at every step with a weak Gaussian prior (`linear.py`), and the nonlinear
  parameters climb the Bayesian evidence of that linear solve by Adam, for many starts at once.
- data: the exposures binned `bin` x `bin` (`coarse.py`), the SIE in closed form, the PSF as a Gaussian of the
  same second moment, convolved analytically into the light's Gaussians and left out of the source's (its blobs are
  several times wider than the PSF core): a search step costs no FFT.

Steps: (1) the lens light alone, from a few round and elliptical starts; (2) `starts` points of a scrambled Sobol
sequence over theta_E, ellipticity, shear and the source centre (plus any catalogue model as one more seed), each
optimised; (3) the distinct modes among them, ranked by evidence, refined; (4) chains handed to the modes within
`evidence_gap` of the best, round-robin, each jittered (overdispersed) about its mode, with the lens light of the
fit as their first L.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...errors import InputError
from ...lensing.forward import ForwardModel
from ...lensing.shear import shear_deflection
from ...lensing.sie import sie_deflection
from ..likelihood import GaussianLikelihood
from ..parameters import PAIRS, pair_to_polar, polar_to_pair
from .basis import blob_centres, light_gaussians, source_blobs
from .coarse import coarse_data
from .linear import linear_fit

log = logging.getLogger(__name__)

# the nonlinear parameters of the search, and the step (Adam's learning rate) of each in its own units
NAMES = ("log_theta_E", "e1", "e2", "x0", "y0", "g1", "g2", "xs", "ys", "xl", "yl", "el1", "el2")
LIGHT = ("xl", "yl", "el1", "el2")
# the largest modulus each Cartesian pair may reach while searching (q >= 0.25; shear 0.25)
RADIUS = {("e1", "e2"): 0.6, ("g1", "g2"): 0.25, ("el1", "el2"): 0.6}
STEP = {"log_theta_E": 0.02, "e1": 0.02, "e2": 0.02, "x0": 0.01, "y0": 0.01, "g1": 0.01, "g2": 0.01,
        "xs": 0.02, "ys": 0.02, "xl": 0.005, "yl": 0.005, "el1": 0.02, "el2": 0.02}


@dataclass(frozen=True)
class StartSettings:
    """The finder's settings (conf/start/default.yaml; see there for each)."""

    starts: int = 24
    steps: int = 50
    refine_steps: int = 100
    light_steps: int = 80
    lr: float = 1.0
    theta_E: tuple[float, float] = (0.5, 2.5)
    ellipticity_max: float = 0.3
    shear_max: float = 0.08
    source_offset_max: float = 0.3
    centre_max: float = 0.5
    source_blobs: tuple[int, int] = (12, 16)
    source_fov: float = 0.6
    light_sigmas: tuple[float, float, int] = (0.03, 3.0, 8)
    source_prior: float = 3.0
    source_prior_decades: float = 3.0
    light_prior: float = 30.0
    modes: int = 4
    evidence_gap: float = 10.0
    jitter: float = 1.0
    distinct: tuple[float, float, float] = (0.01, 0.05, 0.03)
    batch: int = 16
    seed: int = 0
    bin: int = 3
    systematic: float = 0.05
    centre_mask: float = 0.3

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> StartSettings:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"start: unknown setting(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        for k in ("theta_E", "light_sigmas", "distinct", "source_blobs"):
            if k in cfg:
                cfg[k] = tuple(cfg[k])
        s = cls(**cfg)
        lo, hi = s.theta_E
        if not 0 < lo < hi:
            raise InputError(f"start.theta_E must be [low, high] with 0 < low < high, got {list(s.theta_E)}")
        if s.starts < 1 or s.modes < 1 or s.batch < 1 or min(s.source_blobs) < 2 or len(s.source_blobs) != 2:
            raise InputError("start.starts, start.modes and start.batch must be >= 1; start.source_blobs: [search, "
                             "refine], each >= 2")
        if not s.source_prior_decades >= 0:
            raise InputError(f"start.source_prior_decades must be >= 0 (0: the scale source_prior only), got "
                             f"{s.source_prior_decades}")
        return s


@dataclass
class Mode:
    """One basin found: params {NAMES: float}; log_evidence of its linear solve; chi2: reduced chi^2 of its
    best-fitting smooth model; amplitudes [K] of the source blobs then the light Gaussians."""

    params: dict[str, float]
    log_evidence: float
    chi2: float
    amplitudes: Tensor

    def mass(self) -> dict[str, float]:
        """The mode's mass in the sampler's physical parameters (slope 1, no multipoles)."""
        p = self.params
        t = lambda *v: (torch.tensor(float(x), dtype=torch.float64) for x in v)  # noqa: E731
        q, phi = (float(x) for x in pair_to_polar(PAIRS["ellipticity"], *t(p["e1"], p["e2"])))
        g, phi_ext = (float(x) for x in pair_to_polar(PAIRS["shear"], *t(p["g1"], p["g2"])))
        return {"theta_E": math.exp(p["log_theta_E"]), "gamma": 1.0, "q": q, "phi": phi, "x0": p["x0"],
                "y0": p["y0"], "gamma_ext": g, "phi_ext": phi_ext, "a3": 0.0, "phi3": 0.0, "a4": 0.0, "phi4": 0.0}


@dataclass
class StartResult:
    """modes: the distinct modes, best evidence first; seconds: the search's wall time; n_starts: starts run."""

    modes: list[Mode]
    seconds: float
    n_starts: int
    finder: StartFinder = field(repr=False)

    def table(self) -> str:
        """A few lines for the log: each mode's mass, evidence relative to the best and reduced chi^2."""
        best = self.modes[0].log_evidence
        lines = []
        for i, m in enumerate(self.modes):
            p = m.mass()
            lines.append(f"  mode {i}: theta_E {p['theta_E']:.4f}  q {p['q']:.3f}  phi {p['phi']:.3f}  "
                         f"gamma_ext {p['gamma_ext']:.3f}  centre ({p['x0']:+.3f}, {p['y0']:+.3f})  "
                         f"dlogZ {m.log_evidence - best:+.1f}  chi2 {m.chi2:.3f}")
        return "\n".join(lines)


def physical_to_search(mass: Mapping[str, float]) -> dict[str, float]:
    """A mass in physical parameters (a catalogue model, say) as the search's mass coordinates."""
    t = lambda k, default=None: torch.tensor(float(mass.get(k, default)), dtype=torch.float64)  # noqa: E731
    e1, e2 = polar_to_pair(PAIRS["ellipticity"], t("q"), t("phi"))
    g1, g2 = polar_to_pair(PAIRS["shear"], t("gamma_ext", 0.0), t("phi_ext", 0.0))
    return {"log_theta_E": math.log(float(mass["theta_E"])), "e1": float(e1), "e2": float(e2),
            "x0": float(mass.get("x0", 0.0)), "y0": float(mass.get("y0", 0.0)), "g1": float(g1), "g2": float(g2)}


class StartFinder:
    """Finds starting modes for `model`'s lens from the data in `likelihood`, with the PSF kernels `psf`
    [n_exp, K, K] (the forward model's, on its supersampled grid)."""

    def __init__(self, model: ForwardModel, likelihood: GaussianLikelihood, psf: Tensor, settings: StartSettings):
        self.s = settings
        ref = likelihood.data
        self.dtype, self.device = ref.dtype, ref.device
        self.all_data = coarse_data(model, likelihood, psf, settings.bin, settings.systematic)
        self.data = d = self.all_data
        s = settings
        lo, hi, n = s.light_sigmas
        self.sigmas = torch.logspace(math.log10(lo), math.log10(hi), int(n), dtype=ref.dtype, device=ref.device)
        # amplitude priors in data units: weak, scaled to the data's bright end (the source's: to what the lens
        # light leaves, once it is fitted, `_scale_source_prior`)
        self.peak = float(torch.quantile(d.data.float(), 0.995).clamp(min=1e-12))
        self.source_peak = self.peak
        self.use_blobs(s.source_blobs[0])

    def use_blobs(self, n: int) -> None:
        """Model the source with n x n Gaussian blobs over `source_fov`, each as wide as their spacing."""
        s = self.s
        self.offsets = blob_centres(n, s.source_fov, self.dtype, self.device)
        self.width = s.source_fov / (n - 1)
        self.prior_sd = self._prior_sd()

    def _prior_sd(self, source_scale: float = 1.0) -> Tensor:
        """Prior sd of each amplitude [K] (data units): the blobs' `source_prior` x `source_peak` x source_scale,
        then the light Gaussians' `light_prior` x `peak`."""
        s = self.s
        return torch.cat([torch.full((len(self.offsets),), s.source_prior * self.source_peak * source_scale),
                          torch.full((len(self.sigmas),), s.light_prior * self.peak)]).to(self.dtype)

    # --- the model -----------------------------------------------------------------------------------------------
    def _positions(self, b: int) -> tuple[Tensor, Tensor]:
        return self.data.x.expand(b, -1), self.data.y.expand(b, -1)

    def light_columns(self, p: Mapping[str, Tensor]) -> Tensor:
        """The lens-light Gaussians seen in the binned data (PSF-blurred): [B, J, P]."""
        x, y = self._positions(p["xl"].shape[0])
        centre = torch.stack([p["xl"], p["yl"]], -1)
        return light_gaussians(x, y, centre, p["el1"], p["el2"], self.sigmas, blur=self.data.psf_sd)

    def source_columns(self, p: Mapping[str, Tensor]) -> Tensor:
        """The source blobs lensed by the SIE + shear of `p`, at the binned pixels: [B, K_s, P]."""
        b = p["x0"].shape[0]
        col = lambda t: t[:, None]  # noqa: E731
        e = torch.sqrt(p["e1"] ** 2 + p["e2"] ** 2 + 1e-12)
        x, y = self._positions(b)
        ax, ay = sie_deflection(x, y, col(torch.exp(p["log_theta_E"])), col((1 - e) / (1 + e)),
                                col(0.5 * torch.atan2(p["e2"], p["e1"])), col(p["x0"]), col(p["y0"]))
        sx, sy = shear_deflection(x, y, col(p["g1"]), col(p["g2"]))
        bx, by = x - ax - sx, y - ay - sy
        centre = torch.stack([p["xs"], p["ys"]], -1)
        return source_blobs(bx, by, centre, self.offsets, self.width)

    def fit(self, p: Mapping[str, Tensor], light_only: bool = False):
        """The linear solve at nonlinear parameters p {name: [B]}: a `LinearFit` over the source blobs and the
        light Gaussians (only the latter with light_only)."""
        d = self.data
        if light_only:
            return linear_fit(self.light_columns(p), d.data, d.weight, self.prior_sd[len(self.offsets):])
        return linear_fit(self.columns(p), d.data, d.weight, self.prior_sd)

    def columns(self, p: Mapping[str, Tensor]) -> Tensor:
        """All basis images at p: the source blobs, then the light Gaussians, [B, K, P]."""
        return torch.cat([self.source_columns(p), self.light_columns(p)], dim=1)

    # --- optimisation --------------------------------------------------------------------------------------------
    def _clamp(self, p: dict[str, Tensor]) -> None:
        s = self.s
        lo = math.log(s.theta_E[0])
        hi = math.log(min(s.theta_E[1], self.data.footprint))
        with torch.no_grad():
            if "log_theta_E" in p:
                p["log_theta_E"].clamp_(lo, hi)
            for (a, b), r in RADIUS.items():
                if a in p:
                    n = torch.sqrt(p[a] ** 2 + p[b] ** 2).clamp(min=r) / r
                    p[a].div_(n)
                    p[b].div_(n)
            for k in ("x0", "y0", "xl", "yl"):
                if k in p:
                    p[k].clamp_(-s.centre_max, s.centre_max)
            for k in ("xs", "ys"):
                if k in p:
                    p[k].clamp_(-s.source_fov, s.source_fov)

    def optimise(self, start: Mapping[str, Tensor], names, steps: int, lr: float, light_only: bool = False,
                 progress: Callable[[int], None] | None = None) -> dict[str, Tensor]:
        """Adam on the parameters `names` of `start` {NAMES: [B]} (the others held) toward the highest evidence,
        in batches of `batch` starts; returns the optimised parameters."""
        out = {k: [] for k in start}
        b_all = next(iter(start.values())).shape[0]
        for i in range(0, b_all, self.s.batch):
            p = {k: v[i:i + self.s.batch].clone().detach().requires_grad_(k in names) for k, v in start.items()}
            free = [p[k] for k in names]
            opt = torch.optim.Adam([{"params": [p[k]], "lr": lr * STEP[k]} for k in names], betas=(0.8, 0.95))
            # cosine decay to 5% of the step: wide moves first, then settling into the basin
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda k: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / max(steps, 1))))
            for _ in range(steps):
                opt.zero_grad()
                fit = self.fit(p, light_only)
                loss = -(torch.where(torch.isfinite(fit.log_evidence), fit.log_evidence,
                                     torch.zeros_like(fit.log_evidence))).sum() / self.data.n
                loss.backward()
                for t in free:  # a start whose solve failed keeps its place rather than spreading NaNs
                    if t.grad is not None:
                        t.grad.nan_to_num_(0.0, 0.0, 0.0)
                opt.step()
                sched.step()
                self._clamp(p)
                if progress is not None:
                    progress(p[names[0]].shape[0])
            for k in start:
                out[k].append(p[k].detach())
        return {k: torch.cat(v) for k, v in out.items()}

    @torch.no_grad()
    def evaluate(self, p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(log evidence [B], reduced chi^2 [B], amplitudes [B, K]) at p, in batches. The evidence is marginalised
        over the scale of the source blobs' prior, log-uniform over `source_prior_decades` below `source_prior`
        (two points a decade), and chi^2 and amplitudes are those of the most probable scale: a fixed scale
        favours one magnification over another (the Occam factor of blobs the data constrain well grows with the
        prior's width), where the scale the data prefer compares models of different magnification fairly."""
        d = self.data
        n_scales = 1 + round(2 * self.s.source_prior_decades)
        scales = torch.logspace(-self.s.source_prior_decades, 0.0, n_scales, dtype=torch.float64).tolist()
        sds = [self._prior_sd(scale) for scale in scales]
        outs = []
        b_all = next(iter(p.values())).shape[0]
        for i in range(0, b_all, self.s.batch):
            chunk = {k: v[i:i + self.s.batch] for k, v in p.items()}
            cols = self.columns(chunk)
            fits = [linear_fit(cols, d.data, d.weight, sd) for sd in sds]
            lz = torch.nan_to_num(torch.stack([f.log_evidence for f in fits]), nan=-math.inf)   # [S, B]
            at = (lz.argmax(0), torch.arange(lz.shape[1], device=lz.device))  # each start's most probable scale
            outs.append((torch.logsumexp(lz, 0) - math.log(n_scales),
                         torch.stack([f.chi2 for f in fits])[at] / d.n, torch.stack([f.amplitudes for f in fits])[at]))
        return tuple(torch.cat(t) for t in zip(*outs, strict=True))

    # --- the search ----------------------------------------------------------------------------------------------
    def _light_start(self) -> dict[str, Tensor]:
        """The lens light alone, from a round start and four elliptical ones: the best as {LIGHT: [1]}."""
        angles = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.5], dtype=self.dtype, device=self.device) * math.pi / 2
        e = torch.tensor([0.01, 0.15, 0.15, 0.15, 0.15], dtype=self.dtype, device=self.device)
        zeros = torch.zeros_like(e)
        p = {"xl": zeros.clone(), "yl": zeros.clone(), "el1": e * torch.cos(2 * angles),
             "el2": e * torch.sin(2 * angles)}
        p = self.optimise(p, LIGHT, self.s.light_steps, self.s.lr, light_only=True)
        with torch.no_grad():
            lz = self.fit(p, light_only=True).log_evidence
        best = int(torch.nan_to_num(lz, nan=-math.inf).argmax())
        return {k: v[best:best + 1] for k, v in p.items()}

    @torch.no_grad()
    def _scale_source_prior(self, light: Mapping[str, Tensor]) -> None:
        """Scale the source blobs' prior to the bright end of what the fitted light leaves in the searched pixels.
        Scaled to the whole data, whose bright end is the lens galaxy's centre, it would be far too wide for the
        arcs, and the evidence's Occam factor would then penalise the most magnified model most: the true mass,
        whose blobs the data constrain best, against a smaller Einstein radius whose blobs act as a free-form
        model of the image."""
        fit = self.fit(light, light_only=True)
        residual = self.data.data - (fit.amplitudes[:, :, None] * self.light_columns(light)).sum(1)[0]
        used = residual[self.data.weight > 0]
        if used.numel():
            self.source_peak = float(torch.quantile(used.float(), 0.995).clamp(min=1e-12))
        self.prior_sd = self._prior_sd()

    def _starts(self, light: Mapping[str, Tensor], seeds: list[Mapping[str, float]]) -> dict[str, Tensor]:
        """`starts` scrambled-Sobol points (theta_E log-uniform, ellipticity and shear uniform in disks, the source
        centre uniform in a disk about the light centre) followed by the seeds; the mass centre at the light's."""
        s = self.s
        n = s.starts
        sobol = torch.quasirandom.SobolEngine(7, scramble=True, seed=s.seed).draw(n).to(self.dtype).to(self.device)
        lo, hi = math.log(s.theta_E[0]), math.log(min(s.theta_E[1], self.data.footprint))
        disk = lambda u, v, r: (r * torch.sqrt(u) * torch.cos(2 * math.pi * v),  # noqa: E731
                                r * torch.sqrt(u) * torch.sin(2 * math.pi * v))
        e1, e2 = disk(sobol[:, 1], sobol[:, 2], s.ellipticity_max)
        g1, g2 = disk(sobol[:, 3], sobol[:, 4], s.shear_max)
        dx, dy = disk(sobol[:, 5], sobol[:, 6], s.source_offset_max)
        xl, yl = light["xl"].expand(n), light["yl"].expand(n)
        p = {"log_theta_E": lo + (hi - lo) * sobol[:, 0], "e1": e1, "e2": e2, "x0": xl.clone(), "y0": yl.clone(),
             "g1": g1, "g2": g2, "xs": xl + dx, "ys": yl + dy}
        for seed in seeds:
            extra = physical_to_search(seed)
            for k, v in extra.items():
                p[k] = torch.cat([p[k], torch.tensor([v], dtype=self.dtype, device=self.device)])
            for k in ("xs", "ys"):  # the source where a lens at that centre would put it: near the centre
                c = extra["x0"] if k == "xs" else extra["y0"]
                p[k] = torch.cat([p[k], torch.tensor([c], dtype=self.dtype, device=self.device)])
        b = p["e1"].shape[0]
        for k in LIGHT:
            p[k] = light[k].expand(b).clone()
        return {k: p[k] for k in NAMES}

    def _distinct(self, p: Mapping[str, Tensor], order: Tensor) -> list[int]:
        """Indices (in `order`) of starts that differ from every better one by more than `distinct`: fractional
        theta_E, ellipticity vector, shear vector."""
        dt, de, dg = self.s.distinct
        keep: list[int] = []
        for i in order.tolist():
            same = False
            for j in keep:
                if (abs(math.exp(p["log_theta_E"][i] - p["log_theta_E"][j]) - 1) < dt
                        and math.hypot(p["e1"][i] - p["e1"][j], p["e2"][i] - p["e2"][j]) < de
                        and math.hypot(p["g1"][i] - p["g1"][j], p["g2"][i] - p["g2"][j]) < dg):
                    same = True
                    break
            if not same:
                keep.append(i)
        return keep

    def search(self, seeds: list[Mapping[str, float]] = (),
               progress: Callable[[int, int], None] | None = None) -> StartResult:
        """Run the whole search; `seeds`: mass models (physical parameters) to add to the starts. progress(done,
        total) is called as it goes, in units of start-steps."""
        t0 = time.perf_counter()
        s = self.s
        self.data = self.all_data
        self.use_blobs(s.source_blobs[0])
        n_total = s.starts + len(seeds)
        total = 5 * s.light_steps + n_total * s.steps + s.modes * s.refine_steps
        done = 0

        def tick(k: int) -> None:
            nonlocal done
            done += k
            if progress is not None:
                progress(done, total)

        light = self._light_start()
        tick(5 * s.light_steps)
        if s.centre_mask > 0:
            # the lens centre: the smooth light fits it least well, and the source blobs of a small, wrong Einstein
            # radius would take up what it leaves; it says little of the mass's basin
            self.data = self.all_data.outside(float(light["xl"]), float(light["yl"]), s.centre_mask)
        self._scale_source_prior(light)
        starts = self._starts(light, list(seeds))
        p = self.optimise(starts, NAMES, s.steps, s.lr, progress=tick)
        log_z, _, _ = self.evaluate(p)
        order = torch.argsort(torch.nan_to_num(log_z, nan=-math.inf), descending=True)
        keep = self._distinct(p, order)[: s.modes]
        best = {k: v[keep] for k, v in p.items()}
        self.use_blobs(s.source_blobs[1])  # the refinement resolves the source better
        best = self.optimise(best, NAMES, s.refine_steps, 0.3 * s.lr, progress=tick)
        log_z, _, _ = self.evaluate(best)
        # the modes' amplitudes and chi^2 from all the data: the light's narrow Gaussians need the centre
        self.data = self.all_data
        _, chi2, amp = self.evaluate(best)
        order = torch.argsort(torch.nan_to_num(log_z, nan=-math.inf), descending=True).tolist()
        modes = [Mode({k: float(best[k][i]) for k in NAMES}, float(log_z[i]), float(chi2[i]), amp[i].cpu())
                 for i in order if math.isfinite(float(log_z[i]))]
        if not modes:
            raise InputError("the start finder found no finite fit of the data: check the data, mask and noise map, "
                             "or give a start (lens.init_from=init with lens.init)")
        # refinement can merge modes; keep the distinct ones
        refined = {k: torch.tensor([m.params[k] for m in modes]) for k in NAMES}
        modes = [modes[i] for i in self._distinct(refined, torch.arange(len(modes)))]
        return StartResult(modes, time.perf_counter() - t0, n_total, self)

    # --- images for the chains -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _render_light(self, params: Mapping[str, float], amplitudes: Tensor, light_grid) -> Tensor:
        """Concentric Gaussians of centre and ellipticity `params` (xl, yl, el1, el2) and `amplitudes` [J] on the
        sampler's lens-light grid [n_l, n_l] (data units per detector pixel)."""
        p = {k: torch.tensor([params[k]], dtype=self.dtype, device=self.device) for k in ("xl", "yl", "el1", "el2")}
        lx, ly = light_grid.coordinates(self.dtype, self.device)
        g = light_gaussians(lx[None], ly[None], torch.stack([p["xl"], p["yl"]], -1), p["el1"], p["el2"],
                            self.sigmas)[0]
        return (amplitudes.to(self.dtype).to(self.device)[:, None, None] * g).sum(0)

    def lens_light(self, light_grid) -> Tensor:
        """The lens light alone, fitted to all the data (the search's first step), on the sampler's lens-light grid
        [n_l, n_l]: the first L of chains that start from a given mass (`lens.init_from: catalog` or `init`)."""
        self.data = self.all_data
        light = self._light_start()
        with torch.no_grad():
            amplitudes = self.fit(light, light_only=True).amplitudes[0]
        return self._render_light({k: float(v) for k, v in light.items()}, amplitudes, light_grid)

    @torch.no_grad()
    def images(self, mode: Mode, source_grid, light_grid) -> tuple[Tensor, Tensor]:
        """The mode's smooth source [n_s, n_s] and lens light [n_l, n_l] on the sampler's pixel grids (fluxes in
        data units per detector pixel, as the forward model takes them)."""
        p = {k: torch.tensor([v], dtype=self.dtype, device=self.device) for k, v in mode.params.items()}
        amp = mode.amplitudes.to(self.dtype).to(self.device)
        ks = len(self.offsets)
        sx, sy = source_grid.coordinates(self.dtype, self.device)
        centre = torch.stack([p["xs"], p["ys"]], -1)
        source = (amp[:ks, None, None] * source_blobs(sx[None], sy[None], centre, self.offsets, self.width)[0]).sum(0)
        return source, self._render_light(mode.params, amp[ks:], light_grid)
