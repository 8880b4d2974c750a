"""The simulated source-galaxy stream: content, normalisation, reproducibility, sharding and workers."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

from scorelens.data.training.normalization import PixelNorm
from scorelens.data.training.source_stream import SourceStream, render_gaussians

SMALL = dict(image_size=32, pixel_scale=0.08, batch_size=3, batches_per_epoch=6, seed=5)

pytestmark = pytest.mark.usefixtures("one_thread")


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_batches_have_the_configured_shape_and_peaks():
    stream = SourceStream(**SMALL, peak=(2.0, 3.0))
    batches = list(stream)
    assert len(batches) == len(stream) == 6
    for batch in batches:
        assert batch.shape == (3, 1, 32, 32) and batch.dtype == torch.float32
        assert torch.isfinite(batch).all() and (batch >= 0).all()
        peaks = batch.amax(dim=(1, 2, 3))
        assert ((peaks >= 2.0 * (1 - 1e-6)) & (peaks <= 3.0 * (1 + 1e-6))).all()
        assert (batch.flatten(1) > 0).float().mean(dim=1).min() > 0.1  # extended light, not a point
    assert stream.norm == PixelNorm()  # network units are the peak-normalised images themselves


def test_peaks_spread_log_uniformly_over_the_range():
    stream = SourceStream(**{**SMALL, "batch_size": 200, "image_size": 16, "pixel_scale": 0.16},
                          peak=(1.0, 10.0))
    peaks = stream.batch(0).amax(dim=(1, 2, 3)).double()
    logs = torch.log10(peaks)
    assert logs.min() >= -1e-6 and logs.max() <= 1 + 1e-6
    assert abs(float(logs.mean()) - 0.5) < 0.08  # log-uniform: mean of log10 is the middle of the range


def test_same_seed_same_batches_other_seed_or_position_differs():
    first, again = list(SourceStream(**SMALL)), list(SourceStream(**SMALL))
    assert same(first, again)
    other = list(SourceStream(**{**SMALL, "seed": 6}))
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    stream = SourceStream(**SMALL)
    stream.set_start(len(stream))
    assert not any(torch.equal(a, b) for a in first for b in list(stream))
    stream.set_start(0)
    assert same(list(stream), first)


def test_ranks_partition_the_stream_into_disjoint_batches():
    single = list(SourceStream(**SMALL))  # global batches 0..5
    ranks = []
    for rank in range(2):
        stream = SourceStream(**SMALL)
        stream.shard(rank, 2)
        assert len(stream) == 3 and list(stream.indices()) == [rank, rank + 2, rank + 4]
        ranks.append(list(stream))
    assert not any(torch.equal(a, b) for a in ranks[0] for b in ranks[1])
    by_index = {2 * k + rank: batch for rank in range(2) for k, batch in enumerate(ranks[rank])}
    assert all(torch.equal(by_index[j], single[j]) for j in range(6))


def test_dataloader_workers_do_not_change_the_stream():
    stream = SourceStream(**{**SMALL, "batches_per_epoch": 5})
    stream.set_start(2)
    serial = list(DataLoader(stream, batch_size=None, num_workers=0))
    parallel = list(DataLoader(stream, batch_size=None, num_workers=2))
    assert same(serial, parallel)
    assert same(serial, [stream.batch(j) for j in range(2, 7)])


def test_clump_counts_and_positions_follow_the_settings():
    stream = SourceStream(**{**SMALL, "batch_size": 400}, n_clumps=(0, 5), center=(-0.2, 0.2))
    sersic, clumps, peak = stream.sample_params(torch.Generator().manual_seed(0))
    counts = clumps["mask"].sum(dim=1)
    assert set(counts.tolist()) == set(range(6))
    assert (sersic["x0"].abs() <= 0.2 / 0.08 + 1e-9).all() and (sersic["y0"].abs() <= 0.2 / 0.08 + 1e-9).all()
    assert (sersic["n"] >= 0.5).all() and (sersic["n"] <= 4.0).all()
    assert (sersic["r_eff"] >= 0.08 / 0.08 - 1e-9).all() and (sersic["r_eff"] <= 0.4 / 0.08 + 1e-9).all()
    # the mask keeps the first k clumps of each galaxy
    assert torch.equal(clumps["mask"], torch.arange(5) < counts[:, None])
    # without clumps, an image is a pure Sersic profile: symmetric under a half turn about its centre
    plain = SourceStream(**SMALL, n_clumps=(0, 0), center=(0.0, 0.0)).batch(0)
    torch.testing.assert_close(plain, plain.flip(-1, -2), rtol=2e-2, atol=2e-3)  # up to the cusp refinement


def test_gaussian_clumps_are_pixel_integrals_of_unit_flux():
    clumps = {"flux": torch.tensor([[2.0, 0.5]], dtype=torch.float64),
              "sigma": torch.tensor([[1.5, 0.7]], dtype=torch.float64),
              "x0": torch.tensor([[0.3, -4.0]], dtype=torch.float64),
              "y0": torch.tensor([[-1.2, 5.0]], dtype=torch.float64),
              "mask": torch.tensor([[True, False]])}
    image = render_gaussians(clumps, 40)[0]
    assert math.isclose(float(image.sum()), 2.0, rel_tol=1e-9)  # the masked clump is absent
    rows, cols = torch.meshgrid(torch.arange(40.0, dtype=torch.float64), torch.arange(40.0, dtype=torch.float64),
                                indexing="ij")
    x, y = cols - 19.5, rows - 19.5  # pixel centres, scorelens.data.simulate.sersic convention
    assert math.isclose(float((image * x).sum() / image.sum()), 0.3, abs_tol=1e-6)
    assert math.isclose(float((image * y).sum() / image.sum()), -1.2, abs_tol=1e-6)


@pytest.mark.parametrize("bad", [dict(pixel_scale=0.0), dict(n_clumps=(0, 6)), dict(peak=(0.0, 1.0)),
                                 dict(center=(-2.0, 2.0)), dict(sersic_index=(0.1, 4.0)), dict(image_size=0)])
def test_invalid_settings_raise_a_clear_error(bad):
    with pytest.raises(ValueError, match="SourceStream"):
        SourceStream(**{**SMALL, **bad})
