"""The figures of a lens inference, as PNG and PDF: per-exposure panels, the source, a corner plot (`corner`), trace
plots (ArviZ), image summaries.

Sky images (source, lens light) are shown north up and east left, as astronomers expect: x (east) grows to the
left. Detector images are shown in their own pixel frame. The matplotlib backend is the caller's choice (the
command-line entry points choose Agg); this module never switches it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm

from ..atomic import atomic_write
from ..lensing.critical import caustics, critical_curves
from ..lensing.mass import PARAM_NAMES
from .inference_data import arviz
from .summary_table import cosmology

log = logging.getLogger(__name__)
LABELS = {"theta_E": r"$\theta_E$", "gamma": r"$t$", "q": "$q$", "phi": r"$\varphi$", "x0": "$x_0$", "y0": "$y_0$",
          "gamma_ext": r"$\gamma_{ext}$", "phi_ext": r"$\varphi_{ext}$", "a3": "$a_3$", "phi3": r"$\varphi_3$",
          "a4": "$a_4$", "phi4": r"$\varphi_4$"}


def _save(fig, out: Path, name: str) -> None:
    for ext in ("png", "pdf"):  # atomically: a kill mid-write leaves the previous figure, never a broken one
        atomic_write(out / f"{name}.{ext}", lambda tmp, e=ext: fig.savefig(tmp, format=e, dpi=130,
                                                                            bbox_inches="tight"))
    plt.close(fig)


def _sky_extent(grid) -> list[float]:
    left, right, bottom, top = grid.extent()
    return [right, left, bottom, top]  # east (+x) to the left


def _log_stretch(img: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    good = img[mask] if mask is not None else img.ravel()
    lo, hi = np.percentile(good, [1, 99.8])
    floor = max(hi * 1e-3, 1e-12)
    return np.log10(np.clip(img - lo, floor, None)), np.log10(floor), np.log10(max(hi - lo, floor * 10))


def _median_mass(params: dict) -> dict:
    return {k: torch.tensor(float(np.median(params[k])), dtype=torch.float64) for k in PARAM_NAMES if k in params}


def _curves(params: dict, geometry) -> tuple[list, list]:
    mass = _median_mass(params)
    half = geometry.lens_light.fov / 2
    crit = critical_curves(mass, half_width=half, n=301)
    return crit, caustics(mass, crit)


def _source_panel(ax, source: np.ndarray, geometry, caus: list, z_source: float | None, title: str,
                  cosmo=None) -> None:
    ax.imshow(source, origin="lower", extent=_sky_extent(geometry.source), cmap="magma")
    for c in caus:
        ax.plot(c[:, 0], c[:, 1], color="cyan", lw=0.8)
    ax.set_xlim(*_sky_extent(geometry.source)[:2])
    ax.set_ylim(*_sky_extent(geometry.source)[2:])
    ax.set_xlabel(r"$\Delta$RA [arcsec]")
    ax.set_ylabel(r"$\Delta$Dec [arcsec]")
    ax.set_title(title)
    if z_source and cosmo is not None:
        kpc_per_arcsec = cosmo.kpc_proper_per_arcmin(z_source).value / 60.0
        length = 1.0 if geometry.source.fov * kpc_per_arcsec > 3 else 0.5
        bar = length / kpc_per_arcsec
        x0, x1, y0, _ = _sky_extent(geometry.source)
        xs = x0 + 0.08 * (x1 - x0)
        ys = y0 + 0.08 * (geometry.source.fov)
        ax.plot([xs, xs + bar * np.sign(x1 - x0)], [ys, ys], color="white", lw=2)
        ax.text(xs + 0.5 * bar * np.sign(x1 - x0), ys + 0.03 * geometry.source.fov, f"{length:g} kpc",
                color="white", ha="center", fontsize=8)
        ax.text(0.97, 0.95, f"z = {z_source:.3f}", transform=ax.transAxes, color="white", ha="right", va="top",
                fontsize=8)


def exposure_figure(sampler, parts: dict, source: np.ndarray, data, geometry, caus: list, out: Path) -> None:
    """Paper Fig. 1 per exposure: data, residuals, model, model without lens light, lens light, source.

    parts: the posterior-mean lensed-source and lens-light images, each [n_exp, H, W]; source: [n, n], shown with
    the caustics."""
    with torch.no_grad():
        model = parts["source"] + parts["lens_light"]
        resid = sampler.p.likelihood.normalized_residual(model[None])[0].cpu().numpy()
    lens_only = parts["lens_light"].cpu().numpy()
    arcs = parts["source"].cpu().numpy()
    full = model.cpu().numpy()
    n = len(data.exposures)
    fig, axes = plt.subplots(n, 6, figsize=(19, 3.6 * n), squeeze=False)
    for e, exp in enumerate(data.exposures):
        img, lo, hi = _log_stretch(exp.data, exp.mask)
        row = axes[e]
        row[0].imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=hi)
        row[0].set_title(f"{exp.name}: data (log)")
        r = np.where(exp.mask, resid[e], np.nan)
        im = row[1].imshow(np.clip(r, -5, 5), origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
        row[1].set_title(r"residual / $\sigma$")
        fig.colorbar(im, ax=row[1], fraction=0.046)
        for ax, arr, title in ((row[2], full[e], "model"), (row[3], arcs[e], "model without lens light"),
                               (row[4], lens_only[e], "lens light")):
            a, lo2, hi2 = _log_stretch(arr)
            ax.imshow(a, origin="lower", cmap="gray", vmin=lo2, vmax=hi2)
            ax.set_title(title)
        _source_panel(row[5], source, geometry, caus, None, "source (mean)")
        for ax in row[:5]:
            ax.set_xticks([])
            ax.set_yticks([])
    _save(fig, out, "exposures")


def source_figure(source: np.ndarray, geometry, caus: list, z_source, out: Path, cosmo=None) -> None:
    """Paper Fig. 2: the posterior-mean source with the caustics, its redshift and a kpc scale bar (with z_source
    and an astropy cosmology `cosmo`)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    _source_panel(ax, source, geometry, caus, z_source, "source (posterior mean)", cosmo)
    _save(fig, out, "source")


def _varying(params: dict) -> list[str]:
    return [k for k in PARAM_NAMES if k in params and np.ptp(params[k]) > 0]


def _message_figure(out: Path, name: str, text: str = "no mass parameter varied across the samples") -> None:
    # every proposal was rejected (or too few samples): say so instead of drawing empty axes
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    _save(fig, out, name)


CORNER_MIN_CONTOUR = 100  # draws; with fewer (the demo keeps 20) density contours are noise and corner warns


def corner_figure(params: dict, out: Path, truth: dict | None = None) -> None:
    """Corner plot (`corner.corner`) of the mass parameters that vary, over all draws pooled: 0.5/1/1.5/2-sigma
    contours (points alone below CORNER_MIN_CONTOUR draws, where contours would be noise), titles median +84/-16,
    the truths in red where known (mocks)."""
    import corner

    names = _varying(params)
    if not names:
        _message_figure(out, "corner")
        return
    x = np.stack([np.ravel(params[k]) for k in names], axis=1)
    if len(x) <= len(names):
        _message_figure(out, "corner", f"{len(x)} samples are too few for a corner plot of {len(names)} parameters")
        return
    truths = None if truth is None else [truth.get(k) for k in names]
    fig = plt.figure(figsize=(1.9 * len(names), 1.9 * len(names)))
    corner.corner(x, fig=fig, labels=[LABELS[k] for k in names], truths=truths, truth_color="tab:red",
                  quantiles=[0.16, 0.5, 0.84], show_titles=True, title_fmt=".4g", title_kwargs={"fontsize": 8},
                  label_kwargs={"fontsize": 9}, plot_datapoints=len(x) < 5000, bins=25,
                  plot_contours=len(x) >= CORNER_MIN_CONTOUR, plot_density=len(x) >= CORNER_MIN_CONTOUR)
    _save(fig, out, "corner")


def trace_figure(params: dict, out: Path) -> None:
    """Trace plots (ArviZ) of the mass parameters that vary: each chain's density (left) and its draws in the
    order they were recorded (right), for the eye's R-hat."""
    az = arviz()
    names = _varying(params)
    if not names:
        _message_figure(out, "trace")
        return
    idata = az.from_dict(posterior={k: np.asarray(params[k], dtype=np.float64) for k in names})
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 1.8 * len(names)), squeeze=False)
    az.plot_trace(idata, var_names=names, axes=axes, compact=False, show=False)
    fig.tight_layout()
    _save(fig, out, "trace")


def images_figure(images: dict, geometry, out: Path) -> None:
    """Paper Fig. 3: for S, L and P, the posterior median, two samples and the relative 68% interval width."""
    rows = [("source", geometry.source), ("lens_light", geometry.lens_light), ("psf", None)]
    fig, axes = plt.subplots(3, 4, figsize=(13, 10))
    for r, (kind, grid) in enumerate(rows):
        stack = np.asarray(images[kind])
        if kind == "psf":
            stack, kind = _psf_stack(images)
        med = np.median(stack, axis=0)
        p16, p84 = np.percentile(stack, [16, 84], axis=0)
        width = (p84 - p16) / np.maximum(np.abs(med), 1e-3 * np.abs(med).max() + 1e-30)
        samples = [stack[0], stack[-1]] if len(stack) > 1 else [stack[0], stack[0]]
        extent = _sky_extent(grid) if grid is not None else None
        # PSFs on a log stretch: their wings and rings, four decades below the core, are what differs
        norm = LogNorm(vmin=1e-4 * med.max(), vmax=med.max(), clip=True) if kind.startswith("P") and med.max() > 0 \
            else None
        for c, (arr, title) in enumerate(((med, "median"), (samples[0], "sample"), (samples[1], "sample"))):
            axes[r, c].imshow(arr, origin="lower", extent=extent, cmap="magma", norm=norm)
            axes[r, c].set_title(f"{kind}: {title}")
        im = axes[r, 3].imshow(np.clip(width, 0, 2), origin="lower", extent=extent, cmap="viridis")
        axes[r, 3].set_title(f"{kind}: 68% width / |median|")
        fig.colorbar(im, ax=axes[r, 3], fraction=0.046)
    _save(fig, out, "images")


def _psf_stack(images: dict) -> tuple[np.ndarray, str]:
    """The PSF samples to show, [N, k, k], and their label: the first sampled exposure's upsampled P when the PSFs
    were sampled, else the fixed kernels of the exposures side by side as a stack."""
    up = images.get("psf_upsampled")
    if up is not None:
        up = np.asarray(up)
        for e in range(up.shape[1]):
            if np.all(np.isfinite(up[:, e])):
                return up[:, e], f"P, exposure {e + 1}"
    stack = np.asarray(images["psf"])
    if stack.ndim == 4:
        return stack[:, 0], "PSF, exposure 1"
    return stack, "PSF (fixed), exposures"


def make_figures(sampler, parts, params, images, data, geometry, out: Path, cfg: dict,
                 truth: dict | None = None) -> None:
    """All figures; parts: the posterior-mean model components (`run.mean_components`); params: the mass and shift
    draws {name: [chains, draws]}."""
    out = Path(out)
    pooled = {k: np.ravel(v) for k, v in params.items()}
    crit, caus = _curves(pooled, geometry)
    z_source = cfg.get("lens", {}).get("z_source")
    cosmo = cosmology(cfg["cosmology"])
    exposure_figure(sampler, parts, np.mean(images["source"], axis=0), data, geometry, caus, out)
    source_figure(np.mean(images["source"], axis=0), geometry, caus, z_source, out, cosmo)
    corner_figure(pooled, out, truth)
    trace_figure(params, out)
    images_figure(images, geometry, out)
    log.info("figures written to %s (exposures, source, corner, trace, images; PNG and PDF)", out)
