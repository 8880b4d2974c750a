"""Time of one Gibbs sweep (source SDE -> mass and shifts by MALA -> lens light SDE -> PSFs from stars) for B chains.

The problem is synthetic (a power-law lens, a Gaussian source, a Gaussian lens galaxy, Gaussian PSFs, stars made
with them, noise) and the score networks are untrained NCSN++ of the configured size: the time of a sweep does not
depend on what the network has learned. The baseline, timed in the same process, is one score-network call for all
chains; the ratio sweep / (network calls x baseline) says how much the likelihood, operators and MALA add to the
networks.

Paper scale (256x256 priors, 128x128 cutouts upsampled 2x, 4 exposures, 16 chains, 128x128 PSF prior at 4
sub-pixels per detector pixel with 5 stars per exposure, conf/sampler/default.yaml's annealing stage: 100 SDE
steps with a corrector step each, 10 MALA steps, a PSF draw every sweep):
    python benchmarks/sweep.py --device cuda
A quick check on a CPU:
    python benchmarks/sweep.py --size 32 --cutout 32 --upsample 1 --psf 15 --chains 4 --steps 10 --net tiny

It reports the time of each block (S, M, L, P), the score-network images evaluated per second in the sweep against
the network alone, and the device-hours a whole lens would take at `--project`'s stages (an experiment of
conf/experiment/, by default `paper`): each stage's sweeps x chains x network calls per sweep, at the measured
time per network call of the sweep. `--devices N` adds a scaling run: the same chains spread over N processes
(one GPU each, or gloo processes sharing the CPU's threads), against one process in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import device_name, synchronize  # noqa: E402
from scorelens.data.psf.epsf import kernel_offsets  # noqa: E402
from scorelens.data.training.normalization import PixelNorm  # noqa: E402
from scorelens.inference.gibbs import GibbsSampler, Problem  # noqa: E402
from scorelens.inference.likelihood import GaussianLikelihood  # noqa: E402
from scorelens.inference.parameters import ParameterSpace  # noqa: E402
from scorelens.inference.posterior_sde import FluxMap  # noqa: E402
from scorelens.inference.psf.stars import KernelMap, StarList, psf_rows  # noqa: E402
from scorelens.inference.psf.step import PSFModel, PSFStep  # noqa: E402
from scorelens.inference.sde_settings import SDESettings  # noqa: E402
from scorelens.inference.stages import Stage  # noqa: E402
from scorelens.lensing.forward import ForwardModel  # noqa: E402
from scorelens.lensing.grid import ExposureGrid, PixelGrid  # noqa: E402
from scorelens.priors.ncsnpp import NCSNpp  # noqa: E402
from scorelens.priors.prior import ScorePrior  # noqa: E402
from scorelens.priors.sde import VESDE  # noqa: E402

log = logging.getLogger("sweep")
TRUTH = dict(theta_E=1.2, gamma=1.0, q=0.8, phi=0.5, x0=0.0, y0=0.0, gamma_ext=0.02, phi_ext=0.3,
             a3=0.0, phi3=0.0, a4=0.0, phi4=0.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="source and lens-light prior side (pixels)")
    p.add_argument("--cutout", type=int, default=128, help="detector pixels per exposure side")
    p.add_argument("--exposures", type=int, default=4)
    p.add_argument("--upsample", type=int, default=2)
    p.add_argument("--psf", type=int, default=64, help="PSF side in sub-pixels")
    p.add_argument("--psf-prior", type=int, default=128, help="PSF prior side (pixels, 4 per detector pixel); "
                   "0 leaves out the PSF step")
    p.add_argument("--stars", type=int, default=5, help="stars per exposure for the PSF step")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--steps", type=int, default=100, help="SDE steps per image update")
    p.add_argument("--corrector", type=int, default=1, help="Langevin corrector steps per SDE step")
    p.add_argument("--mala-steps", type=int, default=10)
    p.add_argument("--t-start", type=float, default=0.6)
    p.add_argument("--net", default="ncsnpp", help="a config of conf/net (ncsnpp, ncsnpp_small, tiny, ...)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=2, help="timed sweeps (after one untimed warm-up sweep)")
    p.add_argument("--predictor", default="euler_maruyama", help="the image draws' reverse-SDE solver")
    p.add_argument("--project", default="paper", help="experiment of conf/experiment/ whose whole run is projected")
    p.add_argument("--devices", type=int, default=1, help="also time the sweep over this many processes")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                   help="the score networks' precision (sampler.network.precision)")
    p.add_argument("--channels-last", action="store_true", help="sampler.network.channels_last")
    p.add_argument("--compile", action="store_true", help="sampler.network.compile (torch.compile, static shapes)")
    return p.parse_args(argv)


def make_prior(kind: str, args, sigma_max: float, device, dtype) -> ScorePrior:
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "net" / f"{args.net}.yaml"))
    cfg.pop("_target_", None)
    cfg.update(channels=1, resolution=args.size)
    net = NCSNpp(**cfg)
    return ScorePrior(net, VESDE(1e-5, sigma_max), kind, PixelNorm()).to(device=device, dtype=dtype).eval()


def build(args, device, dtype) -> tuple[GibbsSampler, dict]:
    pixel = 0.05
    grid = ExposureGrid.regular((args.cutout, args.cutout), pixel, args.upsample, n_exp=args.exposures,
                                offsets=0.01 * torch.randn(args.exposures, 2, dtype=torch.float64), dtype=dtype,
                                device=device)
    fov = args.cutout * pixel
    source, light = PixelGrid(args.size, 1.5 * fov / 2 / args.size), PixelGrid(args.size, fov / args.size)
    margin = -(-(args.psf // 2) // args.upsample)  # lensing.margin: auto, as inference traces it
    model = ForwardModel(grid, source, light, margin=margin)
    xs, ys = source.coordinates(dtype=dtype, device=device)
    s = torch.exp(-((xs - 0.05) ** 2 + ys**2) / (2 * 0.1**2))[None]
    xl, yl = light.coordinates(dtype=dtype, device=device)
    lt = 5 * torch.exp(-(xl**2 + (yl / 0.8) ** 2) / (2 * 0.3**2))[None]
    a = torch.arange(args.psf, dtype=dtype, device=device) - args.psf // 2
    psf = torch.exp(-(a[:, None] ** 2 + a[None] ** 2) / (2 * (1.2 * args.upsample) ** 2))
    psf = (psf / psf.sum()).expand(args.exposures, -1, -1).contiguous()
    truth = {k: torch.tensor([v], dtype=dtype, device=device) for k, v in TRUTH.items()}
    shifts = torch.zeros(1, args.exposures, 2, dtype=dtype, device=device)
    with torch.no_grad():
        img = model(truth, shifts, s, lt, psf)[0]
    noise = 0.02
    data = img + noise * torch.randn(img.shape, dtype=dtype, device=device)
    like = GaussianLikelihood(data, torch.full_like(img, noise**2), torch.ones_like(img, dtype=torch.bool))
    params = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "sampler" / "default.yaml"))["parameters"]
    space = ParameterSpace(params, args.exposures, fov / 2, 0.002)
    priors = {"source": make_prior("source", args, 500.0, device, dtype),
              "lens_light": make_prior("lens_light", args, 200.0, device, dtype)}
    problem = Problem(model, like, space, priors, {"source": FluxMap(0.3), "lens_light": FluxMap(1.0)}, psf,
                      psf_step(args, psf, device, dtype) if args.psf_prior else None)
    for prior in [*priors.values(), *([problem.psf_model.prior] if problem.psf_model is not None else [])]:
        prior.accelerate(args.precision, args.channels_last, args.compile)
    return GibbsSampler(problem), dict(TRUTH, theta_E=1.15)


def psf_step(args, kernels, device, dtype) -> PSFModel:
    """The PSF step: each exposure's own P ([n, n], 4 pixels per detector pixel) from `args.stars` stars."""
    n, over, size = args.psf_prior, 4.0, 25
    a = np.arange(n) - n // 2
    true_p = np.exp(-(a[:, None] ** 2 + a[None] ** 2) / (2 * (1.2 * over) ** 2))
    true_p /= true_p.sum()
    rng = np.random.default_rng(0)
    pix = np.arange(size, dtype=float)
    stamps, centres = [], rng.uniform(size // 2 - 0.5, size // 2 + 0.5, (args.exposures * args.stars, 2))
    for r, c in centres:
        star = 1e5 * psf_rows(pix - r, n, over, "effective") @ true_p @ psf_rows(pix - c, n, over, "effective").T
        stamps.append(star + rng.normal(0, 10.0, star.shape))
    m = len(centres)
    stars = StarList(np.stack(stamps), np.full((m, size, size), 100.0), np.ones((m, size, size), bool), centres,
                     np.full(m, 1e5), np.ones(m))
    rows = psf_rows(kernel_offsets(args.psf, args.upsample), n, over, "effective", 1.0 / args.upsample)
    rows = torch.as_tensor(rows, dtype=dtype, device=device).expand(args.exposures, -1, -1)
    kmap = KernelMap(rows, torch.arange(args.exposures, device=device), kernels)
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "net" / f"{args.net}.yaml"))
    cfg.pop("_target_", None)
    cfg.update(channels=1, resolution=n)
    prior = ScorePrior(NCSNpp(**cfg), VESDE(1e-3, 100.0), "psf", PixelNorm(0.01)).to(device=device,
                                                                                      dtype=dtype).eval()
    settings = PSFStep(every=1, sde=SDESettings(steps=args.steps, corrector_steps=args.corrector))
    return PSFModel(prior, FluxMap(0.01), stars, np.repeat(np.arange(args.exposures), args.stars), args.exposures,
                    np.full(m, over), "effective", kmap, settings, dtype=dtype, device=device)


class BlockTimer:
    """Wall-clock time of each block of a sweep (source, mass, lens light, PSF) and the score-network images
    evaluated, by wrapping the sampler's block methods and the priors' score functions."""

    def __init__(self, sampler: GibbsSampler, device: torch.device):
        self.seconds: dict[str, float] = {}
        self.images: dict[str, int] = {}
        self.device = device
        self._wrap_blocks(sampler)
        priors = {k: p for k, p in sampler.p.priors.items() if p is not None}
        if sampler.p.psf_model is not None:
            priors["psf"] = sampler.p.psf_model.prior
        for kind, prior in priors.items():
            self._count(kind, prior)

    def reset(self) -> None:
        self.seconds, self.images = {}, {}

    def _timed(self, name_of, fn):
        def timed(*args, **kwargs):
            synchronize(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(self.device)
            name = name_of(args)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed

    def _wrap_blocks(self, sampler: GibbsSampler) -> None:
        sampler.image_block = self._timed(lambda a: "S" if a[0] == "source" else "L", sampler.image_block)
        sampler.mass_block = self._timed(lambda a: "M", sampler.mass_block)
        sampler.psf_block = self._timed(lambda a: "P", sampler.psf_block)

    def _count(self, kind: str, prior) -> None:
        score = prior.score

        def counted(x, t):
            self.images[kind] = self.images.get(kind, 0) + x.shape[0]
            return score(x, t)
        prior.score = counted


def network_call_times(sampler: GibbsSampler, args, device, dtype) -> dict[str, float]:
    """Seconds of one score-network call for all chains, per prior (the PSF prior sees every chain's P of every
    exposure at once)."""
    x = torch.randn(args.chains, 1, args.size, args.size, device=device, dtype=dtype)
    t = torch.full((args.chains,), 0.5, device=device, dtype=dtype)
    nets = {kind: (prior, x, t) for kind, prior in sampler.p.priors.items()}
    pm = sampler.p.psf_model
    if pm is not None:
        xp = torch.randn(args.chains * pm.groups, 1, pm.n, pm.n, device=device, dtype=dtype)
        nets["psf"] = (pm.prior, xp, torch.full((xp.shape[0],), 0.5, device=device, dtype=dtype))
    call = {}
    with torch.no_grad():
        for kind, (prior, xi, ti) in nets.items():
            prior.score(xi, ti)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(3):
                prior.score(xi, ti)
            synchronize(device)
            call[kind] = (time.perf_counter() - t0) / 3
    return call


def bench_stage(args) -> tuple[SDESettings, Stage]:
    sde = SDESettings(steps=args.steps, corrector_steps=args.corrector, covariance="rowsum", t_start=args.t_start,
                      sigma_end=0.1, predictor=args.predictor)
    return sde, Stage(name="bench", sweeps=args.repeats + 1, temperature=(1.0, 1.0), sde=sde,
                      mala_steps=args.mala_steps, burn_in=args.repeats + 1)


def ready_state(sampler: GibbsSampler, init: dict, chains: int):
    """Chains with images to re-noise from, as in a running chain."""
    state = sampler.initial_state(init, chains, seed=0)
    with torch.no_grad():
        kernels, gen = sampler.kernels(state.psf), state.generator()
        quick = SDESettings(steps=2, corrector_steps=1, covariance="diag")
        state.source = sampler.image_block("source", state, kernels, quick, 1.0, 1.0, gen)
        state.lens_light = sampler.image_block("lens_light", state, kernels, quick, 1.0, 1.0, gen)
    return state


def timed_sweeps(sampler: GibbsSampler, state, stage: Stage, repeats: int, device,
                 timer: BlockTimer | None = None) -> tuple[list[float], list[dict], list[dict]]:
    """`repeats` timed sweeps after an untimed warm-up: each one's seconds and, with a `timer`, its blocks' seconds
    and the network images it evaluated."""
    sampler.sweep(state, stage, 0)  # warm-up
    synchronize(device)
    times, blocks, images = [], [], []
    for k in range(repeats):
        if timer is not None:
            timer.reset()
        t0 = time.perf_counter()
        sampler.sweep(state, stage, k + 1)
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if timer is not None:
            blocks.append(dict(timer.seconds))
            images.append(dict(timer.images))
    return times, blocks, images


def calls_per_sweep(sde: dict, corrector_default: int) -> int:
    """Score-network calls of one image draw with reverse-SDE settings `sde`."""
    steps, corrector = int(sde["steps"]), int(sde.get("corrector_steps", corrector_default))
    return steps * (1 + corrector) + 1  # + the final denoising call


def project(name: str, image_seconds_per_call_chain: float, psf_seconds_per_call_chain: float | None,
            draws: dict | None = None) -> dict:
    """The network time of a whole run of experiment `name` (its stages: sweeps x chains x the S and L draws'
    calls, and the PSF draws'), at the measured seconds per network call per chain; `draws` ({steps,
    corrector_steps}) replaces every image draw's settings. Returns its parts."""
    sampler = OmegaConf.load(ROOT / "conf" / "sampler" / "default.yaml")
    exp = OmegaConf.load(ROOT / "conf" / "experiment" / f"{name}.yaml")
    cfg = OmegaConf.to_container(OmegaConf.merge(sampler, exp.get("sampler", {})), resolve=True)
    chains, total, sweeps, branched = int(cfg["chains"]), 0.0, 0, None
    base = cfg["sde"]
    for stage in cfg["stages"].values():
        if stage is None:
            continue
        if stage.get("branch") and branched is not None:
            chains = chains * branched
        sde = {**base, **(stage.get("sde") or {}), **(draws or {})}
        n = int(stage["sweeps"])
        total += n * chains * 2 * calls_per_sweep(sde, base["corrector_steps"]) * image_seconds_per_call_chain
        if psf_seconds_per_call_chain is not None and cfg["psf"]["every"]:
            psf = {**base, **cfg["psf"]["sde"], **(draws or {})}
            total += (n / cfg["psf"]["every"]) * chains * calls_per_sweep(psf, 0) * psf_seconds_per_call_chain
        sweeps += n
        branched = int(stage.get("record", 0)) or branched
    return {"seconds": total, "sweeps": sweeps, "final_chains": chains}


def _scaling_worker(rank: int, world: int, port: int, args, out: str) -> None:
    """One rank of the scaling run: its block of the chains, timed; rank 0 writes the slowest rank's times."""
    import os

    import torch.distributed as dist

    from scorelens.inference.distributed import Ranks, chain_blocks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads // world))
    else:
        torch.cuda.set_device(device)
    dist.init_process_group("gloo" if device.type == "cpu" else "nccl", rank=rank, world_size=world)
    torch.manual_seed(0)
    sampler, init = build(args, device, getattr(torch, args.dtype))
    sampler.ranks = Ranks(rank, world)
    start, stop = chain_blocks(args.chains, world)[rank]
    state = ready_state(sampler, init, stop - start)
    times = timed_sweeps(sampler, state, bench_stage(args)[1], args.repeats, device)[0]
    slowest = [None] * world
    dist.all_gather_object(slowest, times)
    if rank == 0:
        Path(out).write_text(json.dumps(np.max(np.array(slowest), axis=0).tolist()))
    dist.destroy_process_group()


def scaling(args, one_process: float) -> None:
    """The sweep over `args.devices` processes against one process, same chains."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args.threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.txt"
        mp.spawn(_scaling_worker, args=(args.devices, port, args, str(out)), nprocs=args.devices, join=True)
        times = json.loads(out.read_text())
    many = min(times)
    log.info("scaling: %d chains over %d processes: %.3f s per sweep against %.3f s in one process: speed-up "
             "%.2fx, efficiency %.2f", args.chains, args.devices, many, one_process, one_process / many,
             one_process / (args.devices * many))


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    sampler, init = build(args, device, dtype)
    sde, stage = bench_stage(args)
    state = ready_state(sampler, init, args.chains)
    call = network_call_times(sampler, args, device, dtype)

    times, blocks, images = timed_sweeps(sampler, state, stage, args.repeats, device, BlockTimer(sampler, device))
    best = int(np.argmin(times))
    sweep, block, evaluated = times[best], blocks[best], images[best]
    image_calls = calls_per_sweep({"steps": args.steps, "corrector_steps": args.corrector}, args.corrector)
    calls = image_calls * (call["source"] + call["lens_light"]) + image_calls * call.get("psf", 0.0)
    name = device_name(device)
    log.info("device %s (%s), %s; priors %dx%d (%s), %d exposures of %dx%d (upsample %d), PSF %d, %d chains",
             device, name, args.dtype, args.size, args.size, args.net, args.exposures, args.cutout, args.cutout,
             args.upsample, args.psf, args.chains)
    log.info("stage: %d SDE steps (%s) + %d corrector per step, %d MALA steps, t_start %.2f; networks %s%s%s",
             args.steps, args.predictor, args.corrector, args.mala_steps, args.t_start, args.precision,
             " + channels_last" if args.channels_last else "", " + compile" if args.compile else "")
    log.info("one score-network call, %d chains: source %.1f ms, lens light %.1f ms%s", args.chains,
             1e3 * call["source"], 1e3 * call["lens_light"],
             f", PSF ({args.psf_prior}x{args.psf_prior}, {args.exposures} per chain) {1e3 * call['psf']:.1f} ms"
             if "psf" in call else " (no PSF step)")
    log.info("one Gibbs sweep: %.3f s (best of %d); network calls alone would take %.3f s: ratio %.2f",
             sweep, args.repeats, calls, sweep / calls)
    log.info("by block: %s", ", ".join(f"{k} {v:.3f} s ({100 * v / sweep:.0f}%)" for k, v in sorted(block.items())))
    # the networks' share: each prior's images at its own rate alone (the PSF prior's batch is chains x groups)
    batch = {"source": args.chains, "lens_light": args.chains}
    if "psf" in call:
        batch["psf"] = args.chains * sampler.p.psf_model.groups
    network_time = sum(n / batch[k] * call[k] for k, n in evaluated.items())
    total = sum(evaluated.values())
    log.info("score-network evaluations: %s; %.1f images/s in the sweep against %.1f for the networks alone at "
             "the same batches (%.3f s): the sweep runs at %.2f of the networks' own rate",
             ", ".join(f"{k} {n}" for k, n in sorted(evaluated.items())), total / sweep, total / network_time,
             network_time, network_time / sweep)
    per_chain_call = sweep / (2 * image_calls + (image_calls if "psf" in call else 0)) / args.chains
    psf_share = per_chain_call if "psf" in call else None
    proj = project(args.project, per_chain_call, psf_share)
    hours = proj["seconds"] / 3600
    log.info("projected whole lens, experiment=%s (%d sweeps, %d chains at the end): %.2f device-hours on this "
             "device at this sweep's cost per network call (this benchmark's networks and sizes: at paper scale, "
             "run with the defaults); the paper's 160 A100-hours / that = %.0fx", args.project, proj["sweeps"],
             proj["final_chains"], hours, 160 / hours if hours > 0 else float("inf"))
    draws = {"steps": args.steps, "corrector_steps": args.corrector}
    hours = project(args.project, per_chain_call, psf_share, draws)["seconds"] / 3600
    log.info("the same with every image draw as this benchmark's (%d steps of %s, %d corrector): %.2f device-hours, "
             "%.0fx fewer than the paper's", args.steps, args.predictor, args.corrector, hours, 160 / hours)
    if device.type == "cuda":
        log.info("peak GPU memory: %.1f GiB (%d chains)", torch.cuda.max_memory_allocated(device) / 2**30,
                 args.chains)
    if args.devices > 1:
        scaling(args, sweep)


if __name__ == "__main__":
    main()
