import h5py
import numpy as np
import pytest
import torch

from scorelens.data.training.datamodule import PriorDataModule
from scorelens.data.training.image_stack import ImageStackDataset
from scorelens.errors import InputError


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 16, 16)).astype(np.float32)
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f["images"] = images
    return path, images


def test_reads_normalises_and_batches(stack):
    path, images = stack
    ds = ImageStackDataset(path, image_size=16, norm={"scale": 2.0, "offset": 1.0})
    assert len(ds) == 10
    np.testing.assert_allclose(ds[3].numpy()[0], (images[3] - 1.0) / 2.0, rtol=1e-6)
    batch = next(iter(PriorDataModule(ds, batch_size=4).train_dataloader()))
    assert batch.shape == (4, 1, 16, 16)


def test_npy_and_dihedral_augmentation(tmp_path):
    img = np.arange(16 * 16, dtype=np.float32).reshape(1, 16, 16)
    np.save(tmp_path / "one.npy", img)
    ds = ImageStackDataset(tmp_path / "one.npy", image_size=16, augment="dihedral")
    seen = {tuple(ds[0].flatten()[:3].tolist()) for _ in range(200)}
    # the 8 symmetries of the square give 8 distinct images of an asymmetric pattern
    assert len(seen) == 8
    ref = torch.from_numpy(img[0])
    for _ in range(20):
        out = ds[0][0]
        assert any(torch.equal(out, torch.rot90(r, k)) for r in (ref, ref.flip(-1)) for k in range(4))


def test_psf_stacks_are_not_rotated(stack):
    path, images = stack
    ds = ImageStackDataset(path, image_size=16, augment="none")
    for _ in range(5):
        np.testing.assert_array_equal(ds[0].numpy()[0], images[0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=32), r"shape \(1, 16, 16\), expected \[1, 32, 32\]"),
    (dict(image_size=16, key="other"), "no dataset 'other'"),
    (dict(image_size=16, augment="rotate45"), "augment must be one of"),
])
def test_bad_stacks_are_refused_with_one_line(stack, kwargs, match):
    path, _ = stack
    with pytest.raises(InputError, match=match):
        ImageStackDataset(path, **kwargs)


def test_missing_corrupt_and_nan_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ImageStackDataset(tmp_path / "none.h5", image_size=16)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="cannot read"):
        ImageStackDataset(bad, image_size=16)
    nan = np.zeros((2, 16, 16), np.float32)
    nan[1, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    ds = ImageStackDataset(tmp_path / "nan.npy", image_size=16)
    with pytest.raises(InputError, match="image 1 has NaN"):
        ds[1]
