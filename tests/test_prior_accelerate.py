"""The score networks' fast inference paths (`ScorePrior.accelerate`): bfloat16 autocast, channels_last and
torch.compile give the fp32 network's scores, in the input's dtype."""

import pytest
import torch

from scorelens.data.training.normalization import PixelNorm
from scorelens.priors.ncsnpp import NCSNpp
from scorelens.priors.prior import ScorePrior
from scorelens.priors.sde import VESDE


def tiny_prior(device="cpu") -> ScorePrior:
    torch.manual_seed(0)
    net = NCSNpp(channels=1, resolution=16, nf=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8],
                 dropout=0.0, fir_kernel=[1, 3, 3, 1], skip_rescale=True, fourier_scale=16.0, init_scale=0.1)
    return ScorePrior(net, VESDE(1e-3, 50.0), "source", PixelNorm()).to(device).eval()


def scores(prior, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = (5 * torch.randn(6, 1, 16, 16, generator=g)).to(device=device, dtype=dtype)
    t = torch.linspace(0.2, 0.9, 6).to(device=device, dtype=dtype)
    with torch.no_grad():
        return prior.score(x, t)


def relative(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_bfloat16_autocast_is_close_to_float32_and_returns_the_input_dtype():
    prior = tiny_prior()
    ref = scores(prior)
    fast = scores(prior.accelerate(precision="bfloat16"))
    assert fast.dtype == torch.float32
    assert 0 < relative(fast, ref) < 0.03  # bfloat16 keeps 8 bits of mantissa: per cent-level differences
    assert scores(prior, dtype=torch.float64).dtype == torch.float64  # sums stay in the sampler's dtype


def test_channels_last_gives_the_same_scores():
    prior = tiny_prior()
    ref = scores(prior)
    assert relative(scores(prior.accelerate(channels_last=True)), ref) < 1e-5
    prior.accelerate()  # back to the plain call
    assert prior._run is None and relative(scores(prior), ref) < 1e-5


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="bfloat16"):
        tiny_prior().accelerate(precision="float16")


@pytest.mark.slow
def test_compiled_network_gives_the_same_scores_on_the_cpu():
    prior = tiny_prior()
    ref = scores(prior)
    assert relative(scores(prior.accelerate(compile=True)), ref) < 1e-4


@pytest.mark.gpu
def test_all_fast_paths_together_on_a_gpu():
    prior = tiny_prior("cuda")
    ref = scores(prior, "cuda")
    fast = scores(prior.accelerate(precision="bfloat16", channels_last=True, compile=True), "cuda")
    assert fast.dtype == torch.float32 and 0 < relative(fast, ref) < 0.03
