"""The simulated PSF stream: unit-sum centred PSFs in documented network units, reproducible and shardable."""

import pytest
import torch

from scorelens.data.simulate.hst_psf import hst_like_psf
from scorelens.data.training.psf_stream import PSFStream

SMALL = dict(image_size=16, batch_size=3, batches_per_epoch=4, seed=3, integration_oversample=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("size", [16, 15])
def test_psfs_are_centred_unit_sum_and_in_network_units(size):
    stream = PSFStream(**{**SMALL, "image_size": size}, norm_scale=0.04)
    assert stream.norm.scale == 0.04 and stream.norm.offset == 0.0
    for batch in stream:
        assert batch.shape == (3, 1, size, size) and batch.dtype == torch.float32
        assert torch.isfinite(batch).all() and (batch >= 0).all()
        psf = stream.norm.to_flux(batch.double())  # back to PSF units
        torch.testing.assert_close(psf.sum(dim=(1, 2, 3)), torch.ones(3, dtype=torch.float64), rtol=1e-6, atol=0)
        brightest = psf.flatten(1).argmax(dim=1)
        assert (brightest == (size // 2) * size + size // 2).all()  # peak on pixel (N // 2, N // 2)


def test_default_scale_puts_the_peak_near_one_and_a_half_network_units():
    peaks = PSFStream(image_size=32, batch_size=8, integration_oversample=2).batch(0).amax(dim=(1, 2, 3))
    assert (peaks > 0.7).all() and (peaks < 3.0).all()


def test_a_psf_is_the_mock_psf_with_its_drawn_settings():
    stream = PSFStream(**SMALL, n_wavelengths=1, band_width=0.0)
    params = stream.sample_params(torch.Generator().manual_seed(0), batch_size=1)
    settings = {k: float(v[0]) for k, v in params.items()}
    centre = settings.pop("band_center")
    expected = hst_like_psf(17, 0.025, wavelengths_um=(centre,), oversample=2, **settings)[:16, :16]
    expected = torch.from_numpy(expected / expected.sum())
    got = stream.norm.to_flux(stream.render(params)[0, 0].double())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_psfs_vary_within_a_batch():
    batch = PSFStream(**{**SMALL, "batch_size": 6}).batch(0)
    widths = (batch > 0.5 * batch.amax(dim=(2, 3), keepdim=True)).sum(dim=(1, 2, 3))
    assert not torch.equal(batch[0], batch[1])
    assert widths.unique().numel() > 1 or (batch[0] - batch[1]).abs().max() > 1e-3


def test_determinism_and_disjoint_shards():
    first, again = list(PSFStream(**SMALL)), list(PSFStream(**SMALL))
    assert same(first, again)
    shards = []
    for rank in range(2):
        stream = PSFStream(**SMALL)
        stream.shard(rank, 2)
        shards.append(list(stream))
    assert not any(torch.equal(a, b) for a in shards[0] for b in shards[1])
    assert same([shards[0][0], shards[1][0], shards[0][1], shards[1][1]], first)


@pytest.mark.parametrize("bad", [dict(norm_scale=0.0), dict(ellipticity=(0.0, 0.6)), dict(image_size=2),
                                 dict(obscuration=1.0), dict(band_center=(0.1, 0.2), band_width=0.3)])
def test_invalid_settings_raise_a_clear_error(bad):
    with pytest.raises(ValueError, match="PSFStream"):
        PSFStream(**{**SMALL, **bad})
