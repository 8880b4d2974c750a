"""Chains over several processes (`distributed.py`): two gloo processes on the CPU against the same blocks of
chains run one after another in one process, and `torchrun` end to end with a resume by one process."""

import copy
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scorelens.errors import InputError
from scorelens.inference.distributed import (
    Ranks,
    _merge,
    chain_blocks,
    derived_rng,
    gather_state,
    merge_metrics,
    shard_state,
)
from scorelens.inference.gibbs import GibbsSampler
from scorelens.inference.stages import stages_from_config
from scorelens.inference.state import SamplerState

from .conftest import ROOT
from .test_gibbs import SAMPLER, build

CHAINS = 5  # uneven blocks: 3 + 2
STAGES = {"sde": SAMPLER["sde"], "stages": {
    "init": dict(SAMPLER["stages"]["init"], sweeps=2, burn_in=2),
    "anneal": dict(SAMPLER["stages"]["anneal"], sweeps=3, burn_in=1, record=2),
    "finetune": dict(SAMPLER["stages"]["finetune"], sweeps=2, record=2)}}
BRANCHED = copy.deepcopy(STAGES)
BRANCHED["stages"]["finetune"].update(branch=True, reseed=0.01)  # a limit so tight that some chains restart


def test_chain_blocks_are_contiguous_and_cover_every_chain():
    assert chain_blocks(5, 2) == [(0, 3), (3, 5)]
    assert chain_blocks(16, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    with pytest.raises(InputError, match="sampler.chains to at least 4"):
        chain_blocks(3, 4)


def test_merged_metrics_equal_those_of_all_chains_at_once():
    """Each block's metrics, merged, are the metrics of all chains computed together."""
    sampler, init = build()
    stage = stages_from_config(STAGES)[0]
    state = sampler.initial_state(init, CHAINS, seed=4)
    sampler.sweep(state, stage, 0)
    before = copy.deepcopy(state.mala)
    whole = sampler.metrics(state, sampler.kernels(None), before, stage, 0, 20.0)
    parts = []
    for start, stop in chain_blocks(CHAINS, 2):
        block = copy.deepcopy(state)
        block.u, block.source = state.u[start:stop], state.source[start:stop]
        block.lens_light, block.mala = state.lens_light[start:stop], state.mala.take(torch.arange(start, stop))
        parts.append(sampler.metrics(block, sampler.kernels(None), before.take(torch.arange(start, stop)), stage, 0,
                                     20.0))
    merged = _merge(parts, [3 / 5, 2 / 5])
    assert merged["chain_chi2"] == pytest.approx(whole["chain_chi2"], rel=1e-12)
    assert merged["chi2"] == pytest.approx(whole["chi2"], rel=1e-12)
    assert merged["mala_step"] == pytest.approx(whole["mala_step"], rel=1e-12)
    assert merged["mass"] == pytest.approx(whole["mass"], rel=1e-12)
    assert merged["stage"] == whole["stage"] and merged["temperature"] == whole["temperature"]
    assert merge_metrics(whole, CHAINS, Ranks()) is whole  # one process: as it is


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: dict, out: str) -> None:
    """One rank of a run of `config`'s stages on the toy lens; rank 0 saves all chains' final state to `out`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ranks = Ranks(rank, world)
        base, init = build()
        sampler = GibbsSampler(base.p, ranks=ranks)
        state = shard_state(sampler.initial_state(init, CHAINS, seed=7), ranks)
        state = sampler.run(state, stages_from_config(config))
        whole = gather_state(state, ranks)
        if ranks.main:
            whole.save(out)
    finally:
        dist.destroy_process_group()


def _two_processes(config: dict, out) -> SamplerState:
    mp.spawn(_worker, args=(2, _free_port(), config, str(out)), nprocs=2, join=True)
    return SamplerState.load(out)


@pytest.mark.slow
def test_two_processes_sample_what_their_blocks_sample_alone(tmp_path):
    """Two gloo processes give exactly the samples of their two blocks of chains run one after another in one
    process, each block from its rank's generator (rank 0: the one-process run's; rank 1: derived from it)."""
    got = _two_processes(STAGES, tmp_path / "state.pt")

    sampler, init = build()
    start = sampler.initial_state(init, CHAINS, seed=7)
    blocks = []
    for r, (a, b) in enumerate(chain_blocks(CHAINS, 2)):
        block = copy.deepcopy(start)
        block.u, block.source, block.lens_light = start.u[a:b], start.source[a:b], start.lens_light[a:b]
        block.mala = start.mala.take(torch.arange(a, b))
        block.rng = start.rng if r == 0 else derived_rng(start.rng, r, "cpu")
        blocks.append(sampler.run(block, stages_from_config(STAGES)))

    assert got.chains == CHAINS and len(got.rngs) == 2
    assert torch.equal(got.u, torch.cat([s.u for s in blocks]))
    assert torch.equal(got.source, torch.cat([s.source for s in blocks]))
    assert torch.equal(got.mala.step, torch.cat([s.mala.step for s in blocks]))
    assert len(got.records) == len(blocks[0].records) == 4
    for rec, *parts in zip(got.records, *[s.records for s in blocks], strict=True):
        assert torch.equal(rec.v, torch.cat([p.v for p in parts]))
        assert torch.equal(rec.source, torch.cat([p.source for p in parts]))
    for m, *parts in zip(got.history, *[s.history for s in blocks], strict=True):
        assert m["chain_chi2"] == [c for p in parts for c in p["chain_chi2"]]
        assert m["chi2"] == pytest.approx([(3 * x + 2 * y) / 5 for x, y in zip(parts[0]["chi2"], parts[1]["chi2"],
                                                                                strict=True)], rel=1e-12)
    assert torch.equal(got.rngs[0], blocks[0].rng) and torch.equal(got.rngs[1], blocks[1].rng)


@pytest.mark.slow
def test_branching_and_reseeding_act_on_all_chains_across_processes(tmp_path):
    """Branching turns every rank's records into chains and spreads them over the ranks again; reseeding compares
    all chains (its limit here is so tight that it restarts chains from the best one of all)."""
    got = _two_processes(BRANCHED, tmp_path / "state.pt")
    assert got.chains == 2 * CHAINS  # 5 chains x 2 annealed records, over both ranks
    assert len(got.records) == 2 and all(r.v.shape[0] == 2 * CHAINS for r in got.records)  # branch points cleared
    # at a limit of 0.01 sigma only the best chain of all survives: the chains of both ranks then descend from it
    # and stay close, against the spread of the same run without reseeding
    kept = copy.deepcopy(BRANCHED)
    kept["stages"]["finetune"]["reseed"] = None
    spread = float(got.records[-1].v[:, 0].max() - got.records[-1].v[:, 0].min())
    free = _two_processes(kept, tmp_path / "kept.pt").records[-1].v[:, 0]
    assert spread < float(free.max() - free.min()) / 4


def _torchrun(args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(ROOT / "infer.py"), *args]


def _kill_all(marker: str) -> None:
    """SIGKILL every process whose command line names `marker`."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
                if marker in cmdline:
                    os.kill(int(entry), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


@pytest.mark.slow
def test_torchrun_writes_one_run_and_a_killed_run_resumes_with_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 infer.py ...` (gloo on the CPU) writes one run folder with all chains; killed
    mid-way, the same run resumes and finishes in one process (any number of devices resumes a run)."""
    from .test_infer import run_infer, tiny_prior

    s = tiny_prior("source", 32, tmp_path / "source.pt")
    lt = tiny_prior("lens_light", 48, tmp_path / "lens_light.pt")
    args = ["lens=mock", "experiment=infer_smoke", f"priors.source.path={s}", f"priors.lens_light.path={lt}",
            "sampler.chains=4", "sampler.stages.anneal.sweeps=8", f"paths.data_dir={tmp_path / 'data'}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    run_infer([*args, "sampler.stages.anneal.sweeps=2", f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)  # data

    whole = tmp_path / "two"
    done = subprocess.run(_torchrun([*args, f"hydra.run.dir={whole}"]), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    state = torch.load(whole / "state.pt", weights_only=True)
    assert len(state["rngs"]) == 2 and state["u"].shape[0] == 4  # 4 chains x 1 annealed record, branched
    with h5py.File(whole / "samples.h5") as f:
        assert f["theta_E"].shape == (4 * 2,)  # 4 chains x 2 recorded sweeps, written once, by rank 0
        assert sorted(set(f["chain"][:].tolist())) == [0, 1, 2, 3]
    assert (whole / "summary.csv").exists() and (whole / "corner.png").exists()

    broken = tmp_path / "broken"
    proc = subprocess.Popen(_torchrun([*args, f"hydra.run.dir={broken}"]), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state_path, deadline = broken / "state.pt", time.monotonic() + 600
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if state_path.exists():
            st = torch.load(state_path, weights_only=True)
            if (st["stage"], st["sweep"]) >= (1, 3):
                _kill_all(str(broken))  # torchrun and its workers, which run in sessions of their own
                killed = True
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed, "the two-process run ended before it could be killed"
    assert not (broken / "samples.h5").exists()
    resumed = run_infer([*args, f"hydra.run.dir={broken}"], tmp_path)
    assert "resuming" in resumed.stdout + resumed.stderr
    with h5py.File(broken / "samples.h5") as f:
        assert f["theta_E"].shape == (4 * 2,)
