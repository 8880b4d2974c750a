"""Readers of galaxy images for the source prior's training set: each turns an input into a stream of
`RawGalaxy(image, pixel_scale, id)`.

The kind is detected from the path (`open_galaxies`): a folder of FITS images (the first HDU of each file with 2-D
data), an HDF5 file with a stack `images` [N, H, W], a GalSim RealGalaxy catalogue (a FITS table with GAL_FILENAME,
GAL_HDU and PIXEL_SCALE columns; the image files lie next to it), or a folder written by
`datasets.Dataset.save_to_disk` with an image column. `galaxy_prepare.prepare` reads them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...errors import InputError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


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


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _fits_open(path: Path):
    from astropy.io import fits

    try:
        return fits.open(path)
    except (OSError, ValueError, TypeError, EOFError) as err:
        raise InputError(f"{path}: cannot read FITS file ({first_line(err)})") from None


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
        raise InputError(f"{path}: cannot read FITS file ({first_line(err)})") from None


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
            raise InputError(f"{self.path}: cannot read HDF5 file ({first_line(err)})") from None

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
                raise InputError(f"{path}: cannot read FITS file ({first_line(err)})") from None
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
            raise InputError(f"{path}: cannot read the saved Hugging Face dataset ({first_line(err)})") from None
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
                                 f"({first_line(err)})") from None
            if image.ndim != 2:
                raise InputError(f"{self.path}: row {i} ({ident}): image has shape {image.shape}, expected a 2-D "
                                 "image")
            scale = None
            if self.scale_col is not None:
                value = float(row[self.scale_col]) if row[self.scale_col] is not None else np.nan
                scale = value if np.isfinite(value) and value > 0 else None
            yield RawGalaxy(image, scale, ident)

