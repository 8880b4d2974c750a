"""Building blocks of the NCSN++ score network.

Tensors are images of shape [B, C, H, W] unless stated otherwise; all blocks are
device- and dtype-agnostic and contain no host synchronisation in ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionBlock",
    "Combine",
    "FIRDownsample",
    "FIRUpsample",
    "GaussianFourierEmbedding",
    "ResnetBlockBigGAN",
    "conv1x1",
    "conv3x3",
    "fir_kernel_2d",
    "group_norm",
    "variance_scaling_",
]


def variance_scaling_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """Fill ``weight`` in place from U(-a, a) with a = sqrt(3 * scale / fan_avg).

    This is the "fan_avg / uniform" initialisation used by DDPM and NCSN++; a
    ``scale`` of zero is replaced by 1e-10 so the tensor never becomes exactly zero.
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    fan_in = weight.shape[1] * receptive
    fan_out = weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv3x3(in_ch: int, out_ch: int, init_scale: float = 1.0, bias: bool = True) -> nn.Conv2d:
    """3x3 'same' convolution with variance-scaling weights and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0, bias: bool = True) -> nn.Conv2d:
    """1x1 convolution (a per-pixel linear map) with variance-scaling weights and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(channels // 4, 32) groups, the NCSN++ convention."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a scalar noise level.

    Input: log(sigma), shape [B]. Output: [sin(2 pi w log sigma), cos(2 pi w log sigma)],
    shape [B, 2 * embedding_size], float32. The frequencies w ~ N(0, scale^2) are drawn once
    and kept fixed (a buffer, so they are saved with the weights but never trained).
    """

    def __init__(self, embedding_size: int, scale: float = 16.0):
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        # 2 pi is folded into the stored frequencies to save a multiply per call.
        self.register_buffer("freqs", torch.randn(embedding_size) * (scale * 2.0 * math.pi))

    def _apply(self, fn, recurse=True):
        # Dtype casts (.half(), .to(bfloat16)) would round the frequencies and scramble phases of
        # hundreds of radians, so the buffer only follows device moves and stays float32.
        freqs = self.freqs
        super()._apply(fn, recurse)
        if self.freqs.dtype != freqs.dtype:
            # A meta tensor has no values to keep (e.g. to_empty), only its dtype is restored.
            self.freqs = self.freqs.float() if freqs.is_meta else freqs.to(self.freqs.device)
        return self

    def forward(self, log_sigma: Tensor) -> Tensor:
        # Phases reach hundreds of radians, so they are formed in float32 even under autocast.
        phase = log_sigma.float()[:, None] * self.freqs.float()[None, :]
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)


def fir_kernel_2d(taps: Sequence[float]) -> Tensor:
    """Separable 2-D FIR kernel outer(taps, taps), normalised to unit sum; shape [K, K]."""
    taps = [float(t) for t in taps]
    if len(taps) < 2:
        raise ValueError(f"fir_kernel must have at least 2 taps, got {taps!r}")
    # The sum is taken in Python so this also works under a meta-device context.
    total = sum(taps) ** 2
    if total == 0.0:
        raise ValueError(f"fir_kernel taps must not sum to zero, got {taps!r}")
    k = torch.tensor(taps, dtype=torch.float32)
    return torch.outer(k, k) / total


class FIRDownsample(nn.Module):
    """Anti-aliased downsampling by 2: FIR filter then keep every second pixel.

    [B, C, H, W] -> [B, C, H/2, W/2] (H, W even). Matches StyleGAN2's
    ``upfirdn2d(x, k, down=2, pad=((K-1)//2, (K-2)//2))`` with zero padding, so the
    DC gain is one away from the borders.
    """

    def __init__(self, taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        # Flipped because conv2d is a correlation and upfirdn is a true convolution.
        self.register_buffer("kernel", fir_kernel_2d(taps).flip(0, 1), persistent=False)
        k = self.kernel.shape[0]
        self.pad_lo = (k - 1) // 2
        self.pad_hi = (k - 2) // 2

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        w = self.kernel.to(x.dtype)[None, None].expand(c, 1, -1, -1)
        if self.pad_lo == self.pad_hi:
            return F.conv2d(x, w, stride=2, padding=self.pad_lo, groups=c)
        x = F.pad(x, (self.pad_lo, self.pad_hi, self.pad_lo, self.pad_hi))
        return F.conv2d(x, w, stride=2, groups=c)


class FIRUpsample(nn.Module):
    """Anti-aliased upsampling by 2: zero insertion then FIR filter with gain 4.

    [B, C, H, W] -> [B, C, 2H, 2W]. Matches StyleGAN2's
    ``upfirdn2d(x, 4 k, up=2, pad=((K-1)//2 + 1, K//2 - 1))``; the gain of 4
    (factor**2) keeps a constant image constant away from the borders.
    """

    def __init__(self, taps: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        # conv_transpose2d scatters with the unflipped kernel, which equals upfirdn's convolution.
        self.register_buffer("kernel", fir_kernel_2d(taps) * 4.0, persistent=False)
        k = self.kernel.shape[0]
        self.padding = k - 2 - (k - 1) // 2
        # Odd-length kernels produce one surplus row/column that is cropped off.
        self.crop = k % 2

    def forward(self, x: Tensor) -> Tensor:
        c, h, w_ = x.shape[1], x.shape[2], x.shape[3]
        w = self.kernel.to(x.dtype)[None, None].expand(c, 1, -1, -1)
        y = F.conv_transpose2d(x, w, stride=2, padding=self.padding, groups=c)
        if self.crop:
            y = y[:, :, : 2 * h, : 2 * w_]
        return y


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block conditioned on a noise embedding.

    x: [B, in_ch, H, W], temb: [B, temb_dim] -> [B, out_ch, H', W'] with
    H' = 2H if ``up``, H/2 if ``down``, else H.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.0,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a residual block cannot both upsample and downsample")
        out_ch = in_ch if out_ch is None else out_ch
        self.norm_0 = group_norm(in_ch)
        self.conv_0 = conv3x3(in_ch, out_ch)
        self.dense_0: nn.Linear | None = None
        if temb_dim is not None:
            self.dense_0 = nn.Linear(temb_dim, out_ch)
            variance_scaling_(self.dense_0.weight)
            nn.init.zeros_(self.dense_0.bias)
        self.norm_1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        # A near-zero last conv makes the block start out close to the identity.
        self.conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.resample: nn.Module | None = None
        if up:
            self.resample = FIRUpsample(fir_kernel)
        elif down:
            self.resample = FIRDownsample(fir_kernel)
        self.skip: nn.Conv2d | None = None
        if in_ch != out_ch or up or down:
            self.skip = conv1x1(in_ch, out_ch)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = F.silu(self.norm_0(x))
        if self.resample is not None:
            h = self.resample(h)
            x = self.resample(x)
        h = self.conv_0(h)
        if self.dense_0 is not None and temb is not None:
            h = h + self.dense_0(F.silu(temb))[:, :, None, None]
        h = F.silu(self.norm_1(h))
        h = self.conv_1(self.dropout(h))
        if self.skip is not None:
            x = self.skip(x)
        out = x + h
        # Dividing by sqrt(2) keeps the variance of the sum of two unit-variance branches at one.
        return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W pixels of a feature map.

    [B, C, H, W] -> [B, C, H, W]; q, k, v and the output projection are 1x1 convs.
    """

    def __init__(self, channels: int, skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)

        def tokens(t: Tensor) -> Tensor:
            # [B, C, H, W] -> [B, 1, H*W, C]: one head, pixels as tokens (a view for channels_last).
            return t.permute(0, 2, 3, 1).reshape(b, 1, hgt * wid, c)

        a = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        a = a.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)
        out = x + self.proj_out(a)
        return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


class Combine(nn.Module):
    """Merge the downsampled input image into the encoder features: h + conv1x1(x).

    x: [B, in_ch, H, W], h: [B, out_ch, H, W] -> [B, out_ch, H, W].
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv1x1(in_ch, out_ch)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return h + self.conv(x)
