"""The figures of a lens inference, as PNG and PDF: per-exposure panels, the source, a corner plot, image summaries.

Sky images (source, lens light) are shown north up and east left, as astronomers expect: x (east) grows to the
left. Detector images are shown in their own pixel frame.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from astropy.cosmology import FlatLambdaCDM  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from ..atomic import atomic_write  # noqa: E402
from ..lensing.critical import caustics, critical_curves  # noqa: E402
from ..lensing.mass import PARAM_NAMES  # noqa: E402

log = logging.getLogger(__name__)
COSMO = FlatLambdaCDM(H0=70, Om0=0.3)
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


def _source_panel(ax, source: np.ndarray, geometry, caus: list, z_source: float | None, title: str) -> None:
    ax.imshow(source, origin="lower", extent=_sky_extent(geometry.source), cmap="magma")
    for c in caus:
        ax.plot(c[:, 0], c[:, 1], color="cyan", lw=0.8)
    ax.set_xlim(*_sky_extent(geometry.source)[:2])
    ax.set_ylim(*_sky_extent(geometry.source)[2:])
    ax.set_xlabel(r"$\Delta$RA [arcsec]")
    ax.set_ylabel(r"$\Delta$Dec [arcsec]")
    ax.set_title(title)
    if z_source:
        kpc_per_arcsec = COSMO.kpc_proper_per_arcmin(z_source).value / 60.0
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


def source_figure(source: np.ndarray, geometry, caus: list, z_source, out: Path) -> None:
    """Paper Fig. 2: the posterior-mean source with the caustics, its redshift and a kpc scale bar."""
    fig, ax = plt.subplots(figsize=(5, 5))
    _source_panel(ax, source, geometry, caus, z_source, "source (posterior mean)")
    _save(fig, out, "source")


def _levels(h: np.ndarray, fractions=(0.393, 0.865, 0.989)) -> list[float]:
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat) / max(flat.sum(), 1e-300)
    lv = [flat[min(np.searchsorted(cum, f), len(flat) - 1)] for f in fractions]
    return sorted(set(lv))


def corner_figure(params: dict, out: Path, truth: dict | None = None) -> None:
    """Corner plot of the mass parameters that vary: 1/2/3-sigma contours, titles median +84/-16."""
    names = [k for k in PARAM_NAMES if k in params and np.ptp(params[k]) > 0]
    k = len(names)
    if k == 0:  # every proposal was rejected: say so instead of drawing empty axes
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no mass parameter varied across the samples", ha="center", va="center")
        ax.axis("off")
        _save(fig, out, "corner")
        return
    fig, axes = plt.subplots(k, k, figsize=(1.9 * k, 1.9 * k), squeeze=False)
    for i, yi in enumerate(names):
        for j, xj in enumerate(names):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            x = params[xj]
            if i == j:
                ax.hist(x, bins=30, histtype="step", color="k")
                p16, p50, p84 = np.percentile(x, [16, 50, 84])
                for p in (p16, p50, p84):
                    ax.axvline(p, color="k", ls="--" if p != p50 else "-", lw=0.8)
                ax.set_title(f"{LABELS[xj]} = {p50:.4g}$^{{+{p84 - p50:.2g}}}_{{-{p50 - p16:.2g}}}$", fontsize=8)
                ax.set_yticks([])
            else:
                y = params[yi]
                h, xe, ye = np.histogram2d(x, y, bins=25)
                lv = _levels(h)
                ax.plot(x, y, ",", color="0.6", alpha=0.5)
                if len(lv) > 0 and h.max() > 0:
                    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
                    ax.contour(xc, yc, h.T, levels=lv + [h.max() + 1], colors="k", linewidths=0.8)
            if truth is not None and xj in truth:
                ax.axvline(truth[xj], color="tab:red", lw=0.8)
                if i != j and yi in truth:
                    ax.axhline(truth[yi], color="tab:red", lw=0.8)
            if i == k - 1:
                ax.set_xlabel(LABELS[xj])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(LABELS[yi])
            elif j > 0:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
    _save(fig, out, "corner")


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
    """All figures; parts: the posterior-mean model components (`run.mean_components`)."""
    out = Path(out)
    crit, caus = _curves(params, geometry)
    z_source = cfg.get("lens", {}).get("z_source")
    exposure_figure(sampler, parts, np.mean(images["source"], axis=0), data, geometry, caus, out)
    source_figure(np.mean(images["source"], axis=0), geometry, caus, z_source, out)
    corner_figure(params, out, truth)
    images_figure(images, geometry, out)
    log.info("figures written to %s (exposures, source, corner, images; PNG and PDF)", out)
