"""Training images stored as one stack: an HDF5 dataset or a .npy array of shape [N, H, W] or [N, C, H, W].

Used by the source prior (galaxy images) and the PSF prior (upsampled PSFs) until their dedicated preparation
tools write such stacks; values are fluxes, mapped to network units by the stack's `PixelNorm`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import InputError
from .normalization import PixelNorm

AUGMENTATIONS = ("none", "flips", "dihedral")


class ImageStackDataset(Dataset):
    """Images [C, H, W] (float32, network units) from a stack on disk.

    Args:
        path: an `.h5`/`.hdf5` file (dataset `key`) or a `.npy` file.
        image_size: expected H = W, pixels.
        channels: expected C.
        key: HDF5 dataset name.
        augment: "none"; "flips" (horizontal and vertical); "dihedral" (flips and 90-degree rotations, for
            galaxies, whose orientation on the sky is arbitrary). PSFs must use "none": their orientation is
            fixed by the telescope.
        norm: flux -> network units.
    """

    def __init__(self, path: str | Path, image_size: int, channels: int = 1, key: str = "images",
                 augment: str = "none", norm: dict | PixelNorm | None = None):
        self.path = Path(path)
        self.key = key
        if augment not in AUGMENTATIONS:
            raise InputError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.augment = augment
        self.norm = norm if isinstance(norm, PixelNorm) else PixelNorm(**(norm or {}))
        if not self.path.is_file():
            raise InputError(f"training images not found: {self.path} (give an HDF5 or .npy stack of shape "
                             f"[N, {image_size}, {image_size}] as data.train.path)")
        shape = self._read_shape()
        if len(shape) == 3:
            shape = (shape[0], 1, *shape[1:])
        if len(shape) != 4 or shape[1] != channels or shape[2] != image_size or shape[3] != image_size:
            raise InputError(f"{self.path}: images have shape {shape[1:]}, expected "
                             f"[{channels}, {image_size}, {image_size}] (check prior.image_size and channels)")
        if shape[0] == 0:
            raise InputError(f"{self.path}: the stack holds no images")
        self._len = shape[0]
        self._array = None  # opened lazily, once per DataLoader worker

    def _read_shape(self) -> tuple[int, ...]:
        try:
            if self.path.suffix == ".npy":
                return tuple(np.load(self.path, mmap_mode="r").shape)
            import h5py

            with h5py.File(self.path, "r") as f:
                if self.key not in f:
                    raise InputError(f"{self.path}: no dataset {self.key!r} (has {sorted(f.keys())})")
                return tuple(f[self.key].shape)
        except (OSError, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{self.path}: cannot read the image stack ({err})") from None

    def _open(self):
        if self._array is None:
            if self.path.suffix == ".npy":
                self._array = np.load(self.path, mmap_mode="r")
            else:
                import h5py

                self._array = h5py.File(self.path, "r")[self.key]
        return self._array

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> torch.Tensor:
        img = torch.from_numpy(np.array(self._open()[i], dtype=np.float32))  # a copy: memory maps are read-only
        if img.ndim == 2:
            img = img[None]
        if not torch.isfinite(img).all():
            raise InputError(f"{self.path}: image {i} has NaN or inf pixels")
        img = self.norm.to_net(img)
        if self.augment != "none":
            flips = torch.randint(0, 2, (2,))
            dims = [d for d, f in zip((-1, -2), flips.tolist(), strict=True) if f]
            if dims:
                img = torch.flip(img, dims)
            if self.augment == "dihedral":
                img = torch.rot90(img, int(torch.randint(0, 4, ())), dims=(-2, -1))
        return img.contiguous()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_array"] = None  # file handles do not cross process boundaries
        return state
