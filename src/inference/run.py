"""The inference job behind `python infer.py lens=NAME`: build, sample (resumably), write results and figures.

The sampler state is written to `<run dir>/state.pt` atomically after every Gibbs sweep; running the same command
again continues from it, if the folder's recorded identity (settings, input files' contents, code version:
`run_folder.py`) is the same; a run made from other inputs is never resumed. `resume=false` writes a new folder
beside one that holds a run. One run at a time holds a folder (a lock), and every output is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..atomic import atomic_write_text
from ..errors import InputError, PoorFitError
from .config import check_init_from, is_mock, validate_infer_config
from .distributed import Ranks, chain_blocks, gather_state, main_only, on_main, shard_state, start_processes
from .figures import make_figures
from .gibbs import GibbsSampler
from .image_products import write_image_products
from .inference_data import write_inference_data
from .parameters import canonical_mass
from .results import by_chain, diagnostic_warnings, write_samples, write_summary
from .run_folder import check_resume, fresh_folder, holds_run, identity, read_record, run_lock, write_record
from .run_warnings import collected_warnings
from .setup import build_problem
from .split import SplitSettings
from .stages import stages_from_config
from .state import Record, SamplerState
from .summary_table import write_summary_table
from .tracking import SweepTracker

log = logging.getLogger(__name__)

_SAMPLING_KEYS = ("lens", "lensing", "sampler", "priors", "flux", "seed", "observations", "stars", "psf")


def config_hash(cfg: DictConfig) -> str:
    """Hash of the settings that decide the samples (not paths, logging or devices)."""
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
             for k in _SAMPLING_KEYS if k in cfg}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def infer(cfg: DictConfig, out_dir: str | Path, root: str | Path) -> dict:
    """Run the whole inference into `out_dir` (or, with resume=false where it holds a run, a new folder beside it);
    returns a summary dict (on rank 0; {} on the other ranks of a run over several processes, `distributed.py`)."""
    validate_infer_config(cfg)  # unknown keys and wrong types fail here, in one line, before any work
    ranks, device = start_processes(str(cfg.sampler.get("device", "auto")))
    stages = stages_from_config(OmegaConf.to_container(cfg.sampler, resolve=True))  # before the data are loaded
    out = Path(on_main(lambda: str(_run_folder(cfg, Path(out_dir))), ranks))
    with main_only(run_lock(out), ranks), collected_warnings():
        summary = _infer_locked(cfg, out, root, stages, ranks, torch.device(device))
        if ranks.main:
            check_fit(summary["reduced_chi2"], cfg.get("chi2_max"), out)
        return summary


def _run_folder(cfg: DictConfig, out: Path) -> Path:
    """The folder this run writes to: `out`, or with resume=false where it holds a run, a new one beside it."""
    out.mkdir(parents=True, exist_ok=True)
    if str(cfg.get("resume", "auto")).lower() in ("false", "no", "never") and holds_run(out):
        new = fresh_folder(out)
        log.info("%s holds a run and resume=false: this run writes to %s", out, new)
        _log_to(new)
        return new
    return out


def check_fit(chi2: list[float], chi2_max: float | None, out: Path) -> None:
    """Raise PoorFitError when a reduced chi^2 (one per exposure) is above `chi2_max` or not finite (None: no
    check); the results are written before, so nothing is lost."""
    if any(not np.isfinite(c) or (chi2_max is not None and c > chi2_max) for c in chi2):
        raise PoorFitError(f"the posterior-mean model fits the data poorly: reduced chi2 per exposure "
                           f"{[round(float(c), 3) for c in chi2]} (limit chi2_max={chi2_max}); the results are in "
                           f"{out}: look at exposures.png's residuals (a mask, the noise map, the PSF or a start in "
                           f"another mode?), or set chi2_max=null to accept the fit")


def _log_to(out: Path) -> None:
    """Copy the log to `<out>/infer.log` too (a run moved to a new folder after Hydra set up its log file)."""
    handler = logging.FileHandler(out / "infer.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)


def _infer_locked(cfg: DictConfig, out: Path, root: str | Path, stages, ranks: Ranks, device: torch.device) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = {"float32": torch.float32, "float64": torch.float64}[cfg.sampler.dtype]
    container = OmegaConf.to_container(cfg, resolve=True)
    def fetched() -> dict:
        fetch_prior_artifacts(container, root)
        return container

    container = on_main(fetched, ranks)  # one download (rank 0's), whose paths every rank then reads
    built = {}

    def build() -> None:
        built["problem"] = build_problem(container, root, device=device, dtype=dtype)

    on_main(build, ranks)  # rank 0 first: a mock's data are simulated once, and its errors stop every rank
    problem, data, geometry = built.get("problem") or build_problem(container, root, device=device, dtype=dtype)
    sampler = GibbsSampler(problem, mala_step=cfg.sampler.mala.step_size, target_accept=cfg.sampler.mala.target_accept,
                           split=SplitSettings.from_config(OmegaConf.to_container(cfg.sampler.split)), ranks=ranks)

    state_path = out / "state.pt"
    ident = identity(container, root)

    def first_state() -> dict:
        """All chains' state to start from (rank 0: the saved one, or a new one), as plain CPU tensors."""
        if state_path.exists():
            check_resume(out, ident)
            state = SamplerState.load(state_path, "cpu")
            if read_record(out) is None and state.config_hash != config_hash(cfg):  # a folder without run.json
                raise InputError(f"{state_path} was written with other sampling settings; use a new run folder "
                                 "(another lens of the same lens.name? give it its own lens.name)")
            log.info("resuming %s at stage %d, sweep %d", state_path, state.stage, state.sweep)
            return state.state_dict()
        state = initial_state(sampler, problem, geometry, container)
        state.config_hash = config_hash(cfg)
        write_record(out, ident, container)
        return _tensors_to(state.state_dict(), "cpu")

    state = SamplerState.from_state_dict(_tensors_to(on_main(first_state, ranks), device))
    if ranks.active:
        log.info("%d processes: rank %d samples chains %s of %d", ranks.world, ranks.rank,
                 chain_blocks(state.chains, ranks.world)[ranks.rank], state.chains)
    state = shard_state(state, ranks)

    def save(s: SamplerState) -> None:
        whole = gather_state(s, ranks)  # every rank takes part; rank 0 writes
        if ranks.main:
            whole.save(state_path)

    total = sum(s.sweeps for s in stages)
    done = sum(s.sweeps for s in stages[: state.stage]) + state.sweep
    tracker = SweepTracker(container.get("wandb") if ranks.main else None, out, container,
                           name=f"{data.name}/{out.name}")
    interactive = sys.stderr.isatty() and ranks.main
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  transient=False, disable=not interactive) as bar:
        task = bar.add_task("sampling", total=total, completed=done, info="")
        count = done

        def on_sweep(stage, k, m):
            nonlocal count
            chi2 = ", ".join(f"{c:.2f}" for c in m["chi2"])
            info = f"T={m['temperature']:.2f} chi2=[{chi2}] acc={m['acceptance']:.2f}"
            if "psf_chi2" in m:
                info += f" stars chi2={m['psf_chi2']:.2f}"
            bar.update(task, advance=1, description=f"{stage.name} {k + 1}/{stage.sweeps}", info=info)
            count += 1
            # without a terminal (batch jobs, log files) a line per sweep stands in for the bar
            (log.debug if interactive else log.info)("%s sweep %d/%d (%d/%d): %s", stage.name, k + 1,
                                                     stage.sweeps, count, total, info)
            tracker.sweep(count, m)

        state = sampler.run(state, stages, save=save, on_sweep=on_sweep)

    if not ranks.main:  # the records are whole on every rank; rank 0 writes the outputs
        return {}
    summary = write_outputs(sampler, state, data, geometry, out, container)
    tracker.finish(summary, sorted(out.glob("*.png")))
    return summary


def _tensors_to(tree, device: torch.device | str):
    """A state dict's tensors on `device`, but the generator states (uint8), which stay on the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree if tree.dtype == torch.uint8 else tree.to(device)
    if isinstance(tree, dict):
        return {k: _tensors_to(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_tensors_to(v, device) for v in tree]
    return tree


def fetch_prior_artifacts(cfg: dict, root: str | Path) -> None:
    """Replace each `priors.<kind>.path` given as a W&B artifact (wandb:ENTITY/PROJECT/NAME:VERSION) by its
    downloaded prior.pt (under <paths.data_dir>/priors/wandb), keeping the artifact's name as `artifact` beside it
    (config.yaml and the W&B run record which prior was used; run.json records the file's SHA-256)."""
    from ..priors.artifacts import download_prior, is_artifact
    from .setup import resolve

    for kind, node in (cfg.get("priors") or {}).items():
        if isinstance(node, dict) and is_artifact(node.get("path")):
            spec = node["path"]
            cache = resolve(Path(cfg["paths"]["data_dir"]) / "priors" / "wandb", root)
            node["path"], node["artifact"] = str(download_prior(spec, cache)), spec
            log.info("%s prior: W&B artifact %s -> %s", kind, spec, node["path"])


def write_outputs(sampler: GibbsSampler, state: SamplerState, data, geometry, out: Path, cfg: dict) -> dict:
    """samples.h5, samples.nc (ArviZ), summary.csv, summary.ecsv (physical units), chi2.csv, the FITS images
    (`image_products`) and the figures from the recorded sweeps (the records hold physical parameters: amplitudes
    >= 0, angles folded into one period, `parameters.py`)."""
    records = state.records
    if not records:
        raise InputError("no sweep was recorded: set `record` > 0 in the last sampler stage")
    v = torch.cat([r.v for r in records]).cpu()
    names = sampler.p.space.names
    params = {n: v[:, i].numpy() for i, n in enumerate(names)}
    n_chains = records[0].v.shape[0]
    chains = {n: by_chain(x, n_chains) for n, x in params.items()}  # [chains, recorded sweeps]
    images = {k: torch.cat([getattr(r, k) for r in records]).cpu().numpy() for k in ("source", "lens_light")}
    images.update(psf_samples(sampler, records))
    kernels = images["psf"] if images["psf"].ndim == 4 else None
    write_samples(out / "samples.h5", chains, images,
                  attrs={"units": f"{data.exposures[0].unit or 'data units'} per detector pixel",
                         "source_pixel_scale": geometry.source.pixel_scale,
                         "lens_light_pixel_scale": geometry.lens_light.pixel_scale, "lens": str(data.name)})
    rows = write_summary(out / "summary.csv", chains)
    # the posterior-mean model (the mean of the samples' model images, not the model of the mean sample: chains
    # in different modes would blur into a model none of them is) and its reduced chi^2 per exposure
    parts = mean_components(sampler, v, images["source"], images["lens_light"], kernels)
    draw_chi2 = by_chain(parts["chi2"].cpu().numpy(), n_chains)  # [chains, draws]
    # each chain's fit, mean over its recorded sweeps: which of chains that disagree fits the data
    warnings = log_diagnostics(rows, chains, draw_chi2.mean(1))
    lens = cfg["lens"]
    write_summary_table(out / "summary.ecsv", chains, {**lens, "ra": data.ra, "dec": data.dec}, cfg["cosmology"],
                        rows)
    write_inference_data(out / "samples.nc", chains, draw_chi2,
                         attrs={"lens": str(data.name), "units": "arcsec and radians (DESIGN.md)"})
    write_image_products(images, parts["model"], data, geometry, lens, out)
    with torch.no_grad():
        chi2 = sampler.p.likelihood.reduced_chi2((parts["source"] + parts["lens_light"])[None])[0].cpu().numpy()
    atomic_write_text(out / "chi2.csv", "exposure,reduced_chi2\n" + "".join(
        f"{e.name},{c:.4f}\n" for e, c in zip(data.exposures, chi2, strict=True)))
    summary = {"reduced_chi2": chi2.tolist(), "n_samples": int(v.shape[0]),
               "theta_E_median": float(np.median(params["theta_E"])), "warnings": warnings}
    truth = write_truth(cfg, out)
    make_figures(sampler, parts, chains, images, data, geometry, out, cfg, truth)
    log.info("wrote %s: %d samples, reduced chi2 per exposure %s, theta_E median %.4f", out, v.shape[0],
             np.round(chi2, 3).tolist(), summary["theta_E_median"])
    return summary


def log_diagnostics(rows: list[dict], chains: dict, chain_chi2: np.ndarray | None = None) -> list[str]:
    """Log each mass parameter's R-hat and bulk ESS (summary.csv's `rows`) in one line and each of
    `results.diagnostic_warnings` of the samples `chains` {name: [chains, draws]} as a warning; returns those."""
    n_chains, draws = next(iter(chains.values())).shape
    cells = [f"{r['parameter']} fixed" if np.isnan(r["rhat"]) and np.ptp(chains[r["parameter"]]) == 0
             else f"{r['parameter']} {r['rhat']:.3f}/{r['ess_bulk']:.0f}" for r in rows]
    log.info("R-hat/bulk ESS over %d chains x %d recorded sweeps: %s", n_chains, draws, ", ".join(cells))
    warnings = diagnostic_warnings(chains, rows, chain_chi2)
    for w in warnings:
        log.warning("%s", w)
    return warnings


@torch.no_grad()
def psf_samples(sampler: GibbsSampler, records: list[Record]) -> dict:
    """The PSFs of the recorded sweeps: {"psf": the forward model's kernels [N, n_exp, K, K], "psf_upsampled": each
    exposure's P on the PSF prior's grid [N, n_exp, n, n] (NaN for exposures whose PSF is fixed)} when they were
    sampled, else {"psf": the fixed kernels [n_exp, K, K]}."""
    if records[0].psf is None:
        return {"psf": sampler.p.psf.cpu().numpy()}
    pm = sampler.p.psf_model
    up = torch.cat([r.psf for r in records])  # [N, G, n, n]
    group = pm.kernels.group.tolist()
    per_exp = torch.full((up.shape[0], len(group), pm.n, pm.n), float("nan"), dtype=up.dtype)
    for e, g in enumerate(group):
        if g >= 0:
            per_exp[:, e] = up[:, g].cpu()
    return {"psf": pm.kernels(up).cpu().numpy(), "psf_upsampled": per_exp.numpy()}


@torch.no_grad()
def mean_components(sampler: GibbsSampler, v: torch.Tensor, source, lens_light, psf=None, batch: int = 16) -> dict:
    """Posterior means of the lensed-source and lens-light model images, each [n_exp, H, W], over the samples
    v [N, D] (physical vectors), source [N, n, n], lens_light [N, m, m] (arrays or tensors) with their PSF kernels psf
    [N, n_exp, K, K] (None: the fixed PSFs), `batch` samples at a time; "chi2": each sample's reduced chi^2,
    mean over the exposures, [N]; "model": each sample's model image (lensed source + lens light), [N, n_exp, H, W]
    float32 on the CPU (for the posterior's median and spread)."""
    ref = sampler.p.psf
    total = {"source": 0.0, "lens_light": 0.0}
    chi2, models = [], []
    for i in range(0, v.shape[0], batch):
        mass, shifts = sampler.p.space.split(v[i:i + batch].to(ref))
        kernel = ref if psf is None else torch.as_tensor(psf[i:i + batch]).to(ref)
        parts = sampler.p.model.components(mass, shifts, torch.as_tensor(source[i:i + batch]).to(ref),
                                           torch.as_tensor(lens_light[i:i + batch]).to(ref), kernel)
        model = parts["source"] + parts["lens_light"]
        chi2.append(sampler.p.likelihood.reduced_chi2(model).mean(1))
        models.append(model.float().cpu())
        for k in total:
            total[k] = total[k] + parts[k].sum(0)
    return {**{k: t / v.shape[0] for k, t in total.items()}, "chi2": torch.cat(chi2), "model": torch.cat(models)}


def initial_state(sampler: GibbsSampler, problem, geometry, cfg: dict) -> SamplerState:
    """The chains' first state, by `lens.init_from`: `auto`, the start finder's modes (`start/`), the lens's
    `init` being one more seed; `init` (or null), the lens config's `init` as written; `catalog`, a mock's
    simulated catalogue entry. Chains that start from a given mass start with the fitted lens light as L
    (`start.fit_lens_light`) and S = 0."""
    from .start import find_start, fit_lens_light

    chains, seed = int(cfg["sampler"]["chains"]), int(cfg["seed"])
    if cfg["lens"].get("init_from") == "auto":
        start = find_start(problem, geometry, cfg, chains, seed)
        return sampler.initial_state(start.mass, chains, seed, start.source, start.lens_light)
    mass = initial_mass(cfg)
    return sampler.initial_state(mass, chains, seed, lens_light=fit_lens_light(problem, geometry, cfg))


def initial_mass(cfg: dict) -> dict:
    """The chains' starting mass: the lens config's `init`, with theta_E, q and phi from a mock's simulated
    catalogue entry when the config says `init_from: catalog` (the mock's stand-in for a published SIE model)."""
    lens = cfg["lens"]
    source = lens.get("init_from")
    check_init_from(lens)
    defaults = {"gamma": 1.0, "x0": 0.0, "y0": 0.0, "gamma_ext": 0.0, "phi_ext": 0.0, "a3": 0.0, "phi3": 0.0,
                "a4": 0.0, "phi4": 0.0}
    init = {k: float(v) for k, v in (lens.get("init") or defaults).items()}
    if source in (None, "init"):
        return init
    catalog = _mock_truth(cfg).get("catalog")
    if catalog is None:
        raise InputError("this mock's truth.json has no catalogue entry (made by an older version): delete its "
                         "folder to generate it again, or set lens.init_from=null")
    init.update({k: float(catalog[k]) for k in ("theta_E", "q", "phi")})
    log.info("start from the mock's catalogue entry: theta_E %.4f, q %.3f, phi %.3f", init["theta_E"], init["q"],
             init["phi"])
    return init


def _mock_truth(cfg: dict) -> dict:
    from ..data.simulate.mock import load_truth
    from .setup import lens_data_dir, resolve

    lens = cfg["lens"]
    root = resolve(lens["mock"]["out_dir"], lens_data_dir(cfg, cfg["paths"]["root_dir"]))
    return load_truth(root).meta


def write_truth(cfg: dict, out: Path) -> dict | None:
    """For a mock lens, copy its true mass parameters to <run dir>/truth.json, in the convention of the samples
    (amplitudes >= 0, angles folded into one period: `parameters.canonical_mass`, the same mass model as the
    mock's); returns them (None otherwise)."""
    if not is_mock(cfg.get("lens", {})):
        return None
    truth = _mock_truth(cfg)
    mass = canonical_mass(truth["mass"])
    atomic_write_text(out / "truth.json", json.dumps({"mass": mass, "shifts": truth.get("shifts"),
                                                      "catalog": truth.get("catalog")}, indent=2))
    return mass
