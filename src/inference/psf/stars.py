"""The PSF's data: star stamps (and given PSFs) as linear functions of an upsampled PSF P, for the PSF Gibbs step.

P is an [n, n] image on the PSF prior's grid: `o` pixels per detector pixel (o = detector pixel scale / prior pixel
scale, any positive number), centred on pixel (n // 2, n // 2), each pixel holding the fraction of the flux that
falls in it (about unit sum). Two readings of P, as the prior was trained (`response`):

- "effective": P is an effective PSF (Anderson & King 2000): a detector pixel at offset u (detector pixels) from
  the star's centre holds o^2 P(n // 2 + u o), P interpolated (cubic spline) at that point;
- "optical": P is the optical PSF integrated over its own small pixels: a detector pixel holds the sum of P over
  its area, approximated by round(o)^2 interpolated samples spread over the pixel (exact for integer o and pixels
  aligned with P's grid, up to the interpolation).

Both maps are separable, so star k's stamp is f_k R_k P C_k^T with R_k, C_k [S, n] one-dimensional matrices of the
stamp's rows and columns (`psf_rows`); f_k is the star's flux. `StarOperator` stacks the stars of all PSF groups
(an exposure's own stars, or the stars of all exposures pooled) and gives A, A^T and the diagonals the convolved
likelihood needs, so the PSF is sampled by the same reverse posterior SDE as the source and the lens light.
`KernelMap` turns P into the forward model's kernel on its sub-pixel grid (see
`scorelens.data.psf.epsf.effective_psf_kernel`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, optimize
from torch import Tensor

log = logging.getLogger(__name__)

RESPONSES = ("effective", "optical")


def check_response(response: str) -> str:
    if response not in RESPONSES:
        raise ValueError(f"PSF response must be one of {RESPONSES}, got {response!r}")
    return response


def _spline_rows(coords: np.ndarray, n: int) -> np.ndarray:
    """[M, n]: the linear map from a 1-D array of n samples to its cubic-spline interpolation at `coords` (pixel
    coordinates, pixel centres at integers; zero outside the array)."""
    eye = np.eye(n)
    return np.stack([ndimage.map_coordinates(eye[a], [coords], order=3, mode="constant", cval=0.0)
                     for a in range(n)], axis=1)


def psf_rows(offsets: np.ndarray, n: int, oversampling: float, response: str, cell: float = 1.0) -> np.ndarray:
    """[M, n]: one axis of the map from P (n pixels, `oversampling` per detector pixel) to pixels at `offsets`
    [M] (detector pixels from the PSF centre), each pixel `cell` detector pixels wide on that axis.

    The outer product of two such rows gives a pixel's value: the PSF's flux density at the offset (per detector
    pixel area, integrated over the detector pixel for "optical") times the pixel's area cell^2.
    """
    check_response(response)
    offsets = np.asarray(offsets, dtype=np.float64)
    o = float(oversampling)
    centre = n // 2 + offsets * o
    if response == "effective":
        return _spline_rows(centre, n) * (o * cell)
    k = max(1, int(round(o)))
    spread = (np.arange(k) - (k - 1) / 2) * (o / k)  # sample points across one detector pixel, P pixels
    rows = sum(_spline_rows(centre + d, n) for d in spread)
    return rows * (o / k * cell)


def support_radius(n: int, oversampling: float) -> float:
    """Detector pixels from the centre within which P's grid holds the PSF (a pixel's margin inside its edge)."""
    return (n // 2) / float(oversampling) - 1.0


@dataclass
class StarList:
    """Stamps of point sources with known centres and fluxes, as the data of P (numpy, float64).

    Attributes:
        data, variance: [N, S, S] stamps (background subtracted) and their noise variance; data units.
        mask: [N, S, S] bool, True where a pixel is used.
        centres: [N, 2] (row, col) of each star in its stamp, stamp pixels.
        fluxes: [N] total flux of each star, data units.
        cell: [N] stamp pixel size, detector pixels (1 for stars; 1 / oversampling for a given PSF).
        measured: [N] bool, True for real stars (whose centres and fluxes are measurements that may be refined),
            False for a given PSF's pseudo-star (centred and of unit flux by definition); None: all True.
    """

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    centres: np.ndarray
    fluxes: np.ndarray
    cell: np.ndarray
    measured: np.ndarray | None = None

    def __post_init__(self):
        if self.measured is None:
            self.measured = np.ones(len(self.fluxes), dtype=bool)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @staticmethod
    def concatenate(parts: Sequence[StarList]) -> StarList:
        """One list from several; stamps of different sizes are padded (with unused pixels) to the largest."""
        size = max(p.data.shape[-1] for p in parts)

        def pad(a, value):
            extra = size - a.shape[-1]
            return np.pad(a, ((0, 0), (0, extra), (0, extra)), constant_values=value)

        return StarList(np.concatenate([pad(p.data, 0.0) for p in parts]),
                        np.concatenate([pad(p.variance, 1.0) for p in parts]),
                        np.concatenate([pad(p.mask, False) for p in parts]),
                        np.concatenate([p.centres for p in parts]), np.concatenate([p.fluxes for p in parts]),
                        np.concatenate([p.cell for p in parts]), np.concatenate([p.measured for p in parts]))


def fit_star(data: np.ndarray, weight: np.ndarray, centre, flux: float, psf: np.ndarray, oversampling: float,
             response: str = "effective") -> tuple[np.ndarray, float] | None:
    """Centre (row, col) and flux of one star stamp (data and inverse-error weights [S, S]) by least squares against
    a PSF ([n, n], `oversampling` per detector pixel, read as `response`), on the stamp pixels the PSF covers;
    `centre` and `flux` start the fit. None when the fit fails or moves more than 2 pixels."""
    n = psf.shape[-1]
    radius = support_radius(n, oversampling)
    pix = np.arange(data.shape[-1], dtype=np.float64)
    r0, c0 = (float(v) for v in centre)

    def resid(p):
        rows = psf_rows(pix - p[0], n, oversampling, response)
        cols = psf_rows(pix - p[1], n, oversampling, response)
        inside = (np.abs(pix - p[0])[:, None] <= radius) & (np.abs(pix - p[1])[None, :] <= radius)
        return ((data - p[2] * rows @ psf @ cols.T) * weight * inside).ravel()

    try:
        fit = optimize.least_squares(resid, x0=[r0, c0, max(float(flux), 1e-12)],
                                     x_scale=[0.1, 0.1, abs(float(flux)) + 1e-12], max_nfev=200)
    except ValueError as err:  # a stamp without usable pixels
        log.debug("star fit failed (%s)", err)
        return None
    if not (fit.success and np.all(np.isfinite(fit.x)) and fit.x[2] > 0 and np.hypot(fit.x[0] - r0, fit.x[1] - c0)
            < 2.0):
        return None
    return fit.x[:2].copy(), float(fit.x[2])


def fit_stars(stamps, epsf: np.ndarray, epsf_oversampling: float) -> StarList:
    """Star stamps (a `scorelens.data.psf.stars.StarStamps`) as a `StarList`: centres and fluxes fitted against an ePSF
    ([K, K], unit sum, `epsf_oversampling` per detector pixel), starting from the finder's centroids; stars whose
    fit fails are left out."""
    w = stamps.weights()
    data, err = np.asarray(stamps.data, dtype=np.float64), np.asarray(stamps.err, dtype=np.float64)
    centres, fluxes, keep = [], [], []
    for k, (d, wk, c, f0) in enumerate(zip(data, w, stamps.centres(), stamps.fluxes, strict=True)):
        fit = fit_star(d, wk, c, f0, epsf, epsf_oversampling, "effective")
        if fit is None:
            log.debug("star %d: fit failed or moved too far; left out", k)
            continue
        centres.append(fit[0])
        fluxes.append(fit[1])
        keep.append(k)
    keep = np.asarray(keep, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(np.isfinite(err) & (err > 0), err * err, 1.0)[keep]
    return StarList(data[keep], variance, (w > 0)[keep], np.asarray(centres, dtype=np.float64).reshape(-1, 2),
                    np.asarray(fluxes, dtype=np.float64), np.ones(len(keep)))


def given_psf_star(psf: np.ndarray, oversampling: float, noise: float) -> StarList:
    """A given PSF ([K, K], unit sum, `oversampling` per detector pixel) as one pseudo-star of flux 1 whose pixels
    have noise `noise` times its peak: P is then drawn around the given PSF."""
    psf = np.asarray(psf, dtype=np.float64)
    k = psf.shape[-1]
    sd = noise * float(np.abs(psf).max())
    if not sd > 0:
        raise ValueError("psf.given_noise must be > 0 to sample around a given PSF")
    return StarList(psf[None], np.full((1, k, k), sd * sd), np.ones((1, k, k), dtype=bool),
                    np.array([[k // 2, k // 2]], dtype=np.float64), np.ones(1), np.array([1.0 / oversampling]),
                    np.zeros(1, dtype=bool))


class StarOperator:
    """P [B * G, n, n] (G PSF groups per chain, chain-major) -> star stamps [B * G, N, S, S]: A P = f R P C^T for
    every star of the group, 0 for the stars of other groups.

    Args:
        rows, cols: [N, S, n] the stamps' row and column maps (`psf_rows`), in P's units.
        fluxes: [N] star fluxes.
        member: [G, N] bool, which stars are data of which group.
    """

    def __init__(self, rows: Tensor, cols: Tensor, fluxes: Tensor, member: Tensor):
        self.rows, self.cols, self.n = rows, cols, rows.shape[-1]
        self.groups = member.shape[0]
        self.amp = fluxes[None, :] * member.to(fluxes.dtype)  # [G, N]
        self.chains = 1

    def batched(self, chains: int) -> StarOperator:
        """The same operator, its diagonals repeated for `chains` chains ([chains * G, N, S, S])."""
        op = copy.copy(self)
        op.chains = int(chains)
        return op

    def _split(self, x: Tensor) -> Tensor:
        if x.shape[0] % self.groups:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the {self.groups} PSF groups")
        return x.reshape(-1, self.groups, *x.shape[1:])

    def __call__(self, x: Tensor) -> Tensor:
        xg = self._split(x)  # [B, G, n, n]
        t = torch.einsum("kia,bgac->bgkic", self.rows, xg)
        y = torch.einsum("bgkic,kjc->bgkij", t, self.cols) * self.amp[None, :, :, None, None]
        return y.flatten(0, 1)

    def adjoint(self, y: Tensor) -> Tensor:
        yg = self._split(y) * self.amp[None, :, :, None, None]  # [B, G, N, S, S]
        t = torch.einsum("kia,bgkij->bgkaj", self.rows, yg)
        return torch.einsum("bgkaj,kjc->bgac", t, self.cols).flatten(0, 1)

    def diag_AAT(self) -> Tensor:
        """diag(A A^T) [chains * G, N, S, S] (exact: A is a Kronecker product per star)."""
        r2 = (self.rows**2).sum(-1)  # [N, S]
        c2 = (self.cols**2).sum(-1)
        d = r2[:, :, None] * c2[:, None, :]
        return ((self.amp**2)[:, :, None, None] * d[None]).repeat(self.chains, 1, 1, 1)

    def rowsum_AAT(self) -> Tensor:
        """|A A^T| 1 [chains * G, N, S, S], the row sums of A A^T's absolute values, used as a diagonal: an upper
        bound of A A^T in the order of positive semi-definite matrices (Gershgorin: the difference is diagonally
        dominant with a non-negative diagonal). The cubic-spline rows have negative lobes, so A A^T has negative
        entries and its plain row sums can fall below its diagonal. A is a Kronecker product per star, so the
        entry of stars k, l is amp_k amp_l (R_k R_l^T)_ii' (C_k C_l^T)_jj' and its absolute row sums factorise."""
        rr = torch.einsum("kia,lja->klij", self.rows, self.rows).abs().sum(-1)  # [N, N, S]
        cc = torch.einsum("kia,lja->klij", self.cols, self.cols).abs().sum(-1)
        amp = self.amp.abs()
        out = torch.einsum("gk,gl,kli,klj->gkij", amp, amp, rr, cc)
        return out.repeat(self.chains, 1, 1, 1)


def star_operator(stars: StarList, group: np.ndarray, groups: int, n: int, oversampling: np.ndarray, response: str,
                  dtype=torch.float32, device=None) -> tuple[StarOperator, Tensor]:
    """The operator of `stars` (star k a datum of PSF group group[k], P read at oversampling[k] per detector pixel)
    and the mask [N, S, S] of the stamp pixels it uses: the star's good pixels that P's grid covers."""
    size = stars.data.shape[-1]
    pix = np.arange(size, dtype=np.float64)
    rows, cols, mask = [], [], []
    for k in range(len(stars)):
        (r0, c0), cell, o = stars.centres[k], stars.cell[k], oversampling[k]
        rows.append(psf_rows((pix - r0) * cell, n, o, response, cell))
        cols.append(psf_rows((pix - c0) * cell, n, o, response, cell))
        radius = support_radius(n, o)
        inside = (np.abs(pix - r0) * cell <= radius)[:, None] & (np.abs(pix - c0) * cell <= radius)[None, :]
        mask.append(stars.mask[k] & inside)
    member = np.zeros((groups, len(stars)), dtype=bool)
    member[np.asarray(group), np.arange(len(stars))] = True
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    op = StarOperator(as_t(np.stack(rows)), as_t(np.stack(cols)), as_t(stars.fluxes), torch.as_tensor(member,
                                                                                                       device=device))
    return op, torch.as_tensor(np.stack(mask), device=device)


class KernelMap:
    """P of each exposure's group -> the forward model's kernels [B, n_exp, K, K] (detector="sample": the ePSF at
    sub-pixel offsets, unit sum over the kernel for a unit-sum PSF), P taken at unit sum.

    Args:
        rows: [n_exp, K, n] per exposure (its detector pixel scale sets P's oversampling), `psf_rows` at the
            kernel's sub-pixel offsets with cell 1 / upsample.
        group: [n_exp] long, the PSF group of each exposure, or -1 where the exposure keeps `fixed`.
        fixed: [n_exp, K, K] kernels of exposures that are not sampled (and the fallback of all).
    """

    def __init__(self, rows: Tensor, group: Tensor, fixed: Tensor):
        self.rows, self.group, self.fixed = rows, group, fixed

    def __call__(self, psf: Tensor) -> Tensor:
        """psf: [B, G, n, n] -> kernels [B, n_exp, K, K], each from P scaled to unit sum.

        A PSF holds all of a point source's flux by definition; the stars fix P's shape but its scale only
        together with their fluxes, which are estimated (from the ePSF) and can be off by tens of per cent where an
        exposure has one or two stars. Unscaled, such a P would take that error into the lens model's brightness
        (and the source and lens light then grow to make up for it). A chain whose P has no positive total keeps
        the exposure's fixed kernel."""
        b = psf.shape[0]
        out = self.fixed.expand(b, *self.fixed.shape).clone()
        for e, g in enumerate(self.group.tolist()):
            if g >= 0:
                total = psf[:, g].sum((-1, -2))
                ok = total > 0
                unit = psf[:, g] / torch.where(ok, total, torch.ones_like(total))[:, None, None]
                out[:, e] = torch.where(ok[:, None, None], self.rows[e] @ unit @ self.rows[e].T, out[:, e])
        return out
