"""Galaxy images for the source prior: read once from several kinds of input, prepare, serve to training.

Three parts, used in this order:

- readers (`open_galaxies`) turn an input into a stream of `RawGalaxy(image, pixel_scale, id)`. The kind is
  detected from the path: a folder of FITS images (the first HDU of each file with 2-D data), an HDF5 file with a
  stack `images` [N, H, W], a GalSim RealGalaxy catalogue (a FITS table with GAL_FILENAME, GAL_HDU and PIXEL_SCALE
  columns; the image files lie next to it), or a folder written by `datasets.Dataset.save_to_disk` with an image
  column.
- `prepare` cleans each image once (background subtraction, optional masking of neighbours, centring,
  flux-conserving resampling to one pixel scale, crop or pad to size x size) and writes a Hugging Face Arrow
  dataset with the columns image (float32 [size, size], flux per prepared pixel), id, source_pixel_scale (arcsec
  per input pixel; null where unknown) and flux (sum of the prepared image).
- `GalaxyDataset` serves the prepared images to `PriorDataModule` as [1, N, N] tensors in network units.

Command line (`scorelens.cli.data`; defaults from the `prepare` node of the source prior's config):

    scorelens-data galaxies INPUT OUTPUT [--size 256] [--pixel-scale 0.015] [--mask-neighbours]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .image_stack import AUGMENTATIONS
from .normalization import PixelNorm
from ...atomic import replace_directory
from ...errors import InputError

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
DATASET_FORMAT = "scorelens-galaxies"
CENTRES = ("centroid", "peak")
MASK_FILLS = ("noise", "zero")
RESIZES = ("rebin", "crop")


# ----------------------------------------------------------------------------------------------------------- readers

class RawGalaxy(NamedTuple):
    """One input stamp, as read.

    Attributes:
        image: [H, W] float64, data units.
        pixel_scale: arcsec per pixel, or None where the input does not say.
        id: identifier (file name, catalogue IDENT, row number, ...).
    """

    image: np.ndarray
    pixel_scale: float | None
    id: str


class GalaxyReader:
    """Base of the readers: `kind`, `path`, `len(reader)` and iteration over `RawGalaxy`.

    Constructors check what is cheap to check (the file opens, the columns exist) and raise `InputError`;
    problems found while reading a particular image raise `InputError` naming that file and image.
    """

    kind = ""

    def __init__(self, path: Path):
        self.path = path
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[RawGalaxy]:
        raise NotImplementedError


def open_galaxies(path: str | Path) -> GalaxyReader:
    """The reader for `path`, its kind detected from what the path is (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return HFDatasetReader(path)
        return FitsFolderReader(path)
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5")):
        return HDF5Reader(path)
    if name.endswith(FITS_SUFFIXES):
        return RealGalaxyReader(path)
    raise InputError(f"{path}: unknown kind of input (give a folder of FITS images, an .h5/.hdf5 stack, a GalSim "
                     "RealGalaxy catalogue .fits, or a folder written by datasets' save_to_disk)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _fits_open(path: Path):
    from astropy.io import fits

    try:
        return fits.open(path)
    except (OSError, ValueError, TypeError, EOFError) as err:
        raise InputError(f"{path}: cannot read FITS file ({_first_line(err)})") from None


def _fits_hdu_image(path: Path, hdul, index: int) -> tuple[np.ndarray | None, object]:
    """(data as float64 or None when the HDU holds no image, header) of HDU `index` of an open file."""
    try:
        hdu = hdul[index]
        if not hdu.is_image or hdu.data is None:
            return None, hdu.header
        return np.array(hdu.data, dtype=np.float64), hdu.header
    except IndexError:
        raise InputError(f"{path}: no HDU {index} (the file has {len(hdul)})") from None
    except (OSError, ValueError, TypeError, EOFError) as err:
        raise InputError(f"{path}: cannot read FITS file ({_first_line(err)})") from None


def header_pixel_scale(header) -> float | None:
    """Arcsec per pixel from a FITS header (PIXSCALE-like keywords, else a celestial WCS), or None."""
    for key in ("PIXSCALE", "PIXSCAL1", "PIXEL_SCALE", "PIXSIZE"):
        value = header.get(key)
        if isinstance(value, (int, float)) and np.isfinite(value) and value > 0:
            return float(value)
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(header, naxis=2)
            if not wcs.has_celestial:
                return None
            scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0
    except Exception:  # a broken WCS only means: no pixel scale known
        return None
    scale = float(np.sqrt(np.prod(scales)))
    return scale if np.isfinite(scale) and scale > 0 else None


class FitsFolderReader(GalaxyReader):
    """A folder of FITS files (not searched recursively), one galaxy per file: its first HDU with 2-D data.

    The pixel scale comes from the header (PIXSCALE-like keywords or a celestial WCS), else None.
    """

    kind = "fits_folder"

    def __init__(self, path: Path):
        super().__init__(path)
        self.files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(FITS_SUFFIXES))
        if not self.files:
            raise InputError(f"{path}: the folder holds no FITS images (*.fits, *.fit, *.fts) and is not a "
                             "saved Hugging Face dataset")
        self._n = len(self.files)

    def __iter__(self) -> Iterator[RawGalaxy]:
        for file in self.files:
            shapes = []
            with _fits_open(file) as hdul:
                for index in range(len(hdul)):
                    data, header = _fits_hdu_image(file, hdul, index)
                    if data is None:
                        continue
                    if data.ndim == 2:
                        scale = header_pixel_scale(header) or header_pixel_scale(hdul[0].header)
                        name = file.name
                        stem = name[: -len(next(s for s in FITS_SUFFIXES if name.lower().endswith(s)))]
                        yield RawGalaxy(data, scale, stem)
                        break
                    shapes.append(data.shape)
                else:
                    raise InputError(f"{file}: no 2-D image in any HDU (image shapes found: {shapes})")


class HDF5Reader(GalaxyReader):
    """An HDF5 file with a stack `images` [N, H, W] (or [N, 1, H, W]).

    Optional datasets: a pixel scale (`pixel_scale`, `pixel_scales`, `pixel_sizes` or `pixel_size`; a scalar or
    one value per image, arcsec), or an attribute `pixel_scale` of the stack or the file; ids (`id`, `ids`,
    `ident`), one per image.
    """

    kind = "hdf5"
    key = "images"

    def __init__(self, path: Path):
        super().__init__(path)
        with self._open() as f:
            if self.key not in f:
                raise InputError(f"{path}: no dataset {self.key!r} (has {sorted(f.keys())})")
            shape = f[self.key].shape
            if not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)):
                raise InputError(f"{path}: dataset {self.key!r} has shape {shape}, expected a stack of 2-D images "
                                 "[N, H, W]")
            self._n = shape[0]
            self.scales = self._pixel_scales(f)
            self.ids = self._ids(f)

    def _open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except (OSError, ValueError) as err:
            raise InputError(f"{self.path}: cannot read HDF5 file ({_first_line(err)})") from None

    def _pixel_scales(self, f) -> list[float | None]:
        values = None
        for name in ("pixel_scale", "pixel_scales", "pixel_sizes", "pixel_size"):
            if name in f:
                values = np.asarray(f[name][()], dtype=np.float64)
                break
        else:
            for attrs in (f[self.key].attrs, f.attrs):
                if "pixel_scale" in attrs:
                    values = np.asarray(attrs["pixel_scale"], dtype=np.float64)
                    break
        if values is None:
            return [None] * self._n
        if values.ndim == 0:
            values = np.full(self._n, float(values))
        if values.shape != (self._n,):
            raise InputError(f"{self.path}: pixel scales have shape {values.shape}, expected a scalar or ({self._n},)")
        return [float(v) if np.isfinite(v) and v > 0 else None for v in values]

    def _ids(self, f) -> list[str]:
        for name in ("id", "ids", "ident", "IDENT"):
            if name in f and f[name].shape == (self._n,):
                return [v.decode() if isinstance(v, bytes) else str(v) for v in f[name][()]]
        return [f"{self.path.stem}:{i}" for i in range(self._n)]

    def __iter__(self) -> Iterator[RawGalaxy]:
        with self._open() as f:
            stack = f[self.key]
            for i in range(self._n):
                image = np.asarray(stack[i], dtype=np.float64).reshape(stack.shape[-2:])
                yield RawGalaxy(image, self.scales[i], self.ids[i])


class RealGalaxyReader(GalaxyReader):
    """A GalSim RealGalaxy catalogue: a FITS table whose rows name an image file (GAL_FILENAME, next to the
    catalogue) and an HDU in it (GAL_HDU); PIXEL_SCALE (arcsec) and IDENT are read where present."""

    kind = "realgalaxy"

    def __init__(self, path: Path):
        super().__init__(path)
        from astropy.io.fits import BinTableHDU, TableHDU

        with _fits_open(path) as hdul:
            table = None
            try:
                for hdu in hdul:
                    if isinstance(hdu, (BinTableHDU, TableHDU)):
                        names = {n.upper(): n for n in hdu.columns.names}
                        if {"GAL_FILENAME", "GAL_HDU"} <= set(names):
                            table = hdu.data
                            break
            except (OSError, ValueError, TypeError, EOFError) as err:
                raise InputError(f"{path}: cannot read FITS file ({_first_line(err)})") from None
            if table is None:
                raise InputError(f"{path}: not a GalSim RealGalaxy catalogue (no table with GAL_FILENAME and "
                                 "GAL_HDU columns); to prepare FITS images, put them in a folder and give the folder")
            self.files = [path.parent / str(v).strip() for v in table[names["GAL_FILENAME"]]]
            self.hdus = [int(v) for v in table[names["GAL_HDU"]]]
            n = len(self.files)
            scales = (np.asarray(table[names["PIXEL_SCALE"]], dtype=np.float64) if "PIXEL_SCALE" in names
                      else np.full(n, np.nan))
            self.scales = [float(v) if np.isfinite(v) and v > 0 else None for v in scales]
            self.ids = ([str(v) for v in table[names["IDENT"]]] if "IDENT" in names
                        else [f"{path.stem}:{i}" for i in range(n)])
        for file in sorted(set(self.files)):
            if not file.is_file():
                raise InputError(f"{path}: image file {file.name} (named in GAL_FILENAME) not found next to the "
                                 "catalogue")
        self._n = n

    def __iter__(self) -> Iterator[RawGalaxy]:
        opened = {}
        try:
            for row, (file, index) in enumerate(zip(self.files, self.hdus, strict=True)):
                if file not in opened:
                    opened[file] = _fits_open(file)
                data, _ = _fits_hdu_image(file, opened[file], index)
                if data is None or data.ndim != 2:
                    shape = None if data is None else data.shape
                    raise InputError(f"{file}: HDU {index} (catalogue row {row}) holds {shape}, not a 2-D image")
                yield RawGalaxy(data, self.scales[row], self.ids[row])
        finally:
            for hdul in opened.values():
                hdul.close()


class HFDatasetReader(GalaxyReader):
    """A Hugging Face dataset saved with `save_to_disk` (a DatasetDict: its `train` split, or its only split).

    Columns: the images (`image`, `images` or `img`: 2-D arrays or single-band PIL images), optionally a pixel
    scale (`pixel_scale`, `pixel_size` or `pixel_scales`, arcsec) and an id (`id`, `ident`, `object_id`, `name`).
    """

    kind = "hf_dataset"

    def __init__(self, path: Path):
        super().__init__(path)
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises many kinds for a broken folder
            raise InputError(f"{path}: cannot read the saved Hugging Face dataset ({_first_line(err)})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" in ds:
                ds = ds["train"]
            elif len(ds) == 1:
                ds = next(iter(ds.values()))
            else:
                raise InputError(f"{path}: a dataset with splits {sorted(ds)} and none named 'train'")
        columns = ds.column_names
        self.image_col = next((c for c in ("image", "images", "img") if c in columns), None)
        if self.image_col is None:
            raise InputError(f"{path}: no image column (looked for image, images, img; has {columns})")
        self.scale_col = next((c for c in ("pixel_scale", "pixel_size", "pixel_scales") if c in columns), None)
        self.id_col = next((c for c in ("id", "ident", "object_id", "name") if c in columns), None)
        self.ds = ds
        self._n = len(ds)

    def __iter__(self) -> Iterator[RawGalaxy]:
        rows = self.ds.with_format("numpy")
        for i in range(self._n):
            row = rows[i]
            ident = str(row[self.id_col]) if self.id_col else f"{self.path.name}:{i}"
            try:
                image = np.asarray(row[self.image_col], dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise InputError(f"{self.path}: row {i} ({ident}): the image is not a numeric array "
                                 f"({_first_line(err)})") from None
            if image.ndim != 2:
                raise InputError(f"{self.path}: row {i} ({ident}): image has shape {image.shape}, expected a 2-D "
                                 "image")
            scale = None
            if self.scale_col is not None:
                value = float(row[self.scale_col]) if row[self.scale_col] is not None else np.nan
                scale = value if np.isfinite(value) and value > 0 else None
            yield RawGalaxy(image, scale, ident)


# ---------------------------------------------------------------------------------------------- image operations

def resample(image: np.ndarray, ratio: float, centre: tuple[float, float], size: int) -> np.ndarray:
    """Flux-conserving resampling of `image` onto a size x size grid.

    Method: along each axis in turn, the cumulative flux at input pixel edges is interpolated with a monotone
    cubic (PCHIP), and each output pixel receives the difference of that curve between its two edges. The result
    is exact on input pixel edges, so an unshifted copy or an integer block sum reproduces the input exactly;
    monotone pieces add no ringing where the flux is positive; and the total flux is conserved exactly for
    whatever part of the input the output grid covers (outside the input, flux is zero).

    Args:
        image: [H, W] flux per input pixel; pixel centres at integer coordinates.
        ratio: output pixel side in input pixels (target pixel scale / input pixel scale).
        centre: (y, x) input coordinates that land on the centre ((size - 1) / 2, (size - 1) / 2) of the output.
        size: output side, pixels.

    Returns:
        [size, size] float64, flux per output pixel.
    """
    edges = (np.arange(size + 1) - size / 2) * ratio
    out = _integrate_axis(np.asarray(image, dtype=np.float64), centre[1] + edges, axis=1)
    return _integrate_axis(out, centre[0] + edges, axis=0)


def _integrate_axis(a: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    n = a.shape[axis]
    knots = np.arange(n + 1) - 0.5
    zero = np.zeros_like(np.take(a, [0], axis=axis))
    cumulative = np.concatenate([zero, np.cumsum(a, axis=axis)], axis=axis)
    curve = PchipInterpolator(knots, cumulative, axis=axis, extrapolate=False)
    return np.diff(curve(np.clip(edges, knots[0], knots[-1])), axis=axis)


def rebin(image: np.ndarray, size: int) -> np.ndarray:
    """Flux-conserving resize of a square [N, N] image to [size, size] about its centre (block sums when N is a
    multiple of size; `resample` otherwise)."""
    n = image.shape[-1]
    if n == size:
        return image
    if n % size == 0:
        f = n // size
        return image.reshape(size, f, size, f).sum(axis=(1, 3))
    c = (n - 1) / 2
    return resample(image, n / size, (c, c), size)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central [size, size] of a square image, zero-padded where `size` is larger."""
    n = image.shape[-1]
    if size <= n:
        start = (n - size) // 2
        return image[start:start + size, start:start + size]
    out = np.zeros((size, size), dtype=image.dtype)
    start = (size - n) // 2
    out[start:start + n, start:start + n] = image
    return out


def _edge_pixels(image: np.ndarray, border: int) -> np.ndarray:
    h, w = image.shape
    if 2 * border >= min(h, w):
        return image.ravel()
    return np.concatenate([image[:border].ravel(), image[-border:].ravel(),
                           image[border:-border, :border].ravel(), image[border:-border, -border:].ravel()])


def background(image: np.ndarray, border: int) -> tuple[float, float]:
    """(level, noise sigma) of a stamp: sigma-clipped median and standard deviation of its `border` edge pixels."""
    from astropy.stats import sigma_clipped_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, median, std = sigma_clipped_stats(_edge_pixels(image, border), sigma=3.0, maxiters=5)
    median = float(median) if np.isfinite(median) else 0.0
    std = float(std) if np.isfinite(std) else 0.0
    return median, std


def segment(image: np.ndarray, border: int, detect_sigma: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Masks (central source, other sources) of a background-subtracted stamp, or None where nothing is detected.

    Detection: the image smoothed by a Gaussian of 1 pixel, above `detect_sigma` times the noise of the smoothed
    edge pixels (and above 1e-3 of its peak, which decides for noise-free images), in 8-connected regions. The
    central source is the region holding the brightest detected pixel in the middle half of the stamp.
    """
    smooth = ndimage.gaussian_filter(image, 1.0, mode="nearest")
    _, noise = background(smooth, border)
    threshold = max(detect_sigma * noise, 1e-3 * float(smooth.max()))
    labels, count = ndimage.label(smooth > threshold, structure=np.ones((3, 3)))
    if count == 0:
        return None
    h, w = image.shape
    box = (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    inner = np.where(labels[box] > 0, smooth[box], -np.inf)
    if not np.isfinite(inner.max()):
        return None
    label = labels[box].flat[int(np.argmax(inner))]
    central = labels == label
    return central, (labels > 0) & ~central


def mask_neighbours(image: np.ndarray, central: np.ndarray, others: np.ndarray, noise: float, fill: str,
                    rng: np.random.Generator) -> np.ndarray:
    """`image` with the other sources (grown by 2 pixels, never into the central one) replaced by Gaussian noise
    of sigma `noise` (fill="noise") or by zeros (fill="zero")."""
    mask = ndimage.binary_dilation(others, iterations=2) & ~central
    out = image.copy()
    out[mask] = rng.normal(0.0, noise, int(mask.sum())) if fill == "noise" else 0.0
    return out


def source_centre(image: np.ndarray, central: np.ndarray, how: str) -> tuple[float, float] | None:
    """(y, x) of the central source: flux-weighted centroid of its positive pixels, or its brightest pixel."""
    if how == "peak":
        y, x = np.unravel_index(int(np.argmax(np.where(central, image, -np.inf))), image.shape)
        return float(y), float(x)
    weights = np.where(central, np.clip(image, 0.0, None), 0.0)
    total = weights.sum()
    if not total > 0:
        return None
    yy, xx = np.indices(image.shape)
    return float((weights * yy).sum() / total), float((weights * xx).sum() / total)


# ------------------------------------------------------------------------------------------------------- prepare

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
        detect_sigma: segmentation threshold in noise sigmas (see `segment`).
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
    found = segment(image, s.border, s.detect_sigma)
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
    from tqdm.auto import tqdm

    for i, raw in enumerate(tqdm(reader, total=len(reader), desc="preparing galaxies", unit="image",
                                 disable=None)):
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
            detect_sigma: float = 3.0, min_size: int = 16, seed: int = 0, overwrite: bool = False) -> Path:
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
                               mask_fill=mask_fill, border=border, detect_sigma=detect_sigma, min_size=min_size,
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


# ---------------------------------------------------------------------------------------------- training dataset

class RandomRot90(v2.Transform):
    """Rotation by k x 90 degrees, k uniform in {0, 1, 2, 3}, of the last two axes: a pixel permutation."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt, params: dict):
        return torch.rot90(inpt, params["k"], dims=(-2, -1))


def augmentation(mode: str) -> v2.Transform | None:
    """torchvision v2 augmentation of [C, H, W] tensors: "none" (None), "flips" (horizontal and vertical, each
    with probability 1/2) or "dihedral" (flips and 90-degree rotations: the 8 symmetries of the square, equally
    likely). Pixels are only permuted, never interpolated."""
    if mode not in AUGMENTATIONS:
        raise InputError(f"augment must be one of {AUGMENTATIONS}, got {mode!r}")
    if mode == "none":
        return None
    flips = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    return v2.Compose(flips + ([RandomRot90()] if mode == "dihedral" else []))


class GalaxyDataset(Dataset):
    """Prepared galaxy images (see `prepare`) as [1, N, N] float32 tensors in network units.

    Normalisation, decided here and only here: network units = flux per pixel of the training grid divided by
    one constant `norm.scale` for the whole dataset (offset 0, since the images are background-subtracted and
    zero-padded). With `norm.scale: auto` the scale is the median, over the images (up to 256, evenly spaced), of
    each image's brightest pixel at `image_size`, so a typical galaxy peaks at 1 and images are O(1), as for the
    paper's source prior. A constant (not per-image) scale keeps relative brightness and lets `norm.to_flux`
    return fluxes; `norm` is saved with the checkpoint by the training run.

    Args:
        path: folder written by `prepare` (or by `datasets.Dataset.save_to_disk` with a float `image` column of
            square 2-D images).
        image_size: N, pixels. Images stored at another size are resized: "rebin" (flux-conserving; the field of
            view is kept and the pixels become larger or smaller) or "crop" (the central N x N, zero-padded where
            N is larger; the pixel scale is kept).
        channels: must be 1.
        augment: "none", "flips" or "dihedral" (see `augmentation`); a galaxy's orientation is arbitrary.
        norm: {"scale": float or "auto", "offset": float}, or a `PixelNorm`.
        resize: "rebin" or "crop".
    """

    def __init__(self, path: str | Path, image_size: int, channels: int = 1, augment: str = "dihedral",
                 norm: dict | PixelNorm | None = None, resize: str = "rebin"):
        import datasets

        self.path = Path(path)
        self.image_size = int(image_size)
        if channels != 1:
            raise InputError(f"galaxy images have 1 channel, got channels={channels} (check prior.channels)")
        if resize not in RESIZES:
            raise InputError(f"resize must be one of {RESIZES}, got {resize!r}")
        self.resize = resize
        self.augment = augment
        self.transform = augmentation(augment)
        if not self.path.exists():
            raise InputError(f"training images not found: {self.path} (make them with `scorelens-data galaxies "
                             f"prepare INPUT {self.path}`, or set data.train.path)")
        try:
            ds = datasets.load_from_disk(str(self.path))
        except Exception as err:  # datasets raises many kinds for a folder that is not a saved dataset
            hint = (" (for an HDF5 or .npy stack set data.train._target_=scorelens.data.training.image_stack.ImageStackDataset)"
                    if self.path.is_file() else "")
            raise InputError(f"{self.path}: not a prepared galaxy dataset ({_first_line(err)}){hint}") from None
        if not isinstance(ds, datasets.Dataset):
            raise InputError(f"{self.path}: a dataset with splits {sorted(ds)}; give the folder of one split")
        if "image" not in ds.column_names:
            raise InputError(f"{self.path}: no 'image' column (has {ds.column_names})")
        if len(ds) == 0:
            raise InputError(f"{self.path}: the dataset holds no images")
        self._images = ds.with_format("numpy", columns=["image"])
        first = np.asarray(self._images[0]["image"])
        if first.ndim != 2 or first.shape[0] != first.shape[1]:
            raise InputError(f"{self.path}: images have shape {first.shape}, expected square 2-D images")
        self.stored_size = first.shape[0]
        self.info = _dataset_info(ds)
        scale = self.info.get("pixel_scale")
        if scale is not None and resize == "rebin":
            scale = scale * self.stored_size / self.image_size
        self.pixel_scale = scale  # arcsec per training pixel, where known
        self.norm = self._norm(norm)
        log.info("%d galaxies from %s: %d px stored, %d px served (%s), pixel scale %s arcsec, %s", len(self),
                 self.path, self.stored_size, self.image_size, resize, "unknown" if scale is None else f"{scale:g}",
                 self.norm)

    def _norm(self, norm: dict | PixelNorm | None) -> PixelNorm:
        if isinstance(norm, PixelNorm):
            return norm
        norm = dict(norm or {"scale": "auto"})
        unknown = set(norm) - {"scale", "offset"}
        if unknown:
            raise InputError(f"norm takes scale and offset, got {sorted(unknown)}")
        offset = float(norm.get("offset", 0.0))
        scale = norm.get("scale", "auto")
        if scale == "auto":
            picks = np.unique(np.linspace(0, len(self) - 1, min(len(self), 256)).round().astype(int))
            scale = float(np.median([self.flux_image(int(i)).max() - offset for i in picks]))
            if not (np.isfinite(scale) and scale > 0):
                raise InputError(f"{self.path}: the images have no positive peaks, cannot set norm.scale=auto")
        try:
            return PixelNorm(scale=float(scale), offset=offset)
        except (TypeError, ValueError) as err:
            raise InputError(f"norm: {_first_line(err)} (scale is a number > 0 or 'auto')") from None

    def __len__(self) -> int:
        return len(self._images)

    def flux_image(self, i: int) -> np.ndarray:
        """Image i at `image_size`, flux per pixel, [N, N] float32, not augmented."""
        image = np.asarray(self._images[i]["image"], dtype=np.float64)
        if self.stored_size != self.image_size:
            image = rebin(image, self.image_size) if self.resize == "rebin" else centre_crop(image, self.image_size)
        return image.astype(np.float32)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.norm.to_net(torch.from_numpy(self.flux_image(i))[None])
        if self.transform is not None:
            x = self.transform(x)
        return x.contiguous()


def _dataset_info(ds) -> dict:
    """The settings `prepare` stored with a dataset ({} for other datasets)."""
    try:
        info = json.loads(ds.info.description or "{}")
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) and info.get("format") == DATASET_FORMAT else {}
