"""Saving and loading inference-ready priors without executing pickled code.

A prior file (`prior.pt`, written next to training checkpoints) is a plain dict of strings, numbers, lists and
tensors: {"format", "version", "kind", "net", "sde", "norm", "state_dict"}, where state_dict holds the EMA
weights. `load_prior` also reads a full training checkpoint (`*.ckpt`) and takes its EMA weights. Both are read
with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..atomic import atomic_torch_save
from ..data.training.normalization import PixelNorm
from ..errors import InputError, one_line
from .ncsnpp import NCSNpp
from .prior import KINDS, ScorePrior
from .sde import VESDE

PRIOR_FORMAT = "scorelens-prior"
PRIOR_VERSION = 1
EMA_PREFIX = "ema_net."


def save_prior(prior: ScorePrior, path: str | Path) -> Path:
    """Write `prior` (its current network weights) to `path` atomically: a kill never leaves half a file."""
    path = Path(path)
    payload = {"format": PRIOR_FORMAT, "version": PRIOR_VERSION, **prior.describe(),
               "state_dict": {k: v.detach().cpu().clone() for k, v in prior.net.state_dict().items()}}
    return atomic_torch_save(payload, path)


def load_prior(path: str | Path, *, kind: str | None = None, image_size: int | None = None,
               channels: int | None = None, sigma_min: float | None = None, sigma_max: float | None = None,
               map_location: str | torch.device = "cpu") -> ScorePrior:
    """Load a prior file or training checkpoint into an inference-ready `ScorePrior` (EMA weights, eval mode).

    The optional arguments state what the caller needs; a checkpoint that differs raises `InputError` with a
    one-line message (wrong kind, image size, channels or noise range).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prior checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt files fail in many ways (UnpicklingError, KeyError, EOFError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable scorelens checkpoint ({first})") from None
    meta, weights = _unpack(payload, path)

    if kind is not None and meta["kind"] != kind:
        raise InputError(f"{path}: this is a {meta['kind']!r} prior, but a {kind!r} prior is needed")
    net_cfg = meta["net"]
    if image_size is not None and net_cfg["resolution"] != image_size:
        raise InputError(f"{path}: prior images are {net_cfg['resolution']}x{net_cfg['resolution']} pixels, "
                         f"but {image_size}x{image_size} are needed")
    if channels is not None and net_cfg["channels"] != channels:
        raise InputError(f"{path}: prior images have {net_cfg['channels']} channels, {channels} are needed")
    for name, want in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        have = meta["sde"][name]
        if want is not None and not math.isclose(have, want, rel_tol=1e-6):
            raise InputError(f"{path}: prior was trained with {name}={have:g}, but {name}={want:g} is needed")

    try:
        net = NCSNpp(**net_cfg)
        sde, norm = VESDE(**meta["sde"]), PixelNorm(**meta["norm"])
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: its metadata describe no network, SDE or normalisation this scorelens builds "
                         f"({one_line(err)})") from None
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise InputError(f"{path}: weights do not fit the network described in the checkpoint ({first})") from None
    net.to(map_location).eval().requires_grad_(False)
    return ScorePrior(net, sde, meta["kind"], norm)


def _unpack(payload, path: Path) -> tuple[dict, dict]:
    """(metadata, EMA state dict) from a prior file or a Lightning training checkpoint."""
    if isinstance(payload, dict) and payload.get("format") == PRIOR_FORMAT:
        if payload.get("version") != PRIOR_VERSION:
            raise InputError(f"{path}: prior format version {payload.get('version')} is not supported "
                             f"(this scorelens reads version {PRIOR_VERSION})")
        _check_meta(payload, path, "prior file")
        if not isinstance(payload.get("state_dict"), dict):
            raise InputError(f"{path}: the prior file holds no weights (state_dict); export it again from its "
                             "training checkpoint")
        return payload, payload["state_dict"]
    if isinstance(payload, dict) and "state_dict" in payload and "hyper_parameters" in payload:
        hp = payload["hyper_parameters"]
        if not all(k in hp for k in ("kind", "net", "sde", "norm")):
            raise InputError(f"{path}: a training checkpoint, but not of a scorelens prior")
        _check_meta(hp, path, "training checkpoint")
        ema = {k[len(EMA_PREFIX):]: v for k, v in payload["state_dict"].items() if k.startswith(EMA_PREFIX)}
        if not ema:
            raise InputError(f"{path}: the training checkpoint holds no EMA weights")
        return hp, ema
    raise InputError(f"{path}: not a scorelens prior (neither a prior file nor a training checkpoint)")


def _check_meta(meta: dict, path: Path, what: str) -> None:
    """The metadata a prior is rebuilt from: kind, network (resolution, channels), SDE (noise range), pixel norm;
    one-line InputError naming what is missing or wrong."""
    missing = [k for k in ("kind", "net", "sde", "norm") if k not in meta]
    if missing:
        raise InputError(f"{path}: the {what} lacks the metadata {missing} a prior is rebuilt from; export it again "
                         "from its training checkpoint")
    if meta["kind"] not in KINDS:
        raise InputError(f"{path}: unknown prior kind {meta['kind']!r} (known: {', '.join(KINDS)})")
    net, sde, norm = meta["net"], meta["sde"], meta["norm"]
    if not isinstance(net, dict) or not all(isinstance(net.get(k), int) for k in ("resolution", "channels")):
        raise InputError(f"{path}: the {what}'s network description needs whole-number resolution and channels, "
                         f"got {net!r}")
    if not isinstance(sde, dict) or not all(isinstance(sde.get(k), (int, float)) for k in ("sigma_min", "sigma_max")) \
            or not 0 < sde["sigma_min"] < sde["sigma_max"]:
        raise InputError(f"{path}: the {what}'s SDE needs 0 < sigma_min < sigma_max, got {sde!r}")
    if not isinstance(norm, dict):
        raise InputError(f"{path}: the {what}'s pixel normalisation must be a mapping, got {norm!r}")
