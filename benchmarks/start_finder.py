"""How often the start finder (`lens.init_from: auto`) finds the lens's basin on mocks of known truth, and how fast.

For each mock seed, the infer config is composed as `python infer.py lens=mock experiment=demo lens.mock.seed=S`
would compose it (the mock generated on first use under <data-dir>/s<S>/), the problem is built and the finder run
with `conf/start/`; the best mode's mass is printed beside the truth. The baseline, timed in the same process, is
one evaluation of the forward model for all starts at once: the ratio says what the search costs in forward-model
evaluations. The demo's table in README.md:
    python benchmarks/start_finder.py --seeds 1 2 3 4 5
Extra Hydra overrides go after `--`, e.g. `-- start.starts=48 observations.cutout=96`. Co-adds of your own (or the
calibration benchmark's lenstronomy mocks), folders with image.fits, noise_map.fits, psf.fits and truth.json, run as
`lens=fits` at 0.05 arcsec per pixel:
    python benchmarks/start_finder.py --fits benchmarks/calibration_runs/data/coadd_s10*
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorelens.cli.config import compose_config  # noqa: E402
from scorelens.inference.setup import build_problem  # noqa: E402
from scorelens.inference.start import StartFinder, StartSettings  # noqa: E402

log = logging.getLogger("start_finder")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--data-dir", default=str(ROOT / "data" / "start_finder"), help="mocks go to DATA_DIR/s<seed>")
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--fits", nargs="+", default=[], help="co-add folders (image, noise_map, psf .fits, truth.json) "
                    "run instead of the mock seeds")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the infer config")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    rows = []
    cases = [(Path(d).name, Path(d).resolve()) for d in args.fits] or [(s, None) for s in args.seeds]
    for seed, folder in cases:
        if folder is None:
            lens = ["lens=mock", f"lens.mock.seed={seed}", f"paths.data_dir={args.data_dir}/s{seed}"]
            truth_file = Path(args.data_dir) / f"s{seed}" / "mock" / "truth.json"
        else:
            lens = ["lens=fits", f"lens.image={folder / 'image.fits'}", f"lens.noise_map={folder / 'noise_map.fits'}",
                    f"lens.psf={folder / 'psf.fits'}", "lens.pixel_scale=0.05"]
            truth_file = folder / "truth.json"
        cfg = compose_config("infer", [*lens, f"experiment={args.experiment}", f"paths.root_dir={ROOT}",
                                       "paths.log_dir=/tmp", *args.overrides])
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain["paths"]["output_dir"] = "/tmp"
        cont = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
        problem, _, _ = build_problem(cont, ROOT)
        finder = StartFinder(problem.model, problem.likelihood, problem.psf, StartSettings.from_config(cont["start"]))
        t0 = time.perf_counter()
        result = finder.search()
        seconds = time.perf_counter() - t0
        # baseline: the forward model once for all starts (fixed images, the problem's PSFs)
        b = finder.s.starts
        mass = {k: torch.full((b,), v) for k, v in result.modes[0].mass().items()}
        n_s, n_l = problem.model.source.n, problem.model.lens_light.n
        shifts = torch.zeros(b, problem.model.n_exp, 2)
        t1 = time.perf_counter()
        with torch.no_grad():
            problem.model(mass, shifts, torch.zeros(b, n_s, n_s), torch.zeros(b, n_l, n_l), problem.psf)
        base = time.perf_counter() - t1
        truth = json.loads(truth_file.read_text())["mass"]
        best = result.modes[0].mass()
        err = best["theta_E"] / truth["theta_E"] - 1
        rows.append((seed, best, truth, err, seconds, seconds / base))
        log.info("%s: theta_E %.4f vs truth %.4f (%+.1f%%), q %.3f vs %.3f, %d mode(s), %.1f s = %.0f forward "
                 "evaluations of all starts", seed, best["theta_E"], truth["theta_E"], 100 * err, best["q"],
                 truth["q"], len(result.modes), seconds, seconds / base)
    found = sum(abs(r[3]) < 0.05 for r in rows)
    log.info("basin found (theta_E within 5%%) in %d of %d", found, len(rows))


if __name__ == "__main__":
    main()
