"""The Gibbs sampler's state: what B chains carry from one sweep to the next, and its checkpoint.

The run writes the state after every sweep (`SamplerState.save`, atomic) and a resumed run reads it back
(`SamplerState.load`): with the random generator's state inside, a run killed and resumed continues exactly where
it was. `state_dict()` holds plain tensors, numbers, strings, lists and dicts only, so `torch.load(...,
weights_only=True)` reads it and no pickled code runs.

The chains' parameters are held as MALA samples them, the sampled vector u (`parameters.ParameterSpace`: angles
through Cartesian pairs), so that a resumed chain continues from exactly the same point; each record holds the
physical vector v (names of DESIGN.md), which is what the outputs read. A state written by a version whose vector
differs (`STATE_VERSION`) is refused with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_torch_save
from ..errors import InputError
from .mala import MALATuning

# 2: the chains' parameters as the sampled vector u (Cartesian pairs), records as physical vectors
STATE_VERSION = 2


@dataclass
class Record:
    """One recorded sweep of B chains.

    v: [B, D] physical mass parameters and shifts (`parameters.ParameterSpace`'s physical vector, names
    `space.names`: DESIGN.md's, then shift_<e>_x, shift_<e>_y); source [B, n, n] and lens_light
    [B, m, m]: flux images, data units per detector pixel; psf: [B, G, p, p] each chain's P on the PSF prior's grid
    that the sweep ran under, or None when the PSFs are fixed.
    """

    v: Tensor
    source: Tensor
    lens_light: Tensor
    psf: Tensor | None = None

    def state_dict(self) -> dict:
        d = {"v": self.v, "source": self.source, "lens_light": self.lens_light}
        if self.psf is not None:
            d["psf"] = self.psf
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> Record:
        return cls(d["v"], d["source"], d["lens_light"], d.get("psf"))


@dataclass
class SamplerState:
    """The chains' current sample, MALA's tuning, the random generator and the run's progress.

    u: [B, D] mass and shifts as sampled (`parameters.ParameterSpace`'s sampled vector: Cartesian pairs in place of
    the (amplitude, angle) pairs; `space.to_physical(u)` gives the physical parameters); source [B, n, n],
    lens_light [B, m, m]: flux images; psf: [B, G, p, p] each chain's
    P for the next sweep (None: the PSFs are fixed); mala: step sizes and counters (`mala.MALATuning`); rng: the
    generator's state (a CPU uint8 tensor); stage, sweep: the next sweep to run (stage index, sweep within it);
    records: the recorded sweeps; history: every sweep's metrics (`GibbsSampler.sweep`); config_hash: the hash of
    the settings that wrote it (a resumed run must have the same); rngs: with several processes
    (`distributed.py`), each rank's generator state (rank 0's is `rng`), else None.
    """

    u: Tensor
    source: Tensor
    lens_light: Tensor
    mala: MALATuning
    rng: Tensor
    psf: Tensor | None = None
    stage: int = 0
    sweep: int = 0
    records: list[Record] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    config_hash: str | None = None
    rngs: list[Tensor] | None = None

    @property
    def chains(self) -> int:
        return self.u.shape[0]

    @property
    def done(self) -> int:
        """Sweeps done so far, over all stages."""
        return len(self.history)

    def generator(self) -> torch.Generator:
        """A generator on the chains' device in the stored state (a sweep draws from it, then stores it back)."""
        gen = torch.Generator(device=self.u.device)
        gen.set_state(self.rng)
        return gen

    def record(self, v: Tensor) -> Record:
        """A copy of the current sample, with its physical parameters v [B, D] (`space.to_physical(self.u)`)."""
        return Record(v.clone(), self.source.clone(), self.lens_light.clone(),
                      None if self.psf is None else self.psf.clone())

    def state_dict(self) -> dict:
        d = {"version": STATE_VERSION, "u": self.u, "source": self.source, "lens_light": self.lens_light,
             "mala": self.mala.state_dict(), "rng": self.rng, "stage": self.stage, "sweep": self.sweep,
             "records": [r.state_dict() for r in self.records], "history": self.history,
             "config_hash": self.config_hash}
        if self.psf is not None:
            d["psf"] = self.psf
        if self.rngs is not None:
            d["rngs"] = list(self.rngs)
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> SamplerState:
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"version {d.get('version')}, this one reads {STATE_VERSION}")
        return cls(d["u"], d["source"], d["lens_light"], MALATuning.from_state_dict(d["mala"]), d["rng"].cpu(),
                   d.get("psf"), int(d["stage"]), int(d["sweep"]), [Record.from_state_dict(r) for r in d["records"]],
                   list(d["history"]), d.get("config_hash"),
                   None if d.get("rngs") is None else [r.cpu() for r in d["rngs"]])

    def save(self, path: str | Path) -> Path:
        """Write the state to `path` atomically: after a kill at any instant the file holds a whole state."""
        return atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> SamplerState:
        """The state written to `path` by `save`, its tensors on `device`."""
        d = torch.load(path, map_location=device, weights_only=True)
        try:
            return cls.from_state_dict(d)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise InputError(f"{path} is not a sampler state of this version ({type(e).__name__}: {e}); use a new "
                             f"run folder") from None
