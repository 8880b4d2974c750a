"""PSF libraries: PSF files read as centred, unit-sum PSFs on one grid (`PSFLibrary`), and the CLI that writes PSF
training stacks. `scorelens.data.training.psf_dataset.PSFDataset` serves a library to the PSF prior.

Readable sources (`scan_psf_sources`), one file or a folder of them (not recursive):
- a stack: HDF5 (dataset `key`, [N, K, K] or [N, 1, K, K]) or .npy; its oversampling is the HDF5 attribute
  `oversampling` (of the dataset or the file; the CLI writes it), else `stack_oversampling`;
- an STDPSF library (Anderson's empirical PSFs, read by `photutils.psf.STDPSFGrid`): each PSF of the grid over
  the detector one sample, at the library's oversampling; other FITS cubes [n_psf, K, K]: oversampling from a
  header keyword (OVERSAMP, SUBSAMPL, DET_SAMP) if present, else `cube_oversampling`;
- a single-PSF FITS (TinyTim, or any 2-D PSF image; every 2-D image HDU is one PSF, padded to a square if it is
  not one): oversampling from a header keyword as above, else from PIXSCALE (TinyTim writes the PSF's pixel size,
  detector scale / subsampling) as detector_pixel_scale / PIXSCALE (rounded when within 2% of an integer,
  PIXSCALE being approximate), else `image_oversampling`.
FITS files of a folder that hold no image (catalogue tables) are skipped with a warning.

Every PSF goes through `scorelens.data.psf.epsf.prepare_psf`: negative pixels (noise, fill values such as the -0.1
borders of some STDPSF planes) set to zero, centred on pixel N // 2 (the centroid of its core), resampled
flux-conservingly to `oversampling` and cut to [N, N] = [image_size, image_size], centred again, normalised to unit
sum.

CLI (writes HDF5 stacks `images` [n, size, size] float32, unit-sum PSFs, attribute `oversampling`):

    scorelens-data psfs build FLT_FOLDER OUTPUT.h5 [--oversampling 4 --size 128 --per-chip]
    scorelens-data psfs convert INPUT OUTPUT.h5 [--oversampling 4 --size 128]

`build` finds stars in every FLT/FLC file of the folder (the config's `stars`) and builds one ePSF per file (or
per chip); `convert` turns STDPSF/TinyTim files, stacks or a folder of them into a stack.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...atomic import atomic_write
from ...errors import InputError
from .epsf import build_epsf, prepare_psf
from .stars import StarStamps, find_settings, find_stars_in_flt

log = logging.getLogger(__name__)

STACK_SUFFIXES = (".h5", ".hdf5", ".npy")
FITS_SUFFIXES = (".fits", ".fit", ".fts")
OVERSAMPLING_KEYWORDS = ("OVERSAMP", "SUBSAMPL", "DET_SAMP")


@dataclass
class PSFSource:
    """PSFs of one file.

    Attributes:
        path: the file.
        kind: "stack" (read lazily by index) or "fits" (held in `psfs`).
        count: number of PSFs.
        oversampling: fine pixels per detector pixel of the file's PSFs.
        key: HDF5 dataset name (stacks).
        psfs: raw PSFs [K, K] of a FITS file (sizes may differ between HDUs).
        labels: one name per PSF of a FITS file, for messages (e.g. 'file.fits[3]').
    """

    path: Path
    kind: str
    count: int
    oversampling: float
    key: str = "images"
    psfs: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------ reading


def _oversampling_from_header(header, detector_pixel_scale: float | None) -> float | None:
    for key in OVERSAMPLING_KEYWORDS:
        if key in header:
            value = float(header[key])
            if value > 0:
                return value
    if detector_pixel_scale and "PIXSCALE" in header and float(header["PIXSCALE"]) > 0:
        ratio = float(detector_pixel_scale) / float(header["PIXSCALE"])
        nearest = max(1, round(ratio))
        return float(nearest) if abs(ratio - nearest) <= 0.02 * nearest else ratio
    return None


def _square(image: np.ndarray) -> np.ndarray:
    """A 2-D PSF image [H, W] padded with zeros to [K, K], K = max(H, W), keeping pixel (H // 2, W // 2) on
    (K // 2, K // 2)."""
    h, w = image.shape
    k = max(h, w)
    out = np.zeros((k, k), dtype=image.dtype)
    out[k // 2 - h // 2:k // 2 - h // 2 + h, k // 2 - w // 2:k // 2 - w // 2 + w] = image
    return out


def _is_stdpsf(path: Path) -> bool:
    """Whether a FITS file is an STDPSF grid (Anderson's libraries: a cube with NXPSFS / NYPSFS in its header)."""
    from astropy.io import fits

    try:
        header = fits.getheader(path, 0)
    except (OSError, IndexError):
        return False
    return header.get("NAXIS") == 3 and "NXPSFS" in header and "NYPSFS" in header


def _read_stdpsf(path: Path) -> PSFSource:
    """An STDPSF grid read by photutils (`STDPSFGrid`): its PSFs, their oversampling, and labels with each PSF's
    position on the detector (pixels)."""
    import warnings

    from astropy.utils.exceptions import AstropyUserWarning
    from photutils.psf import STDPSFGrid

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)  # the files' lower-case keywords
            grid = STDPSFGrid(str(path))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable STDPSF file ({err})") from None
    over = {float(o) for o in np.atleast_1d(grid.oversampling)}
    if len(over) != 1:
        raise InputError(f"{path}: STDPSF oversampling differs between axes ({sorted(over)}); not supported")
    data = np.asarray(grid.data, dtype=np.float64)
    labels = [f"{path}[PSF {i} at detector x={x}, y={y} (0-based)]" for i, (x, y) in enumerate(grid.grid_xypos)]
    return PSFSource(path, "fits", len(data), over.pop(), psfs=list(data), labels=labels)


def _read_fits(path: Path, cube_oversampling: float, image_oversampling: float,
               detector_pixel_scale: float | None) -> PSFSource | None:
    """A FITS file's PSFs (None if it holds no image): an STDPSF grid by photutils (`_read_stdpsf`); otherwise each
    3-D HDU is a cube of PSFs, each 2-D HDU one PSF."""
    import warnings

    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    if _is_stdpsf(path):
        return _read_stdpsf(path)
    psfs, labels, factors = [], [], set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # non-standard keywords of PSF files
            with fits.open(path, memmap=False) as hdul:
                for n, hdu in enumerate(hdul):
                    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) or hdu.data is None:
                        continue
                    data = np.asarray(hdu.data, dtype=np.float64)
                    if data.ndim == 3 and data.shape[1] == data.shape[2] and data.shape[0] > 0:
                        planes, default = list(data), cube_oversampling
                    elif data.ndim == 2 and min(data.shape) >= 3:
                        planes, default = [_square(data)], image_oversampling
                    else:
                        raise InputError(f"{path}: HDU {n} has shape {data.shape}; a PSF FITS holds images [K, K] or "
                                         "a cube of square PSFs [n_psf, K, K]")
                    factor = _oversampling_from_header(hdu.header, detector_pixel_scale) or default
                    factors.add(float(factor))
                    psfs.extend(planes)
                    labels.extend(f"{path}[HDU {n}, PSF {i}]" if len(planes) > 1 else f"{path}[HDU {n}]"
                                  for i in range(len(planes)))
    except OSError as err:
        raise InputError(f"{path}: cannot read the FITS file ({err})") from None
    if not psfs:
        return None
    if len(factors) > 1:
        raise InputError(f"{path}: its HDUs have different oversampling factors {sorted(factors)}; split the file")
    return PSFSource(path, "fits", len(psfs), factors.pop(), psfs=psfs, labels=labels)


def _read_stack_info(path: Path, key: str, stack_oversampling: float | None,
                     oversampling: float) -> PSFSource:
    """A stack's size and oversampling (its images are read lazily)."""
    try:
        if path.suffix == ".npy":
            shape = tuple(np.load(path, mmap_mode="r").shape)
            attr = None
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if key not in f:
                    raise InputError(f"{path}: no dataset {key!r} (has {sorted(f.keys())})")
                shape = tuple(f[key].shape)
                attr = f[key].attrs.get("oversampling", f.attrs.get("oversampling"))
    except (OSError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: cannot read the PSF stack ({err})") from None
    if len(shape) == 4 and shape[1] == 1:
        shape = (shape[0], *shape[2:])
    if len(shape) != 3 or shape[1] != shape[2]:
        raise InputError(f"{path}: a PSF stack must be [N, K, K] or [N, 1, K, K], got shape {shape}")
    if shape[0] == 0:
        raise InputError(f"{path}: the stack holds no PSFs")
    factor = float(attr) if attr is not None else (stack_oversampling or oversampling)
    return PSFSource(path, "stack", shape[0], float(factor), key=key)


def scan_psf_sources(path: str | Path, *, oversampling: float, key: str = "images", cube_oversampling: float = 4,
                     image_oversampling: float = 1, stack_oversampling: float | None = None,
                     detector_pixel_scale: float | None = None) -> list[PSFSource]:
    """The PSF sources in a file or a folder (see the module's docstring); InputError if there are none.

    Args:
        path: a stack, a FITS file, or a folder of them.
        oversampling: the target oversampling (stacks without an attribute are taken to be at it unless
            `stack_oversampling` is given).
        key, cube_oversampling, image_oversampling, stack_oversampling, detector_pixel_scale: as in `PSFLibrary`.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in STACK_SUFFIXES + FITS_SUFFIXES)
        if not files:
            raise InputError(f"{path}: no PSF files ({', '.join(STACK_SUFFIXES + FITS_SUFFIXES)}) in the folder")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"PSFs not found: {path} (give a PSF stack, an STDPSF or TinyTim FITS file, or a folder of "
                         "them as data.train.path)")
    sources = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix in STACK_SUFFIXES:
            sources.append(_read_stack_info(f, key, stack_oversampling, oversampling))
        elif suffix in FITS_SUFFIXES:
            source = _read_fits(f, cube_oversampling, image_oversampling, detector_pixel_scale)
            if source is None:
                if not path.is_dir():
                    raise InputError(f"{f}: the FITS file holds no image")
                log.warning("%s holds no image: skipped", f)
                continue
            sources.append(source)
        else:
            raise InputError(f"{f}: unknown PSF file type (use {', '.join(STACK_SUFFIXES + FITS_SUFFIXES)})")
    if not sources:
        raise InputError(f"{path}: no PSFs in the folder")
    return sources


# ------------------------------------------------------------------------------------------------------ library


class PSFLibrary:
    """The PSFs of a stack, an STDPSF cube, a TinyTim file or a folder of them, prepared for the PSF prior.

    PSF i (`psf(i)`) is [image_size, image_size] float64 at `oversampling` fine pixels per detector pixel,
    centred on pixel (N // 2, N // 2), non-negative, unit sum (see the module's docstring). FITS PSFs are prepared
    once when the library is made (bad ones raise InputError then); stack PSFs when they are read.

    Args:
        path: a stack (.h5/.hdf5/.npy), a FITS file, or a folder of them.
        image_size: N, pixels at `oversampling`.
        oversampling: fine pixels per detector pixel of the returned PSFs (4: 128 pixels span 32 detector pixels).
        key: HDF5 dataset name of stacks.
        cube_oversampling: oversampling of 3-D FITS cubes without a keyword (STDPSF: 4).
        image_oversampling: oversampling of 2-D FITS PSFs without a keyword or PIXSCALE.
        stack_oversampling: oversampling of stacks without an `oversampling` attribute; None: `oversampling`.
        detector_pixel_scale: arcsec per detector pixel, to read a FITS PIXSCALE (None: ignore PIXSCALE).
        clip_negative: set negative PSF pixels to zero before anything else.
        centre_box: half-size, detector pixels, of the box whose centroid defines a PSF's centre.
    """

    def __init__(self, path: str | Path, image_size: int, oversampling: float = 4, key: str = "images",
                 cube_oversampling: float = 4, image_oversampling: float = 1, stack_oversampling: float | None = None,
                 detector_pixel_scale: float | None = None, clip_negative: bool = True, centre_box: float = 1.5):
        if not (image_size >= 3 and oversampling > 0):
            raise InputError(f"PSFs need image_size >= 3 and oversampling > 0, got {image_size}, {oversampling}")
        self.path = Path(path)
        self.image_size = int(image_size)
        self.oversampling = float(oversampling)
        self.clip_negative = bool(clip_negative)
        self.centre_box = float(centre_box)
        self.sources = scan_psf_sources(self.path, oversampling=self.oversampling, key=key,
                                        cube_oversampling=cube_oversampling, image_oversampling=image_oversampling,
                                        stack_oversampling=stack_oversampling,
                                        detector_pixel_scale=detector_pixel_scale)
        self._starts = np.cumsum([0] + [s.count for s in self.sources])
        self._prepared: dict[int, np.ndarray] = {}  # FITS PSFs, ready
        for n, source in enumerate(self.sources):
            if source.kind == "fits":
                for j, (psf, label) in enumerate(zip(source.psfs, source.labels, strict=True)):
                    self._prepared[int(self._starts[n]) + j] = self._prepare(psf, source.oversampling, label)
                source.psfs = []  # the prepared copies are all that is needed
        self._arrays: dict[int, object] = {}  # stacks, opened lazily, once per DataLoader worker
        log.info("PSFs: %d from %d file(s) under %s, [%d, %d] at oversampling %g", len(self), len(self.sources),
                 self.path, self.image_size, self.image_size, self.oversampling)

    def _prepare(self, psf: np.ndarray, from_oversampling: float, where: str) -> np.ndarray:
        return prepare_psf(psf, from_oversampling, self.oversampling, self.image_size, where,
                           clip_negative=self.clip_negative, centre_box=self.centre_box)

    def _stack(self, n: int):
        if n not in self._arrays:
            source = self.sources[n]
            if source.path.suffix == ".npy":
                self._arrays[n] = np.load(source.path, mmap_mode="r")
            else:
                import h5py

                self._arrays[n] = h5py.File(source.path, "r")[source.key]
        return self._arrays[n]

    def psf(self, i: int) -> np.ndarray:
        """PSF i as prepared (unit sum, centred, [N, N] float64)."""
        if not 0 <= i < len(self):
            raise IndexError(f"PSF index {i} out of range for {len(self)} PSFs")
        if i in self._prepared:
            return self._prepared[i]
        n = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[n])
        source = self.sources[n]
        raw = np.asarray(self._stack(n)[j], dtype=np.float64).reshape(self._stack(n).shape[-2:])
        return self._prepare(raw, source.oversampling, f"{source.path}[{j}]")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}  # file handles do not cross process boundaries
        return state


# ---------------------------------------------------------------------------------------------------------- CLI


def write_stack(path: str | Path, images: np.ndarray, oversampling: float, **extra) -> None:
    """Write unit-sum PSFs [n, N, N] as an HDF5 stack `images` (float32, attribute `oversampling`), atomically;
    `extra` 1-D arrays (n values each) become datasets beside it."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("images", data=np.asarray(images, dtype=np.float32), compression="gzip")
            dset.attrs["oversampling"] = float(oversampling)
            dset.attrs["description"] = ("PSFs centred on pixel N // 2, unit sum, oversampling fine pixels per "
                                         "detector pixel")
            f.attrs["oversampling"] = float(oversampling)
            for name, values in extra.items():
                values = np.asarray(values)
                f.create_dataset(name, data=values.astype("S") if values.dtype.kind in "UO" else values)

    atomic_write(path, write)
    log.info("wrote %d PSFs [%d, %d] at oversampling %g to %s", len(images), *np.shape(images)[1:], oversampling,
             path)


def _progress(items: Sequence, desc: str):
    import sys

    from rich.progress import track

    # a bar on a terminal; nothing in batch logs, where the log lines say what was done
    return track(items, description=desc, total=len(items), disable=not sys.stderr.isatty())


def build_epsf_stack(flt_folder: str | Path, output: str | Path, *, find: Mapping, epsf: Mapping,
                     oversampling: int | None = None, size: int | None = None, per_chip: bool = False,
                     pattern: str = "*_fl[tc].fits") -> int:
    """ePSFs from the stars of every FLT/FLC file in a folder, written as a PSF stack; returns how many.

    Settings are the config's `stars` blocks: `find` for the stars, `epsf` for the builder (`oversampling` and
    `size` there unless given). Files (or chips) with fewer than `epsf.min_stars` stars are skipped with a warning.
    """
    folder = Path(flt_folder)
    if not folder.is_dir():
        raise InputError(f"FLT folder not found: {folder}")
    files = sorted(folder.glob(pattern))
    if not files:
        raise InputError(f"{folder}: no files matching {pattern}")
    find = find_settings(find)
    epsf = dict(epsf)
    oversampling = int(oversampling or epsf["oversampling"])
    size = int(size or epsf["size"])
    min_stars = int(epsf["min_stars"])
    builder = {k: v for k, v in epsf.items() if k not in ("oversampling", "size", "min_stars")}
    images, sources, chips, counts = [], [], [], []
    for path in _progress(files, "ePSFs"):
        per = find_stars_in_flt(path, settings=find)
        groups = [(ext, st) for ext, st in per] if per_chip else \
            [(0, StarStamps.concatenate([st for _, st in per if len(st)], find["stamp_size"]))]
        for ext, stamps in groups:
            label = f"{path.name}" + (f" chip {ext}" if ext else "")
            if len(stamps) < min_stars:
                log.warning("%s: %d stars, fewer than %d: no ePSF", label, len(stamps), min_stars)
                continue
            images.append(build_epsf(stamps, oversampling, size, **builder))
            sources.append(path.name)
            chips.append(ext)
            counts.append(len(stamps))
            log.info("%s: ePSF from %d stars", label, len(stamps))
    if not images:
        raise InputError(f"{folder}: no file had {min_stars} usable stars; no ePSF built")
    write_stack(output, np.stack(images), oversampling, source=np.asarray(sources), chip=np.asarray(chips),
                n_stars=np.asarray(counts))
    return len(images)


READER_SETTINGS = ("oversampling", "key", "cube_oversampling", "image_oversampling", "stack_oversampling",
                   "detector_pixel_scale", "clip_negative", "centre_box")


def convert_psfs(source: str | Path, output: str | Path, *, readers: Mapping, size: int = 128) -> int:
    """STDPSF/TinyTim files, stacks or a folder of them -> a PSF stack of prepared PSFs; returns how many.

    `readers`: the reader settings of `PSFLibrary` (READER_SETTINGS; the PSF prior's `data.train` holds them).
    """
    settings = {k: readers[k] for k in READER_SETTINGS if k in readers}
    data = PSFLibrary(source, image_size=size, **settings)
    images = np.stack([data.psf(i) for i in _progress(range(len(data)), "PSFs")])
    names = [s.path.name for s in data.sources for _ in range(s.count)]
    write_stack(output, images, data.oversampling, source=np.asarray(names))
    return len(images)
