"""Prepared galaxy images (`galaxy_prepare.prepare`) served to `PriorDataModule` as [1, N, N] tensors in network
units, for the source prior.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ...errors import InputError
from .galaxy_images import centre_crop, rebin
from .galaxy_prepare import DATASET_FORMAT
from .galaxy_readers import first_line
from .image_stack import AUGMENTATIONS
from .normalization import PixelNorm

log = logging.getLogger(__name__)

RESIZES = ("rebin", "crop")


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
                             f"INPUT {self.path}`, or set data.train.path)")
        try:
            ds = datasets.load_from_disk(str(self.path))
        except Exception as err:  # datasets raises many kinds for a folder that is not a saved dataset
            hint = (" (for an HDF5 or .npy stack set "
                    "data.train._target_=scorelens.data.training.image_stack.ImageStackDataset)"
                    if self.path.is_file() else "")
            raise InputError(f"{self.path}: not a prepared galaxy dataset ({first_line(err)}){hint}") from None
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
            raise InputError(f"norm: {first_line(err)} (scale is a number > 0 or 'auto')") from None

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
