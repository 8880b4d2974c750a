"""The devices a run uses: `sampler.device` checked against the machine (`check_device`), and chains spread over
several processes, one per GPU (`torchrun --nproc-per-node N infer.py ...`), or gloo processes on the CPU.

Each process (rank) holds a contiguous block of the chains (`chain_blocks`) and runs the Gibbs sweeps on it alone;
the chains of a sweep do not interact, so nothing is exchanged inside a sweep. The processes meet only where the
run needs all chains:

- after every sweep: the metrics (mean chi^2 and acceptance over all chains, `merge_metrics`), a recorded sweep
  (every rank keeps all chains' records, `gather_record`), and the state that rank 0 writes to `state.pt`
  (`gather_state`);
- before a branching stage and before `reseed` (`GibbsSampler.run`): all chains' state on every rank, the global
  operation done identically everywhere, then each rank takes its block again (`shard_state`).

`state.pt` holds all chains whatever the number of processes that wrote it, so a run resumes with any number of
devices. Random numbers: each rank draws from its own generator. Rank 0's is the one a one-process run has (its
state is `SamplerState.rng`); rank r > 0 starts from one derived from it and r (`derived_rng`), and the state keeps
every rank's (`SamplerState.rngs`). A run resumed with the number of processes that wrote it continues exactly; with
another number, ranks beyond those saved derive theirs again. So a run of N processes draws other noise than a run
of one process: its samples are draws of the same posterior, not the same numbers (one process draws all chains'
noise from one stream, N processes from N streams); everything else (starts, stages, branching, reseeding) is the
same.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import InputError
from .mala import MALATuning
from .state import Record, SamplerState

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes: rank in [0, world)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the outputs, logs progress and talks to W&B (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other processes to exchange with."""
        return self.world > 1

    @classmethod
    def from_env(cls) -> Ranks:
        """From torchrun's (or SLURM + torchrun's) environment: RANK and WORLD_SIZE; one process without them."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def check_device(value: str, key: str) -> None:
    """`value` names a device this machine has: auto, cpu, cuda or cuda:N (one-line InputError otherwise)."""
    if value == "auto":
        return
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"{key}={value!r}: write auto (a GPU when there is one), cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{key}={value}: this machine has no CUDA GPU that PyTorch can use; write {key}=cpu "
                             "(or auto, which takes a GPU when there is one)")
        if device.index is not None and device.index >= count:
            raise InputError(f"{key}={value}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")


def start_processes(device: str) -> tuple[Ranks, str]:
    """Join the run's process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on the CPU.
    `device`: "auto", "cpu" or "cuda[:i]"; returns the ranks and this process's device (cuda:LOCAL_RANK on GPUs)."""
    ranks = Ranks.from_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ranks.active and device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", ranks.rank))
        if local >= torch.cuda.device_count():
            raise InputError(f"process {ranks.rank} has no GPU of its own (LOCAL_RANK {local}, "
                             f"{torch.cuda.device_count()} visible): start at most one process per GPU")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if ranks.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return ranks, device


def stop_processes() -> None:
    """Leave the process group (if any), after every rank is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def chain_blocks(chains: int, world: int) -> list[tuple[int, int]]:
    """Each rank's chains [start, stop): contiguous, sizes differing by at most one. InputError when a rank would
    have none."""
    if chains < world:
        raise InputError(f"{chains} chains cannot be spread over {world} processes: set sampler.chains to at least "
                         f"{world}, or start fewer processes")
    base, extra = divmod(chains, world)
    stops = [0]
    for r in range(world):
        stops.append(stops[-1] + base + (1 if r < extra else 0))
    return list(zip(stops[:-1], stops[1:], strict=True))


def derived_rng(rng: Tensor, rank: int, device: torch.device | str) -> Tensor:
    """The generator state of rank `rank` > 0, derived from rank 0's state `rng`: a seed from a hash of both, so it
    is the same on every rank and in every run that starts from the same state."""
    digest = hashlib.sha256(rng.cpu().numpy().tobytes() + rank.to_bytes(4, "little")).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen.get_state()


def _exchange(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `obj`, in rank order (all ranks get all)."""
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T, ranks: Ranks) -> T:
    """Rank 0's `obj` on every rank."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], ranks: Ranks) -> T:
    """`fn()` run on rank 0 only, its result on every rank; an error there stops every rank (the others raise an
    InputError naming it, so none waits forever for a rank that has stopped)."""
    if not ranks.active:
        return fn()
    result, error = None, None
    if ranks.main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            error = e
    message = broadcast(None if error is None else f"{type(error).__name__}: {error}", ranks)
    if error is not None:
        raise error
    if message is not None:
        raise InputError(f"rank 0 stopped the run: {message}")
    return broadcast(result, ranks)


def _cpu(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().cpu()


def _chains_dict(state: SamplerState) -> dict:
    return {"u": _cpu(state.u), "source": _cpu(state.source), "lens_light": _cpu(state.lens_light),
            "psf": _cpu(state.psf), "mala": {k: _cpu(v) if isinstance(v, Tensor) else v
                                             for k, v in state.mala.state_dict().items()},
            "rng": state.rng.cpu()}


def gather_state(state: SamplerState, ranks: Ranks) -> SamplerState:
    """All chains' state on every rank, from each rank's block (`state` itself with one process). The records and
    history are global already; `rng` is rank 0's, and `rngs` every rank's."""
    if not ranks.active:
        return state
    parts = _exchange(_chains_dict(state), ranks)
    device = state.u.device
    cat = lambda key: torch.cat([p[key] for p in parts]).to(device)  # noqa: E731
    mala = {k: (torch.cat([p["mala"][k] for p in parts]).to(device) if isinstance(v, Tensor) else v)
            for k, v in parts[0]["mala"].items()}
    return replace(state, u=cat("u"), source=cat("source"), lens_light=cat("lens_light"),
                   psf=None if parts[0]["psf"] is None else cat("psf"), mala=MALATuning.from_state_dict(mala),
                   rng=parts[0]["rng"], rngs=[p["rng"] for p in parts], records=list(state.records),
                   history=list(state.history))


def shard_state(state: SamplerState, ranks: Ranks) -> SamplerState:
    """This rank's block of the chains of the whole `state` (all chains), with this rank's generator: the saved
    one when the state was written by as many processes, else rank 0's (rank 0) or one derived from it. The
    records and history stay whole. `state` itself with one process."""
    if not ranks.active:
        return state
    start, stop = chain_blocks(state.chains, ranks.world)[ranks.rank]
    index = torch.arange(start, stop, device=state.u.device)
    if ranks.rank == 0:
        rng = state.rng
    elif state.rngs is not None and len(state.rngs) == ranks.world:
        rng = state.rngs[ranks.rank]
    else:
        rng = derived_rng(state.rng, ranks.rank, state.u.device)
    return replace(state, u=state.u[start:stop], source=state.source[start:stop],
                   lens_light=state.lens_light[start:stop], psf=None if state.psf is None else state.psf[start:stop],
                   mala=state.mala.take(index), rng=rng.cpu(), rngs=None, records=list(state.records),
                   history=list(state.history))


def gather_record(record: Record, ranks: Ranks) -> Record:
    """One recorded sweep of all chains, from each rank's block."""
    if not ranks.active:
        return record
    parts = _exchange({k: _cpu(v) for k, v in record.state_dict().items()}, ranks)
    device = record.v.device
    whole = {k: torch.cat([p[k] for p in parts]).to(device) for k in parts[0]}
    return Record.from_state_dict(whole)


def merge_metrics(metrics: dict, chains: int, ranks: Ranks) -> dict:
    """One sweep's metrics over all chains from each rank's (`GibbsSampler.metrics` of its `chains` chains): means
    weighted by the ranks' chains, each chain's chi^2 (`chain_chi2`) in chain order; labels as rank 0 has them."""
    if not ranks.active:
        return metrics
    parts = _exchange((metrics, chains), ranks)
    weights = [n / sum(n for _, n in parts) for _, n in parts]
    return _merge([m for m, _ in parts], weights)


_LABELS = ("stage", "sweep", "temperature")


def _merge(values: list, weights: list[float], key: str | None = None):
    first = values[0]
    if key == "chain_chi2":
        return [c for v in values for c in v]
    if key in _LABELS or isinstance(first, (str, bool)) or first is None:
        return first
    if isinstance(first, dict):
        return {k: _merge([v[k] for v in values], weights, k) for k in first}
    if isinstance(first, (list, tuple)):
        return [_merge([v[i] for v in values], weights) for i in range(len(first))]
    return float(sum(w * float(v) for w, v in zip(weights, values, strict=True)))


@contextlib.contextmanager
def main_only(context: contextlib.AbstractContextManager, ranks: Ranks):
    """`context` entered on rank 0 only (the run folder's lock: one holder per run, not per process)."""
    if ranks.main:
        with context as value:
            yield value
    else:
        yield None
