"""The simulated lens-light stream: content, reproducibility, sharding, workers and resumption."""

import math

import numpy as np
import pytest
import torch
from scipy import special
from torch.utils.data import DataLoader

from scorelens.data.training.lens_light import LensLightStream

SMALL = dict(image_size=24, batch_size=3, batches_per_epoch=7, seed=5)


pytestmark = pytest.mark.usefixtures("one_thread")


def collect(stream, num_workers=None):
    if num_workers is None:
        return list(stream)
    return list(DataLoader(stream, batch_size=None, num_workers=num_workers))


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_batches_have_the_configured_form():
    stream = LensLightStream(**SMALL, peak=(2.0, 3.0))
    batches = collect(stream)
    assert len(batches) == len(stream) == 7
    for batch in batches:
        assert batch.shape == (3, 1, 24, 24) and batch.dtype == torch.float32
        assert torch.isfinite(batch).all() and (batch >= 0).all()
        peaks = batch.amax(dim=(1, 2, 3))
        assert ((peaks >= 2.0 * (1 - 1e-6)) & (peaks <= 3.0 * (1 + 1e-6))).all()


def test_same_seed_same_batches_other_seed_or_position_differs():
    first, again = collect(LensLightStream(**SMALL)), collect(LensLightStream(**SMALL))
    assert same(first, again)
    other_seed = collect(LensLightStream(**{**SMALL, "seed": 6}))
    assert not any(torch.equal(a, b) for a, b in zip(first, other_seed, strict=True))
    stream = LensLightStream(**SMALL)
    stream.set_start(len(stream))  # the next epoch continues the stream
    next_epoch = collect(stream)
    assert not any(torch.equal(a, b) for a in first for b in next_epoch)
    stream.set_start(0)
    assert same(collect(stream), first)


def test_ranks_partition_the_stream():
    single = collect(LensLightStream(**SMALL))  # global batches 0..6
    ranks = []
    for rank in range(2):
        stream = LensLightStream(**SMALL)
        stream.shard(rank, 2)
        assert len(stream) == 3 and list(stream.indices()) == [rank, rank + 2, rank + 4]
        ranks.append(collect(stream))
    assert not any(torch.equal(a, b) for a in ranks[0] for b in ranks[1])
    by_index = {2 * k + rank: batch for rank in range(2) for k, batch in enumerate(ranks[rank])}
    assert sorted(by_index) == list(range(6))
    assert all(torch.equal(by_index[j], single[j]) for j in range(6))


@pytest.mark.parametrize("rank, start", [(0, 0), (1, 1), (1, 4)])
def test_dataloader_workers_do_not_change_the_stream(rank, start):
    stream = LensLightStream(**{**SMALL, "batches_per_epoch": 11})
    stream.shard(rank, 2)
    stream.set_start(start)
    serial = collect(stream, num_workers=0)
    parallel = collect(stream, num_workers=2)
    assert len(serial) == 5
    assert same(serial, parallel)
    assert same(serial, [stream.batch(j) for j in range(2 * start + rank, 2 * (start + 5), 2)])


def test_set_start_continues_the_stream_across_epochs():
    """Two epochs read back to back equal one long read; a restart anywhere picks up the same sequence."""
    stream = LensLightStream(**SMALL)
    epochs = collect(stream)
    stream.set_start(7)
    epochs += collect(stream)
    long = LensLightStream(**{**SMALL, "batches_per_epoch": 14})
    assert same(collect(long), epochs)
    stream.set_start(3)
    assert len(stream) == 7
    assert same(collect(stream), epochs[3:10])


def test_component_parameters_follow_the_configuration():
    config = dict(image_size=64, n_components=(1, 5), sersic_index=(0.7, 5.0), r_eff=(0.02, 0.2),
                  axis_ratio=(0.4, 0.9), angle=(0.1, 2.0), center=(-0.05, 0.03), component_offset=0.01,
                  flux_fraction=(0.1, 2.0))
    stream = LensLightStream(**config)
    params, mask, peak = stream.sample_params(torch.Generator().manual_seed(0), 4000)
    assert mask.shape == (4000, 5) and mask.dtype == torch.bool
    counts = mask.sum(dim=1)
    # active components come first, and every count in 1..5 is about equally frequent
    assert torch.equal(mask, torch.arange(5) < counts[:, None])
    frequency = torch.bincount(counts, minlength=6)[1:] / 4000
    assert (frequency > 0.17).all() and (frequency < 0.23).all()
    on = {k: v[mask].double().numpy() for k, v in params.items()}
    for key, bounds, scale in [("n", (0.7, 5.0), 1), ("r_eff", (0.02, 0.2), 64), ("q", (0.4, 0.9), 1),
                               ("phi", (0.1, 2.0), 1)]:
        values = on[key] / scale
        assert values.min() >= bounds[0] - 1e-6 and values.max() <= bounds[1] + 1e-6
        span = bounds[1] - bounds[0]
        assert values.min() < bounds[0] + 0.01 * span and values.max() > bounds[1] - 0.01 * span
    # log-uniform radii: the log is uniform, median at the geometric mean
    np.testing.assert_allclose(np.median(on["r_eff"]), 64 * math.sqrt(0.02 * 0.2), rtol=0.05)
    # total flux of each component, from the formula with scipy's b_n, lies in flux_fraction
    n = on["n"]
    b = special.gammaincinv(2 * n, 0.5)
    flux = 2 * np.pi * n * on["amplitude"] * on["r_eff"] ** 2 * np.exp(b) * b ** (-2 * n)
    flux *= special.gamma(2 * n)
    assert flux.min() >= 0.1 * (1 - 1e-5) and flux.max() <= 2.0 * (1 + 1e-5)
    # centres (x shown): galaxy centre uniform in `center`, component jitter of std component_offset
    x0 = params["x0"].double() / 64
    galaxy = x0.mean(dim=1)  # all K components are drawn: the jitter averages to std 0.01 / sqrt(5)
    assert -0.05 - 0.02 < galaxy.min() < -0.04 and 0.02 < galaxy.max() < 0.03 + 0.02
    np.testing.assert_allclose((x0[:, 1] - x0[:, 0]).std().item(), 0.01 * math.sqrt(2), rtol=0.1)
    assert peak.shape == (4000,) and peak.min() >= 1.0 and peak.max() <= 10.0


def test_render_sums_the_active_components_and_sets_the_peak():
    stream = LensLightStream(image_size=32)
    params, mask, peak = stream.sample_params(torch.Generator().manual_seed(3), 2)
    raw = stream.render(params, mask)
    assert raw.shape == (2, 1, 32, 32)
    mask[:, 0] = False  # dropping a component changes the image
    assert not torch.equal(stream.render(params, mask), raw)
    mask[:, 0] = True
    scaled = stream.render(params, mask, peak)
    torch.testing.assert_close(scaled.amax(dim=(1, 2, 3)), peak)
    torch.testing.assert_close(scaled, raw * (peak / raw.amax(dim=(1, 2, 3)))[:, None, None, None])


def test_ranges_accept_config_sequences():
    import omegaconf
    config = omegaconf.OmegaConf.create({"r_eff": [0.02, 0.1], "n_components": [2, 3]})
    stream = LensLightStream(image_size=16, r_eff=config.r_eff, n_components=config.n_components)
    assert stream.r_eff == (0.02, 0.1) and stream.n_components == (2, 3)


@pytest.mark.parametrize("name, value", [
    ("image_size", 0), ("batch_size", 1.5), ("batches_per_epoch", 0), ("seed", -1),
    ("n_components", (0, 3)), ("n_components", (2, 6)), ("n_components", (3, 2)), ("n_components", (1.5, 3)),
    ("sersic_index", (0.1, 4.0)), ("sersic_index", (1.0, 12.0)), ("r_eff", (0.0, 0.1)), ("r_eff", (0.2, 0.1)),
    ("axis_ratio", (0.5, 1.2)), ("axis_ratio", (0.0, 1.0)), ("angle", (1.0, 0.0)), ("center", "wide"),
    ("center", (-0.2, 0.6)),
    ("center", (0.1,)), ("component_offset", -0.1), ("flux_fraction", (-1.0, 1.0)), ("peak", (5.0, 1.0)),
    ("peak", (1.0, float("inf"))), ("oversample", 0), ("center_oversample", 1), ("center_box", 4),
])
def test_invalid_arguments_raise(name, value):
    with pytest.raises(ValueError, match=name):
        LensLightStream(**{name: value})


def test_invalid_positions_raise():
    stream = LensLightStream(**SMALL)
    with pytest.raises(ValueError, match="rank"):
        stream.shard(2, 2)
    with pytest.raises(ValueError, match="world_size"):
        stream.shard(0, 8)
    stream.set_start(2)
    with pytest.raises(ValueError, match="batch"):
        stream.set_start(-1)
    assert stream.start == 2
