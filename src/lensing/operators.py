"""Matrix-free linear maps from a pixelated image (source or lens light) to the exposures' detector pixels.

With the mass model, shifts and PSFs fixed, each exposure's model is linear in the source and in the lens light:

    A x = bin( PSF * W x ),   W: bilinear interpolation at the ray positions (sparse, 4 weights per ray)

`ImagingOperator` applies A, its adjoint A^T, and computes diag(A A^T) exactly without forming A, as the convolved
Gaussian likelihood (Adam et al. 2022, arXiv:2211.03812) needs: (A A^T)_ii = sum_j A_ij^2, where row i of A
collects, over the rays l in the PSF footprint of detector pixel i, the products Q_il W_lj (Q = PSF followed by
binning). Rays of one footprint can share source pixels (neighbouring rays, multiple images), so the contributions
are grouped by source pixel before squaring: sort the footprint's (pixel, value) pairs and sum the runs.
The cost scales with the footprint area, so `psf_energy` may crop the PSF to the central square holding that
fraction of its absolute sum for this computation only; with None (the default) the result is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .binning import check_detector, from_detector, to_detector
from .interpolation import sample, scatter
from .psf import PSFConvolution


def crop_psf(psf: Tensor, energy: float) -> Tensor:
    """The smallest square about the centre pixel (K // 2) holding `energy` of sum|psf| for every PSF in the batch."""
    k = psf.shape[-1]
    c = k // 2
    a = psf.abs().reshape(-1, k, k)
    total = a.sum(dim=(-2, -1))
    r_max = min(c, k - 1 - c)
    for r in range(r_max + 1):
        inner = a[:, c - r : c + r + 1, c - r : c + r + 1].sum(dim=(-2, -1))
        if bool((inner >= energy * total).all()):
            break
    return psf[..., c - r : c + r + 1, c - r : c + r + 1]


def _footprint_kernel(psf: Tensor, upsample: int, detector: str = "integrate") -> Tensor:
    """Q[m'] = sum_d w_d flip(psf)[m' - d]: weight of the ray at footprint offset m' in a detector pixel's value,
    [..., K + s - 1, K + s - 1]; w = 1/s^2 on every sub-pixel d in [0, s)^2 ("integrate") or 1 on d = (s//2, s//2)
    ("sample")."""
    k = psf.shape[-1]
    lead = psf.shape[:-2]
    flipped = psf.flip(-2, -1).reshape(-1, 1, k, k)
    if detector == "integrate":
        box = torch.ones(1, 1, upsample, upsample, dtype=psf.dtype, device=psf.device) / upsample**2
    else:  # conv2d correlates: the one-hot weight at s - 1 - s//2 selects d = s // 2
        box = torch.zeros(1, 1, upsample, upsample, dtype=psf.dtype, device=psf.device)
        box[..., upsample - 1 - upsample // 2, upsample - 1 - upsample // 2] = 1.0
    q = F.conv2d(F.pad(flipped, (upsample - 1,) * 4), box)
    return q.reshape(*lead, k + upsample - 1, k + upsample - 1)


def _sum_of_squared_runs(keys: Tensor, vals: Tensor) -> Tensor:
    """For each row, group `vals` by equal `keys` and return the sum over groups of (group sum)^2: [N, M] -> [N]."""
    keys, order = torch.sort(keys, dim=-1)
    vals = torch.gather(vals, -1, order)
    cs = torch.cumsum(vals, dim=-1)
    last = torch.ones_like(keys, dtype=torch.bool)
    last[:, :-1] = keys[:, 1:] != keys[:, :-1]
    pos = torch.arange(keys.shape[-1], device=keys.device).expand_as(keys)
    end_pos = torch.where(last, pos, torch.full_like(pos, -1))
    prev = torch.cat((torch.full_like(end_pos[:, :1], -1), end_pos[:, :-1]), dim=-1)
    prev = torch.cummax(prev, dim=-1).values
    prev_cs = torch.where(prev >= 0, torch.gather(cs, -1, prev.clamp(min=0)), torch.zeros_like(cs))
    run = torch.where(last, cs - prev_cs, torch.zeros_like(cs))
    return (run * run).sum(-1)


class ImagingOperator:
    """x [B, n, n] -> y [B, n_exp, H, W] for fixed ray positions and PSFs.

    Args:
        index, weight: [B, n_exp, H * s, W * s, 4] bilinear neighbours of every ray (see `interpolation.py`).
        n: side of the pixelated image x.
        psf: [n_exp, K, K] or [B, n_exp, K, K] PSFs on the supersampled grid.
        upsample: s.
        detector: "integrate" (optical PSF, pixels average their sub-pixels) or "sample" (effective PSF, pixels
            take the value at their centre); see `binning.py`.
        crop: sub-pixels (a multiple of s) on every side of the ray grid that lie outside the detector pixels: rays
            there are traced and convolved, so light the PSF spreads in from beyond the cutout is counted, and then
            cut off (`ForwardModel`'s margin).
    """

    def __init__(self, index: Tensor, weight: Tensor, n: int, psf: Tensor, upsample: int,
                 detector: str = "integrate", crop: int = 0):
        self.index, self.weight, self.n, self.psf, self.upsample = index, weight, n, psf, upsample
        self.detector = check_detector(detector)
        self.fine_shape = tuple(index.shape[-3:-1])
        if crop < 0 or crop % upsample or 2 * crop >= min(self.fine_shape):
            raise ValueError(f"crop must be a non-negative multiple of upsample ({upsample}) smaller than half the "
                             f"ray grid {self.fine_shape}, got {crop}")
        self.crop = crop
        self.conv = PSFConvolution(psf, self.fine_shape)

    @property
    def detector_shape(self) -> tuple[int, int]:
        c = 2 * self.crop
        return (self.fine_shape[0] - c) // self.upsample, (self.fine_shape[1] - c) // self.upsample

    def _cut(self, fine: Tensor) -> Tensor:
        c = self.crop
        return fine if c == 0 else fine[..., c:-c, c:-c]

    def _uncut(self, fine: Tensor) -> Tensor:
        c = self.crop
        return fine if c == 0 else F.pad(fine, (c, c, c, c))

    def fine(self, x: Tensor) -> Tensor:
        """W x: the image sampled at the rays, [B, n_exp, H * s, W * s]."""
        return sample(x, self.index, self.weight)

    def __call__(self, x: Tensor) -> Tensor:
        """A x, [B, n_exp, H, W]."""
        return to_detector(self._cut(self.conv(self.fine(x))), self.upsample, self.detector)

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y, [B, n, n]."""
        return scatter(self.conv.adjoint(self._uncut(from_detector(y, self.upsample, self.detector))), self.index,
                       self.weight, self.n)

    def diag_AAT(self, psf_energy: float | None = None, max_elements: int = 2**24) -> Tensor:
        """diag(A A^T) per detector pixel, [B, n_exp, H, W]; exact when psf_energy is None.

        Works in chunks of detector rows so that at most about `max_elements` footprint entries are sorted at once.
        """
        psf = self.psf if psf_energy is None else crop_psf(self.psf, psf_energy)
        s, k = self.upsample, psf.shape[-1]
        c = k // 2
        fk = k + s - 1
        q = _footprint_kernel(psf, s, self.detector)  # [(B,) n_exp, fk, fk]
        b, e = self.index.shape[:2]
        q = q.expand(b, e, fk, fk)
        # Pad the ray grid so every detector pixel's footprint is a full (fk x fk) window; padded rays weigh 0.
        pad = (k - 1 - c, c, k - 1 - c, c)
        idx = F.pad(self.index.permute(0, 1, 4, 2, 3), pad).permute(0, 1, 3, 4, 2)
        wts = F.pad(self.weight.permute(0, 1, 4, 2, 3), pad).permute(0, 1, 3, 4, 2)
        h, w = self.detector_shape
        m = self.crop  # the margin's sub-pixels: windows of the cutout's pixels only
        cols = slice(m, m + (w - 1) * s + fk)
        out = torch.empty(b, e, h, w, dtype=self.weight.dtype, device=self.weight.device)
        per_row = w * fk * fk * 4
        rows = max(1, min(h, max_elements // per_row))
        for bi in range(b):
            for ei in range(e):
                for r0 in range(0, h, rows):
                    r1 = min(h, r0 + rows)
                    sl = slice(m + r0 * s, m + (r1 - 1) * s + fk)
                    # [rows, W, fk, fk, 4] windows of stride s
                    wi = idx[bi, ei, sl, cols].unfold(0, fk, s).unfold(1, fk, s).permute(0, 1, 3, 4, 2)
                    ww = wts[bi, ei, sl, cols].unfold(0, fk, s).unfold(1, fk, s).permute(0, 1, 3, 4, 2)
                    vals = ww * q[bi, ei][:, :, None]
                    n_pix = (r1 - r0) * w
                    out[bi, ei, r0:r1] = _sum_of_squared_runs(
                        wi.reshape(n_pix, -1), vals.reshape(n_pix, -1)
                    ).reshape(r1 - r0, w)
        return out

    def rowsum_AAT(self) -> Tensor:
        """B B^T 1 per detector pixel, [B, n_exp, H, W], B = A with |PSF| (A itself for a PSF without negative
        pixels): used as a diagonal, an upper bound of A A^T in the order of positive semi-definite matrices
        (B >= |A| entrywise, as the bilinear weights are >= 0, so diag(B B^T 1) - A A^T is diagonally dominant). A
        sampled PSF has small negative pixels, and A A^T 1 can then fall below diag(A A^T): the convolved likelihood
        would be more confident than the exact one, and the reverse SDE can diverge."""
        # |PSF| is the PSF itself when it has no negative pixel: no branch, and no host sync to decide one
        op = ImagingOperator(self.index, self.weight, self.n, self.psf.abs(), self.upsample, self.detector, self.crop)
        b, e = self.index.shape[:2]
        h, w = self.detector_shape
        ones = torch.ones(b, e, h, w, dtype=self.weight.dtype, device=self.weight.device)
        return op(op.adjoint(ones))

    def norm_estimate(self, n_iter: int = 20, generator: torch.Generator | None = None) -> Tensor:
        """Largest singular value of A per chain [B], by power iteration (for step sizes)."""
        b = self.index.shape[0]
        x = torch.randn(b, self.n, self.n, dtype=self.weight.dtype, device=self.weight.device, generator=generator)
        for _ in range(n_iter):
            x = self.adjoint(self(x))
            x = x / x.flatten(1).norm(dim=1).clamp_min(1e-30)[:, None, None]
        return self(x).flatten(1).norm(dim=1)
