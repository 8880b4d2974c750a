"""`prepare`: galaxy images cleaned once and written as the Arrow dataset that `GalaxyDataset` serves.

Each stamp from a reader (`galaxy_readers`) is checked, background-subtracted, optionally cleared of neighbours,
centred, resampled flux-conservingly to one pixel scale and cropped or padded to size x size
(`galaxy_images`). The dataset has the columns image (float32 [size, size], flux per prepared pixel), id,
source_pixel_scale (arcsec per input pixel; null where unknown) and flux (sum of the prepared image); its info
description holds the settings as JSON.

Command line (`scorelens.cli.data`; defaults from the `prepare` node of the source prior's config):

    scorelens-data galaxies INPUT OUTPUT [--size 256] [--pixel-scale 0.015] [--mask-neighbours]
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...atomic import replace_directory
from ...errors import InputError
from .galaxy_images import background, mask_neighbours, resample, segment, source_centre
from .galaxy_readers import RawGalaxy, open_galaxies

log = logging.getLogger(__name__)

DATASET_FORMAT = "scorelens-galaxies"
CENTRES = ("centroid", "peak")
MASK_FILLS = ("noise", "zero")


@dataclass(frozen=True)
class PrepareSettings:
    """How `prepare` turns a stamp into a training image (the CLI takes them from the config's `prepare`).

    Attributes:
        size: side of the prepared images, pixels.
        pixel_scale: arcsec per prepared pixel; stamps are resampled to it, flux-conserving. None: no resampling.
            Stamps whose pixel scale is unknown are taken to be at this scale.
        centre: "centroid" (flux-weighted centroid of the central source, sub-pixel) or "peak" (its brightest
            pixel).
        mask_neighbours: replace sources not connected to the central one by `mask_fill`.
        mask_fill: "noise" (Gaussian, at the stamp's background noise) or "zero".
        border: width of the stamp edge, in input pixels, that sets the background level and noise.
        detect_sigma: segmentation threshold in noise sigmas (see `galaxy_images.segment`).
        min_pixels: the fewest connected pixels a detected source has.
        deblend_contrast: the least fraction of a region's flux a deblended neighbour holds (photutils'
            `deblend_sources`); None: regions are not deblended.
        min_size: stamps with a side shorter than this many input pixels are rejected.
        seed: noise drawn into masked neighbours (stamp i uses the seed sequence (seed, i)).
    """

    size: int
    pixel_scale: float | None
    centre: str
    mask_neighbours: bool
    mask_fill: str
    border: int
    detect_sigma: float
    min_pixels: int
    deblend_contrast: float | None
    min_size: int
    seed: int

    def __post_init__(self):
        problems = []
        if not (isinstance(self.size, int) and self.size >= 8):
            problems.append(f"size must be an integer >= 8, got {self.size!r}")
        if self.pixel_scale is not None and not (np.isfinite(self.pixel_scale) and self.pixel_scale > 0):
            problems.append(f"pixel scale must be > 0, got {self.pixel_scale!r}")
        if self.centre not in CENTRES:
            problems.append(f"centre must be one of {CENTRES}, got {self.centre!r}")
        if self.mask_fill not in MASK_FILLS:
            problems.append(f"mask fill must be one of {MASK_FILLS}, got {self.mask_fill!r}")
        if not (isinstance(self.border, int) and self.border >= 1):
            problems.append(f"border must be an integer >= 1, got {self.border!r}")
        if not self.detect_sigma > 0:
            problems.append(f"detect sigma must be > 0, got {self.detect_sigma!r}")
        if not (isinstance(self.min_pixels, int) and self.min_pixels >= 1):
            problems.append(f"min pixels must be an integer >= 1, got {self.min_pixels!r}")
        if self.deblend_contrast is not None and not 0 <= self.deblend_contrast <= 1:
            problems.append(f"deblend contrast must be in [0, 1] or null, got {self.deblend_contrast!r}")
        if not (isinstance(self.min_size, int) and self.min_size >= 3):
            problems.append(f"min size must be an integer >= 3, got {self.min_size!r}")
        if problems:
            raise InputError("; ".join(problems))


class PreparedImage(NamedTuple):
    """`prepare_image`'s answer: the image ([size, size] float64, or None), and "ok" or why it was rejected."""

    image: np.ndarray | None
    status: str
    cropped: bool = False


def prepare_image(raw: RawGalaxy, s: PrepareSettings, rng: np.random.Generator) -> PreparedImage:
    """One stamp through the pipeline of `prepare`: reject (too small, non-finite, blank) or clean, centre and
    resample it."""
    image = raw.image
    if min(image.shape) < s.min_size:
        return PreparedImage(None, "too small")
    if not np.isfinite(image).all():
        return PreparedImage(None, "non-finite")
    level, noise = background(image, s.border)
    image = image - level
    found = segment(image, s.border, s.detect_sigma, s.min_pixels, s.deblend_contrast)
    if found is None:
        return PreparedImage(None, "blank")
    central, others = found
    if s.mask_neighbours and others.any():
        image = mask_neighbours(image, central, others, noise, s.mask_fill, rng)
    centre = source_centre(image, central, s.centre)
    if centre is None:
        return PreparedImage(None, "blank")
    ratio = 1.0 if s.pixel_scale is None or raw.pixel_scale is None else s.pixel_scale / raw.pixel_scale
    out = resample(image, ratio, centre, s.size)
    if not out.sum() > 0:
        return PreparedImage(None, "blank")
    half = s.size / 2 * ratio  # the output field, in input pixels about the centre
    h, w = image.shape
    cropped = (centre[0] - half > -0.5 or centre[0] + half < h - 0.5 or centre[1] - half > -0.5
               or centre[1] + half < w - 0.5)
    return PreparedImage(out, "ok", cropped)


def _prepared_rows(input_path: str, settings: dict, stats: Counter) -> Iterator[dict]:
    """Rows of the prepared dataset (the generator of `Dataset.from_generator`); counts outcomes into `stats`."""
    s = PrepareSettings(**settings)
    reader = open_galaxies(input_path)
    from rich.progress import track

    for i, raw in enumerate(track(reader, total=len(reader), description="preparing galaxies",
                                  disable=not sys.stderr.isatty())):
        result = prepare_image(raw, s, np.random.default_rng([s.seed, i]))
        stats[result.status] += 1
        if result.status != "ok":
            stats[f"examples:{result.status}"] = (stats.get(f"examples:{result.status}") or ()) + (raw.id,)
            continue
        stats["cropped"] += int(result.cropped)
        stats["no pixel scale"] += int(raw.pixel_scale is None)
        yield {"image": result.image.astype(np.float32), "id": raw.id, "source_pixel_scale": raw.pixel_scale,
               "flux": float(result.image.sum())}


@contextlib.contextmanager
def _datasets_quiet():
    """Hugging Face progress bars off (prepare shows its own), restored afterwards."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def prepare(input_path: str | Path, output: str | Path, *, size: int = 256, pixel_scale: float | None = None,
            centre: str = "centroid", mask_neighbours: bool = False, mask_fill: str = "noise", border: int = 5,
            detect_sigma: float = 3.0, min_pixels: int = 5, deblend_contrast: float | None = 0.001,
            min_size: int = 16, seed: int = 0, overwrite: bool = False) -> Path:
    """Convert galaxy images once into the Arrow dataset that `GalaxyDataset` reads; returns `output`.

    Each stamp: rejected if smaller than `min_size`, non-finite anywhere, or blank (no source detected near its
    centre); otherwise the sigma-clipped median of its edge pixels is subtracted, neighbours are optionally masked,
    and it is resampled (flux-conserving, see `resample`) onto size x size pixels of `pixel_scale` arcsec
    centred on the central source; stamps smaller than the output are zero-padded, larger ones cropped.

    The dataset is written next to `output` and renamed into place at the end, so `output` is either complete or
    absent. Its info description holds the settings as JSON. Other arguments: see `PrepareSettings`.
    """
    import datasets

    settings = PrepareSettings(size=size, pixel_scale=pixel_scale, centre=centre, mask_neighbours=mask_neighbours,
                               mask_fill=mask_fill, border=border, detect_sigma=detect_sigma, min_pixels=min_pixels,
                               deblend_contrast=deblend_contrast, min_size=min_size,
                               seed=seed)
    reader = open_galaxies(input_path)
    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists (remove it or pass --overwrite)")
    log.info("preparing %d galaxies from %s (%s) into %s", len(reader), reader.path, reader.kind, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    stats: Counter = Counter()
    features = datasets.Features({"image": datasets.Array2D((size, size), "float32"), "id": datasets.Value("string"),
                                  "source_pixel_scale": datasets.Value("float64"), "flux": datasets.Value("float64")})
    try:
        with _datasets_quiet():
            try:
                ds = datasets.Dataset.from_generator(
                    _prepared_rows, features=features, cache_dir=str(work / "cache"), writer_batch_size=64,
                    gen_kwargs={"input_path": str(reader.path), "settings": asdict(settings), "stats": stats})
            except datasets.exceptions.DatasetGenerationError as err:
                if isinstance(err.__cause__, InputError):
                    raise err.__cause__ from None
                raise
            except ValueError:
                if stats["ok"]:
                    raise  # datasets refuses an empty dataset with a ValueError; anything else is unexpected
            kept = stats["ok"]
            if kept == 0:
                raise InputError(f"{reader.path}: no usable galaxy images ({_rejections(stats, len(reader))})")
            ds.info.description = json.dumps({"format": DATASET_FORMAT, "version": 1, "input": str(reader.path),
                                              "input_kind": reader.kind, **asdict(settings)})
            ds.save_to_disk(str(work / "dataset"))
        flux = np.asarray(ds["flux"])
        del ds
        replace_directory(work / "dataset", output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    scale = "native" if pixel_scale is None else f"{pixel_scale:g} arcsec"
    log.info("wrote %d of %d galaxies (%d x %d pixels of %s; flux median %.4g, range %.4g to %.4g) to %s; %s",
             kept, len(reader), size, size, scale, np.median(flux), flux.min(), flux.max(), output,
             _rejections(stats, len(reader)))
    if stats["cropped"]:
        log.info("%d stamps extend beyond the %d-pixel field and were cropped", stats["cropped"], size)
    if stats["no pixel scale"] and pixel_scale is not None:
        log.warning("%d images carry no pixel scale: taken to be at %g arcsec (not resampled)",
                    stats["no pixel scale"], pixel_scale)
    return output


def _rejections(stats: Counter, total: int) -> str:
    parts = []
    for reason in ("non-finite", "blank", "too small"):
        if stats[reason]:
            examples = ", ".join(stats.get(f"examples:{reason}", ())[:3])
            parts.append(f"{stats[reason]} {reason} (e.g. {examples})")
    return f"rejected {', '.join(parts)} of {total}" if parts else "none rejected"

