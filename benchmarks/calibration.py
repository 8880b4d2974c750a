"""Calibration of the whole sampler on many mock lenses of known truth: failures, bias, interval coverage, TARP.

Two families of mocks, each started as a user would start a lens:
  - `flt`: the project's own mocks (`lens=mock`, four dithered FLT exposures, src/data/simulate/mock.py), rendered
    by our own forward model; odd seeds start from the simulated catalogue entry (SLACS-like errors of 3%, 0.05,
    0.1 rad: `init_from: catalog`), even seeds from the start finder (`init_from: auto`). theta_E is drawn from
    0.8-1.4": the demo's 64-pixel (3.2") cutout holds no larger ring.
  - `coadd`: 100 x 100 co-adds at 0.05" rendered by lenstronomy, an independent code
    (src/data/simulate/lenstronomy_coadd.py), with real COSMOS galaxies as sources and the TinyTim ACS/WFC F814W
    PSF from ../shared/data (skipped, with a warning, when those files are absent), run as
    `python infer.py lens=fits ...` with no start given (the start finder). theta_E 0.8-1.8".
Both draw q in 0.5-0.95, any orientation, shear <= 0.08, m = 3, 4 multipoles and 1-3 Sersic lens-light components.

Each mock is run by `infer.py` in its own process with `experiment=calibration` (the demo at about a quarter of its
length) unless `--experiment` says otherwise. Per mock: OUT/data/<mock>/ (its files), OUT/runs/<mock>/ (the run
folder), OUT/results/<mock>.json and .npz (what the report reads). A mock with a result is not run again, and a run
killed half-way resumes from its own checkpoint, so the command can be repeated until all mocks are done.

Report (OUT/calibration.md, OUT/calibration.png, OUT/results.csv): catastrophic failures (theta_E more than 5% off,
mean reduced chi2 > 1.3, or a run that failed), theta_E bias, the fraction of mocks whose truth lies in the central
68% and 95% intervals of theta_E, gamma, q and gamma_ext, and TARP expected coverage over (theta_E, gamma, e1, e2,
gamma1, gamma2) with its largest deviation from the diagonal. Targets: failures <= 2%, 68% coverage in
[0.59, 0.77], 95% coverage >= 0.91, TARP deviation <= 0.05.

    python benchmarks/calibration.py --flt 34 --coadd 16 --workers 2        # the table in benchmarks/RESULTS.md
    python benchmarks/calibration.py --report-only                          # the report of what is done
Extra Hydra overrides of every run go after `--`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorelens.atomic import atomic_write, atomic_write_text  # noqa: E402
from scorelens.inference.calibration import coverage, standardise, tarp_coverage, tarp_deviation  # noqa: E402

log = logging.getLogger("calibration")

FLT_RANGES = ["lens.mock.theta_E=[0.8,1.4]", "lens.mock.q=[0.5,0.95]", "lens.mock.gamma_ext_max=0.08"]
COVERED = ("theta_E", "gamma", "q", "gamma_ext")
LEVELS = (0.68, 0.95)
FAIL_THETA, FAIL_CHI2 = 0.05, 1.3
# TARP's box: the ranges the truths are drawn from, in (theta_E, gamma, e1, e2, gamma1, gamma2)
TARP_NAMES = ("theta_E", "gamma", "e1", "e2", "gamma1", "gamma2")
TARP_LOW = np.array([0.8, 0.7, -1 / 3, -1 / 3, -0.08, -0.08])
TARP_HIGH = np.array([1.8, 1.3, 1 / 3, 1 / 3, 0.08, 0.08])
SHARED = ROOT.parent / "shared" / "data"
GALAXIES = ("source_galaxies/cosmos_paltax_test/cosmos_catalog_test.h5",
            "source_galaxies/cosmos_paltas_test/real_galaxy_images_23.5_n1.fits")
PSF = "psf/tinytim_ACS_WFC_F814W_slacs_match.fits"  # 0.0495"/pixel, taken as the co-add's 0.05"
PSF_HALF = 20  # pixels each side of the peak kept
COADD_SEED_OFFSET = 1000


# ------------------------------------------------------------------------------------------------- mocks


def shared_inputs(shared: Path):
    """The real galaxy stamps and the HST PSF of ../shared/data for the co-add mocks, or None when absent."""
    from scorelens.data.simulate.lenstronomy_coadd import read_galaxies, read_psf

    if not all((shared / p).is_file() for p in (*GALAXIES, PSF)):
        return None
    return read_galaxies([shared / g for g in GALAXIES]), read_psf(shared / PSF, PSF_HALF)


def jobs(n_flt: int, n_coadd: int, first_seed: int) -> list[dict]:
    out = [{"name": f"flt_s{s}", "family": "flt", "seed": s, "start": "catalog" if s % 2 else "auto"}
           for s in range(first_seed, first_seed + n_flt)]
    # the co-adds' seeds are offset: both families draw their masses from the same generator, and equal seeds
    # would give them the same q, orientation and slope
    coadd = [{"name": f"coadd_s{s}", "family": "coadd", "seed": s, "start": "auto"}
             for s in range(COADD_SEED_OFFSET + first_seed, COADD_SEED_OFFSET + first_seed + n_coadd)]
    # interleaved, so that a partial run already holds both families in proportion
    return sorted(out + coadd, key=lambda j: (j["seed"] % COADD_SEED_OFFSET - first_seed + 0.5)
                  / (n_flt if j["family"] == "flt" else n_coadd))


def overrides(job: dict, out: Path, experiment: str) -> list[str]:
    data, run = out / "data" / job["name"], out / "runs" / job["name"]
    common = [f"experiment={experiment}", f"hydra.run.dir={run}", f"paths.data_dir={data}", "wandb.enabled=false"]
    if job["family"] == "flt":
        return ["lens=mock", f"lens.mock.seed={job['seed']}", f"lens.init_from={job['start']}", *FLT_RANGES,
                *common]
    return ["lens=fits", f"lens.image={data / 'image.fits'}", f"lens.noise_map={data / 'noise_map.fits'}",
            f"lens.psf={data / 'psf.fits'}", "lens.pixel_scale=0.05", f"lens.name={job['name']}", *common]


def truth_of(job: dict, out: Path) -> dict:
    data = out / "data" / job["name"]
    path = data / "mock" / "truth.json" if job["family"] == "flt" else data / "truth.json"
    return json.loads(path.read_text())["mass"]


# ------------------------------------------------------------------------------------------------- runs


def ellipticity(q, phi):
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2.0 * phi), e * np.sin(2.0 * phi)


def tarp_vector(p: dict) -> np.ndarray:
    """(theta_E, gamma, e1, e2, gamma1, gamma2) of parameters p (arrays or numbers), [..., 6]."""
    e1, e2 = ellipticity(np.asarray(p["q"]), np.asarray(p["phi"]))
    g = np.asarray(p["gamma_ext"])
    return np.stack([np.asarray(p["theta_E"]), np.asarray(p["gamma"]), e1, e2, g * np.cos(2 * np.asarray(
        p["phi_ext"])), g * np.sin(2 * np.asarray(p["phi_ext"]))], axis=-1)


def collect(job: dict, out: Path, seconds: float | None) -> dict:
    """Read a finished run folder into the job's result (json) and draws (npz)."""
    run = out / "runs" / job["name"]
    truth = truth_of(job, out)
    with open(run / "chi2.csv") as f:
        chi2 = [float(r["reduced_chi2"]) for r in csv.DictReader(f)]
    with open(run / "summary.csv") as f:
        summary = {r["parameter"]: {k: float(v) for k, v in r.items() if k != "parameter"} for r in csv.DictReader(f)}
    with h5py.File(run / "samples.h5", "r") as f:
        draws = {k: np.asarray(f[k][:], dtype=np.float64) for k in truth}
    result = {**job, "truth": truth, "chi2": float(np.mean(chi2)), "summary": summary, "seconds": seconds,
              "n_draws": int(len(draws["theta_E"])), "error": None}
    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a bare name
            np.savez(f, **draws)

    atomic_write(out / "results" / f"{job['name']}.npz", write_npz)
    atomic_write_text(out / "results" / f"{job['name']}.json", json.dumps(result, indent=1) + "\n")
    return result


def run_job(job: dict, out: Path, experiment: str, threads: int, extra: list[str], inputs) -> dict:
    done = out / "results" / f"{job['name']}.json"
    if done.is_file():
        return json.loads(done.read_text())
    run = out / "runs" / job["name"]
    if job["family"] == "coadd":
        from scorelens.data.simulate.lenstronomy_coadd import make_coadd_mock

        make_coadd_mock(out / "data" / job["name"], job["seed"], *inputs)
    seconds = None
    if not (run / "summary.csv").is_file():
        cmd = [sys.executable, str(ROOT / "infer.py"), *overrides(job, out, experiment), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "WANDB_MODE": "offline"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            error = lines[-1] if lines else f"exit status {proc.returncode}"
            log.warning("%s failed: %s", job["name"], error)
            result = {**job, "error": error, "seconds": seconds}
            atomic_write_text(done, json.dumps(result, indent=1) + "\n")
            return result
    result = collect(job, out, seconds)
    s = result["summary"]["theta_E"]
    log.info("%s (%s start): theta_E %.4f [%.4f, %.4f] vs truth %.4f (%+.1f%%), chi2 %.2f, R-hat %.2f, %.0f s",
             job["name"], job["start"], s["median"], s["p2.5"], s["p97.5"], result["truth"]["theta_E"],
             100 * (s["median"] / result["truth"]["theta_E"] - 1), result["chi2"], s["rhat"], seconds or float("nan"))
    return result


# ------------------------------------------------------------------------------------------------- report


def failed(r: dict) -> bool:
    if r.get("error"):
        return True
    return abs(r["summary"]["theta_E"]["median"] / r["truth"]["theta_E"] - 1) > FAIL_THETA or r["chi2"] > FAIL_CHI2


def statistics(results: list[dict], out: Path, seed: int = 0) -> dict:
    """Failures, bias, coverage and TARP of finished results (runs that failed count only as failures)."""
    ok = [r for r in results if not r.get("error")]
    stats = {"n": len(results), "errors": len(results) - len(ok), "failures": sum(failed(r) for r in results),
             # why: the mass off (theta_E more than 5% from the truth), the fit poor (chi2 only), the run failed
             "off": sum(abs(r["summary"]["theta_E"]["median"] / r["truth"]["theta_E"] - 1) > FAIL_THETA
                        for r in ok),
             "poor_fit_only": sum(r["chi2"] > FAIL_CHI2 and abs(r["summary"]["theta_E"]["median"]
                                                             / r["truth"]["theta_E"] - 1) <= FAIL_THETA for r in ok)}
    if not ok:
        return stats
    rel = np.array([r["summary"]["theta_E"]["median"] / r["truth"]["theta_E"] - 1 for r in ok])
    stats.update(bias_median=float(np.median(rel)), bias_mean=float(np.mean(rel)),
                 abs_median=float(np.median(np.abs(rel))))
    draws = [dict(np.load(out / "results" / f"{r['name']}.npz")) for r in ok]
    for name in COVERED:
        for level in LEVELS:
            stats[f"cov{round(100 * level)}_{name}"] = coverage([d[name] for d in draws],
                                                                [r["truth"][name] for r in ok], level)[0]
    vec = [tarp_vector(d) for d in draws]
    truths = np.stack([tarp_vector(r["truth"]) for r in ok])
    vec, truths = standardise(vec, truths, TARP_LOW, TARP_HIGH)
    refs = np.random.default_rng(seed).uniform(0.0, 1.0, truths.shape)
    alphas, ecp, _ = tarp_coverage(vec, truths, refs)
    stats.update(tarp_alphas=alphas.tolist(), tarp_ecp=ecp.tolist(), tarp_dev=tarp_deviation(alphas, ecp),
                 rhat_theta_median=float(np.median([r["summary"]["theta_E"]["rhat"] for r in ok])),
                 chi2_median=float(np.median([r["chi2"] for r in ok])),
                 minutes_median=float(np.median([r["seconds"] / 60 for r in ok if r.get("seconds")] or [np.nan])))
    return stats


def table(groups: dict[str, dict]) -> str:
    head = ["mocks", "n", "failures", "of which theta_E > 5% / chi2 only / run failed", "theta_E bias (median)",
            "|error| median", "chi2 median", "R-hat theta_E",
            *[f"{round(100 * lv)}%: {p}" for lv in LEVELS for p in COVERED], "TARP dev"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in groups.items():
        if "bias_median" not in s:
            lines.append(f"| {label} | {s['n']} | {s['failures']} | " + " | ".join(["-"] * (len(head) - 3)) + " |")
            continue
        cells = [label, str(s["n"]), f"{s['failures']} ({100 * s['failures'] / s['n']:.0f}%)",
                 f"{s['off']} / {s['poor_fit_only']} / {s['errors']}",
                 f"{100 * s['bias_median']:+.2f}%", f"{100 * s['abs_median']:.2f}%", f"{s['chi2_median']:.2f}",
                 f"{s['rhat_theta_median']:.2f}",
                 *[f"{s[f'cov{round(100 * lv)}_{p}']:.2f}" for lv in LEVELS for p in COVERED], f"{s['tarp_dev']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], groups: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
    for label, s in groups.items():
        if "tarp_ecp" in s:
            ax[0].plot(s["tarp_alphas"], s["tarp_ecp"], label=f"{label} (max dev {s['tarp_dev']:.2f})")
    ax[0].plot([0, 1], [0, 1], "k:", lw=1)
    ax[0].set(xlabel="credibility level", ylabel="expected coverage", title="TARP (theta_E, gamma, e, shear)")
    ax[0].legend(fontsize=8)
    s = groups["all"]
    if "bias_median" in s:
        x = np.arange(len(COVERED))
        for i, level in enumerate(LEVELS):
            ax[1].bar(x + 0.38 * i, [s[f"cov{round(100 * level)}_{p}"] for p in COVERED], 0.36,
                      label=f"{round(100 * level)}% interval")
            ax[1].axhline(level, color=f"C{i}", ls=":", lw=1)
        ax[1].set_xticks(x + 0.19, COVERED)
        ax[1].set(ylim=(0, 1), ylabel="fraction of mocks with the truth inside", title="interval coverage (all)")
        ax[1].legend(fontsize=8)
    for fam, colour in (("flt", "C0"), ("coadd", "C1")):
        rs = [r for r in results if r["family"] == fam and not r.get("error")]
        if not rs:
            continue
        t = np.array([r["truth"]["theta_E"] for r in rs])
        q = {k: np.array([r["summary"]["theta_E"][k] for r in rs]) / t - 1 for k in ("median", "p2.5", "p97.5")}
        ax[2].errorbar(t, 100 * q["median"], yerr=100 * np.abs(np.stack([q["median"] - q["p2.5"],
                       q["p97.5"] - q["median"]])), fmt="o", ms=4, color=colour, label=f"{fam} (95% bars)")
    ax[2].axhspan(-100 * FAIL_THETA, 100 * FAIL_THETA, color="0.9", zorder=0)
    ax[2].axhline(0, color="k", lw=0.8)
    ax[2].set(xlabel="true theta_E (arcsec)", ylabel="theta_E error (%)", title="theta_E: median and 95% interval")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def report(out: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    if not results:
        raise SystemExit(f"no results in {out / 'results'} yet: run the benchmark first")
    groups = {"all": statistics(results, out)}
    for fam in ("flt", "coadd"):
        for start in ("catalog", "auto"):
            sub = [r for r in results if r["family"] == fam and r["start"] == start]
            if sub:
                groups[f"{fam}, {start} start"] = statistics(sub, out)
    text = table(groups)
    rows = []
    for r in results:
        s = r.get("summary", {}).get("theta_E", {})
        rows.append({"mock": r["name"], "start": r["start"], "theta_E_true": r.get("truth", {}).get("theta_E"),
                     "theta_E_median": s.get("median"), "p2.5": s.get("p2.5"), "p97.5": s.get("p97.5"),
                     "chi2": r.get("chi2"), "rhat": s.get("rhat"), "failed": failed(r), "error": r.get("error"),
                     "minutes": None if r.get("seconds") is None else round(r["seconds"] / 60, 2)})

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / "results.csv", write_csv)
    atomic_write_text(out / "calibration.md", text + "\n")
    atomic_write_text(out / "calibration.json", json.dumps(groups, indent=1) + "\n")
    plot(results, groups, out / "calibration.png")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flt", type=int, default=34, help="number of the project's own FLT mocks")
    ap.add_argument("--coadd", type=int, default=16, help="number of lenstronomy co-add mocks")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="runs at once (each gets cores / workers threads)")
    ap.add_argument("--experiment", default="calibration")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "calibration_runs"))
    ap.add_argument("--shared", default=str(SHARED), help="the shared data folder with galaxies and the HST PSF")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of every run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out).resolve()
    if not args.report_only:
        todo = jobs(args.flt, args.coadd, args.first_seed)
        inputs = shared_inputs(Path(args.shared)) if args.coadd else None
        if args.coadd and inputs is None:
            log.warning("no galaxies/PSF under %s: the %d lenstronomy co-add mocks are skipped", args.shared,
                        args.coadd)
            todo = [j for j in todo if j["family"] != "coadd"]
        threads = max(1, (os.cpu_count() or 1) // max(1, args.workers))
        log.info("%d mocks, %d at once with %d thread(s) each; results in %s", len(todo), args.workers, threads, out)
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(lambda j: run_job(j, out, args.experiment, threads, args.overrides, inputs), todo))
    print(report(out))
    print(f"\nplot: {out / 'calibration.png'}; per mock: {out / 'results.csv'}")


if __name__ == "__main__":
    main()
