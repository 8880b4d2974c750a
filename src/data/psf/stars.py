"""Isolated, unsaturated stars in a detector chip, cut into stamps with their ERR and DQ, for empirical PSFs.

`find_stars` works on plain arrays (one chip: SCI, ERR, DQ, WCS); `find_stars_in_flt` runs it on every chip of an
FLT/FLC file. The settings come from the config's `stars.find` (`find_settings`). A detection becomes a star when it
passes, in this order (the log counts each rejection):

- edge: the whole stamp lies inside the chip;
- lens: it is farther than `exclude_radius_arcsec` from the lens (its light and arcs are no stars);
- shape: DAOFIND sharpness and both roundness measures are within their ranges (cosmic rays and hot pixels are
  sharper than the PSF, galaxies are flatter, trails and arcs are elongated);
- extended: the concentration, flux within `concentration_radii[0]` over flux within `concentration_radii[1]`
  (background-subtracted; photutils circular apertures, exact pixel overlap), is within `concentration_range`
  (galaxies, the lens included, are less concentrated than the PSF; a hot pixel or a cosmic ray holds all its flux
  in one pixel);
- bad core: no flagged (DQ & dq_bad_bits), non-finite or zero-error pixel whose centre is within `core_radius`;
- saturated: no raw SCI value (sky included) with its centre within `core_radius` reaches `max_peak`;
- snr: the aperture signal-to-noise within `core_radius` (exact overlap, ERR summed in quadrature) is at least
  `snr_min`;
- neighbour: no other detection between `core_radius` and `isolation_radius` whose peak is at least
  `neighbour_min_ratio` of its own (detections inside the core are the star's own: DAOFIND may split a bright core).
  Detections sharper than `sharpness_range` allows (cosmic rays, hot pixels that DQ missed) are no neighbours:
  their pixels get the ARTEFACT flag in the stamps instead, and count as bad there.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..observations.flt import read_flt
from ..observations.masks import dq_bitmask, dq_flagged
from ..observations.sky_grid import sky_offsets

log = logging.getLogger(__name__)

# Stamp DQ flag (above the 16 bits of HST DQ) for pixels near an unflagged artefact: a detection sharper than
# sharpness_range allows (a cosmic ray or hot pixel that DQ missed), within ARTEFACT_RADIUS pixels.
ARTEFACT = 1 << 16
ARTEFACT_RADIUS = 1.5


@dataclass
class StarStamps:
    """Star stamps of one chip.

    Attributes:
        data: [n, S, S] float64 SCI minus the local background, in the data's units (FLT: electrons); 0 where SCI
            is not finite.
        err: [n, S, S] float64 1-sigma noise (ERR), same units; inf where SCI or ERR is not finite.
        dq: [n, S, S] int64 data-quality flags of the chip (0 = good), plus ARTEFACT near unflagged artefacts.
        positions: [n, 2] float64 (row, col) of the star centres in the chip, 0-based pixels.
        fluxes: [n] float64 background-subtracted sum over the stamp's good pixels (an estimate of the total).
        origins: [n, 2] int (row, col) of each stamp's pixel (0, 0) in the chip.
        background: [n] float64 background level subtracted from each stamp.
        snr: [n] float64 aperture signal-to-noise within core_radius.
        dq_bad_bits: the DQ flags that mark a pixel unusable (ARTEFACT included).
    """

    data: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    positions: np.ndarray
    fluxes: np.ndarray
    origins: np.ndarray
    background: np.ndarray
    snr: np.ndarray
    dq_bad_bits: int = 0

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def centres(self) -> np.ndarray:
        """[n, 2] (row, col) of each star inside its stamp (fractional pixels)."""
        return self.positions - self.origins

    def bad(self) -> np.ndarray:
        """[n, S, S] bool: pixels to ignore (flagged, non-finite, or without a positive error)."""
        return dq_flagged(self.dq, self.dq_bad_bits) | ~np.isfinite(self.err) | (self.err <= 0)

    def weights(self) -> np.ndarray:
        """[n, S, S] float64 inverse errors, 0 on bad pixels."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.bad(), 0.0, 1.0 / self.err)

    def select(self, index) -> StarStamps:
        """The stars at `index` (an index array or a boolean mask)."""
        return StarStamps(self.data[index], self.err[index], self.dq[index], self.positions[index],
                          self.fluxes[index], self.origins[index], self.background[index], self.snr[index],
                          self.dq_bad_bits)

    @classmethod
    def concatenate(cls, parts: list[StarStamps], stamp_size: int) -> StarStamps:
        """One StarStamps from several (an empty one of stamps [0, S, S] if there are none)."""
        if not parts:
            return cls.empty(stamp_size)
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in
                  ("data", "err", "dq", "positions", "fluxes", "origins", "background", "snr")}
        return cls(**arrays, dq_bad_bits=parts[0].dq_bad_bits)

    @classmethod
    def empty(cls, stamp_size: int, dq_bad_bits: int = 0) -> StarStamps:
        s = stamp_size
        return cls(np.zeros((0, s, s)), np.zeros((0, s, s)), np.zeros((0, s, s), dtype=np.int64), np.zeros((0, 2)),
                   np.zeros(0), np.zeros((0, 2), dtype=np.int64), np.zeros(0), np.zeros(0), dq_bad_bits)


# ------------------------------------------------------------------------------------------------- settings


def find_settings(find: Mapping, **overrides) -> dict:
    """`find_stars` keyword arguments from the config's `stars.find` block, with `overrides`; InputError names an
    unknown or missing setting."""
    known = _keyword_names()
    settings = {**dict(find), **overrides}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"unknown star-finding setting(s) stars.find.{unknown}; valid ones are {sorted(known)}")
    required = {n for n, p in inspect.signature(find_stars).parameters.items()
                if p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty}
    missing = sorted(required - set(settings))
    if missing:
        raise InputError(f"star-finding setting(s) {missing} missing under stars.find")
    return settings


def _keyword_names() -> set[str]:
    return {n for n, p in inspect.signature(find_stars).parameters.items() if p.kind is p.KEYWORD_ONLY}


# ----------------------------------------------------------------------------------------------- the finder


def _background(sci: np.ndarray, bad: np.ndarray, box: int) -> tuple[np.ndarray | float, float]:
    """(background [H, W] or a scalar, rms scalar) of a chip: photutils Background2D in boxes of `box` pixels when
    the chip holds at least 2 x 2 boxes, else sigma-clipped statistics of the whole chip."""
    from astropy.stats import sigma_clipped_stats

    h, w = sci.shape
    if min(h, w) >= 2 * box:
        from photutils.background import Background2D

        try:
            bkg = Background2D(np.where(bad, 0.0, sci), box, mask=bad, filter_size=(3, 3))
            return bkg.background, float(bkg.background_rms_median)
        except ValueError as err:  # too few good pixels in the boxes: fall back to the whole chip
            log.debug("Background2D failed (%s); using the chip's clipped statistics", err)
    _, median, std = sigma_clipped_stats(sci[~bad], sigma=3.0, maxiters=10)
    return float(median), float(std)


def find_stars(sci: np.ndarray, err: np.ndarray, dq: np.ndarray, wcs, lens_ra: float | None, lens_dec: float | None,
               *, exclude_radius_arcsec: float, stamp_size: int, snr_min: float, max_peak: float | None,
               isolation_radius: float, dq_bad_bits: int, fwhm: float, detect_nsigma: float,
               sharpness_range: tuple[float, float], roundness_range: tuple[float, float], core_radius: float,
               concentration_radii: tuple[float, float], concentration_range: tuple[float, float],
               neighbour_min_ratio: float, background_box: int, max_stars: int | None = None) -> StarStamps:
    """Isolated, unsaturated point sources of one chip, away from the lens, as stamps.

    Args:
        sci, err: [H, W] image and its 1-sigma noise, in the data's units (FLT: electrons; the sky may be in SCI).
        dq: [H, W] integer data-quality flags.
        wcs: the chip's astropy WCS (needed only to exclude the lens).
        lens_ra, lens_dec: the lens position, degrees; None for no lens exclusion.
        exclude_radius_arcsec: no stars closer than this to the lens.
        stamp_size: S, the stamp side in pixels; the stamp's pixel S // 2 holds the star's centre.
        snr_min: least aperture signal-to-noise within core_radius.
        max_peak: saturation: a raw SCI value (sky included) at or above this within core_radius rejects the star;
            None for no check.
        isolation_radius: pixels; no other detection this close (see neighbour_min_ratio).
        dq_bad_bits: DQ flags that make a pixel unusable.
        fwhm: FWHM of the detection kernel, pixels.
        detect_nsigma: detection threshold in units of the background rms.
        sharpness_range, roundness_range: DAOFIND shape cuts (roundness applies to roundness1 and roundness2).
        core_radius: pixels; the core that must be clean and unsaturated, and the S/N aperture.
        concentration_radii: (r1, r2) pixels, r1 < r2 <= stamp_size / 2, of the concentration F(r1) / F(r2).
        concentration_range: (low, high) accepted concentration.
        neighbour_min_ratio: a detection counts as a neighbour when its peak is at least this fraction of the
            star's peak (fainter ones are left to the ePSF's sigma clipping).
        background_box: box size of the background map, pixels.
        max_stars: keep at most this many (the highest S/N); None for all.

    Returns:
        StarStamps, highest S/N first.
    """
    sci = np.asarray(sci, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    dq = np.asarray(dq).astype(np.int64)
    if sci.ndim != 2 or err.shape != sci.shape or dq.shape != sci.shape:
        raise InputError(f"find_stars needs SCI, ERR and DQ of one 2-D shape, got {sci.shape}, {err.shape}, "
                         f"{dq.shape}")
    r1, r2 = (float(r) for r in concentration_radii)
    if stamp_size < 5 or not 0 < core_radius <= stamp_size / 2 or not 0 < r1 < r2 <= stamp_size / 2:
        raise InputError(f"star stamps need stamp_size >= 5, 0 < core_radius <= stamp_size / 2 and concentration "
                         f"radii 0 < r1 < r2 <= stamp_size / 2; got {stamp_size}, {core_radius}, {concentration_radii}")
    if lens_ra is not None and wcs is None:
        raise InputError("find_stars needs the chip's WCS to exclude stars near the lens (or lens_ra=None)")
    s = int(stamp_size)
    dq_bad_bits = dq_bitmask(dq_bad_bits)
    bad = dq_flagged(dq, dq_bad_bits) | ~np.isfinite(sci) | ~np.isfinite(err) | (err <= 0)
    if bad.all():
        raise InputError("find_stars: every pixel of the chip is flagged or not finite")

    background, rms = _background(sci, bad, int(background_box))
    sub = np.where(bad, 0.0, sci - background)
    det = _detect(sub, bad, detect_nsigma * rms, fwhm)
    if det is None:
        log.info("no detections above %.1f sigma", detect_nsigma)
        return StarStamps.empty(s, dq_bad_bits | ARTEFACT)
    near_lens = np.zeros(len(det["row"]), dtype=bool)
    if lens_ra is not None:
        x, y = sky_offsets(wcs, lens_ra, lens_dec, det["row"], det["col"])
        near_lens = np.hypot(x, y) < exclude_radius_arcsec
    # unresolved artefacts (cosmic rays, hot pixels that DQ missed) are no neighbours: they are flagged in the stamps
    artefact = np.zeros(len(det["row"]), dtype=bool) if sharpness_range is None else det["sharpness"] > \
        sharpness_range[1]

    det.update(aperture_stats(sub, err, bad, det["row"], det["col"], (r1, r2), core_radius))
    reasons: Counter = Counter()
    kept: list[tuple[int, float]] = []  # (detection, snr)
    for i in range(len(det["row"])):
        reason, snr = _rejection(i, det, near_lens, artefact, sci, err, sub, bad, s, snr_min=snr_min,
                                 max_peak=max_peak, isolation_radius=isolation_radius,
                                 sharpness_range=sharpness_range, roundness_range=roundness_range,
                                 core_radius=core_radius, concentration_range=concentration_range,
                                 neighbour_min_ratio=neighbour_min_ratio)
        if reason:
            reasons[reason] += 1
        else:
            kept.append((i, snr))
    kept.sort(key=lambda k: -k[1])
    if max_stars is not None:
        kept = kept[:max_stars]
    log.info("%d stars from %d detections (rejected: %s)", len(kept), len(det["row"]),
             ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")
    if not kept:
        return StarStamps.empty(s, dq_bad_bits | ARTEFACT)
    return _cut_stamps(kept, det, artefact, sci, err, dq, background, s, dq_bad_bits, core_radius)


def _detect(sub: np.ndarray, bad: np.ndarray, threshold: float, fwhm: float) -> dict[str, np.ndarray] | None:
    """DAOFIND detections of a background-subtracted image (no shape cuts): row, col (0-based), peak, sharpness,
    roundness1, roundness2 as [n] arrays; None when there are none."""
    import warnings

    from photutils.detection import DAOStarFinder
    from photutils.utils.exceptions import NoDetectionsWarning

    finder = DAOStarFinder(threshold=threshold, fwhm=fwhm, sharpness_range=None, roundness_range=None,
                           min_separation=0, exclude_border=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)  # no detections is an answer, logged below
        table = finder.find_stars(sub, mask=bad)
    if table is None or len(table) == 0:
        return None
    names = {"row": "y_centroid", "col": "x_centroid", "peak": "peak", "sharpness": "sharpness",
             "roundness1": "roundness1", "roundness2": "roundness2"}
    return {k: np.asarray(table[v], dtype=np.float64) for k, v in names.items()}


def aperture_stats(sub: np.ndarray, err: np.ndarray, bad: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   radii: tuple[float, float], core_radius: float) -> dict[str, np.ndarray]:
    """Circular-aperture photometry of sources at (rows, cols) [n] (0-based pixels) in the background-subtracted
    image sub [H, W] with its 1-sigma errors err, bad pixels left out: {"concentration": flux within radii[0] /
    flux within radii[1], "snr": flux within core_radius / its error}, each [n]. photutils apertures with exact
    pixel overlap, so that both vary smoothly with a star's position in its pixel."""
    from photutils.aperture import CircularAperture, aperture_photometry

    positions = np.column_stack([cols, rows])
    apertures = [CircularAperture(positions, r=float(r)) for r in (*radii, core_radius)]
    table = aperture_photometry(np.where(bad, 0.0, sub), apertures, error=np.where(bad, 0.0, err), mask=bad,
                                method="exact")
    inner, outer, core = (np.asarray(table[f"aperture_sum_{k}"], dtype=np.float64) for k in range(3))
    core_err = np.asarray(table["aperture_sum_err_2"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"concentration": np.where(outer > 0, inner / outer, np.nan),
                "snr": np.where(core_err > 0, core / core_err, 0.0)}


def _rejection(i: int, det: dict, near_lens: np.ndarray, artefact: np.ndarray, sci: np.ndarray, err: np.ndarray,
               sub: np.ndarray, bad: np.ndarray, s: int, *, snr_min, max_peak, isolation_radius, sharpness_range,
               roundness_range, core_radius, concentration_range, neighbour_min_ratio) -> tuple[str, float]:
    """(why detection i is no usable star, or "" if it is; its aperture S/N when computed)."""
    row, col = det["row"][i], det["col"][i]
    top, left = int(round(row)) - s // 2, int(round(col)) - s // 2
    h, w = sci.shape
    if top < 0 or left < 0 or top + s > h or left + s > w:
        return "edge", 0.0
    if near_lens[i]:
        return "lens", 0.0
    if not (_within(det["sharpness"][i], sharpness_range) and _within(det["roundness1"][i], roundness_range)
            and _within(det["roundness2"][i], roundness_range)):
        return "shape", 0.0
    window = (slice(top, top + s), slice(left, left + s))
    yy, xx = np.mgrid[top:top + s, left:left + s]
    radius = np.hypot(yy - row, xx - col)
    if not (np.isfinite(det["concentration"][i]) and _within(det["concentration"][i], concentration_range)):
        return "extended", 0.0
    core = radius <= core_radius  # any flagged or saturated pixel whose centre is in the core
    if bad[window][core].any():
        return "bad core", 0.0
    if max_peak is not None and sci[window][core].max() >= max_peak:
        return "saturated", 0.0
    snr = float(det["snr"][i])
    if not snr >= snr_min:
        return "snr", snr
    distance = np.hypot(det["row"] - row, det["col"] - col)
    # detections inside the core are the star's own (DAOFIND may split a bright core)
    close = (distance > core_radius) & (distance < isolation_radius) & ~artefact
    if np.any(close & (det["peak"] >= neighbour_min_ratio * det["peak"][i])):
        return "neighbour", snr
    return "", snr


def _cut_stamps(kept: list[tuple[int, float]], det: dict, artefact: np.ndarray, sci: np.ndarray, err: np.ndarray,
                dq: np.ndarray, background, s: int, dq_bad_bits: int, core_radius: float) -> StarStamps:
    """StarStamps of the kept detections; pixels within ARTEFACT_RADIUS of an artefact outside the star's core get
    the ARTEFACT flag."""
    data, errs, dqs, origins, levels = [], [], [], [], []
    art_rows, art_cols = det["row"][artefact], det["col"][artefact]
    for i, _ in kept:
        top, left = int(round(det["row"][i])) - s // 2, int(round(det["col"][i])) - s // 2
        window = (slice(top, top + s), slice(left, left + s))
        level = background[window] if np.ndim(background) else np.full((s, s), float(background))
        finite = np.isfinite(sci[window]) & np.isfinite(err[window])
        flags = dq[window].copy()
        yy, xx = np.mgrid[top:top + s, left:left + s]
        for r, c in zip(art_rows, art_cols, strict=True):
            if np.hypot(r - det["row"][i], c - det["col"][i]) > core_radius:
                flags[np.hypot(yy - r, xx - c) <= ARTEFACT_RADIUS] |= ARTEFACT
        data.append(np.where(finite, sci[window] - level, 0.0))
        errs.append(np.where(finite, err[window], np.inf))
        dqs.append(flags)
        origins.append((top, left))
        levels.append(float(level[s // 2, s // 2]))
    stamps = StarStamps(data=np.stack(data), err=np.stack(errs), dq=np.stack(dqs),
                        positions=np.asarray([[det["row"][i], det["col"][i]] for i, _ in kept]),
                        fluxes=np.zeros(len(kept)), origins=np.asarray(origins, dtype=np.int64),
                        background=np.asarray(levels), snr=np.asarray([snr for _, snr in kept]),
                        dq_bad_bits=dq_bad_bits | ARTEFACT)
    stamps.fluxes = np.where(stamps.bad(), 0.0, stamps.data).sum(axis=(1, 2))
    return stamps


def _within(value: float, bounds) -> bool:
    return bounds is None or (np.isfinite(value) and bounds[0] <= value <= bounds[1])


# ----------------------------------------------------------------------------------------------- FLT files


def find_stars_in_flt(path: str | Path, lens_ra: float | None = None, lens_dec: float | None = None,
                      *, settings: Mapping) -> list[tuple[int, StarStamps]]:
    """Stars in every chip of an FLT/FLC file.

    Args:
        path: the FITS file.
        lens_ra, lens_dec: the lens position (degrees); None takes RA_TARG/DEC_TARG of the primary header (the
            target of a lens program), or excludes nothing if the header has none.
        settings: `find_stars` keyword arguments (`find_settings`).

    Returns:
        [(extver, StarStamps)] per chip.
    """
    path = Path(path)
    chips = read_flt(path)
    if lens_ra is None:
        header = chips[0].header  # the primary header's keywords with the chip's
        if "RA_TARG" in header and "DEC_TARG" in header:
            lens_ra, lens_dec = float(header["RA_TARG"]), float(header["DEC_TARG"])
        else:
            log.warning("%s: no RA_TARG/DEC_TARG in the header, no lens region excluded", path.name)
    out = []
    for chip in chips:
        log.debug("%s chip %d", path.name, chip.extver)
        out.append((chip.extver, find_stars(chip.sci, chip.err, chip.dq, chip.wcs, lens_ra, lens_dec, **settings)))
    return out
