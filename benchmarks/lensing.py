"""Throughput of the multi-exposure lensing forward model against caustics' LensSource, measured in the same run.

For a batch of B chains, each with its own mass parameters (EPL + external shear), alignment shifts, pixelated
source and pixelated lens light, both codes make the B x n_exp model images of one cutout: rays on the supersampled
grid, lens equation, bilinear source and lens-light interpolation, FFT convolution with the exposure's PSF (given on
the supersampled grid), binning to detector pixels.

    ours      scorelens.lensing.forward.ForwardModel on an ExposureGrid of n_exp dithered exposures, one call per batch.
    caustics  caustics.LensSource: a SinglePlane of EPL + ExternalShear, Pixelated source and lens light with the
              same grids, the same PSFs, the same upsampling; batched with torch.vmap over chains and, inside, over
              exposures (caustics' documented way to batch a simulator). An exposure's dither plus its alignment
              shift is the simulator's field centre (x0, y0), which moves the rays as our shifts do.

The geometry (upsampling, PSF size, source and lens-light grids, series length) is the pipeline's, from
conf/lensing/default.yaml, unless the command line overrides it. Both codes sum the same number of EPL series terms
(caustics' n_iter counts the leading term, so n_iter = n_terms + 1). With n_terms null in the config, ours picks the
count for the batch's flattest lens in eager mode and caustics gets that same count; under torch.compile ours uses
the count for q >= 0.2 instead (47 in float32), so its compiled variants sum more terms than caustics does.
caustics ray-traces a border of K // 2 sub-pixels around the cutout for the PSF (its design); ours traces the cutout
only, so caustics traces ((H s + K) / (H s))^2 times more rays (1.56x at H = 128, s = 2, K = 64).

Passes: "fwd" (no autograd) and "fwd+bwd" (loss = sum of all images, gradients with respect to the mass parameters
[B] and the shifts [B, n_exp, 2]; for caustics its lens parameters and field centres). Modes: eager and
torch.compile (default mode, one compiled function per pass; failures are reported, not raised). Throughput is in
images per second, one image being one exposure of one chain, so B * n_exp images per call; times are medians over
the repeats after the warm-up calls.

Examples:
    python benchmarks/lensing.py --device cuda --batch 1 32
    python benchmarks/lensing.py --device cpu --quick --threads 1

On a CPU that other processes share, --threads 1 keeps the timings stable: with more threads than free cores, every
short parallel region of an eager step waits for a descheduled thread, and our model's many small steps suffer most.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import device_name, synchronize  # noqa: E402
from scorelens.lensing.epl import _terms as eager_series_terms  # noqa: E402  (ours' own choice, to match it exactly)
from scorelens.lensing.epl import default_terms  # noqa: E402
from scorelens.lensing.forward import ForwardModel  # noqa: E402
from scorelens.lensing.geometry import ModelGeometry  # noqa: E402
from scorelens.lensing.grid import ExposureGrid, PixelGrid  # noqa: E402
from scorelens.lensing.mass import deflection  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "lensing" / "default.yaml"
# Sub-pixel dithers of the exposures, in detector pixels (x, y); exposures beyond four repeat the pattern.
DITHERS = ((0.0, 0.0), (0.5, 0.25), (0.25, 0.75), (0.75, 0.5))


# --------------------------------------------------------------------------------------------------------------------
# Configuration and inputs


@dataclass(frozen=True)
class Setup:
    """Sizes of one benchmark problem (angles in arcsec)."""

    n_pix: int  # detector pixels per side of the cutout
    pixel_scale: float  # detector pixel size
    upsample: int  # sub-pixels per detector pixel per axis (the PSF's too)
    n_exp: int
    psf_size: int  # K, on the supersampled grid
    source: PixelGrid
    lens_light: PixelGrid
    n_terms: int | None  # EPL series terms of both codes; None: ours chooses (see `series_terms`)

    def offsets(self, dtype, device) -> Tensor:
        """Exposure dithers [n_exp, 2] in arcsec."""
        d = [DITHERS[i % len(DITHERS)] for i in range(self.n_exp)]
        return torch.tensor(d, dtype=dtype, device=device) * self.pixel_scale


@dataclass
class Inputs:
    """One batch: mass parameters, each [B]; shifts [B, n_exp, 2]; source [B, n_s, n_s]; lens light [B, n_l, n_l];
    psf [n_exp, K, K] (each sums to 1)."""

    mass: dict[str, Tensor]
    shifts: Tensor
    source: Tensor
    lens_light: Tensor
    psf: Tensor

    @property
    def batch(self) -> int:
        return self.shifts.shape[0]

    def args(self) -> tuple:
        return self.mass, self.shifts, self.source, self.lens_light, self.psf

    def leaves(self) -> list[Tensor]:
        """The tensors that forward+backward differentiates with respect to."""
        return [*self.mass.values(), self.shifts]


def series_terms(setup: Setup, q: Tensor, dtype) -> int:
    """EPL series terms for a batch of axis ratios q [B]: the fixed number if the setup has one, else what our
    model picks in eager mode (enough for the dtype's precision at the batch's flattest q; under torch.compile it
    uses the q >= 0.2 count instead)."""
    if setup.n_terms is not None:
        return setup.n_terms
    return eager_series_terms(dtype, q)


def make_psf(setup: Setup, dtype, device) -> Tensor:
    """[n_exp, K, K]: a Gaussian core (FWHM about 0.1 arcsec) plus Moffat-like wings, centred on pixel K // 2,
    slightly different per exposure, each normalised to 1."""
    k, s = setup.psf_size, setup.upsample
    i = torch.arange(k, dtype=dtype, device=device) - k // 2
    yy, xx = torch.meshgrid(i, i, indexing="ij")
    r2 = (xx**2 + yy**2) / s**2  # in detector pixels^2
    psfs = []
    for e in range(setup.n_exp):
        sigma = 0.85 * (1 + 0.05 * e)
        p = torch.exp(-0.5 * r2 / sigma**2) + 0.02 * (1 + r2 / 4.0) ** -2.5
        psfs.append(p / p.sum())
    return torch.stack(psfs)


def make_inputs(setup: Setup, batch: int, dtype, device, seed: int) -> Inputs:
    """Random but plausible chains: theta_E ~ 0.4 of the cutout's half width, a few Gaussian source clumps,
    an exponential lens-light profile."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype)

    half = setup.n_pix * setup.pixel_scale / 2
    mass = {
        "theta_E": u(0.35, 0.45, batch) * half,
        "gamma": u(0.9, 1.1, batch),
        "q": u(0.6, 0.9, batch),
        "phi": u(0.0, math.pi, batch),
        "x0": u(-0.05, 0.05, batch),
        "y0": u(-0.05, 0.05, batch),
        "gamma_ext": u(0.0, 0.08, batch),
        "phi_ext": u(0.0, math.pi, batch),
    }
    shifts = u(-0.01, 0.01, batch, setup.n_exp, 2)

    xs, ys = setup.source.coordinates(torch.float64)
    xs, ys = xs - setup.source.x0, ys - setup.source.y0
    n_clumps = 4
    cx, cy = u(-0.25, 0.25, batch, n_clumps, 1, 1), u(-0.25, 0.25, batch, n_clumps, 1, 1)
    width = u(0.04, 0.12, batch, n_clumps, 1, 1)
    amp = u(0.5, 2.0, batch, n_clumps, 1, 1)
    source = (amp * torch.exp(-0.5 * ((xs - cx) ** 2 + (ys - cy) ** 2) / width**2)).sum(1)

    xl, yl = setup.lens_light.coordinates(torch.float64)
    r = torch.sqrt(xl**2 + yl**2)
    lens_light = u(1.0, 3.0, batch, 1, 1) * torch.exp(-r / u(0.3, 0.6, batch, 1, 1))

    def put(t: Tensor, grad: bool = False) -> Tensor:
        return t.to(device=device, dtype=dtype).requires_grad_(grad)

    return Inputs(
        mass={k: put(v, True) for k, v in mass.items()},
        shifts=put(shifts, True),
        source=put(source),
        lens_light=put(lens_light),
        psf=make_psf(setup, dtype, device),
    )


# --------------------------------------------------------------------------------------------------------------------
# The two models, with one signature: images(mass, shifts, source, lens_light, psf) -> [B, n_exp, H, W]


class Ours:
    """Our ForwardModel on the dithered exposures' ray grids: the whole batch in one call."""

    name = "ours"

    def __init__(self, setup: Setup, dtype, device):
        grid = ExposureGrid.regular(
            (setup.n_pix, setup.n_pix),
            pixel_scale=setup.pixel_scale,
            upsample=setup.upsample,
            n_exp=setup.n_exp,
            offsets=setup.offsets(dtype, device),
            dtype=dtype,
            device=device,
        )
        self.fm = ForwardModel(grid, source=setup.source, lens_light=setup.lens_light, n_terms=setup.n_terms)
        self.grid = grid

    def images(self, mass, shifts, source, lens_light, psf) -> Tensor:
        return self.fm(mass, shifts, source, lens_light, psf)


class Caustics:
    """caustics.LensSource batched over chains and exposures with torch.vmap."""

    name = "caustics"

    def __init__(self, caustics, setup: Setup, dtype, device, chunk: int | None):
        self.setup = setup
        self.offsets = setup.offsets(dtype, device)
        cosmo = caustics.FlatLambdaCDM(name="cosmology")
        # Lensing uses the reduced deflection, which these lenses define directly in arcsec; the redshifts only
        # need values (no distance enters the ray tracing).
        self.epl = caustics.EPL(cosmo, name="epl")
        self.shear = caustics.ExternalShear(cosmo, name="shear", x0=0.0, y0=0.0, parametrization="angular")
        self.lens = caustics.SinglePlane(cosmo, lenses=[self.epl, self.shear], name="lens", z_l=0.5, z_s=1.5)
        # Pixelated images put pixel centres where our PixelGrid does (edge-to-edge field of n * pixel_scale).
        src, light = setup.source, setup.lens_light
        self.src = caustics.Pixelated(name="source", x0=src.x0, y0=src.y0, pixelscale=src.pixel_scale,
                                      shape=(src.n, src.n))
        self.light = caustics.Pixelated(name="lens_light", x0=light.x0, y0=light.y0, pixelscale=light.pixel_scale,
                                        shape=(light.n, light.n))
        k = setup.psf_size
        self.sim = caustics.LensSource(
            self.lens,
            self.src,
            pixelscale=setup.pixel_scale,
            pixels_x=setup.n_pix,
            lens_light=self.light,
            upsample_factor=setup.upsample,
            psf=None,
            psf_shape=(k, k),
            x0=None,
            y0=None,
            name="sim",
        )
        self.sim.to(device=device, dtype=dtype)
        # Where each of the simulator's dynamic parameters comes from: ("chain" | "exposure", key).
        slots = {
            id(self.sim.psf): ("exposure", "psf"),
            id(self.sim.x0): ("exposure", "x0"),
            id(self.sim.y0): ("exposure", "y0"),
            id(self.epl.x0): ("chain", "x0"),
            id(self.epl.y0): ("chain", "y0"),
            id(self.epl.q): ("chain", "q"),
            id(self.epl.phi): ("chain", "phi"),
            id(self.epl.Rein): ("chain", "Rein"),
            id(self.epl.t): ("chain", "t"),
            id(self.shear.gamma): ("chain", "gamma_ext"),
            id(self.shear.phi): ("chain", "phi_ext"),
            id(self.src.image): ("chain", "source"),
            id(self.light.image): ("chain", "lens_light"),
        }
        try:
            self.order = [slots[id(p)] for p in self.sim.dynamic_params]
            self.lens_order = [slots[id(p)][1] for p in self.lens.dynamic_params]
        except KeyError as exc:
            raise RuntimeError("unexpected dynamic parameters in caustics' LensSource; caustics API changed?") from exc
        per_chain = torch.vmap(self._single, in_dims=(None, 0))
        self._batched = torch.vmap(per_chain, in_dims=(0, {"x0": 0, "y0": 0, "psf": None}), chunk_size=chunk)

    def set_terms(self, n_terms: int) -> None:
        """Use n_terms series terms after the leading one, as ours does (caustics' n_iter counts the leading term)."""
        self.epl.n_iter = n_terms + 1

    def _single(self, chain: dict[str, Tensor], exposure: dict[str, Tensor]) -> Tensor:
        groups = {"chain": chain, "exposure": exposure}
        return self.sim([groups[g][k] for g, k in self.order])

    @staticmethod
    def chain_params(mass: dict[str, Tensor]) -> dict[str, Tensor]:
        """Our mass parameters in caustics' names (EPL t is our slope gamma, Rein our theta_E: both use
        b = Rein sqrt(q) and the same Tessore & Metcalf series)."""
        return {
            "Rein": mass["theta_E"],
            "t": mass["gamma"],
            "q": mass["q"],
            "phi": mass["phi"],
            "x0": mass["x0"],
            "y0": mass["y0"],
            "gamma_ext": mass["gamma_ext"],
            "phi_ext": mass["phi_ext"],
        }

    def images(self, mass, shifts, source, lens_light, psf) -> Tensor:
        chain = {**self.chain_params(mass), "source": source, "lens_light": lens_light}
        exposure = {"x0": self.offsets[:, 0] + shifts[..., 0], "y0": self.offsets[:, 1] + shifts[..., 1], "psf": psf}
        return self._batched(chain, exposure)

    def deflection(self, mass: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Reduced deflection (arcsec) of one chain's lens (0-d parameters) at positions x, y [N]."""
        p = self.chain_params(mass)
        return self.lens.reduced_deflection_angle(x, y, [p[k] for k in self.lens_order])


# --------------------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Result:
    code: str
    mode: str
    pass_: str
    batch: int
    n_exp: int
    seconds: float | None = None  # median
    min_seconds: float | None = None
    peak_mib: float | None = None
    note: str = ""

    @property
    def images_per_s(self) -> float | None:
        return None if self.seconds is None else self.batch * self.n_exp / self.seconds


def _timed(step: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(steps: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device):
    """Time competing steps with their timed calls interleaved (a, b, a, b, ...), so that a machine shared with other
    processes slows them alike and their ratio stays fair.

    Each step first gets `warmup` calls of its own (the first one, compilation included, timed); a step whose warm-up
    raises is dropped. Returns {name: (first call s, median s, min s, peak MiB or None)} or {name: exception}.
    Peak memory (CUDA only) is that of the step's warm-up calls.
    """
    out, live, times = {}, {}, {}
    for name, step in steps.items():
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            first = _timed(step, device)
            for _ in range(warmup - 1):
                step()
            synchronize(device)
        except Exception as exc:  # one failing variant (compiler, memory) must not stop the others
            out[name] = exc
            continue
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        live[name], times[name], out[name] = step, [], (first, peak)
    for _ in range(repeats):
        for name, step in live.items():
            times[name].append(_timed(step, device))
    for name in live:
        first, peak = out[name]
        out[name] = (first, statistics.median(times[name]), min(times[name]), peak)
    return out


def short_error(exc: BaseException) -> str:
    """One line: the exception type and its most telling message line (a compiler's own error, where wrapped)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if text.endswith("raised:") and len(lines) > 1:
        text = lines[1]
    return f"{type(exc).__name__}: {text[:160]}"


def model_functions(model, compiled: bool) -> tuple[Callable, Callable]:
    """images(*args) -> [B, n_exp, H, W] and loss(*args) = images.sum(); compiled with torch.compile (default mode,
    static shapes, so each batch size gets its own specialisation) where asked."""
    images = model.images

    def loss(*args):
        return images(*args).sum()

    if compiled:
        return torch.compile(images, dynamic=False), torch.compile(loss, dynamic=False)
    return images, loss


def make_steps(functions: tuple[Callable, Callable], inputs: Inputs) -> dict[str, Callable[[], object]]:
    """The two timed passes of one model and mode on one batch."""
    images, loss = functions
    args, leaves = inputs.args(), inputs.leaves()

    def fwd():
        with torch.no_grad():
            return images(*args)

    def fwd_bwd():
        return torch.autograd.grad(loss(*args), leaves)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def benchmark(models, batches, setup: Setup, args, dtype, device) -> tuple[list[Result], dict[int, int]]:
    """Every (mode, batch, pass) with caustics' and our calls interleaved (see `time_interleaved`); all eager variants
    run before any compilation starts.

    Returns the results and, per batch size, the EPL series terms given to caustics."""
    results, terms = [], {}
    modes = ["eager"] if args.no_compile else ["eager", "compiled"]
    functions = {}
    for mode in modes:
        for batch in batches:
            inputs = make_inputs(setup, batch, dtype, device, seed=args.seed)
            terms[batch] = series_terms(setup, inputs.mass["q"], dtype)
            for model in models:
                if isinstance(model, Caustics):
                    model.set_terms(terms[batch])
                if (model.name, mode) not in functions:
                    functions[model.name, mode] = model_functions(model, compiled=mode == "compiled")
            for pass_ in ("fwd", "fwd+bwd"):
                steps = {m.name: make_steps(functions[m.name, mode], inputs)[pass_] for m in models}
                timings = time_interleaved(steps, args.warmup, args.repeats, device)
                for name, timing in timings.items():
                    r = Result(name, mode, pass_, batch, setup.n_exp)
                    if isinstance(timing, BaseException):
                        r.note = "failed: " + short_error(timing)
                    else:
                        first, r.seconds, r.min_seconds, r.peak_mib = timing
                        if mode == "compiled":
                            r.note = f"first call {first:.1f} s"
                    results.append(r)
                    ms = f"{1e3 * r.seconds:10.1f} ms" if r.seconds is not None else "         -   "
                    print(f"  {r.code:8s} {r.mode:8s} {r.pass_:7s} B={r.batch:<3d} {ms}  {r.note}".rstrip(),
                          flush=True)
    return results, terms


# --------------------------------------------------------------------------------------------------------------------
# Same-parameters check and report


def sanity(ours: Ours, caus: Caustics, setup: Setup, dtype, device, seed: int) -> list[str]:
    """Differences of the two codes for one identical chain: deflections on the rays and the images."""
    inputs = make_inputs(setup, 1, dtype, device, seed=seed + 1)
    caus.set_terms(series_terms(setup, inputs.mass["q"], dtype))
    lines = []
    with torch.no_grad():
        m0 = {k: v[0] for k, v in inputs.mass.items()}
        x, y = ours.grid.x[0].reshape(-1), ours.grid.y[0].reshape(-1)
        ax, ay = deflection(m0, x, y, n_terms=setup.n_terms)
        cx, cy = caus.deflection(m0, x, y)
        d = torch.sqrt((ax - cx) ** 2 + (ay - cy) ** 2)
        lines.append(f"deflection, one chain, {x.numel()} rays of exposure 0: max |alpha_ours - alpha_caustics| = "
                     f"{d.max().item():.2e} arcsec (max |alpha| = {torch.sqrt(ax**2 + ay**2).max().item():.2f})")
        a = ours.images(*inputs.args())
        b = caus.images(*inputs.args())
        rel = ((a - b).norm() / b.norm()).item()
        m = math.ceil(setup.psf_size / 2 / setup.upsample)
        inner = (slice(None), slice(None), slice(m, -m), slice(m, -m))
        rel_in = ((a - b)[inner].norm() / b[inner].norm()).item()
        lines.append(f"images, one chain x {setup.n_exp} exposures: |ours - caustics| / |caustics| = {rel:.2e} "
                     f"(all pixels), {rel_in:.2e} (without the {m}-pixel border that the PSF reaches across)")
    return lines


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_report(results: list[Result], header: list[str]) -> None:
    def find(code, mode, pass_, batch):
        return next((r for r in results if (r.code, r.mode, r.pass_, r.batch) == (code, mode, pass_, batch)), None)

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

    order = {"caustics": 0, "ours": 1, "eager": 0, "compiled": 1, "fwd": 0, "fwd+bwd": 1}
    results = sorted(results, key=lambda r: (r.batch, order[r.pass_], order[r.mode], order[r.code]))
    rows = []
    show_mem = any(r.peak_mib is not None for r in results)
    for r in results:
        vs_same = vs_best = "-"
        if r.code == "ours":
            base = find("caustics", r.mode, r.pass_, r.batch)
            vs_same = ratio(r.images_per_s, base.images_per_s if base else None)
            best = [c.images_per_s for c in results if c.code == "caustics" and (c.pass_, c.batch) == (r.pass_, r.batch)
                    and c.images_per_s is not None]
            vs_best = ratio(r.images_per_s, max(best) if best else None)
        ms = None if r.seconds is None else 1e3 * r.seconds
        ms_min = None if r.min_seconds is None else 1e3 * r.min_seconds
        row = [r.code, r.mode, r.pass_, str(r.batch), fmt(ms, ".1f"), fmt(ms_min, ".1f"), fmt(r.images_per_s, ",.1f"),
               vs_same, vs_best]
        if show_mem:
            row.append(fmt(r.peak_mib, ",.0f"))
        rows.append([*row, r.note])
    cols = ["code", "mode", "pass", "B", "ms/call", "min ms", "images/s", "ours/caustics", "ours/best caustics"]
    cols += ["peak MiB"] if show_mem else []
    cols += ["note"]
    widths = [max(len(row[i]) for row in [cols, *rows]) for i in range(len(cols))]
    print()
    for line in header:
        print(line)
    print()
    line = " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
    print(line)
    print("-" * len(line))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    # The goal: forward+backward at B = 32 at least 5x caustics, each code in its best mode.
    b = max(r.batch for r in results)
    ours = [r.images_per_s for r in results if (r.code, r.pass_, r.batch) == ("ours", "fwd+bwd", b) and r.seconds]
    caus = [r.images_per_s for r in results if (r.code, r.pass_, r.batch) == ("caustics", "fwd+bwd", b) and r.seconds]
    print()
    if ours and caus:
        q = max(ours) / max(caus)
        goal = f" ({'meets' if q >= 5 else 'does not meet'} the goal of 5x at B=32)" if b == 32 else ""
        print(f"fwd+bwd at B={b}, best mode of each: ours {max(ours):,.1f} images/s, caustics {max(caus):,.1f} "
              f"images/s: {q:.2f}x{goal}")
    else:
        print(f"fwd+bwd at B={b}: no ratio (a variant failed)")


# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="chain batch sizes B")
    p.add_argument("--upsample", type=int, default=None,
                   help="sub-pixels per detector pixel per axis, the PSF's too (default: conf/lensing)")
    p.add_argument("--psf-size", type=int, default=None,
                   help="PSF side K in sub-pixels (default: conf/lensing; 32 with --quick)")
    p.add_argument("--pixels", type=int, default=None, help="cutout side in detector pixels (default 128; 64 quick)")
    p.add_argument("--exposures", type=int, default=4)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per variant (default 10; 3 quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before timing, the first (compiling) one included (default 2)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile mode")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--n-terms", type=int, default=None,
                   help="EPL series terms of both codes (default: conf/lensing; null there: ours chooses, caustics "
                   "matches ours' eager choice)")
    p.add_argument("--caustics-chunk", type=int, default=None,
                   help="chains per vmap chunk for caustics (bounds its memory; default all at once)")
    p.add_argument("--quick", action="store_true", help="small sizes for a CPU smoke run (64 x 64 cutout)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_setup(args: argparse.Namespace) -> Setup:
    """The model geometry of conf/lensing/default.yaml (what the pipeline uses), with the command line's overrides;
    --quick shrinks the cutout to 64 pixels, the source to 128 pixels, the PSF to 32 sub-pixels and the lens light
    to the cutout."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    pixel_scale = 0.05  # ACS/WFC
    for key in ("upsample", "psf_size", "n_terms"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.quick and args.psf_size is None:
        cfg["psf_size"] = 32
    geo = ModelGeometry.from_config(cfg, detector_pixel_scale=pixel_scale)
    n_pix = args.pixels or (64 if args.quick else 128)
    source, lens_light = geo.source, geo.lens_light
    if args.quick:
        source = PixelGrid(128, source.pixel_scale, source.x0, source.y0)
        lens_light = PixelGrid(n_pix * geo.upsample, pixel_scale / geo.upsample)
    return Setup(
        n_pix=n_pix,
        pixel_scale=pixel_scale,
        upsample=geo.upsample,
        n_exp=args.exposures,
        psf_size=geo.psf_size,
        source=source,
        lens_light=lens_light,
        n_terms=geo.n_terms,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import caustics
    except ImportError:
        sys.exit('caustics is not installed; install the benchmark extra: pip install -e ".[bench]"')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but CUDA is not available")
    dtype = getattr(torch, args.dtype)
    args.repeats = max(1, args.repeats if args.repeats is not None else (3 if args.quick else 10))
    args.warmup = max(1, args.warmup if args.warmup is not None else 2)
    setup = make_setup(args)

    ours = Ours(setup, dtype, device)
    caus = Caustics(caustics, setup, dtype, device, chunk=args.caustics_chunk)
    checks = sanity(ours, caus, setup, dtype, device, args.seed)
    for line in checks:
        print(line)
    print("timing (first call includes compilation):", flush=True)
    results, terms = benchmark([caus, ours], args.batch, setup, args, dtype, device)

    s = setup
    chunk = "" if args.caustics_chunk is None else f", chunk {args.caustics_chunk}"
    per_batch = ", ".join(f"B={b}: {n + 1}" for b, n in terms.items())
    if s.n_terms is not None:
        series = f"EPL series: {s.n_terms} terms in both (caustics n_iter {s.n_terms + 1})"
    else:
        series = (f"EPL series: ours' default (eager: enough for {args.dtype} at the batch's flattest q; compiled: "
                  f"{default_terms(dtype)} terms, for q >= 0.2); caustics n_iter = ours' eager terms + 1 ({per_batch})")
    header = [
        "command: " + shlex.join([Path(sys.executable).name, *sys.argv]),
        f"device: {device_name(device)} | torch {torch.__version__} | caustics {caustics.__version__} | {args.dtype}",
        f"cutout {s.n_pix} x {s.n_pix} pixels of {s.pixel_scale} arcsec, upsample {s.upsample} "
        f"({s.n_pix * s.upsample}^2 rays per exposure; caustics {(s.n_pix * s.upsample + 2 * (s.psf_size // 2))}^2 "
        f"with its PSF border), {s.n_exp} exposures, PSF {s.psf_size} x {s.psf_size} sub-pixels, source "
        f"{s.source.n}^2 x {s.source.pixel_scale:g} arcsec, lens light {s.lens_light.n}^2 x "
        f"{s.lens_light.pixel_scale:g} arcsec",
        series,
        f"{args.repeats} timed calls each, caustics' and ours interleaved, after {args.warmup} warm-up calls each; "
        f"ms/call is the median; images/s = B x {s.n_exp} exposures / median call; ratios are of images/s",
        f"caustics batched as vmap(chains{chunk}) of vmap(exposures) of LensSource",
        "fwd+bwd: grad of sum(images) w.r.t. the 8 mass parameters [B] and the shifts [B, n_exp, 2] (caustics: its "
        "lens parameters and per-exposure field centres x0, y0, which carry dither + shift)",
        *checks,
    ]
    print_report(results, header)


if __name__ == "__main__":
    main()
