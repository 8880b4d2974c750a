"""Where the chains begin: `lens.init_from: auto` searches the data for the lens's basin (`finder.py`, on a binned,
semi-linear model: `coarse.py`, `basis.py`, `linear.py`) and spreads the chains over the modes it finds
(`chains.py`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ...lensing.geometry import ModelGeometry
from .chains import ChainStart, chain_starts
from .finder import StartFinder, StartSettings

log = logging.getLogger(__name__)

__all__ = ["ChainStart", "StartFinder", "StartSettings", "find_start", "fit_lens_light"]


def find_start(problem, geometry: ModelGeometry, cfg: Mapping, chains: int, seed: int) -> ChainStart:
    """Run the start finder on `problem`'s data with the settings `cfg["start"]` and hand its modes to `chains`
    chains. A lens with a published model (a `catalog` block: SLACS lenses, whose `init` is that model) adds its
    `init` as one more seed; any other `init` is not used."""
    settings = StartSettings.from_config(cfg.get("start"))
    lens = cfg["lens"]
    seeds = [dict(lens["init"])] if lens.get("catalog") and lens.get("init") else []
    finder = StartFinder(problem.model, problem.likelihood, problem.psf, settings)
    interactive = sys.stderr.isatty()
    log.info("start finder: %d starts%s on %d binned pixels", settings.starts,
             " and the catalogue model" if seeds else "", finder.data.n)
    with Progress(TextColumn("finding the start"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  disable=not interactive) as bar:
        task = bar.add_task("start", total=1)
        result = finder.search(seeds, progress=lambda done, total: bar.update(task, completed=done, total=total))
    log.info("start finder: %d mode(s) in %.0f s (log evidence relative to the best; chi2 of its smooth model on "
             "the binned data):\n%s", len(result.modes), result.seconds, result.table())
    gen = torch.Generator().manual_seed(int(seed) + 7919)  # its own stream: the sampler's stays as it was
    ref = problem.psf
    start = chain_starts(result, chains, geometry.source, geometry.lens_light, settings.jitter,
                         settings.evidence_gap, gen, ref.dtype, ref.device)
    counts = {m: start.mode.count(m) for m in sorted(set(start.mode))}
    log.info("chains per mode: %s", ", ".join(f"mode {m}: {c}" for m, c in counts.items()))
    return start


def fit_lens_light(problem, geometry: ModelGeometry, cfg: Mapping) -> torch.Tensor:
    """The first lens light [n_l, n_l] of chains that start from a given mass (`lens.init_from: catalog` or
    `init`): the start finder's lens-light-only fit (concentric elliptical Gaussians, settings `cfg["start"]`).
    With L = 0 instead, the first source draw would have to explain the lens galaxy by lensed source light, which
    takes a source many times brighter than any real one, and the chains can diverge from there."""
    settings = StartSettings.from_config(cfg.get("start"))
    finder = StartFinder(problem.model, problem.likelihood, problem.psf, settings)
    t0 = time.perf_counter()
    light = finder.lens_light(geometry.lens_light).to(problem.psf)
    log.info("the chains' first lens light: a fit of concentric Gaussians to the data (%.0f s)",
             time.perf_counter() - t0)
    return light
