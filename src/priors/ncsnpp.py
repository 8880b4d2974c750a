"""NCSN++ score network (Song et al. 2021, arXiv:2011.13456).

U-Net of BigGAN residual blocks with FIR resampling, skip rescaling, an input-skip
pyramid on the encoder and an output-skip pyramid on the decoder, conditioned on
log(sigma) through Gaussian Fourier features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    AttentionBlock,
    Combine,
    FIRDownsample,
    FIRUpsample,
    GaussianFourierEmbedding,
    ResnetBlockBigGAN,
    conv3x3,
    group_norm,
    variance_scaling_,
)

__all__ = ["NCSNpp"]


def _group_norm_ok(c: int) -> bool:
    """Whether GroupNorm(min(c // 4, 32), c) is valid, i.e. has >= 1 group dividing c."""
    groups = min(c // 4, 32)
    return groups >= 1 and c % groups == 0


def _normed_channel_counts(nf: int, ch_mult: Sequence[int], num_res_blocks: int) -> list[int]:
    """Channel counts of every GroupNorm in the network, following the U-Net's skip bookkeeping."""
    counts = []
    skips = [nf]
    in_ch = nf
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            counts += [in_ch, nf * mult]
            in_ch = nf * mult
            skips.append(in_ch)
        if level != len(ch_mult) - 1:
            counts.append(in_ch)
            skips.append(in_ch)
    counts.append(in_ch)
    for level in reversed(range(len(ch_mult))):
        out_ch = nf * ch_mult[level]
        for _ in range(num_res_blocks + 1):
            counts += [in_ch + skips.pop(), out_ch]
            in_ch = out_ch
    return counts


class _EncoderLevel(nn.Module):
    """One encoder resolution: res blocks (+ attention), then an optional downsampling block."""

    def __init__(self, in_ch, out_ch, num_res_blocks, attention, downsample, channels, block_kwargs):
        super().__init__()
        attn_kwargs = {"skip_rescale": block_kwargs["skip_rescale"], "init_scale": block_kwargs["init_scale"]}
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        for i in range(num_res_blocks):
            self.blocks.append(ResnetBlockBigGAN(in_ch if i == 0 else out_ch, out_ch, **block_kwargs))
            self.attns.append(AttentionBlock(out_ch, **attn_kwargs) if attention else nn.Identity())
        self.down: ResnetBlockBigGAN | None = None
        self.combine: Combine | None = None
        if downsample:
            self.down = ResnetBlockBigGAN(out_ch, out_ch, down=True, **block_kwargs)
            self.combine = Combine(channels, out_ch)


class _DecoderLevel(nn.Module):
    """One decoder resolution: res blocks on [h, skip], attention, output head, optional upsampling."""

    def __init__(self, in_channels, out_ch, attention, upsample, channels, block_kwargs):
        super().__init__()
        init_scale = block_kwargs["init_scale"]
        self.blocks = nn.ModuleList(ResnetBlockBigGAN(c, out_ch, **block_kwargs) for c in in_channels)
        self.attn: nn.Module = nn.Identity()
        if attention:
            self.attn = AttentionBlock(
                out_ch, skip_rescale=block_kwargs["skip_rescale"], init_scale=init_scale
            )
        self.out_norm = group_norm(out_ch)
        self.out_conv = conv3x3(out_ch, channels, init_scale=init_scale)
        self.up = ResnetBlockBigGAN(out_ch, out_ch, up=True, **block_kwargs) if upsample else None

    def head(self, h: Tensor) -> Tensor:
        """Project features [B, out_ch, H, W] to an image [B, channels, H, W] for the output pyramid."""
        return self.out_conv(F.silu(self.out_norm(h)))


class NCSNpp(nn.Module):
    """NCSN++ score network s(x, sigma) ~ grad_x log p_sigma(x).

    Args:
        channels: image channels C.
        resolution: image side length R (pixels); must be divisible by 2**(len(ch_mult) - 1).
        nf: base number of feature channels.
        ch_mult: channel multiplier of each resolution level, highest resolution first.
        num_res_blocks: residual blocks per encoder level (the decoder uses one more).
        attn_resolutions: side lengths (pixels) at which self-attention is applied;
            each must be one of R, R/2, ..., R / 2**(len(ch_mult) - 1).
        dropout: dropout probability inside the residual blocks.
        fir_kernel: 1-D taps of the separable resampling filter.
        skip_rescale: divide residual sums by sqrt(2).
        fourier_scale: standard deviation of the Fourier-feature frequencies (per unit log sigma).
        init_scale: initialisation scale of the last layer of every residual branch and output head.

    ``forward(x, sigma)``: x [B, C, R, R], sigma [B] (> 0, same units as x) -> score [B, C, R, R]
    in units of 1 / x, equal to the raw network output divided by sigma.
    """

    def __init__(
        self,
        channels: int = 1,
        resolution: int = 256,
        nf: int = 64,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        fourier_scale: float = 16.0,
        init_scale: float = 1e-2,
    ):
        super().__init__()
        ch_mult = [int(m) for m in ch_mult]
        attn_resolutions = [int(r) for r in attn_resolutions]
        fir_kernel = [float(t) for t in fir_kernel]
        self._config: dict[str, Any] = {
            "channels": int(channels),
            "resolution": int(resolution),
            "nf": int(nf),
            "ch_mult": ch_mult,
            "num_res_blocks": int(num_res_blocks),
            "attn_resolutions": attn_resolutions,
            "dropout": float(dropout),
            "fir_kernel": fir_kernel,
            "skip_rescale": bool(skip_rescale),
            "fourier_scale": float(fourier_scale),
            "init_scale": float(init_scale),
        }
        self._validate(**self._config)
        self.channels = channels
        num_levels = len(ch_mult)
        level_res = [resolution // 2**i for i in range(num_levels)]
        temb_dim = 4 * nf

        # Noise-level embedding: Fourier(log sigma) [B, 2nf] -> [B, 4nf].
        self.fourier = GaussianFourierEmbedding(nf, scale=fourier_scale)
        self.temb_0 = nn.Linear(2 * nf, temb_dim)
        self.temb_1 = nn.Linear(temb_dim, temb_dim)
        for lin in (self.temb_0, self.temb_1):
            variance_scaling_(lin.weight)
            nn.init.zeros_(lin.bias)

        block_kwargs = {
            "temb_dim": temb_dim,
            "dropout": dropout,
            "fir_kernel": fir_kernel,
            "skip_rescale": skip_rescale,
            "init_scale": init_scale,
        }
        self.conv_in = conv3x3(channels, nf)
        self.pyramid_down = FIRDownsample(fir_kernel)
        self.pyramid_up = FIRUpsample(fir_kernel)

        skips = [nf]
        in_ch = nf
        self.encoder = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            out_ch = nf * mult
            last = level == num_levels - 1
            attention = level_res[level] in attn_resolutions
            self.encoder.append(
                _EncoderLevel(in_ch, out_ch, num_res_blocks, attention, not last, channels, block_kwargs)
            )
            skips += [out_ch] * (num_res_blocks + (0 if last else 1))
            in_ch = out_ch

        self.mid_0 = ResnetBlockBigGAN(in_ch, in_ch, **block_kwargs)
        self.mid_attn = AttentionBlock(in_ch, skip_rescale=skip_rescale, init_scale=init_scale)
        self.mid_1 = ResnetBlockBigGAN(in_ch, in_ch, **block_kwargs)

        self.decoder = nn.ModuleList()
        for level in reversed(range(num_levels)):
            out_ch = nf * ch_mult[level]
            block_in = []
            for _ in range(num_res_blocks + 1):
                block_in.append(in_ch + skips.pop())
                in_ch = out_ch
            attention = level_res[level] in attn_resolutions
            self.decoder.append(
                _DecoderLevel(block_in, out_ch, attention, level != 0, channels, block_kwargs)
            )

    @staticmethod
    def _validate(*, channels, resolution, nf, ch_mult, num_res_blocks, attn_resolutions, dropout, fir_kernel,
                  skip_rescale, fourier_scale, init_scale) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if len(ch_mult) < 1 or min(ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult}")
        factor = 2 ** (len(ch_mult) - 1)
        if resolution < 1 or resolution % factor != 0:
            raise ValueError(
                f"resolution must be a positive multiple of 2**(len(ch_mult)-1)={factor}, got {resolution}"
            )
        if nf < 1:
            raise ValueError(f"nf must be >= 1, got {nf}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        level_res = [resolution // 2**i for i in range(len(ch_mult))]
        missing = [r for r in attn_resolutions if r not in level_res]
        if missing:
            raise ValueError(f"attn_resolutions {missing} are not among the level resolutions {level_res}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if len(fir_kernel) < 2 or sum(fir_kernel) == 0.0:
            raise ValueError(f"fir_kernel must have >= 2 taps with a non-zero sum, got {fir_kernel}")
        if fourier_scale <= 0.0:
            raise ValueError(f"fourier_scale must be > 0, got {fourier_scale}")
        if init_scale < 0.0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale}")
        counts = _normed_channel_counts(nf, ch_mult, num_res_blocks)
        bad = sorted({c for c in counts if not _group_norm_ok(c)})
        if bad:
            raise ValueError(
                f"nf={nf}, ch_mult={ch_mult} give channel counts {bad} that GroupNorm(min(C//4, 32)) "
                "cannot split; use a multiple of 4 below 128 or of 32 above"
            )

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain Python values; ``NCSNpp(**net.config)`` rebuilds the network."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._config.items()}

    def embed_noise(self, sigma: Tensor) -> Tensor:
        """Noise-level embedding: sigma [B] -> [B, 4 nf]."""
        emb = self.fourier(torch.log(sigma.float()))
        # Match the weights' dtype so a network cast to bf16 also works without autocast.
        emb = self.temb_0(emb.to(self.temb_0.weight.dtype))
        return self.temb_1(F.silu(emb))

    def forward_unscaled(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Raw network output before the division by sigma: x [B, C, R, R], sigma [B] -> [B, C, R, R]."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape [B, {self.channels}, H, W], got {tuple(x.shape)}")
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
        temb = self.embed_noise(sigma)

        pyramid = x
        h = self.conv_in(x)
        hs = [h]
        for level in self.encoder:
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, temb))
                hs.append(h)
            if level.down is not None:
                h = level.down(h, temb)
                pyramid = self.pyramid_down(pyramid)
                h = level.combine(pyramid, h)
                hs.append(h)

        h = self.mid_1(self.mid_attn(self.mid_0(h, temb)), temb)

        out = None
        for level in self.decoder:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            h = level.attn(h)
            head = level.head(h)
            out = head if out is None else self.pyramid_up(out) + head
            if level.up is not None:
                h = level.up(h, temb)
        return out

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Score estimate: x [B, C, R, R], sigma [B] -> network(x, log sigma) / sigma, [B, C, R, R]."""
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        # Casting sigma to x's dtype keeps the output in the input's dtype (float64 sigmas included).
        return self.forward_unscaled(x, sigma) / sigma.to(x.dtype).reshape(-1, 1, 1, 1)
