"""Tests of the NCSN++ score network and its building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import upfirdn

from scorelens.priors.layers import AttentionBlock, FIRDownsample, FIRUpsample, GaussianFourierEmbedding
from scorelens.priors.ncsnpp import NCSNpp

PAPER_CH_MULT = (1, 1, 2, 2, 2, 2)
EXPECTED_PARAMS = {32: 3.40e6, 64: 13.5e6, 128: 54.1e6}
SMALL = dict(channels=1, resolution=16, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def small_net() -> NCSNpp:
    torch.manual_seed(0)
    return NCSNpp(**SMALL).eval()


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("nf", [32, 64, 128])
def test_parameter_count_matches_reference(nf):
    with torch.device("meta"):
        net = NCSNpp(
            channels=1, resolution=256, nf=nf, ch_mult=PAPER_CH_MULT, num_res_blocks=2, attn_resolutions=(16,)
        )
    assert n_params(net) == pytest.approx(EXPECTED_PARAMS[nf], rel=0.05)


@pytest.mark.parametrize("nf", [32, 64, 128])
def test_parameter_count_matches_score_models(nf):
    sm = pytest.importorskip("score_models.architectures")
    # score_models' NCSNpp cannot be built on the meta device, so it is built on the CPU.
    ref = sm.NCSNpp(channels=1, nf=nf, ch_mult=PAPER_CH_MULT, num_res_blocks=2, attn_resolutions=(16,))
    with torch.device("meta"):
        net = NCSNpp(
            channels=1, resolution=256, nf=nf, ch_mult=PAPER_CH_MULT, num_res_blocks=2, attn_resolutions=(16,)
        )
    assert n_params(net) == pytest.approx(n_params(ref), rel=0.05)


# ---------------------------------------------------------------- FIR resampling


def _ref_downsample(x: np.ndarray, taps) -> np.ndarray:
    """StyleGAN2 upfirdn2d(down=2, pad=((K-1)//2, (K-2)//2)) built from scipy's 1-D upfirdn.

    Full convolution y[n] = sum_k h[k] x[n-k]; padding the input by l on the left and
    keeping the 'valid' part shifts the output by K-1-l, then every second sample is kept.
    """
    h = np.asarray(taps, dtype=np.float64) / np.sum(taps)
    k = len(taps)
    offset = k - 1 - (k - 1) // 2
    for axis in (-1, -2):
        n = x.shape[axis]
        y = upfirdn(h, x, up=1, down=1, axis=axis)
        x = np.take(y, np.arange(offset, offset + n, 2), axis=axis)
    return x


def _ref_upsample(x: np.ndarray, taps) -> np.ndarray:
    """StyleGAN2 upfirdn2d(up=2, pad=((K-1)//2 + 1, K//2 - 1), gain 4) from scipy's 1-D upfirdn.

    scipy inserts zeros and returns the full convolution; the StyleGAN2 left pad of
    (K-1)//2 + 1 corresponds to dropping the first K-2-(K-1)//2 output samples.
    """
    h = 2.0 * np.asarray(taps, dtype=np.float64) / np.sum(taps)  # gain 2 per axis, 4 in 2-D
    k = len(taps)
    offset = k - 2 - (k - 1) // 2
    for axis in (-1, -2):
        n = x.shape[axis]
        y = upfirdn(h, x, up=2, down=1, axis=axis)
        x = np.take(y, np.arange(offset, offset + 2 * n), axis=axis)
    return x


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1), (1, 1), (1, 4, 6, 4, 1)])
def test_fir_downsample_matches_scipy(taps):
    x = torch.randn(2, 3, 12, 16, dtype=torch.float64)
    out = FIRDownsample(taps).double()(x)
    ref = _ref_downsample(x.numpy(), taps)
    assert out.shape == (2, 3, 6, 8)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1), (1, 1), (1, 4, 6, 4, 1)])
def test_fir_upsample_matches_scipy(taps):
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    out = FIRUpsample(taps).double()(x)
    ref = _ref_upsample(x.numpy(), taps)
    assert out.shape == (2, 3, 12, 16)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_fir_resampling_keeps_constants_and_ramps():
    """Zero padding touches one border pixel, so the interior is checked."""
    c = torch.full((1, 2, 16, 16), 3.5)
    down, up = FIRDownsample(), FIRUpsample()
    torch.testing.assert_close(down(c)[..., 1:-1, 1:-1], torch.full((1, 2, 6, 6), 3.5))
    torch.testing.assert_close(up(c)[..., 1:-1, 1:-1], torch.full((1, 2, 30, 30), 3.5))
    # A linear ramp is sampled at the new pixel centres: i -> 2m + 1/2 (down), o/2 - 1/4 (up).
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)
    m = torch.arange(8.0)
    o = torch.arange(32.0)
    torch.testing.assert_close(down(ramp)[0, 0, 3, 1:-1], 2 * m[1:-1] + 0.5)
    torch.testing.assert_close(up(ramp)[0, 0, 5, 1:-1], o[1:-1] / 2 - 0.25)


def test_fir_kernel_is_a_non_persistent_buffer():
    down = FIRDownsample()
    assert "kernel" in dict(down.named_buffers())
    assert "kernel" not in down.state_dict()
    assert down.to(torch.float64).kernel.dtype == torch.float64


# ---------------------------------------------------------------- attention and embedding


def test_attention_matches_naive_softmax():
    torch.manual_seed(1)
    c, hgt, wid = 16, 5, 7
    block = AttentionBlock(c).double()
    with torch.no_grad():
        # Default init makes the output projection ~0, which would hide the attention term.
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(3, c, hgt, wid, dtype=torch.float64)

    h = torch.nn.functional.group_norm(x, min(c // 4, 32), block.norm.weight, block.norm.bias, eps=1e-6)

    def proj(conv, t):
        w = conv.weight[:, :, 0, 0]
        return torch.einsum("oc,bcn->bon", w, t.flatten(2)) + conv.bias[None, :, None]

    q, k, v = proj(block.q, h), proj(block.k, h), proj(block.v, h)  # [B, C, N]
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # [B, N(query), N(key)]
    attended = (v @ weights.transpose(1, 2)).reshape(3, c, hgt, wid)
    ref = (x + proj(block.proj_out, attended).reshape(3, c, hgt, wid)) / math.sqrt(2.0)

    torch.testing.assert_close(block(x), ref, rtol=1e-10, atol=1e-10)


def test_fourier_embedding():
    emb = GaussianFourierEmbedding(10, scale=16.0)
    assert not list(emb.parameters()), "frequencies must not be trainable"
    assert "freqs" in emb.state_dict()
    log_sigma = torch.log(torch.tensor([0.01, 1.0, 50.0]))
    out = emb(log_sigma)
    assert out.shape == (3, 20)
    torch.testing.assert_close(out[:, :10] ** 2 + out[:, 10:] ** 2, torch.ones(3, 10))
    # log(1) = 0 gives sin = 0, cos = 1 whatever the frequencies.
    torch.testing.assert_close(out[1], torch.cat([torch.zeros(10), torch.ones(10)]))


# ---------------------------------------------------------------- the network


def test_forward_shape_and_finite():
    torch.manual_seed(0)
    net = NCSNpp(
        channels=2, resolution=32, nf=16, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8, 16)
    ).eval()
    x = torch.randn(3, 2, 32, 32)
    sigma = torch.tensor([1e-3, 1.0, 1e3], dtype=torch.float64)  # e.g. from a float64 SDE schedule
    with torch.no_grad():
        out = net(x, sigma)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_output_is_divided_by_sigma(small_net):
    x = torch.randn(4, 1, 16, 16)
    sigma = torch.tensor([1e-2, 0.5, 3.0, 1e2])
    with torch.no_grad():
        raw = small_net.forward_unscaled(x, sigma)
        score = small_net(x, sigma)
    assert raw.abs().amax(dim=(1, 2, 3)).min() > 0
    torch.testing.assert_close(score * sigma[:, None, None, None], raw, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(score, raw)


def test_score_scales_as_one_over_sigma_when_embedding_is_constant(small_net):
    """With zero Fourier frequencies the embedding ignores sigma, so sigma * score must not depend on it."""
    small_net.fourier.freqs.zero_()
    x = torch.randn(1, 1, 16, 16).expand(3, -1, -1, -1)
    sigma = torch.tensor([0.1, 1.0, 20.0])
    with torch.no_grad():
        score = small_net(x, sigma)
    scaled = score * sigma[:, None, None, None]
    torch.testing.assert_close(scaled[0], scaled[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scaled[2], scaled[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(score[0] / score[2], torch.full_like(score[0], 200.0), rtol=1e-4, atol=0)


def test_config_round_trip(small_net):
    cfg = small_net.config
    assert all(isinstance(v, (int, float, bool, list)) for v in cfg.values())
    assert all(isinstance(e, (int, float)) for v in cfg.values() if isinstance(v, list) for e in v)
    rebuilt = NCSNpp(**cfg).eval()
    rebuilt.load_state_dict(small_net.state_dict(), strict=True)
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.3, 7.0])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, sigma), small_net(x, sigma))


@pytest.mark.parametrize(
    "override",
    [
        {"channels": 0},
        {"resolution": 20},  # not a multiple of 2**(len(ch_mult)-1) = 8
        {"nf": 2},  # GroupNorm would get zero groups
        {"nf": 130, "ch_mult": (1,)},  # 130 channels cannot be split into 32 groups
        {"ch_mult": ()},
        {"ch_mult": (1, 0)},
        {"num_res_blocks": 0},
        {"attn_resolutions": (7,)},
        {"dropout": 1.0},
        {"fir_kernel": (1,)},
        {"fourier_scale": 0.0},
        {"init_scale": -1.0},
    ],
)
def test_invalid_arguments_raise(override):
    kwargs = dict(channels=1, resolution=32, nf=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
    kwargs["attn_resolutions"] = ()
    kwargs.update(override)
    with pytest.raises(ValueError) as err:
        with torch.device("meta"):
            NCSNpp(**kwargs)
    assert "\n" not in str(err.value)


def test_torch_compile_fullgraph_matches_eager(small_net):
    """fullgraph=True fails on any graph break, so this proves forward traces as one graph.

    The aot_eager backend is used because a cold inductor compile of even this tiny
    network takes about a minute on a 2-core CPU; graph capture is identical for both.
    """
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.05, 4.0])
    compiled = torch.compile(small_net, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager = small_net(x, sigma)
        out = compiled(x, sigma)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_inductor_compiles_forward_and_backward(small_net):
    """The default backend, generating real kernels, on forward and backward (about a minute cold on 2 cores)."""
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.05, 4.0])
    compiled = torch.compile(small_net, fullgraph=True)
    out = compiled(x, sigma)
    torch.testing.assert_close(out, small_net(x, sigma), rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in small_net.parameters() if p.grad is not None)


def test_channels_last_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    # A unit init scale makes every residual branch contribute, so bf16 errors are not hidden.
    net = NCSNpp(
        channels=1,
        resolution=16,
        nf=16,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        init_scale=1.0,
    ).eval()
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.2, 2.0])
    with torch.no_grad():
        ref = net(x, sigma)
        net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x.to(memory_format=torch.channels_last), sigma)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 5e-2


def test_bf16_weights_keep_float32_fourier_frequencies():
    """Rounding frequencies of ~100 rad per unit log sigma to bf16 would scramble the embedding."""
    torch.manual_seed(0)
    net = NCSNpp(**SMALL, init_scale=1.0).eval()
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor([0.2, 2.0])
    with torch.no_grad():
        ref = net(x, sigma)
        net = net.to(torch.bfloat16)
        out = net(x.to(torch.bfloat16), sigma)
    assert net.fourier.freqs.dtype == torch.float32
    assert net.conv_in.weight.dtype == torch.bfloat16
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 5e-2
